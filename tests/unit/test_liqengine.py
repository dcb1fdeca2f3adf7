"""The LiqEngine's rules on worked examples: BitMEX's ADL example, the insurance fund's gain
and loss on a close-out to the minor unit (the example of docs/liqengine.md), a fund that never
goes below zero, and rejections. Every record also runs through the naive reference in lockstep
(LiqVenue compares the bytes) and the audit."""
import pytest

from liqengine import codec as c
from liqengine.engine import HOLD, EngineHalted, LiqEngine, LiqSpec, exact_score
from liqengine.reference import ReferenceLiqEngine
from liqengine.sim import OPERATOR, ORACLE, LiqVenue, te_adl_applied, te_deficit

WINDOW = 200_000_000


def venue(**kw) -> LiqVenue:
    return LiqVenue(shadows=(ReferenceLiqEngine,), **kw)


def kinds(events, kind):
    return [e for e in events if e[0] == kind]


def bitmex_longs(v: LiqVenue) -> None:
    """Longs (account, qty, score) (1,10,3) (2,10,6) (3,20,1) (4,30,4) (5,20,5) (6,10,2) of
    symbol 1 (value 1) at mark 640: each at leverage 1 (equity = its value at mark), so its
    score is its PNL%, (mark - entry) / entry, and entry 640 - 20 x score ranks them so."""
    v.mark(1, 640)
    for account, qty, score in [(1, 10, 3), (2, 10, 6), (3, 20, 1), (4, 30, 4), (5, 20, 5),
                                (6, 10, 2)]:
        entry = 640 - 20 * score
        upnl = qty * (640 - entry)
        v.position(account, 1, qty, entry, balance=qty * 640 - upnl)


def close_out_to_adl(v: LiqVenue, account: int, size: int, bp: int, symbol: int = 1) -> list:
    """Hand a position off and let the close-out fail: no fill at the limit, nor at the IOC."""
    v.hand_off(account, symbol, size, bp)
    limit = max(v.orders)
    v.accept(limit)
    v.tick(WINDOW)
    v.answer_cancel()
    ioc = max(v.orders)
    return v.accept(ioc)


def test_bitmex_worked_adl_example():
    v = venue()
    bitmex_longs(v)
    ranking = v.engine.ranking(1, 1)
    assert ranking == [2, 5, 4, 1, 6, 3]
    events = close_out_to_adl(v, 9, -20, 650)
    adls = kinds(events, c.ADL)
    # account 2 closes 10 and account 5 closes 10 of its 20, both at 650
    assert [(a[2], a[3], a[4], a[5]) for a in adls] == [(2, 1, -10, 650), (5, 1, -10, 650)]
    assert v.engine.route & (1 << 0)        # account 2 and 5: shards 0 and 1
    for adl_id in sorted(v.adls):
        v.apply_adl(adl_id)
    assert v.engine.closeouts == {}
    assert v.engine.liq[1][:2] == [0, 0]
    assert v.engine.fund == 0


def test_short_adl_goes_to_the_next_in_line():
    """Account 5 closes 4 of the 10 asked (its position moved meanwhile): the 6 left go to
    account 4, third in line."""
    v = venue()
    bitmex_longs(v)
    close_out_to_adl(v, 9, -20, 650)
    first, second = sorted(v.adls)
    v.apply_adl(first)
    events = v.apply_adl(second, closed=4)
    assert [(a[2], a[4], a[5]) for a in kinds(events, c.ADL)] == [(4, -6, 650)]
    v.apply_adl(max(v.adls))
    assert v.engine.closeouts == {}


def test_ranking_is_exact_where_scaled_keys_tie():
    """Two scores closer than 2**-64 apart: the floor of the scaled key ties, the exact
    rational order decides, and the account id only on a true tie."""
    big = 10**30
    a = exact_score(1, big, 0, 1, 1)
    assert a == 0
    e = LiqEngine([LiqSpec(1, 1)], 1)
    e.marks[1] = 2
    # upnl = 2*size - cost, notional 2*size; equity as given
    e.positions = {(1, 1): (10**20, 10**20 * 2 - 1), (2, 1): (10**20, 10**20 * 2 - 2),
                   (3, 1): (10**20, 10**20 * 2 - 1)}
    e.balances = {1: 10**40, 2: 10**40, 3: 10**40}
    e._init_indexes()
    r = ReferenceLiqEngine([LiqSpec(1, 1)], 1)
    r.marks, r.positions, r.balances = e.marks, e.positions, e.balances
    assert e.ranking(1, 1) == r.ranking(1, 1) == [2, 1, 3]


def test_negative_pnl_ranks_by_pnl_over_leverage():
    """PNL% < 0: the score is PNL% / leverage, so of two equal losses the more leveraged one
    ranks higher (a smaller loss per unit of leverage); any gain ranks above any loss."""
    v = venue()
    v.mark(1, 100)
    v.position(1, 1, 10, 110, balance=10_000)       # -9.1%, leverage 0.1
    v.position(2, 1, 10, 110, balance=2_000)        # -9.1%, leverage 0.5
    v.position(3, 1, 10, 99, balance=1_000_000)     # a gain, however small the leverage
    assert v.engine.ranking(1, 1) == [3, 2, 1]


def test_fund_gain_and_loss_to_the_minor_unit():
    """The worked example of docs/liqengine.md: a long of 10 lots (value 100 minor units per
    tick per lot) handed off at bankruptcy 1000 with a residue of 500. LIQ's limit sell at
    1000 takes a bid at 1003 for 4 lots: +1200. The 6 left do not fill within the window: the
    IOC goes at 1000 - 1700 // 600 = 998, the worst price the fund (1700) can pay, and fills
    there: -1200. The fund ends at 500, LIQ flat, realised 0."""
    v = venue()
    events = v.hand_off(7, 2, 10, 1000, residue=500)
    assert kinds(events, c.TAKEOVER) == [(3, 1, 7, 2, 10, 1000, 500)]
    assert kinds(events, c.FUND_CHANGED) == [(4, 500, 500, c.FUND_RESIDUE)]
    limit = max(v.orders)
    assert v.orders[limit]["side"] == c.SELL and v.orders[limit]["price"] == 1000
    events = v.accept(limit, fills=[(4, 1003)])
    assert kinds(events, c.FUND_CHANGED) == [(4, 1700, 1200, c.FUND_CLOSE_OUT)]
    assert kinds(events, c.LIQ_POSITION) == [(7, 2, 6, 6 * 1000 * 100, 1200)]
    v.tick(WINDOW)
    events = v.answer_cancel()
    ioc = max(v.orders)
    assert v.orders[ioc]["price"] == 998 and v.orders[ioc]["tif"] == c.IOC
    assert v.engine.reserved == 1200
    events = v.accept(ioc, fills=[(6, 998)])
    assert kinds(events, c.FUND_CHANGED) == [(4, 500, -1200, c.FUND_CLOSE_OUT)]
    assert kinds(events, c.LIQ_POSITION) == [(7, 2, 0, 0, 0)]
    assert v.engine.fund == 500 and v.engine.reserved == 0 and v.engine.closeouts == {}


def test_short_close_out_better_than_bankruptcy():
    """A short of 3 lots handed off at 500: LIQ buys back at 498 as taker, +2 x 3 x 100."""
    v = venue()
    v.hand_off(8, 2, -3, 500)
    limit = max(v.orders)
    assert v.orders[limit]["side"] == c.BUY
    events = v.accept(limit, fills=[(3, 498)])
    assert kinds(events, c.FUND_CHANGED) == [(4, 600, 600, c.FUND_CLOSE_OUT)]
    assert v.engine.closeouts == {}


def test_fund_never_below_zero():
    """An empty fund sends the IOC at the bankruptcy price itself; a deficit larger than the
    fund leaves a debt, not a negative fund; a deposit is credited in full under its own
    reason, then repays the debt (a FundChanged of reason 4 of its own)."""
    v = venue()
    v.deposit(1, 300)
    events = v.te(0, b"".join([c.TE_EVENT_STRUCTS[10].pack(10, 4, 1000)]))
    assert kinds(events, c.FUND_CHANGED) == [(4, 0, -300, c.FUND_DEFICIT)]
    assert v.engine.fund == 0 and v.engine.fund_debt == 700
    v.hand_off(6, 2, 5, 1000)
    v.accept(max(v.orders))
    v.tick(WINDOW)
    v.answer_cancel()
    assert v.orders[max(v.orders)]["price"] == 1000    # nothing to pay a worse price with
    events = v.deposit(2, 1000)
    assert kinds(events, c.FUND_CHANGED) == [(4, 1000, 1000, c.FUND_DEPOSIT_REASON),
                                             (4, 300, -700, c.FUND_DEFICIT)]
    assert v.engine.fund_debt == 0
    # a withdrawal beyond the free fund is refused
    events = v.deposit(3, -301)
    assert kinds(events, c.REJECTED) == [(6, c.CODES["fund_insufficient"], c.FUND_DEPOSIT, 3)]


def test_rejections_from_a_wrong_source_and_unknown_kinds():
    v = venue()
    ev = v.apply(c.FUND_DEPOSIT, c.fund_deposit(5, 100), ORACLE)
    assert ev == [(6, c.CODES["source_not_allowed"], c.FUND_DEPOSIT, 5)]
    ev = v.apply(c.MARK_PRICE, c.mark_price(1, 100), 0x1234)
    assert ev == [(6, c.CODES["source_not_allowed"], c.MARK_PRICE, 0)]
    assert v.apply(c.MARK_PRICE, c.mark_price(1, 100), OPERATOR) == []
    assert v.apply(99, b"", 0x1234) == [(6, c.CODES["kind_unknown"], 99, 0)]
    assert v.apply(c.MARK_PRICE, b"\x00", ORACLE) == [(6, c.CODES["command_malformed"], 73, 0)]
    assert v.apply(c.MARK_PRICE, c.mark_price(9, 100), ORACLE) == [
        (6, c.CODES["symbol_unknown"], 73, 9)]
    assert v.deposit(5, 0) == [(6, c.CODES["amount_invalid"], 90, 5)]
    v.deposit(5, 10)
    assert v.deposit(5, 10) == [(6, c.CODES["transfer_id_in_use"], 90, 5)]
    assert v.engine.route == 0


def test_a_payload_that_does_not_parse_halts():
    v = venue(check=False)
    with pytest.raises(EngineHalted):
        v.engine.apply(1, 1, 0, b"\x63\x00", c.TE_SOURCE_BASE)
    with pytest.raises(EngineHalted):
        LiqVenue().te(0, te_adl_applied(5, 1, 1, 1, 1))   # an AdlApplied for no Adl


def test_limit_rejected_goes_to_ioc_and_ioc_rejected_goes_to_adl():
    v = venue()
    v.mark(1, 640)
    v.position(1, 1, 10, 600, balance=6000)
    v.hand_off(9, 1, -5, 650)
    v.reject(max(v.orders))
    ioc = max(v.orders)
    assert v.orders[ioc]["tif"] == c.IOC
    events = v.reject(ioc)
    assert [(a[2], a[4]) for a in kinds(events, c.ADL)] == [(1, -5)]


def test_adl_waits_when_no_one_is_in_line_and_retries():
    v = venue()
    events = close_out_to_adl(v, 9, -20, 650)
    assert kinds(events, c.ADL) == []
    v.mark(1, 640)
    v.position(1, 1, 30, 600, balance=6000)
    assert kinds(v.tick(WINDOW), c.ADL) == [(2, 1, 1, 1, -20, 650)]


def test_adl_indicators_published_on_change():
    v = venue(interval_ns=1)
    bitmex_longs(v)
    v.tick()
    # rank r of n (0 first) is in quintile 5 - 5r // n: of 6, ranks 0-1 in 5, then 4, 3, 2, 1
    assert {a: q for (a, _s), q in v.indicators.items()} == {2: 5, 5: 5, 4: 4, 1: 3, 6: 2,
                                                             3: 1}
    assert kinds(v.tick(), c.ADL_INDICATOR) == []       # nothing changed: nothing published
    events = v.position(3, 1, 20, 100, balance=20 * 640)   # account 3 now first in line
    assert kinds(events, c.ADL_INDICATOR) == [(5, 3, 1, 5), (5, 5, 1, 4), (5, 4, 1, 3),
                                              (5, 1, 1, 2), (5, 6, 1, 1)]


def test_snapshot_restores_the_same_state():
    v = venue()
    bitmex_longs(v)
    close_out_to_adl(v, 9, -20, 650)
    data = v.engine.snapshot()
    e2 = LiqEngine.restore(data)
    assert e2.state_hash() == v.engine.state_hash()
    assert e2.ranking(1, 1) == v.engine.ranking(1, 1)
    adl = min(v.adls)
    account, symbol, qty, price = v.adls[adl]
    payload = te_adl_applied(adl, account, symbol, qty, price)
    src = c.TE_SOURCE_BASE | (account % 2)
    assert e2.apply(v.seq + 1, v.ts_ns + 1, 0, payload, src) == v.engine.apply(
        v.seq + 1, v.ts_ns + 1, 0, payload, src)
    assert e2.state_hash() == v.engine.state_hash()


def test_mass_cancel_moves_live_limits_to_ioc():
    """A book-wide MassCancelled takes LIQ's accepted limits (ids up to its last id) out of
    the book: each close-out goes on to its IOC; an order not yet accepted is not touched."""
    from liqengine.sim import _CE
    v = venue()
    v.hand_off(7, 1, 5, 100)
    first = max(v.orders)
    v.accept(first)
    v.hand_off(8, 1, 3, 90)
    second = max(v.orders)
    last_id = v.orders[first]["order_id"]
    events = v.ce(1, _CE[c.CE_MASS_CANCELLED].pack(c.CE_MASS_CANCELLED, c.CE_SCOPE_BOOK, 0, 0,
                                                   5, 1, last_id))
    cmds = kinds(events, c.CE_COMMAND)
    assert len(cmds) == 1 and c.CE_NEW_ORDER_S.unpack(cmds[0][4])[6] == c.IOC
    assert v.engine.closeouts[2].coid == second


def test_liq_trading_with_itself_fills_both_close_outs():
    """LIQ long from one handoff and short from another in one symbol: its sell and buy cross
    in the book; both legs of the trade are LIQ's and each close-out books its own."""
    from liqengine.sim import ce_trade
    v = venue()
    v.hand_off(7, 2, 4, 100)
    sell = max(v.orders)
    v.accept(sell)
    v.hand_off(8, 2, -4, 104)
    buy = max(v.orders)
    v.accept(buy)
    maker, taker = v.orders[sell]["order_id"], v.orders[buy]["order_id"]
    events = v.ce(2, ce_trade(50, maker, taker, c.LIQ_ACCOUNT, c.LIQ_ACCOUNT, 100, 4, c.BUY))
    # the long realises 0 at its bankruptcy price, the short (100 vs 104) gains 4 x 4 x 100
    assert kinds(events, c.FUND_CHANGED) == [(4, 1600, 1600, c.FUND_CLOSE_OUT)]
    assert v.engine.closeouts == {} and v.engine.liq[2] == [0, 0, 1600]


def _two_iocs(v: LiqVenue) -> list[int]:
    """Two longs of 5 lots (value 100) at bankruptcy 100, their limits unfilled and cancelled:
    the client order ids of their two IOCs."""
    v.hand_off(7, 2, 5, 100)
    v.hand_off(8, 2, 5, 100)
    for coid in sorted(v.orders):
        v.accept(coid)
    v.tick(WINDOW)
    v.answer_cancel()
    v.answer_cancel()
    return sorted(k for k, o in v.orders.items() if o["tif"] == c.IOC)


def test_two_iocs_in_flight_cannot_spend_the_same_money():
    """Fund 1000, two longs of 5 lots (value 100) at bankruptcy 100: the first IOC goes at
    100 - 1000 // 500 = 98 and reserves all 1000; the second finds nothing free and goes at 100.
    Both fill at their prices: the fund ends at exactly 0."""
    v = venue()
    v.deposit(1, 1000)
    iocs = _two_iocs(v)
    assert [v.orders[k]["price"] for k in iocs] == [98, 100]
    assert v.engine.reserved == 1000
    v.accept(iocs[0], fills=[(5, 98)])
    v.accept(iocs[1], fills=[(5, 100)])
    assert v.engine.fund == 0 and v.engine.reserved == 0 and v.engine.closeouts == {}


def test_at_most_four_adls_for_one_shard_in_one_record():
    """The TradingEngine stops on more than MAX_ADLS_PER_RECORD Adls for its shard in one
    record (docs/liqengine.md §5): ten longs of one shard to deleverage go out 4, 4, 2."""
    from liqengine.engine import MAX_ADLS_PER_SHARD
    from tradingengine.engine import MAX_ADLS_PER_RECORD
    assert MAX_ADLS_PER_SHARD == MAX_ADLS_PER_RECORD == 4
    v = venue()
    v.mark(1, 640)
    for i in range(10):
        account = 2 * (i + 1)                      # all of shard 0 of 2
        v.position(account, 1, 1, 600 - i, balance=10_000)
    events = close_out_to_adl(v, 99, -10, 650)
    per_record = [len(kinds(events, c.ADL))]
    for _ in range(5):
        per_record.append(len(kinds(v.tick(1), c.ADL)))
    assert per_record[:3] == [4, 4, 2] and sum(per_record) == 10


# -- HOLD: the fund takes over what the market cannot take; ADL only once it is exhausted ----------

def _held(v: LiqVenue, fund: int, mark: int, *longs: tuple) -> None:
    """Fund ``fund``, mark ``mark`` of symbol 2 (value 100), shorts to deleverage, and one long
    close-out per (account, lots, bp) in ``longs`` whose limit and IOC find no bid."""
    v.deposit(1, fund)
    v.mark(2, mark)
    v.position(21, 2, -20, 1100, balance=10**6)
    v.position(22, 2, -20, 1050, balance=10**6)
    for account, lots, bp in longs:
        v.hand_off(account, 2, lots, bp)
        v.accept(max(v.orders))
    v.tick(WINDOW)
    for _ in longs:
        v.answer_cancel()


def test_ioc_without_bid_holds_while_the_fund_is_free_then_retries_each_window():
    """Fund 10,000: the IOC of 5 lots at 1000 goes at 1000 - 10,000 // 500 = 980 and finds no
    bid. The fund is not empty: LIQ holds the lots (no Adl), reserving their exposure at mark
    990, (1000 - 990) x 5 x 100 = 5,000. A window later a fresh IOC goes at 980 again; with no
    bid it holds again, once per window (a retry costs its output only). Then a bid appears at
    985: filled, the fund pays (1000 - 985) x 5 x 100 = 7,500, within the IOC's reserve."""
    v = venue()
    _held(v, 10_000, 990, (7, 5, 1000))
    ioc = max(v.orders)
    assert v.orders[ioc]["price"] == 980 and v.engine.reserved == 10_000
    events = v.accept(ioc)
    assert kinds(events, c.ADL) == [] and v.engine.adls == {}
    co = v.engine.closeouts[1]
    assert co.phase == HOLD and co.qty == 5 and co.coid == 0
    assert co.reserved == v.engine.reserved == 5_000
    for _ in range(3):
        assert kinds(v.tick(WINDOW - 1), c.CE_COMMAND) == []     # not before a window
        cmds = kinds(v.tick(1), c.CE_COMMAND)
        assert len(cmds) == 1
        new = c.CE_NEW_ORDER_S.unpack(cmds[0][4])
        assert new[1] == 980 and new[2] == 5 and new[6] == c.IOC
        assert v.engine.reserved == 10_000                       # the IOC reserves anew
        events = v.accept(max(v.orders))
        assert kinds(events, c.ADL) == [] and kinds(events, c.FUND_CHANGED) == []
        assert v.engine.closeouts[1].phase == HOLD and v.engine.reserved == 5_000
        assert len(v.engine._deadlines) == 1 and v.engine._by_coid == {}
    v.tick(WINDOW)
    events = v.accept(max(v.orders), fills=[(5, 985)])
    assert kinds(events, c.FUND_CHANGED) == [(4, 2_500, -7_500, c.FUND_CLOSE_OUT)]
    assert kinds(events, c.ADL) == []
    assert v.engine.closeouts == {} and v.engine.reserved == 0 and v.engine.fund == 2_500


def test_mark_past_the_fund_deleverages_the_newest_held_close_out_first():
    """Fund 10,000, two held longs of 5 lots at 1000 (close-outs 1 and 2) at mark 1000: no
    exposure. Mark 985: each holds (1000 - 985) x 5 x 100 = 7,500, 15,000 > 10,000: the
    fund is exhausted, the newest (2) goes to ADL at its bankruptcy price, the oldest keeps
    the fund's cover. Mark 970: 15,000 > 10,000 again, and close-out 1 goes too."""
    v = venue()
    _held(v, 10_000, 1000, (7, 5, 1000), (8, 5, 1000))
    iocs = sorted(k for k, o in v.orders.items() if o["tif"] == c.IOC)
    assert [v.orders[k]["price"] for k in iocs] == [980, 1000]
    for k in iocs:
        assert kinds(v.accept(k), c.ADL) == []
    assert [co.phase for co in v.engine.closeouts.values()] == [HOLD, HOLD]
    assert v.engine.reserved == 0
    events = v.mark(2, 985)
    adls = kinds(events, c.ADL)
    assert [(a[2], a[4], a[5]) for a in adls] == [(21, 5, 1000)]
    assert [v.engine.adls[a[1]][0] for a in adls] == [2]
    assert v.engine.closeouts[1].phase == HOLD and v.engine.reserved == 7_500
    assert [e[:2] for e in v.engine.last_adl_entries] == [(2, 10_000 - 15_000)]
    events = v.mark(2, 970)
    adls = kinds(events, c.ADL)
    assert [v.engine.adls[a[1]][0] for a in adls] == [1] and adls[0][5] == 1000
    assert v.engine.reserved == 0 and v.engine.fund == 10_000
    for adl_id in sorted(v.adls):
        v.apply_adl(adl_id)
    assert v.engine.closeouts == {} and v.engine.fund == 10_000


def test_ioc_ending_with_no_free_fund_goes_to_adl_at_once():
    """Fund exactly 0 when the IOC ends: ADL in the same record (nothing to hold with)."""
    v = venue()
    v.mark(2, 990)
    v.position(21, 2, -20, 1100, balance=10**6)
    events = close_out_to_adl(v, 7, 5, 1000, symbol=2)
    assert [(a[2], a[4], a[5]) for a in kinds(events, c.ADL)] == [(21, 5, 1000)]
    assert [e[:2] for e in v.engine.last_adl_entries] == [(1, 0)]


def test_snapshot_in_hold_restores_the_same_state_and_outputs():
    v = venue()
    _held(v, 10_000, 990, (7, 5, 1000))
    v.accept(max(v.orders))
    assert v.engine.closeouts[1].phase == HOLD
    e2 = LiqEngine.restore(v.engine.snapshot())
    assert e2.state_hash() == v.engine.state_hash()
    for dt, kind, payload, src in [(WINDOW, c.KIND_TICK, b"", OPERATOR),
                                   (1, c.MARK_PRICE, c.mark_price(2, 900), ORACLE)]:
        v.seq += 1
        v.ts_ns += dt
        assert e2.apply(v.seq, v.ts_ns, kind, payload, src) == v.engine.apply(
            v.seq, v.ts_ns, kind, payload, src)
        assert e2.state_hash() == v.engine.state_hash()


def test_snapshot_of_another_version_is_refused():
    import msgpack
    state = msgpack.unpackb(LiqEngine([LiqSpec(1, 1)], 1).snapshot(), raw=False)
    state[0] = 99
    with pytest.raises(ValueError, match="snapshot version 99"):
        LiqEngine.restore(msgpack.packb(state))


def held_short(v: LiqVenue) -> tuple:
    """LIQ takes over a short of 4 at bankruptcy 1000 (value 100) at mark 1000, with a fund of
    10,000 and account 21's long of 20 first in line for ADL; its limit and its IOC find no
    one, and the fund holds the lots. Returns the IOC's side and price."""
    v.deposit(1, 10_000)
    v.mark(2, 1000)
    v.position(21, 2, 20, 900, balance=10**6)
    v.hand_off(7, 2, -4, 1000)
    v.accept(max(v.orders))
    v.tick(WINDOW)
    v.answer_cancel()
    ioc = max(v.orders)
    side_price = v.orders[ioc]["side"], v.orders[ioc]["price"]
    assert kinds(v.accept(ioc), c.ADL) == []
    return side_price


def test_a_held_short_reserves_its_exposure_above_bankruptcy_and_protects_it():
    """LIQ short 4 lots at bankruptcy 1000 (value 100), held at mark 1000: no exposure. The mark
    rises to 1010: (1000 - 1010) x -1 x 4 x 100 = 4,000 reserved; at 990 nothing. A withdrawal
    or a deficit takes the free fund only, never the held reserve."""
    v = venue()
    assert held_short(v) == (c.BUY, 1025)
    assert v.engine.closeouts[1].phase == HOLD and v.engine.reserved == 0
    v.mark(2, 1010)
    assert v.engine.reserved == 4_000
    assert kinds(v.deposit(2, -6_001), c.REJECTED)[0][1] == c.CODES["fund_insufficient"]
    v.te(0, te_deficit(4, 3_000))
    assert v.engine.fund == 7_000 and v.engine.fund_debt == 0
    assert v.engine.closeouts[1].phase == HOLD        # the fund still covers what it holds
    v.mark(2, 990)
    assert v.engine.reserved == 0 and v.engine.fund == 7_000
    cmds = kinds(v.tick(WINDOW), c.CE_COMMAND)
    assert c.CE_NEW_ORDER_S.unpack(cmds[0][4])[1] == 1000 + 7_000 // 400


def held_short_at_1010(v: LiqVenue) -> None:
    """held_short, then mark 1010: 4,000 of the fund of 10,000 reserved."""
    held_short(v)
    assert v.engine.closeouts[1].phase == HOLD
    v.mark(2, 1010)
    assert v.engine.reserved == 4_000


def test_a_fund_in_debt_holds_nothing_new():
    """A client's deficit of 12,000: the free 6,000 pays, 6,000 becomes the fund's debt, the
    held 4,000 stays reserved. At the end of the hold's window the reserve is released and
    repays 4,000 of the debt; the IOC goes at bankruptcy (the fund, net of its debt, has
    nothing to pay beyond it) and finds no one, and the fund, owing 2,000 with nothing, does
    not hold the lots again: they go to the long in line at bankruptcy. Before, the debt was
    not counted: the IOC went at the worst price the reserve could pay, the fund held the lots
    again, and the debt stayed for good, while the held lots' funding grew it every interval
    (an adversary's cluster ended with a fund of 59 USDT owing 233)."""
    v = venue()
    held_short_at_1010(v)
    v.te(0, te_deficit(4, 12_000))
    assert (v.engine.fund, v.engine.fund_debt) == (4_000, 6_000)
    assert v.engine.closeouts[1].phase == HOLD
    cmds = kinds(v.tick(WINDOW), c.CE_COMMAND)
    assert c.CE_NEW_ORDER_S.unpack(cmds[0][4])[1] == 1000           # the IOC at bankruptcy
    assert (v.engine.fund, v.engine.fund_debt) == (0, 2_000)
    events = v.accept(max(v.orders))
    assert [(a[2], a[4], a[5]) for a in kinds(events, c.ADL)] == [(21, -4, 1000)]
    v.apply_adl(max(v.adls))
    assert v.engine.closeouts == {} and v.engine.fund_debt == 2_000


def test_a_debt_the_next_record_repays_deleverages_no_one():
    """At a funding boundary the shards' clearing legs pay and receive LIQ's funding in
    separate records: shard 0 pays 7,000 (the free 6,000, and 1,000 of debt), shard 1 receives
    7,000 one record later. The held close-out stays held throughout: a debt does not
    exhaust the fund at once, only what the fund decides next (reviewed: exhausting it at once
    sent an Adl to a profitable long at every boundary whose paying shard came first)."""
    v = venue()
    held_short_at_1010(v)

    def funding(amount):
        return c.TE_EVENT_STRUCTS[7].pack(7, c.LIQ_ACCOUNT, 1, 100, amount)
    events = v.te(0, funding(7_000))
    assert kinds(events, c.ADL) == [] and v.engine.fund_debt == 1_000
    events = v.te(1, funding(-7_000))
    assert kinds(events, c.ADL) == [] and v.engine.fund_debt == 0
    assert v.engine.closeouts[1].phase == HOLD and v.engine.fund == 10_000


# -- ADL only once the fund is exhausted, whatever the order of events (review findings) ----------

def test_an_ioc_that_ends_while_another_reserves_the_fund_is_held_not_deleveraged():
    """Fund 1,000, two longs of 5 lots (value 100) at bankruptcy 100, mark 100: the first IOC
    reserves all 1,000 (at 98), the second goes at 100 with nothing free. The second ends first
    with no bid: the fund is not exhausted (its money is only reserved by a live IOC), so LIQ
    holds the lots, although a short is there to deleverage. The first fills at 99 (the fund
    pays 500); a window later the held lots go out again at 100 - 500 // 500 = 99."""
    v = venue()
    v.deposit(1, 1000)
    v.mark(2, 100)
    v.position(21, 2, -20, 110, balance=10**6)
    iocs = _two_iocs(v)
    assert [v.orders[k]["price"] for k in iocs] == [98, 100]
    events = v.accept(iocs[1])
    assert kinds(events, c.ADL) == [] and v.engine.closeouts[2].phase == HOLD
    events = v.accept(iocs[0], fills=[(5, 99)])
    assert kinds(events, c.ADL) == [] and v.engine.fund == 500
    cmds = kinds(v.tick(WINDOW), c.CE_COMMAND)
    new = c.CE_NEW_ORDER_S.unpack(cmds[0][4])
    assert new[1] == 99 and new[2] == 5 and new[6] == c.IOC
    assert v.adls == {}


def test_exhaustion_leaves_a_held_close_out_with_no_exposure_alone():
    """Fund 10,000; held: a long of 5 lots (close-out 1) and a newer short of 4 lots (close-out
    2), both at bankruptcy 1000 at mark 1000. Mark 970: the long reserves 15,000 > 10,000, the
    short none. Newest first would pick the short, but deleveraging it frees nothing: the long
    goes to ADL, the short stays held."""
    v = venue()
    v.deposit(1, 10_000)
    v.mark(2, 1000)
    v.position(21, 2, -20, 1100, balance=10**6)
    v.position(23, 2, 20, 900, balance=10**6)
    v.hand_off(7, 2, 5, 1000)
    v.hand_off(8, 2, -4, 1000)
    for coid in sorted(v.orders):
        v.accept(coid)
    v.tick(WINDOW)
    v.answer_cancel()
    v.answer_cancel()
    for coid in sorted(k for k, o in v.orders.items() if o["tif"] == c.IOC):
        assert kinds(v.accept(coid), c.ADL) == []
    assert [co.phase for co in v.engine.closeouts.values()] == [HOLD, HOLD]
    events = v.mark(2, 970)
    adls = kinds(events, c.ADL)
    assert [v.engine.adls[a[1]][0] for a in adls] == [1]
    assert v.engine.closeouts[2].phase == HOLD
    assert [e[:2] for e in v.engine.last_adl_entries] == [(1, 10_000 - 15_000)]


def test_adl_waiting_for_takers_goes_back_to_the_market_after_a_top_up():
    """Fund 0 and no short to take the long: the close-out waits in ADL phase. The operator
    tops the fund up with 10,000: at the next window the fund is not exhausted any more, so an
    IOC goes (at 1000 - 10,000 // 500 = 980), not an Adl."""
    v = venue()
    v.mark(2, 990)
    close_out_to_adl(v, 7, 5, 1000, symbol=2)
    assert v.engine.closeouts[1].phase == 4 and v.adls == {}
    v.deposit(1, 10_000)
    v.position(21, 2, -20, 1100, balance=10**6)     # a taker appears, but the fund has money
    events = v.tick(WINDOW)
    assert kinds(events, c.ADL) == []
    new = c.CE_NEW_ORDER_S.unpack(kinds(events, c.CE_COMMAND)[0][4])
    assert new[1] == 980 and new[2] == 5 and new[6] == c.IOC


def test_an_adl_that_falls_short_after_a_top_up_goes_back_to_the_market():
    """Fund 0: the long of 5 goes to ADL, an Adl of 5 to account 21. The fund is topped up
    while the Adl is in flight; account 21 closes only 2: the 3 left go to an IOC."""
    v = venue()
    v.mark(2, 990)
    v.position(21, 2, -20, 1100, balance=10**6)
    v.position(22, 2, -20, 1050, balance=10**6)
    events = close_out_to_adl(v, 7, 5, 1000, symbol=2)
    (adl,) = kinds(events, c.ADL)
    v.deposit(1, 3_000)
    events = v.apply_adl(adl[1], closed=2)
    assert kinds(events, c.ADL) == []
    new = c.CE_NEW_ORDER_S.unpack(kinds(events, c.CE_COMMAND)[0][4])
    assert new[1] == 1000 - 3_000 // 300 and new[2] == 3 and new[6] == c.IOC


def test_a_close_out_bigger_than_max_qty_goes_in_parts():
    """max_qty 4 lots: a takeover of 10 rests as a limit of 4; filled, the next 4 go, then 2.
    The IOC of what is left is cut the same way, each part at the IOC's price."""
    v = venue(specs=(LiqSpec(1, 1), LiqSpec(2, 100, max_qty=4)))
    v.deposit(1, 10_000)
    v.hand_off(7, 2, 10, 1000)
    limit = max(v.orders)
    assert v.orders[limit]["qty"] == 4 and v.orders[limit]["tif"] == c.GTC
    v.accept(limit)
    events = v.fill(limit, 4)
    new = c.CE_NEW_ORDER_S.unpack(kinds(events, c.CE_COMMAND)[0][4])
    assert new[2] == 4 and new[1] == 1000 and new[6] == c.GTC
    v.accept(limit)
    v.fill(limit, 3)
    v.tick(WINDOW)
    v.answer_cancel()
    ioc = max(v.orders)
    assert v.orders[ioc]["qty"] == 3 and v.orders[ioc]["price"] == 1000 - 10_000 // 300
    events = v.accept(ioc, fills=[(3, 990)])
    assert v.engine.closeouts == {}
    assert v.engine.fund == 10_000 - 10 * 3 * 100


def test_the_fund_never_leaves_int64_whatever_the_operator_deposits():
    """Deposits that would take the fund (or the net deposits) to 2**62 are refused with
    4006 and change nothing; the engine goes on."""
    v = venue()
    v.deposit(1, (1 << 62) - 1)
    events = v.deposit(2, (1 << 62) - 1)
    assert kinds(events, c.REJECTED) == [(6, c.CODES["amount_invalid"], c.FUND_DEPOSIT, 2)]
    assert v.engine.fund == (1 << 62) - 1 and v.engine.deposits == (1 << 62) - 1
    v.deposit(3, -((1 << 62) - 1))
    assert v.engine.fund == 0
    events = v.deposit(4, -5)
    assert kinds(events, c.REJECTED)[0][1] == c.CODES["fund_insufficient"]


def test_an_adl_is_not_sent_when_a_credit_of_the_same_record_lets_the_fund_hold_it():
    """The close-out waits in ADL phase with the fund at 0; the operator's top-up is the
    record at its deadline (the deadline is handled first, with the fund still at 0). Adls go
    out at the end of the record, after the credit: the fund can hold the close-out again, so
    no Adl goes, an IOC does."""
    v = venue()
    v.mark(2, 990)
    close_out_to_adl(v, 7, 5, 1000, symbol=2)
    v.position(21, 2, -20, 1100, balance=10**6)
    events = v.apply(c.FUND_DEPOSIT, c.fund_deposit(1, 10_000), dt_ns=WINDOW)
    assert kinds(events, c.ADL) == []
    new = c.CE_NEW_ORDER_S.unpack(kinds(events, c.CE_COMMAND)[0][4])
    assert new[1] == 980 and new[6] == c.IOC


def test_adls_held_back_for_later_records_are_not_sent_once_the_fund_can_hold_them():
    """Ten shorts of one lot in one shard take a long of 10: 4 Adls a record. The operator
    tops the fund up after the first 4: the 6 lots left go back to the market (once the 4
    Adls in flight are answered), not to the next in line."""
    v = venue(n_shards=1)
    v.mark(2, 1000)
    for a in range(20, 30):
        v.position(a, 2, -1, 1100, balance=10**6)
    v.hand_off(7, 2, 10, 1000)
    v.accept(max(v.orders))
    v.tick(WINDOW)
    v.answer_cancel()
    assert len(kinds(v.accept(max(v.orders)), c.ADL)) == 4
    assert kinds(v.deposit(1, 1_000_000), c.ADL) == []
    for adl_id in sorted(v.adls):
        v.apply_adl(adl_id)
    events = v.tick(WINDOW)
    assert kinds(events, c.ADL) == []
    new = c.CE_NEW_ORDER_S.unpack(kinds(events, c.CE_COMMAND)[0][4])
    assert new[2] == 6 and new[6] == c.IOC


def test_a_live_ioc_does_not_postpone_adl_when_the_held_exposure_alone_passes_the_fund():
    """Symbol 1's IOC reserves 990 of a fund of 10,000 and is never answered. Symbol 2's
    held close-out's exposure goes to 495,000 on a crash: held reserves alone pass the fund,
    whatever the IOC's outcome, so it is deleveraged at once."""
    v = venue()
    v.deposit(1, 10_000)
    v.position(21, 2, -50, 1100, balance=10**6)
    v.mark(1, 100)
    v.mark(2, 1000)
    v.hand_off(5, 1, 10, 100)
    v.accept(max(v.orders))
    v.hand_off(7, 2, 5, 1000)
    v.accept(max(v.orders))
    v.tick(WINDOW)
    v.answer_cancel()
    v.answer_cancel()
    y_ioc = max(k for k, o in v.orders.items() if o["symbol"] == 2)
    v.accept(y_ioc)
    assert v.engine.closeouts[2].phase == HOLD and v.engine.closeouts[1].reserved == 990
    events = v.mark(2, 10)
    assert [(a[2], a[3], a[4]) for a in kinds(events, c.ADL)] == [(21, 2, 5)]


def test_lots_fewer_than_min_qty_are_deleveraged_the_market_cannot_take_them():
    """min_qty 5: a takeover of 3 lots cannot be ordered (the CrossEngine refuses it), so it
    goes to ADL at its bankruptcy price at once, whatever the fund holds."""
    v = venue(specs=(LiqSpec(1, 1), LiqSpec(2, 100, min_qty=5)))
    v.deposit(1, 10_000)
    v.mark(2, 1000)
    v.position(21, 2, -20, 1100, balance=10**6)
    events = v.hand_off(7, 2, 3, 1000)
    assert kinds(events, c.CE_COMMAND) == []
    assert [(a[2], a[4], a[5]) for a in kinds(events, c.ADL)] == [(21, 3, 1000)]


def test_a_snapshot_restored_with_the_configuration_takes_its_order_limits():
    """A snapshot written before max_qty was kept (version 2) restores with the configured
    max_qty; a configuration of other contracts is refused."""
    import msgpack
    e = LiqEngine([LiqSpec(2, 100)], 1)
    state = msgpack.unpackb(e.snapshot(), raw=False)
    state[0] = 2
    state[2] = [r[:3] for r in state[2]]
    old = msgpack.packb(state[:32])
    assert LiqEngine.restore(old).specs[2].max_qty == 1_000_000_000
    assert LiqEngine.restore(old, [LiqSpec(2, 100, max_qty=4)]).specs[2].max_qty == 4
    with pytest.raises(ValueError, match="not the configured ones"):
        LiqEngine.restore(old, [LiqSpec(2, 10)])


def _to_ioc(v: LiqVenue, fund: int, mark: int) -> int:
    """LIQ takes over a long of 5 of symbol 2 at bp 1,000 (a short of 20 at 1,100 holds the
    other side) with the mark at ``mark``; its limit's window ends and the cancel is
    answered: the IOC goes. Its order id."""
    if fund:
        v.deposit(1, fund)
    v.mark(2, mark)
    v.position(21, 2, -20, 1100, balance=10**6)
    v.hand_off(7, 2, 5, 1000)
    v.accept(max(v.orders))
    v.tick(WINDOW)
    v.answer_cancel()
    return max(v.orders)


@pytest.mark.parametrize("fund", [10_000, 0])
def test_an_ioc_stopped_at_the_matching_limit_goes_again_at_once(fund):
    """The CrossEngine stops a taker at max_fills makers, and the takers of one LiqEngine
    record at max_fills together (crossengine: fill_cap), with the book still crossing: its
    rest expires with reason 6. That is no sign of an exhausted book: a fresh IOC for the
    rest goes in the same record, neither a hold (with a fund) nor ADL (without one)."""
    from crossengine.codec import REASON_MATCH_LIMIT
    from liqengine.codec import CE_REASON_MATCH_LIMIT
    from liqengine.engine import IOC_PHASE
    assert CE_REASON_MATCH_LIMIT == REASON_MATCH_LIMIT
    v = venue()
    ioc = _to_ioc(v, fund, 990)
    assert v.orders[ioc]["tif"] == c.IOC
    events = v.accept(ioc, fills=[(2, 1000)], reason=CE_REASON_MATCH_LIMIT)
    assert kinds(events, c.ADL) == []
    cmds = [c.CE_NEW_ORDER_S.unpack(e[4]) for e in kinds(events, c.CE_COMMAND)]
    assert [(x[2], x[6]) for x in cmds] == [(3, c.IOC)]
    co = v.engine.closeouts[1]
    assert co.phase == IOC_PHASE and co.qty == 3
    # expired for any other reason (the book no longer crosses it): as before
    events = v.accept(max(v.orders))
    assert co.phase == HOLD if fund else kinds(events, c.ADL)


@pytest.mark.parametrize("band_ppm, price", [(0, 1), (50_000, 950)])
def test_an_ioc_stays_within_the_price_band_around_the_mark(band_ppm, price):
    """The IOC goes at the worst price the free fund can pay for, and no further from the
    mark than the symbol's band (docs/liqengine.md §6): LIQ long 5 at bp 1,000 with the mark
    at 1,000 and a fund that could pay down to one tick sells at 950 with a 5% band. A price
    the reserve is what it may lose against bp. The band is in the snapshot: a replica that
    restores one without the configuration goes on with it."""
    v = venue(specs=(LiqSpec(1, 1), LiqSpec(2, 100, band_ppm=band_ppm)))
    ioc = _to_ioc(v, 10**12, 1000)
    assert (v.orders[ioc]["tif"], v.orders[ioc]["price"]) == (c.IOC, price)
    back = LiqEngine.restore(v.engine.snapshot())
    assert back.specs[2].band_ppm == band_ppm
    assert back.state_hash() == v.engine.state_hash()
    co = v.engine.closeouts[1]
    assert co.reserved == (1000 - price) * 5 * 100


def test_a_version_3_snapshot_restores_with_the_configured_band():
    import msgpack
    e = LiqEngine([LiqSpec(2, 100, band_ppm=50_000)], 1)
    state = msgpack.unpackb(e.snapshot(), raw=False)
    assert state[0] == 4 and state[2] == [[2, 100, 1_000_000_000, 1_000_000_000, 1, 50_000]]
    state[0] = 3
    state[2] = [r[:5] for r in state[2]]
    old = msgpack.packb(state)
    assert LiqEngine.restore(old).specs[2].band_ppm == 0
    assert LiqEngine.restore(old, [LiqSpec(2, 100, band_ppm=50_000)]).specs[2].band_ppm == 50_000
