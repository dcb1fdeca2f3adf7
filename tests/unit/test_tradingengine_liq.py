"""The TradingEngine's side of the LiqEngine contract (docs/liqengine.md §1, §2, §4, §5): with
liq_sources, handoffs and deficits go to clearing (the LiqEngine's side), Adls from the
LiqEngine's stream close positions against clearing; LIQ's trade legs are always foreign;
reserved account ids are refused; route bit 63 marks what the LiqEngine reads."""
import struct

import msgpack
import pytest

from tests.tradingvenue import HOUR, Venue, events_of, spec, two_specs
from tradingengine import codec as c
from tradingengine.engine import MAX_ADLS_PER_RECORD, EngineHalted, TradingEngine
from tradingengine.margin import Tier
from tradingengine.reference import ReferenceEngine, interpreted

USDT = 10**8
LIQ_SRC = 0x7600_0000
BIT63 = 1 << 63


def venue(liq: bool = True, **kw) -> Venue:
    s = spec(1, value=1_000, max_leverage_x100=5_000, tiers=(Tier(10**18, 10_000, 0, 5_000),),
             maker_fee_ppm=100, taker_fee_ppm=600)
    v = Venue([s], liq_sources=[LIQ_SRC] if liq else None,
              shadows=(ReferenceEngine, interpreted()), **kw)
    v.deposit(1, 1_000 * USDT)
    v.deposit(2, 1_000 * USDT)
    v.mark(1, 40_000)
    return v


def long_isolated(v: Venue) -> None:
    """Account 1 long 500 at 0.4, isolated at 5x; account 2 short 500."""
    v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(1, 1, c.ISOLATED))
    v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 500))
    v.order(1, 2, c.SELL, 40_000, 500)
    v.order(1, 1, c.BUY, 40_000, 500)


def liq_record(v: Venue, payload: bytes, kind: int = c.KIND_TICK) -> list[tuple]:
    return v.apply(kind, payload, source=LIQ_SRC)


def test_a_handoff_with_liq_sources_goes_to_clearing_and_routes_to_the_liqengine():
    v = venue()
    long_isolated(v)
    out = v.mark(1, 32_323)
    (liq,) = events_of(out, c.LIQUIDATION)
    assert liq[1:] == (1, 1, 500, 32_000, 500 * 32_000 * 1_000, 9_600_000)
    assert v.route & BIT63
    assert v.position(1).size == 0
    # clearing (the LiqEngine's side) took the position and the residue; liquidation nothing
    assert v.te.clearing.positions[1].size == 500
    assert 1 not in v.te.liquidation.positions or v.te.liquidation.positions[1].size == 0
    assert v.te.liquidation.balance == 0
    assert v.te.clearing.balance == 9_600_000
    v.te.check_invariants()


def test_without_liq_sources_the_liquidation_account_still_takes_the_handoff():
    v = venue(liq=False)
    long_isolated(v)
    events_of(v.mark(1, 32_323), c.LIQUIDATION)
    assert v.te.liquidation.positions[1].size == 500
    assert v.te.clearing.balance == 0
    assert v.te.liq_sources is None


def test_a_deficit_is_covered_from_clearing_with_liq_sources():
    """A cross long at 50x with no gain (the mark at its entry) owes funding beyond its
    balance (three intervals in one record): what the balance cannot pay (and no gain can) is
    covered by clearing when the shard works with the LiqEngine, not by the shard's
    liquidation account."""
    v = Venue(two_specs(), liq_sources=[LIQ_SRC], shadows=(ReferenceEngine,))
    v.deposit(1, 30_000_000)
    v.deposit(2, 10**15)
    v.mark(1, 10_000)
    v.apply(c.SET_LEVERAGE, c.set_leverage(1, 1, 5000))
    v.order(3, 2, c.SELL, 10_000, 1400)
    v.order(4, 1, c.BUY, 10_000, 1400)
    v.apply(c.FUNDING_INPUTS, c.funding_inputs(1, 7500, 0))
    out = v.apply(c.KIND_TICK, b"", dt_ns=3 * HOUR)
    covered = [e for e in events_of(out, c.DEFICIT_COVERED) if e[1] == 1]
    assert covered and all(e[2] > 0 for e in covered)
    assert v.te.accounts[1].balance == 0
    assert v.te.clearing.balance == -sum(e[2] for e in covered)
    assert v.te.liquidation.balance == 0
    v.te.audit()


def adl_position(v: Venue) -> None:
    """Account 1 long 500 at 0.4 (cross), with an open buy and a stop in the symbol."""
    v.order(1, 2, c.SELL, 40_000, 500)
    v.order(1, 1, c.BUY, 40_000, 500)
    v.order(2, 1, c.BUY, 39_000, 10)
    v.order(3, 1, c.SELL, 0, 10, trigger_price=30_000, trigger_kind=c.TRIGGER_STOP,
            ord_type=c.MARKET, tif=c.IOC)


def test_an_adl_cancels_the_orders_and_closes_against_clearing_at_its_price():
    v = venue()
    adl_position(v)
    balance = v.te.accounts[1].balance
    out = liq_record(v, c.liq_adl(7, 1, 1, -200, 42_000))
    assert v.route & BIT63
    (adl,) = events_of(out, c.ADL_APPLIED)
    realised = 200 * (42_000 - 40_000) * 1_000
    assert adl[1:] == (7, 1, 1, -200, 42_000, realised)
    ers = events_of(out, c.EXEC_REPORT)
    # the stop at once, the live buy when the CrossEngine confirms (the venue delivers it)
    assert [(e[1], e[16]) for e in ers] == [(c.EXEC_CANCELED, c.REASON_LIQUIDATION)] * 2
    assert [e[2] for e in events_of(out, c.CE_COMMAND)] == [c.CE_CANCEL]   # the live buy
    assert v.position(1).size == 300
    assert v.te.accounts[1].balance == balance + realised             # no fee on an ADL
    assert v.te.clearing.positions[1].size == 200
    assert sum(p.size for a in [*v.te.accounts.values(), v.te.clearing]
               for s, p in a.positions.items() if s == 1) == 0
    assert events_of(out, c.POSITION)[-1][3] == 300
    assert events_of(out, c.ACCOUNT)
    v.deliver()
    v.te.check_invariants()


def test_an_adl_closes_at_most_the_position_and_nothing_on_the_wrong_side():
    v = venue()
    adl_position(v)
    (adl,) = events_of(liq_record(v, c.liq_adl(1, 1, 1, 300, 42_000)), c.ADL_APPLIED)
    assert adl[4] == 0 and adl[6] == 0                     # a buy would not reduce a long
    assert v.position(1).size == 500
    (adl,) = events_of(liq_record(v, c.liq_adl(2, 1, 1, -900, 38_000)), c.ADL_APPLIED)
    assert adl[4] == -500 and adl[6] == 500 * (38_000 - 40_000) * 1_000
    assert v.position(1).size == 0
    (adl,) = events_of(liq_record(v, c.liq_adl(3, 1, 1, -1, 38_000)), c.ADL_APPLIED)
    assert adl[4] == 0                                     # flat: nothing
    v.deliver()
    v.te.check_invariants()


def test_adls_for_other_shards_are_ignored_and_unknown_accounts_get_a_zero_answer():
    s = spec(1)
    v = Venue([s], shard=1, n_shards=2, liq_sources=[LIQ_SRC])
    payload = (c.liq_adl(1, 4, 1, -5, 100) + c.liq_adl(2, 5, 1, -5, 100)
               + c.liq_adl(3, c.LIQ_ACCOUNT + 1, 1, -5, 100))
    out = liq_record(v, payload)
    assert [e[1:] for e in out] == [(2, 5, 1, 0, 100, 0)]


def test_the_other_liqengine_events_are_walked_and_ignored():
    v = venue()
    adl_position(v)
    cmd = struct.pack("<BIHH", 1, 1, 33, 3) + b"abc"
    others = (cmd + struct.pack("<BIIIqqq", 3, 0, 1, 1, 5, 100, 0) + struct.pack("<BqqB", 4, 1, 1, 1)
              + struct.pack("<BIIB", 5, 1, 1, 5) + struct.pack("<BHHQ", 6, 4001, 73, 0)
              + struct.pack("<BIqqq", 7, 1, 0, 0, 0))
    out = liq_record(v, others + c.liq_adl(9, 1, 1, -1, 40_000), kind=73)
    assert [e[1] for e in events_of(out, c.ADL_APPLIED)] == [9]
    assert liq_record(v, others) == []


@pytest.mark.parametrize("bad", [b"\x02" + bytes(31), b"\x08", struct.pack("<BIHH", 1, 1, 33, 9),
                                 b"\x07" + bytes(10)])
def test_an_unwalkable_liqengine_payload_halts_before_any_change(bad):
    v = venue()
    adl_position(v)
    before = (v.position(1).size, v.te.accounts[1].balance, len(v.te.accounts[1].orders))
    with pytest.raises(EngineHalted, match="LiqEngine"):
        v.te.apply(v.seq + 1, v.ts_ns, c.KIND_TICK, c.liq_adl(1, 1, 1, -5, 40_000) + bad,
                   LIQ_SRC)
    assert (v.position(1).size, v.te.accounts[1].balance, len(v.te.accounts[1].orders)) == before


def test_more_adls_than_the_bound_for_one_shard_halt():
    v = venue()
    payload = b"".join(c.liq_adl(i, 1, 1, -1, 40_000) for i in range(MAX_ADLS_PER_RECORD + 1))
    with pytest.raises(EngineHalted, match="Adls"):
        v.te.apply(v.seq + 1, v.ts_ns, c.KIND_TICK, payload, LIQ_SRC)


def test_liq_legs_are_foreign_whatever_their_shard_and_reserved_accounts_are_refused():
    v = venue()           # one shard: LIQ_ACCOUNT % 1 == 0 would be this shard's
    out = v.deposit(c.LIQ_ACCOUNT, 10 * USDT)
    assert [e[1] for e in events_of(out, c.REQUEST_REJECTED)] == [c.CODES["account_reserved"]]
    out = v.deposit(c.RESERVED_ACCOUNT_MIN, 10 * USDT)
    assert [e[1] for e in events_of(out, c.REQUEST_REJECTED)] == [c.CODES["account_reserved"]]
    assert c.LIQ_ACCOUNT not in v.te.accounts
    trade = c.CE_EVENT_STRUCTS[c.CE_TRADE].pack(c.CE_TRADE, 1, 77, 78, c.LIQ_ACCOUNT, 1, 40_000,
                                                 5, c.BUY, 0, 0, 0, 0)
    v.apply(c.CE_EVENTS, c.ce_events(1, trade))
    assert v.te.clearing.positions[1].size == -5
    assert v.position(1).size == 5
    v.te.check_invariants()


def test_records_with_status_events_carry_route_bit_63():
    v = venue(liq=False)
    v.deposit(9, 5)
    assert v.route == BIT63                       # AccountStatus
    v.apply(c.KIND_TICK, b"")
    assert v.route == 0


def test_snapshots_keep_liq_sources_and_stay_unchanged_without_them():
    v = venue()
    adl_position(v)
    data = v.te.snapshot()
    assert msgpack.unpackb(data, strict_map_key=False)[0] == 10
    restored = TradingEngine.restore(data)
    assert restored.liq_sources == [LIQ_SRC] and restored.state_hash() == v.te.state_hash()
    plain = venue(liq=False)
    state = msgpack.unpackb(plain.te.snapshot(), strict_map_key=False)
    assert state[0] == 9 and len(state[20]) == 3
    assert TradingEngine.restore(plain.te.snapshot()).snapshot() == plain.te.snapshot()


def test_a_liq_source_is_no_other_kind_of_source():
    with pytest.raises(ValueError, match="liq_sources"):
        TradingEngine([spec(1)], liq_sources=[LIQ_SRC], oracle_sources=[LIQ_SRC])
    with pytest.raises(ValueError, match="liq_sources"):
        TradingEngine([spec(1)], liq_sources=[LIQ_SRC], ce_sources={LIQ_SRC: 1})
