"""Which source may send the TradingEngine's feed commands (docs/order-path.md §2).

MarkPrice and FundingInputs come from the price feed, CrossEngineEvents from the CrossEngine's
out stream (taken upstream under its own source id). Configured with ``oracle_sources`` and
``ce_sources`` (as deploy/ configures every shard), the engine refuses them from any other
source with a RequestRejected (source_not_allowed): a producer key registered for a client
source id (a gateway) can neither move the mark price (and so liquidate accounts) nor send
forged fills or a malformed payload that would halt every replica. Without the keys the engine
takes them from any source, as before.
"""
from __future__ import annotations

from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE
from tests.tradingvenue import two_specs
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine

CLIENT = 101   # a gateway's source id
ORACLE = 0x7100_0000
CE_1, CE_2 = 0x7000_0001, 0x7000_0002


def _engine() -> TradingEngine:
    return TradingEngine(two_specs(), shard=0, n_shards=2, ce_sources={CE_1: 1, CE_2: 2},
                         oracle_sources=[ORACLE], gateway_sources=[0x7200_0000])


def _frame(recs):
    return encode([(i + 1, 1000 + i, src, i + 1, 1, kind, payload)
                   for i, (src, kind, payload) in enumerate(recs)])


def test_a_client_source_cannot_move_the_mark_price():
    te = _engine()
    out = decode(te.apply_frame(_frame([(CLIENT, tc.MARK_PRICE, tc.mark_price(1, 12345))])))
    assert te.marks.get(1) != 12345
    assert tc.decode_events(out[0][6])[0][0] == tc.REQUEST_REJECTED


def test_a_client_source_cannot_halt_the_engine_with_crossengine_events():
    te = _engine()
    te.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10))]))
    bad = tc.ce_events(1, b"\xff")   # an event type that does not exist
    te.apply_frame(encode([(2, 2000, CLIENT, 1, 1, tc.CE_EVENTS, bad)]))
    te.apply_frame(encode([(3, 3000, OPERATOR_SOURCE, 2, 1, tc.KIND_TICK, b"")]))

    assert te.seq == 3


def test_the_oracle_and_the_operator_move_the_mark_price_and_funding_inputs():
    te = _engine()
    te.apply_frame(_frame([(ORACLE, tc.MARK_PRICE, tc.mark_price(1, 12345)),
                           (OPERATOR_SOURCE, tc.MARK_PRICE, tc.mark_price(2, 777)),
                           (CLIENT, tc.FUNDING_INPUTS, tc.funding_inputs(1, 5, 5)),
                           (ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(2, 6, 6))]))
    assert te.marks == {1: 12345, 2: 777}
    assert te.funding_inputs == {2: (6, 6)}


def test_funding_inputs_beyond_a_hundred_percent_are_refused_and_change_nothing():
    te = _engine()
    te.apply_frame(_frame([(ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 100, -20))]))
    for premium, interest in ((1_000_001, 0), (0, -1_000_001), (-(1 << 31), (1 << 31) - 1)):
        out = te.apply(te.seq + 1, te.ts_ns + 1000, tc.FUNDING_INPUTS,
                       tc.funding_inputs(1, premium, interest), ORACLE)
        rejected = [e for e in tc.decode_events(out) if e[0] == tc.REQUEST_REJECTED]
        assert [e[1] for e in rejected] == [2046], tc.decode_events(out)
        assert te.funding_inputs == {1: (100, -20)}
    te.apply(te.seq + 1, te.ts_ns + 1000, tc.FUNDING_INPUTS,
             tc.funding_inputs(1, 1_000_000, -1_000_000), ORACLE)   # the edges are taken
    assert te.funding_inputs == {1: (1_000_000, -1_000_000)}


def test_a_crossengine_source_record_is_that_symbols_output_whatever_its_kind():
    from crossengine import codec as cc
    te = _engine()
    te.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10)),
                           (ORACLE, tc.MARK_PRICE, tc.mark_price(1, 10_000))]))
    out = te.apply(3, 3000, tc.NEW_ORDER, tc.new_order(7, 2, 1, tc.BUY, 10_000, 5))
    cmd = [e for e in tc.decode_events(out) if e[0] == tc.CE_COMMAND][0]
    order_id = tc.CE_NEW_ORDER_S.unpack(cmd[4])[0]
    accepted = cc.EVENT_STRUCTS[cc.EV_ACCEPTED].pack(cc.EV_ACCEPTED, (1 << 40) | 1, order_id, 2,
                                                     tc.BUY, tc.LIMIT, 10_000, 5, tc.GTC, 0)
    te.apply(4, 4000, tc.KIND_TICK, b"", CE_1)
    assert te.orders[order_id].state != 2      # a Tick is a Tick from any source
    te.apply(5, 5000, cc.NEW_ORDER, accepted, CE_1)
    assert te.orders[order_id].state == 2      # OPEN
    # kind 76 from a CrossEngine source is its raw output too (no symbol prefix)
    ev = tc.decode_events(te.apply(6, 6000, tc.CE_EVENTS, tc.ce_events(1, b""), CLIENT))
    assert ev[0][0] == tc.REQUEST_REJECTED and ev[0][1] == tc.CODES["source_not_allowed"]


def test_session_kinds_only_from_gateways_and_the_operator():
    te = _engine()
    logon = tc.session_logon(9, 1, 0, 2)
    ev = tc.decode_events(te.apply(1, 1000, tc.SESSION_LOGON, logon, CLIENT))
    assert ev[0][0] == tc.REQUEST_REJECTED and not te.sessions
    ev = tc.decode_events(te.apply(2, 2000, tc.SESSION_LOGON, logon, 0x7200_0000))
    assert ev[0][0] == tc.SESSION_STATE and (9, 1) in te.sessions


def test_without_the_keys_the_engine_takes_feed_kinds_from_any_source():
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    te.apply_frame(_frame([(CLIENT, tc.MARK_PRICE, tc.mark_price(1, 12345))]))
    assert te.marks[1] == 12345


def test_the_source_configuration_is_in_the_snapshot():
    te = _engine()
    back = TradingEngine.restore(te.snapshot())
    assert back.ce_sources == {CE_1: 1, CE_2: 2} and back.oracle_sources == [ORACLE]
    assert back.gateway_sources == [0x7200_0000]
    assert back.state_hash() == te.state_hash()
    assert TradingEngine(two_specs(), ce_sources={"0x7000_0001": 1}).ce_sources == {CE_1: 1}


def test_deploy_passes_the_source_keys_from_a_json_configuration():
    import dataclasses
    import json

    from deploy.engines import make
    specs = [{**dataclasses.asdict(s), "tiers": [dataclasses.asdict(t) for t in s.tiers]}
             for s in two_specs()]
    config = json.loads(json.dumps({
        "specs": specs, "shard": 0, "n_shards": 2,
        "ce_sources": {str(CE_1): 1, "0x7000_0002": 2}, "oracle_sources": [ORACLE],
        "gateway_sources": [0x7200_0000]}))
    te, restore = make("tradingengine", config)
    assert te.ce_sources == {CE_1: 1, CE_2: 2} and te.oracle_sources == [ORACLE]
    assert restore(te.snapshot()).gateway_sources == [0x7200_0000]


def test_an_accounts_own_commands_only_from_the_operator_when_clients_come_through_a_gateway():
    """With gateway_sources, a client's orders arrive as its session's messages: NewOrder,
    Cancel, Amend, CancelAll, SetLeverage, SetMarginMode, AdjustMargin and DeadMansSwitch put
    straight into in.te.N are the operator's. From the oracle, a gateway or any other source
    they are refused and change nothing (on the engine before, the oracle's key set an
    account's leverage and sent an order on its name)."""
    te = _engine()
    te.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10)),
                           (ORACLE, tc.MARK_PRICE, tc.mark_price(1, 10_000))]))
    twin = _engine()     # the same records, then Ticks where te is refused
    twin.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10)),
                             (ORACLE, tc.MARK_PRICE, tc.mark_price(1, 10_000))]))
    commands = [(tc.NEW_ORDER, tc.new_order(7, 2, 1, tc.BUY, 10_000, 5)),
                (tc.CANCEL, tc.cancel(8, 7, 2)), (tc.AMEND, tc.amend(9, 7, 2, 10_001, 5)),
                (tc.CANCEL_ALL, tc.cancel_all(10, 2)),
                (tc.SET_LEVERAGE, tc.set_leverage(2, 1, 200)),
                (tc.SET_MARGIN_MODE, tc.set_margin_mode(2, 1, tc.ISOLATED)),
                (tc.ADJUST_MARGIN, tc.adjust_margin(2, 1, 100)),
                (tc.DEAD_MANS_SWITCH, tc.dead_mans_switch(2, 60_000))]
    seq = 3
    for kind, payload in commands:
        for source in (ORACLE, CLIENT, 0x7200_0000, CE_1 + 5, 0x1234):
            ev = tc.decode_events(te.apply(seq, seq * 1000, kind, payload, source))
            twin.apply(seq, seq * 1000, tc.KIND_TICK, b"")
            seq += 1
            want = (tc.REQUEST_REJECTED, tc.CODES["source_not_allowed"], kind)
            assert [e[:3] for e in ev] == [want], (kind, source)
    assert te.state_hash() == twin.state_hash()
    assert te.accounts[2].positions.get(1) is None or not te.accounts[2].positions[1].size
    # the operator's order goes on to the CrossEngine
    ev = tc.decode_events(te.apply(seq, seq * 1000, *commands[0], OPERATOR_SOURCE))
    assert [e for e in ev if e[0] == tc.CE_COMMAND]
    # one engine with no gateway configured takes them from any source, as before
    alone = TradingEngine(two_specs(), shard=0, n_shards=2)
    alone.apply(1, 1000, tc.DEPOSIT, tc.transfer(1, 2, 10**10))
    ev = tc.decode_events(alone.apply(2, 2000, tc.SET_LEVERAGE, tc.set_leverage(2, 1, 200),
                                      ORACLE))
    assert not [e for e in ev if e[0] == tc.REQUEST_REJECTED]
