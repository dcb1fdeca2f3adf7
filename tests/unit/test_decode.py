"""deploy/decode.py: every record of every engine stream in words, with the engines' own
codecs. Each CrossEngine and TradingEngine command and event kind is decoded by name (none
falls back to hex), prices and quantities come out in contract units, reject codes in words,
filters find records by kind, account and order, and a malformed payload is shown, not
dropped."""
from __future__ import annotations

import json
from decimal import Decimal

from crossengine import codec as ce
from crossengine.engine import CrossEngine
from deploy import decode as d
from tradingengine import codec as te

UNITS = d.Units("BTCUSDT", 1, Decimal("0.5"), Decimal("0.001"))
BY_ID = {1: UNITS}


def rec(seq: int, kind: int, payload: bytes, src: int = 9) -> tuple:
    return (seq, 1_000 + seq, src, seq, 1, kind, payload)


def run_crossengine() -> list[tuple[tuple, tuple]]:
    """(input record, output record) of a short flow touching every event type."""
    eng = CrossEngine()
    cmds = [(ce.NEW_ORDER, ce.new_order(1, ce.SELL, 201, 5, 1)),
            (ce.NEW_ORDER, ce.new_order(2, ce.BUY, 201, 3, 2)),
            (ce.NEW_ORDER, ce.new_order(3, ce.BUY, 0, 5, 3, ce.MARKET, ce.IOC)),
            (ce.NEW_ORDER, ce.new_order(4, ce.BUY, 150, 4, 4, flags=ce.FLAG_POST_ONLY)),
            (ce.AMEND, ce.amend(0, 4, 4, price=152)),
            (ce.NEW_ORDER, ce.new_order(5, ce.BUY, 100, 0, 4)),
            (ce.CANCEL, ce.cancel(0, 4, 4)),
            (ce.CANCEL_ALL, ce.cancel_all(4)),
            (ce.HALT, b""), (ce.RESUME, b""), (ce.MASS_CANCEL, b""), (d.KIND_TICK, b"")]
    out = []
    for i, (kind, payload) in enumerate(cmds, 1):
        out.append((rec(i, kind, payload), rec(i, kind, eng.apply(i, 0, kind, payload))))
    return out


def test_every_crossengine_command_and_event_is_decoded_in_contract_units():
    pairs = run_crossengine()
    ins = [d.decode_record("in.ce.BTCUSDT", i, BY_ID, UNITS) for i, _o in pairs]
    outs = [d.decode_record("out.ce.BTCUSDT", o, BY_ID, UNITS) for _i, o in pairs]
    assert [x["command"] for x in ins] == [
        "NewOrder", "NewOrder", "NewOrder", "NewOrder", "AmendOrder", "NewOrder", "CancelOrder",
        "CancelAllOrders", "HaltSymbol", "ResumeSymbol", "MassCancel", "Tick"]
    assert ins[0] == {"seq": 1, "ts_ns": 1001, "source": 9, "source_seq": 1, "epoch": 1,
                      "kind": ce.NEW_ORDER, "command": "NewOrder", "client_order_id": 1,
                      "price": "100.5", "qty": "0.005", "account": 1, "side": "sell",
                      "ord_type": "limit", "tif": "gtc", "flags": [], "stp": "none"}
    assert ins[2]["price"] is None and ins[2]["ord_type"] == "market"
    assert ins[3]["flags"] == ["post_only"]
    events = {e["event"] for o in outs for e in o["events"]}
    assert events == set(ce.EVENT_NAMES.values()), "an event type went undecoded"
    trade = next(e for e in outs[1]["events"] if e["event"] == "Trade")
    assert (trade["price"], trade["qty"], trade["aggressor_side"], trade["maker_leaves"]) == (
        "100.5", "0.003", "buy", "0.002")
    rejected = outs[5]["events"][0]
    assert (rejected["code"], rejected["reason"], rejected["text"]) == (
        3003, "qty_below_min", "the quantity is below the symbol's minimum")
    expired = next(e for e in outs[2]["events"] if e["event"] == "OrderExpired")
    assert (expired["qty"], expired["reason"]) == ("0.003", "ioc_remainder")
    assert outs[-1] == {**{k: outs[-1][k] for k in ("seq", "ts_ns", "source", "source_seq",
                                                     "epoch", "kind")},
                        "command": "Tick", "events": []}
    assert d.is_tick(pairs[-1][0]) and not d.is_tick(pairs[0][0])
    for x in ins + outs:
        text = json.dumps(x)
        assert "payload_hex" not in text and "invalid" not in text, text


def test_every_tradingengine_command_and_event_kind_has_names():
    payloads = {
        te.NEW_ORDER: te.new_order(7, 3, 1, te.BUY, 200, 5), te.CANCEL: te.cancel(8, 7, 3),
        te.AMEND: te.amend(9, 7, 3, 202, 6), te.CANCEL_ALL: te.cancel_all(10, 3),
        te.SET_LEVERAGE: te.set_leverage(3, 1, 1000),
        te.SET_MARGIN_MODE: te.set_margin_mode(3, 1, te.ISOLATED),
        te.ADJUST_MARGIN: te.adjust_margin(3, 1, -5), te.DEPOSIT: te.transfer(1, 3, 10**10),
        te.WITHDRAW: te.transfer(2, 3, 10), te.MARK_PRICE: te.mark_price(1, 200),
        te.FUNDING_INPUTS: te.funding_inputs(1, 100, -20),
        te.DEAD_MANS_SWITCH: te.dead_mans_switch(3, 5000),
        te.CE_EVENTS: te.ce_events(1, ce.EVENT_STRUCTS[ce.EV_REJECTED].pack(
            ce.EV_REJECTED, 7, 3, 3001, 0))}
    assert set(payloads) == set(te.COMMAND_STRUCTS)
    for kind, payload in payloads.items():
        x = d.decode_record("in.te.0", rec(1, kind, payload), BY_ID)
        assert x["command"] == te.COMMAND_NAMES[kind] and "malformed" not in x, x
    order = d.decode_record("in.te.0", rec(1, te.NEW_ORDER, payloads[te.NEW_ORDER]), BY_ID)
    assert (order["symbol"], order["price"], order["qty"], order["side"], order["trigger_kind"]
            ) == ("BTCUSDT", "100", "0.005", "buy", "none")
    nested = d.decode_record("in.te.0", rec(1, te.CE_EVENTS, payloads[te.CE_EVENTS]), BY_ID)
    assert nested["events"][0]["reason"] == "price_not_on_tick"
    # every event type, each packed from zeros except its type, plus a nested CE command
    body = b"".join(s.pack(k, *([0] * (len(s.unpack(bytes(s.size))) - 1)))
                    for k, s in te.EVENT_STRUCTS.items()
                    if k not in (te.CE_COMMAND, te.SESSION_MESSAGE))
    body += te.EVENT_STRUCTS[te.SESSION_MESSAGE].pack(te.SESSION_MESSAGE, 1, 2, 203) + \
        te.P_STRUCTS[203].pack(1, 2, 3, 4, 100, 5, 0, b"overloaded")
    cmd = ce.new_order(1, ce.BUY, 4, 2, 3)
    body += te.EVENT_STRUCTS[te.CE_COMMAND].pack(te.CE_COMMAND, 1, ce.NEW_ORDER, len(cmd)) + cmd
    x = d.decode_record("out.te.0", rec(2, te.NEW_ORDER, body), BY_ID)
    assert [e["event"] for e in x["events"]] == [
        te.EVENT_NAMES[k] for k in te.EVENT_STRUCTS
        if k not in (te.CE_COMMAND, te.SESSION_MESSAGE)] + ["SessionMessage",
                                                            "CrossEngineCommand"]
    assert x["events"][-2]["message"]["text"] == "overloaded"
    assert x["events"][-1]["command"]["price"] == "2" and x["events"][-1]["ce_kind"] == "NewOrder"


def test_malformed_payloads_and_unknown_streams_are_shown_not_dropped():
    bad = d.decode_record("in.ce.BTCUSDT", rec(1, ce.NEW_ORDER, b"\x01\x02"), BY_ID, UNITS)
    assert bad["malformed"].startswith("2 bytes") and bad["payload_hex"] == "0102"
    bad = d.decode_record("out.ce.BTCUSDT", rec(1, ce.NEW_ORDER, b"\xff"), BY_ID, UNITS)
    assert bad["events"][0]["event"] == "malformed"
    unknown = d.decode_record("in.ce.BTCUSDT", rec(1, 999, b"ab"), BY_ID, UNITS)
    assert unknown["command"] == "unknown(999)" and unknown["payload_hex"] == "6162"
    other = d.decode_record("in.demo", rec(1, 16, b"ab"), BY_ID)
    assert other["payload_hex"] == "6162"
    odd = d.decode_record("in.ce.BTCUSDT", rec(1, ce.NEW_ORDER, ce.new_order(
        1, 0x33, 2, 1, 1, 0x39, 0x30)), BY_ID, UNITS)
    assert (odd["side"], odd["ord_type"], odd["tif"]) == ("invalid(51)", "invalid(57)",
                                                         "invalid(48)")


def test_filters_by_kind_account_and_order():
    pairs = run_crossengine()
    outs = [d.decode_record("out.ce.BTCUSDT", o, BY_ID, UNITS) for _i, o in pairs]
    assert [o["seq"] for o in outs if d.matches(o, kind="trade")] == [2, 3]
    assert [o["seq"] for o in outs if d.matches(o, kind="ORDERREJECTED")] == [6]
    assert [o["seq"] for o in outs if d.matches(o, kind=str(ce.AMEND))] == [5]
    assert [o["seq"] for o in outs if d.matches(o, account=3)] == [3]
    maker = next(e for e in outs[1]["events"] if e["event"] == "Trade")["maker_order_id"]
    assert [o["seq"] for o in outs if d.matches(o, order=maker)] == [1, 2, 3]
    assert [o["seq"] for o in outs if d.matches(o, kind="trade", account=1)] == [2, 3]


def test_units_and_lines():
    assert UNITS.price(201) == "100.5" and UNITS.qty(10**6) == "1000" and UNITS.qty(0) == "0"
    assert d.Units("X", 2, Decimal("0.01")).price(-150) == "-1.5"
    assert d.units_of({"X": {"symbol_id": 2, "tick_size": "0.25", "lot_size": "1"}}) == {
        2: d.Units("X", 2, Decimal("0.25"), Decimal("1"))}
    pairs = run_crossengine()
    line = d.line(d.decode_record("out.ce.BTCUSDT", pairs[1][1], BY_ID, UNITS))
    assert line.split()[:2] == ["2", "9:2"] and "Trade" in line and "price=100.5" in line
    assert d.reject_text(9999) == "code 9999"


def test_a_routed_record_shows_its_route_and_an_unrouted_one_none():
    """A record with a route (an engine's output routed downstream) shows it: the mask in
    the JSON, the streams it goes to in the line; a route of 0 (every producer's record) is
    left out, as are 7-tuples."""
    payload = CrossEngine().apply(1, 0, ce.NEW_ORDER, ce.new_order(1, ce.SELL, 201, 5, 1))
    routed = d.decode_record("out.ce.BTCUSDT", rec(1, ce.NEW_ORDER, payload) + (0x6,), BY_ID,
                             UNITS)
    assert routed["route"] == 6 and routed["routed_to"] == ["in.te.1", "in.te.2"]
    assert " to=in.te.1,in.te.2 " in d.line(routed) and "0x6" not in d.line(routed)
    # out.te.N routes by symbol bit, bit 63 is the LiqEngine's; out.liq's bit N is in.te.N
    # (of the shards there are) and the symbols whose id % 64 is N alike
    assert d.route_names("out.te.0", 1 << 1 | 1 << 63, BY_ID) == ["in.ce.BTCUSDT", "in.liq"]
    assert d.route_names("out.ce.BTCUSDT", 1 << 63, BY_ID) == ["in.liq"]
    assert d.route_names("out.liq", 1 << 1, BY_ID) == ["in.te.1", "in.ce.BTCUSDT"]
    eth, xrp = d.Units("ETHUSDT", 2), d.Units("XRPUSDT", 65)
    three = {1: UNITS, 2: eth, 65: xrp}
    assert d.route_names("out.liq", 1 << 2, three, n_shards=2) == ["in.ce.ETHUSDT"]
    assert d.route_names("out.te.1", 1 << 1, three) == ["in.ce.BTCUSDT", "in.ce.XRPUSDT"]
    assert d.route_names("out.ce.X", 1 << 2 | 1 << 10, three) == ["in.te.2", "in.te.10"]
    assert d.route_names("out.te.1", 1 << 5, three) == ["bit5"]
    # in an in stream a record's route is the one it was taken by: kept in the JSON, not
    # shown as where it goes
    taken = d.decode_record("in.te.1", rec(1, ce.NEW_ORDER, payload, src=0x7000_0001) + (0x2,),
                            BY_ID, n_shards=2)
    assert taken["route"] == 2 and "routed_to" not in taken
    assert " to=" not in d.line(taken) and "route=" not in d.line(taken)
    for plain in (rec(1, ce.NEW_ORDER, payload) + (0,), rec(1, ce.NEW_ORDER, payload)):
        x = d.decode_record("out.ce.BTCUSDT", plain, BY_ID, UNITS)
        assert "route" not in x and "route" not in d.line(x)


def test_the_order_path_between_engines_is_decoded_not_hex():
    """In the default cluster an order goes gateway -> in.te.N -> out.te.N -> in.ce.SYM ->
    out.ce.SYM -> in.te.N (and out.liq into both): records taken from another engine's out
    stream carry that engine's events under the upstream record's kind (83 ClientMessage, say).
    `seqex replay in.ce.BTCUSDT` printed every order entered through the gateway as
    "unknown(83) payload_hex=...", in.te.N its fills as "ClientMessage payload_hex=...", and
    in.liq/out.liq were hex throughout. Each is decoded by its source, in contract units."""
    from deploy import topology as topo
    from liqengine import codec as liq
    eth = d.Units("ETHUSDT", 2, Decimal("0.05"), Decimal("0.01"))
    by_id = {1: UNITS, 2: eth}
    order = ce.new_order(7, ce.BUY, 100_000, 10, 2)        # 50000 x 0.01 of BTCUSDT
    cmd = te.EVENT_STRUCTS[te.CE_COMMAND]
    te_out = (cmd.pack(te.CE_COMMAND, 1, ce.NEW_ORDER, len(order)) + order
              + cmd.pack(te.CE_COMMAND, 2, ce.NEW_ORDER, len(order)) + order)
    # out.te.0 into in.ce.BTCUSDT: only this symbol's command, in BTCUSDT's units
    r = d.decode_record("in.ce.BTCUSDT", rec(5, te.CLIENT_MESSAGE, te_out,
                                             topo.SRC_TE_OUT | 0), by_id, UNITS)
    assert (r["command"], r["from"]) == ("Upstream", "out.te.0")
    assert r["events"] == [{"command": "NewOrder", "client_order_id": 7, "price": "50000",
                            "qty": "0.01", "account": 2, "side": "buy", "ord_type": "limit",
                            "tif": "gtc", "flags": [], "stp": "none"}]
    assert "payload_hex" not in json.dumps(r) and "unknown" not in json.dumps(r)
    assert d.matches(r, kind="NewOrder", account=2)
    assert d.line(r).endswith("Upstream from=out.te.0 | NewOrder client_order_id=7 price=50000 "
                              "qty=0.01 account=2 side=buy ord_type=limit tif=gtc stp=none")
    # its output on out.ce.BTCUSDT keeps the input's source and kind
    ce_out = CrossEngine().apply(5, 0, ce.NEW_ORDER, order)
    r = d.decode_record("out.ce.BTCUSDT", rec(5, te.CLIENT_MESSAGE, ce_out,
                                              topo.SRC_TE_OUT | 1), by_id, UNITS)
    assert (r["command"], r["from"]) == ("Upstream", "out.te.1")
    assert r["events"][0]["event"] == "OrderAccepted" and r["events"][0]["price"] == "50000"
    # ... and taken into in.te.N from out.ce.BTCUSDT: CrossEngine events, not a ClientMessage
    r = d.decode_record("in.te.0", rec(6, te.CLIENT_MESSAGE, ce_out, topo.SRC_CE_OUT | 1),
                        by_id)
    assert (r["command"], r["from"]) == ("Upstream", "out.ce.BTCUSDT")
    assert [e["event"] for e in r["events"]] == ["OrderAccepted", "LevelChanged"]
    assert r["events"][0]["qty"] == "0.01"
    # the gateway's session records: fields, accounts, the client's message in units
    r = d.decode_record("in.te.0", rec(7, te.SESSION_LOGON, te.session_logon(
        1, 99, 8, 2, [2, 4], next_expected=1), topo.SRC_GATEWAY), by_id)
    assert r["command"] == "SessionLogon" and r["accounts"] == [2, 4] and "rest_hex" not in r
    nos = te.P_STRUCTS[te.P_NEW_ORDER].pack(1, 0, 7, 5_000_000_000_000, 10, 1, 0, ord("1"),
                                            ord("2"), ord("1"), 0)
    r = d.decode_record("in.te.0", rec(8, te.CLIENT_MESSAGE, te.client_message(
        1, 99, te.P_NEW_ORDER, nos), topo.SRC_GATEWAY), by_id)
    assert r["message"]["name"] == "NewOrderSingle"
    assert (r["message"]["price"], r["message"]["qty"], r["message"]["side"]) == \
        ("50000", "0.01", "buy")
    # the LiqEngine's streams, and out.liq into in.ce.SYM
    r = d.decode_record("in.liq", rec(9, liq.MARK_PRICE, liq.mark_price(1, 100_002),
                                      topo.SRC_ORACLE), by_id)
    assert (r["command"], r["symbol"], r["price"]) == ("MarkPrice", "BTCUSDT", "50001")
    r = d.decode_record("in.liq", rec(10, te.CLIENT_MESSAGE, te_out,
                                      topo.SRC_TE_TO_LIQ | 1), by_id)
    assert r["from"] == "out.te.1" and r["events"][0]["event"] == "CrossEngineCommand"
    liq_out = liq.ce_new_order(1, 3, ce.SELL, 99_000, 20, ce.IOC)
    r = d.decode_record("out.liq", rec(11, te.CLIENT_MESSAGE, liq_out,
                                       topo.SRC_TE_TO_LIQ | 0), by_id)
    assert r["events"][0]["command"]["price"] == "49500"
    r = d.decode_record("in.ce.BTCUSDT", rec(12, te.CLIENT_MESSAGE, liq_out, topo.SRC_LIQ_OUT),
                        by_id, UNITS)
    assert r["from"] == "out.liq" and r["events"][0]["command"] == "NewOrder"
    assert r["events"][0]["qty"] == "0.02" and r["events"][0]["tif"] == "ioc"


def test_a_line_shows_money_in_the_settlement_currency_and_json_in_minor_units():
    """`seqex tail out.te.0` (README: "balances, margin, positions") printed
    balance_minor=10000000000000 for 100,000 USDT: a person's line is in the settlement
    currency (balance=100000), the JSON keeps the exact integers under *_minor. An event's
    own field named like a header key (TransferApplied's kind) was dropped from the line."""
    payload = (te.EVENT_STRUCTS[te.ACCOUNT].pack(te.ACCOUNT, 2, 10_000_000_000_000,
                                                 9_999_996_000_000, 3_036_000_000, 1)
               + te.EVENT_STRUCTS[te.TRANSFER].pack(te.TRANSFER, 1, 2, -5, 0, te.WITHDRAW))
    r = d.decode_record("out.te.0", rec(3, te.DEPOSIT, payload), BY_ID)
    assert r["events"][0]["balance_minor"] == 10_000_000_000_000
    assert json.loads(json.dumps(r)) == r
    text = d.line(r)
    assert ("AccountStatus account=2 balance=100000 available=99999.96 order_margin=30.36 "
            "position_margin=0.00000001") in text, text
    assert "amount=-0.00000005 balance=0 kind=withdraw" in text, text
    assert "_minor" not in text


def test_every_tradingengine_cancel_reason_has_a_word():
    """A Day order's expiry (REASON_END_OF_DAY) and a cancel on disconnect decode by name,
    not as invalid(11) / invalid(2)."""
    from deploy import decode
    from tradingengine import codec as te
    reasons = {v for k, v in vars(te).items() if k.startswith("REASON_")}
    assert reasons <= set(decode.TE_REASONS), reasons - set(decode.TE_REASONS)


def test_sources_and_leverage_read_as_words():
    """The line names who wrote a record (an engine's out stream, the oracle, a gateway, the
    operator) instead of its source id, and a leverage in hundredths as a multiple: `seqex
    replay` printed `1912602624:7 ... leverage_x100=500`."""
    from deploy import topology as topo
    from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN
    assert d.source_name(topo.SRC_CE_OUT | 1, BY_ID) == "out.ce.BTCUSDT"
    assert d.source_name(topo.SRC_CE_OUT | 7, BY_ID) == "out.ce.7"
    assert d.source_name(topo.SRC_TE_OUT | 1, BY_ID) == "out.te.1"
    assert d.source_name(topo.SRC_LIQ_OUT, BY_ID) == "out.liq"
    assert d.source_name(topo.SRC_ORACLE, BY_ID) == "oracle0"
    assert d.source_name(topo.SRC_GATEWAY | 1, BY_ID) == "gateway1"
    assert d.source_name(OPERATOR_SOURCE, BY_ID) == "operator"
    assert d.source_name(OPERATOR_SOURCE_MIN + 0x105, BY_ID) == "operator+0x105"
    assert d.source_name(42, BY_ID) == "42"
    lev = rec(7, te.SET_LEVERAGE, te.COMMAND_STRUCTS[te.SET_LEVERAGE].pack(3, 1, 250),
              src=topo.SRC_GATEWAY)
    x = d.decode_record("in.te.1", lev, BY_ID)
    assert x["leverage_x100"] == 250 and x["source_name"] == "gateway0"
    line = d.line(x)
    assert line.split()[1] == "gateway0:7" and "leverage=2.5x" in line, line
    assert "x100" not in line
    plain = d.decode_record("in.te.1", rec(7, te.SET_LEVERAGE, lev[6], src=42), BY_ID)
    assert "source_name" not in plain and d.line(plain).split()[1] == "42:7"


def test_a_session_message_reads_in_names_units_and_utc_not_wire_values():
    """The ExecutionReport a SessionMessage carries was printed as it lies on the wire: FIX
    characters as numbers (side=1 exec_type=0 ...), null sentinels as 18446744073709551615
    and 4294967295, the time in ns. Names, nothing for a null, ISO time, contract units."""
    null64, null32 = te.P_NULL_ID, te.P_NULL_SECURITY
    block = te.P_STRUCTS[te.P_EXEC_REPORT].pack(
        3, 1_796_000_000_123_456_789, 7, null64, null64, 11, 5_000_000_000_000, 10,
        te.P_NULL_PRICE, 0, 0, 0, null32, 2, ord("8"), ord("8"), ord("1"), ord("2"), ord("1"),
        13, 0, 0)
    body = te.EVENT_STRUCTS[te.SESSION_MESSAGE].pack(te.SESSION_MESSAGE, 1, 2,
                                                     te.P_EXEC_REPORT) + block
    x = d.decode_record("out.te.0", rec(2, te.NEW_ORDER, body), BY_ID)
    m = x["events"][0]["message"]
    assert (m["side"], m["exec_type"], m["ord_status"], m["ord_type"], m["tif"]) == \
        ("buy", "rejected", "rejected", "limit", "gtc")
    assert m["reason"] == "incorrect_quantity" and m["liquidity"] == "none"
    assert m["order_id"] is None and m["orig_client_order_id"] is None and m["symbol"] is None
    assert m["transact_time"] == "2026-11-30T00:53:20.123456Z"
    assert m["price"] == "50000" and "last_price" in m and m["last_price"] is None
    text = d.line(x)
    for raw in ("18446744073709551615", "4294967295", "1796000000123456789", "side=1",
                "exec_type=8"):
        assert raw not in text, text
    # with the SecurityID known: the symbol's name, quantities in the contract's units
    block = te.P_STRUCTS[te.P_EXEC_REPORT].pack(
        4, 1, 8, null64, 30, 12, 5_000_000_000_000, 10, 5_000_000_000_000, 10, 0, 10, 1, 2,
        ord("F"), ord("2"), ord("2"), ord("2"), ord("3"), 0, 2, 0)
    body = te.EVENT_STRUCTS[te.SESSION_MESSAGE].pack(te.SESSION_MESSAGE, 1, 2,
                                                     te.P_EXEC_REPORT) + block
    m = d.decode_record("out.te.0", rec(3, te.NEW_ORDER, body), BY_ID)["events"][0]["message"]
    assert (m["symbol"], m["qty"], m["side"], m["exec_type"], m["ord_status"], m["tif"]) == \
        ("BTCUSDT", "0.01", "sell", "trade", "filled", "ioc")
    assert m["liquidity"] == "taker" and "reason" not in m


def test_a_crossengine_command_line_shows_its_order_not_its_length():
    """`CrossEngineCommand symbol=BTCUSDT ce_kind=NewOrder length=33` hid the order: the
    line must show its side, price and quantity in contract units."""
    cmd = ce.new_order(1, ce.BUY, 100_000, 10, 3)
    body = te.EVENT_STRUCTS[te.CE_COMMAND].pack(te.CE_COMMAND, 1, ce.NEW_ORDER, len(cmd)) + cmd
    text = d.line(d.decode_record("out.te.0", rec(2, te.NEW_ORDER, body), BY_ID))
    assert "length=" not in text, text
    assert "command={NewOrder" in text and "side=buy" in text and "price=50000" in text
    assert "qty=0.01" in text, text


def test_an_output_record_with_no_events_says_so():
    """`seqex replay out.te.N` showed a MarkPrice that moved no one as "MarkPrice" alone, as if
    its fields were lost: an output record keeps its input's kind, not its payload."""
    x = d.decode_record("out.te.0", rec(5, te.MARK_PRICE, b""), BY_ID)
    assert x["command"] == "MarkPrice" and x["events"] == []
    assert d.line(x).endswith("MarkPrice | no events"), d.line(x)
    tick = d.decode_record("out.te.0", rec(6, d.KIND_TICK, b""), BY_ID)
    assert d.line(tick).endswith("Tick"), d.line(tick)
