"""One record's output must fit MAX_PAYLOAD (engine module doc), and so must the record that
reports the CrossEngine's answer to it: the CrossEngine answers a whole TradingEngine record
with one output record (docs/order-path.md §2).

A session with MAX_SESSION_ACCOUNTS = 64 accounts of MAX_OPEN_ORDERS = 200 orders each:
* its OrderMassCancelRequest and its cancel-on-disconnect run as sweeps, one account a unit
  within OUTPUT_BUDGET (all 64 in one record would be 12,800 cancels and about 2.75 MB to
  report their answer), and the budget counts each cancel with what reporting its answer
  costs (ANSWER_RESERVE): counting only the 29-byte command let ~4,600 cancels into one
  record, whose answer took ~1.1 MB.
"""
from __future__ import annotations

from tests.unit.test_tradingengine_sessions import BLOCKS, E8, NOS, NULL, OMCR, Harness
from tradingengine import codec as c
from tradingengine.engine import MAX_OPEN_ORDERS, OUTPUT_LIMIT

OMCR_REPORT = BLOCKS[202]


def ce_answer(v, raw: bytes) -> list[bytes]:
    """The CrossEngine's outputs for the commands of one TradingEngine record (in production
    it applies every command of the record and answers with one output record)."""
    out = []
    for ev in c.decode_events(raw):
        if ev[0] == c.CE_COMMAND:
            v.ce_seq[1] += 1
            out.append(v.ces[1].apply(v.ce_seq[1], v.ts_ns, ev[2], ev[4]))
    return out


def until_settled(v, kind: int, payload: bytes, pending) -> tuple[int, int, list]:
    """Apply the record, then each CrossEngine answer (or a Tick 10 ms on when there is none),
    until no answer is due and ``pending()`` is empty: (the largest output of one record, the
    records applied, every event they output)."""
    worst, records, events = 0, 0, []
    for _ in range(400):
        v.ts_ns += 10**7 if kind == c.KIND_TICK else 1000
        v.seq += 1
        raw = v.te.apply(v.seq, v.ts_ns, kind, payload)
        records += 1
        worst = max(worst, len(raw))
        events += c.decode_events(raw)
        out = ce_answer(v, raw)
        if not out and not pending():
            break
        kind, payload = (c.CE_EVENTS, c.ce_events(1, b"".join(out))) if out else \
            (c.KIND_TICK, b"")
    return worst, records, events


def full_session(cod: int = 0) -> tuple[Harness, int]:
    """A session of user 1 over MAX_SESSION_ACCOUNTS accounts, each with MAX_OPEN_ORDERS
    resting buys it entered; (the harness, the session's last SeqNo)."""
    h = Harness()
    h.v.check = False
    accounts = list(range(1, c.MAX_SESSION_ACCOUNTS + 1))
    for a in accounts[3:]:
        h.v.deposit(a, 10**12)
    h.logon(1, 9, accounts=accounts, cod=cod, cod_ms=1 if cod else 0)
    seq, coid = 1, 1000
    for a in accounts:
        for i in range(MAX_OPEN_ORDERS):
            seq, coid = seq + 1, coid + 1
            h.send(1, 9, 100, NOS.pack(seq, 0, coid, 90 * E8 - i * 10**6, 1, 1, a, b"1", b"2",
                                       b"1", 0))
    assert len(h.v.te.orders) == len(accounts) * MAX_OPEN_ORDERS
    return h, seq


def test_a_mass_cancel_of_a_64_account_session_answers_within_one_record():
    """Its mass cancel covers all 64 accounts as a sweep, one account a unit within
    OUTPUT_BUDGET: each record's cancels, and the record that reports the CrossEngine's answer
    to them, fit; the one report counts all 12,800 cancels and comes after the last of them."""
    h, seq = full_session()
    v = h.v
    worst, records, events = until_settled(v, c.CLIENT_MESSAGE, c.client_message(
        1, 9, 103, OMCR.pack(seq + 1, 0, 99_999, NULL & 0xFFFFFFFF, b"7", b"0", 0)),
        lambda: v.te.sweeps)
    reports = [e for e in events if e[0] == c.SESSION_MESSAGE and e[3] == 202]
    assert worst <= OUTPUT_LIMIT, f"{worst} bytes in one record"
    assert records > 2, "more than one record's budget of cancels"
    (report,) = reports
    assert OMCR_REPORT.unpack(report[4])[3] == c.MAX_SESSION_ACCOUNTS * MAX_OPEN_ORDERS
    assert not v.te.orders


def test_cancel_on_disconnect_of_a_64_account_session_answers_within_one_record():
    """The same for cancel-on-disconnect (a sweep, one account a unit, within OUTPUT_BUDGET):
    each record's cancels, and the record that reports the CrossEngine's answer to them, fit;
    every record's commands go to the CrossEngine (the answer's record goes on with the
    sweep too), until every order is cancelled."""
    h, _seq = full_session(cod=c.COD_ON_DISCONNECT)
    v = h.v
    v.apply(c.SESSION_END, c.session_end(1, 9, 7, c.END_DISCONNECT))
    worst, _records, _events = until_settled(v, c.KIND_TICK, b"", lambda: v.te.cod)
    assert worst <= OUTPUT_LIMIT, f"{worst} bytes in one record"
    assert not v.te.orders        # every order cancelled, over as many records as it took


def test_stops_fired_together_over_a_deep_book_answer_within_one_record():
    """One mark fires many stop-market orders, each big enough to meet CE_MAX_FILLS makers of
    a deep book of one-lot asks. They go out in one record, and the CrossEngine answers that
    record with one record (in production: it walks the TradingEngine's payload): 8 takers
    of 1,000 fills each were an answer of ~560 KB and a report of it of ~1.4 MB, over
    MAX_PAYLOAD, which stops the shard at that record on every replica. The takers of one
    record share CE_MAX_FILLS in the CrossEngine (fill_cap), and the trigger sweep sends a
    taker only where the steps it may take are left: one stop of 1,000 lots a record here,
    the sweep going on in the record of each answer, and every stop fills in full."""
    from crossengine.engine import CrossEngine
    from mq.record import MAX_PAYLOAD, decode, encode
    from tests.tradingvenue import spec
    from tradingengine.engine import CE_MAX_FILLS, TradingEngine

    te_source, takers = 0x7300_0000, 8
    s = spec(max_leverage_x100=10_000)
    te = TradingEngine([s])
    ce = CrossEngine(symbol_id=1, max_price=s.max_price, max_qty=s.max_qty,
                     te_sources=[te_source])
    state = {"seq": 0, "ts": 10**18, "ce_seq": 0, "worst": 0, "answer": 0}

    def answer(raw: bytes) -> bytes:
        """The CrossEngine's one output record for one TradingEngine record."""
        if not any(ev[0] == c.CE_COMMAND for ev in c.decode_events(raw)):
            return b""
        state["ce_seq"] += 1
        n = state["ce_seq"]
        out = decode(ce.apply_frame(encode([(n, state["ts"], te_source, n, 1, 44, raw)])))
        return out[0][6]

    def apply(kind: int, payload: bytes) -> bytes:
        state["seq"] += 1
        state["ts"] += 1000
        raw = te.apply(state["seq"], state["ts"], kind, payload)
        state["worst"] = max(state["worst"], len(raw))
        back = answer(raw)
        if back:
            state["answer"] = max(state["answer"], len(back))
            apply(c.CE_EVENTS, c.ce_events(1, back))
        return raw

    apply(c.MARK_PRICE, c.mark_price(1, 10_000))
    makers = takers * CE_MAX_FILLS // MAX_OPEN_ORDERS
    for a in range(1, makers + 1):
        apply(c.DEPOSIT, c.transfer(a, a, 10**15))
        for i in range(MAX_OPEN_ORDERS):
            apply(c.NEW_ORDER, c.new_order(i + 1, a, 1, c.SELL, 10_300 + i, 1))
    for t in range(takers):
        a = 10_000 + t
        apply(c.DEPOSIT, c.transfer(a, a, 10**15))
        apply(c.NEW_ORDER, c.new_order(1, a, 1, c.BUY, 0, CE_MAX_FILLS, ord_type=c.MARKET,
                                       trigger_price=10_100, trigger_kind=c.TRIGGER_STOP))
    assert len(te.orders) == makers * MAX_OPEN_ORDERS + takers
    state["worst"] = 0
    apply(c.MARK_PRICE, c.mark_price(1, 10_200))
    assert state["worst"] <= OUTPUT_LIMIT and state["answer"] <= MAX_PAYLOAD
    # the last takers' maintenance checks (a taker filled above the mark is checked when its
    # fills are booked) wait for the next record when the fills' record is over its budget
    apply(c.KIND_TICK, b"")
    assert not te.sweeps
    te.check_invariants()
    bought = [te.accounts[10_000 + t].positions[1].size for t in range(takers)]
    assert bought == [CE_MAX_FILLS] * takers and not te.orders


def test_a_clients_order_behind_deferred_trigger_units_still_takes_the_book():
    """A mark fires more stops than one record's OUTPUT_BUDGET: the trigger sweep resumes in
    the next record, before that record's command. When that command is a client's crossing
    order, it comes after the triggered orders in the record the CrossEngine walks; if they
    used the record's CE_MAX_FILLS (a stop of 1,000 lots over a book of one-lot asks), the
    client's order, and the one-lot stops after the big one, expire whole at the matching
    limit (reason 6) with no fill, though the book still crosses them (found in review)."""
    from crossengine.engine import CrossEngine
    from mq.record import decode, encode
    from tests.tradingvenue import spec
    from tradingengine.engine import CE_MAX_FILLS, TradingEngine

    te_source = 0x7300_0000
    s = spec(max_leverage_x100=10_000)
    te = TradingEngine([s])
    ce = CrossEngine(symbol_id=1, max_price=s.max_price, max_qty=s.max_qty,
                     te_sources=[te_source])
    state = {"seq": 0, "ts": 10**18, "ce_seq": 0}

    def apply(kind: int, payload: bytes, answer: bool = True) -> bytes:
        state["seq"] += 1
        state["ts"] += 1000
        raw = te.apply(state["seq"], state["ts"], kind, payload)
        if answer and any(ev[0] == c.CE_COMMAND for ev in c.decode_events(raw)):
            state["ce_seq"] += 1
            n = state["ce_seq"]
            back = decode(ce.apply_frame(encode([(n, state["ts"], te_source, n, 1, 44,
                                                  raw)])))[0][6]
            apply(c.CE_EVENTS, c.ce_events(1, back))
        return raw

    apply(c.MARK_PRICE, c.mark_price(1, 10_000))
    for a in range(1, 8 * CE_MAX_FILLS // MAX_OPEN_ORDERS + 2):
        apply(c.DEPOSIT, c.transfer(a, a, 10**14))
        for i in range(MAX_OPEN_ORDERS):
            apply(c.NEW_ORDER, c.new_order(i + 1, a, 1, c.SELL, 10_300 + i, 1))
    for t in range(400):
        a = 10_000 + t
        apply(c.DEPOSIT, c.transfer(a, a, 10**13))
        apply(c.NEW_ORDER, c.new_order(1, a, 1, c.BUY, 0, CE_MAX_FILLS if t == 250 else 1,
                                       ord_type=c.MARKET, trigger_price=10_100,
                                       trigger_kind=c.TRIGGER_STOP))
    client = 30_000
    apply(c.DEPOSIT, c.transfer(client, client, 10**13))
    # the mark's record: its answer comes back after the client's record (the sequencer
    # interleaves them), which runs the rest of the trigger sweep before the client's order
    apply(c.MARK_PRICE, c.mark_price(1, 10_200), answer=False)
    assert te.sweeps, "the trigger sweep goes on in the next record"
    apply(c.NEW_ORDER, c.new_order(1, client, 1, c.BUY, 10_400, 5))
    pos = te.accounts[client].positions.get(1)
    assert pos is not None and pos.size == 5
