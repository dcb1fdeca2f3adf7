"""Round nine of the economic campaign (docs/tradingengine.md §6, §7, §8), against round
eight's rules: a seeded driver over both TradingEngine shards, the CrossEngines and the
LiqEngine (tests/liqcascade.py RoutedVenue), every engine's audit and money conservation
checked after every record. Each test failed on the code before its fix.
"""
from __future__ import annotations

import pytest

from liqengine import codec as lc
from tests.liqcascade import SRC_ORACLE, audited_venue
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.margin import PPM, _boundary

MM, TRADER, ACCOMPLICE = 2, 11, 4
N = 100_000
A, B = 4, 11          # shard 0, shard 1


@pytest.mark.parametrize("isolated", [True, False])
def test_funding_beyond_the_margin_comes_out_of_the_positions_gain(isolated):
    """A 50x long in profit (the mark 3% up) pays funding at the cap, hour after hour. Its
    isolated margin (or, cross, its balance of 0.25 USDT) runs out after a few intervals. The
    fund covered the rest every interval (41.3 USDT over 8, then 7.7 a time; the short kept it):
    at zero margin plus its gain the position stayed above maintenance and was never handed
    off. What the margin cannot pay now comes out of the gain, realised at the mark: the fund
    covers nothing, and the position's realised PnL is what funding took beyond its money."""
    fund = 10**11
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    # isolated: 100 USDT of cross money beside the position; cross: enough for the 50x long
    v.deposit(TRADER, 10**10 if isolated else 25_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    if isolated:
        v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)         # 50x long, margin ~20.5 USDT
    v.run()
    for p in (10_100, 10_200, 10_300):
        v.mark(1, p)
        v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 8_000, 0))   # F = cap
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    cross_before = acct.balance - acct.position_margin
    for _ in range(8):                                    # 8 hourly boundaries, a mark each
        v.ts_ns = te.next_funding[1]
        v.tick(1)
        v.mark(1, 10_300)
        v.run()
    pos = acct.positions[1]
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    assert not covered, f"the fund covered {covered} of funding of a position in profit"
    # the fund paid no deficit: what moved it is its deposit, the handoff's residue and the
    # funding of the lots it held after it (docs/liqengine.md §5, FundChanged reasons 1, 2, 5)
    reasons = {ev[3] for rec in v.liq_events() for ev in rec if ev[0] == lc.FUND_CHANGED}
    assert reasons <= {lc.FUND_DEPOSIT_REASON, lc.FUND_RESIDUE, lc.FUND_FUNDING}, reasons
    # the gain paid what the margin could not, interval by interval (realised), until it too
    # was gone: then the position, at zero margin with no gain, was handed off at the mark
    realised = [e for e in events(v.te[1], (tc.POSITION,)) if e[1] == TRADER and e[8] > 0]
    assert realised, "no gain was realised to pay the funding"
    handed = [e for e in events(v.te[1], (tc.LIQUIDATION,)) if e[1] == TRADER]
    assert len(handed) == 1 and pos.size == 0
    if isolated:   # never out of the cross money beside it
        assert acct.balance == cross_before


def test_a_close_half_a_tick_beyond_the_exact_bankruptcy_price_is_refused():
    """The check of a closing order against the bankruptcy price (2043, §6) rounded the price
    to the NEAREST tick, so a close up to half a tick beyond the exact bankruptcy price was
    accepted; filled as taker into an accomplice's bid, the loss beyond the account's money was
    covered by the fund (4,497,750 here) and kept by the accomplice. It rounds against the
    trader now (a long's up), as the handoff does: the close at the tick below the exact price
    is refused, the one at the tick above fills, and the fund pays nothing."""
    fund = 10**11
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.mark(1, 10_000)
    v.run()
    te = v.te[1].engine
    spec = te.specs[1]
    # choose the deposit so that the exact bankruptcy price is k + 0.45 ticks
    cost = N * 10_000 * spec.value
    base_target = None
    for bk_tick in range(9_790, 9_700, -1):
        den = N * spec.value * (PPM - spec.taker_fee_ppm)
        e = cost - ((bk_tick * 100 + 45) * den) // (100 * PPM)
        if e > 2_200_000_000:
            base_target = e
            break
    taker_fee = -(-cost * spec.taker_fee_ppm // PPM)
    v.deposit(TRADER, base_target + taker_fee, 3)      # the opening fee paid, E is left
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, N)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, N)           # cross 50x long of 100,000 lots
    v.run()
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    num, den = _boundary(pos.size, pos.cost, acct.balance, spec.value, spec.taker_fee_ppm, 0)
    below, above = num // den, num // den + 1          # 9,784 and 9,785 around 9,784.45
    assert below * den < num < above * den
    assert te._bankruptcy(acct, 1, pos) == above
    v.order(ACCOMPLICE, 3, 1, tc.BUY, below, N)        # the accomplice's bid
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, below, N, tif=tc.IOC)
    v.run()
    refused = [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,)) if e[3] == TRADER and e[5] == 4]
    assert refused == [2043] and acct.positions[1].size == N
    v.order(ACCOMPLICE, 5, 1, tc.BUY, above, N)
    v.run()
    v.order(TRADER, 6, 1, tc.SELL, above, N, tif=tc.IOC)
    v.run()
    assert acct.positions[1].size == 0
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    assert not covered, f"the fund covered {covered} of a close the engine accepted"
    assert v.liq.engine.fund >= fund


def test_an_isolated_close_at_the_mark_is_not_refused_for_cross_funding_owed():
    """Round nine (honest order refused): while a funding sweep is in flight, _risk_and_send checks
    a close against _bankruptcy(acct, symbol, pos, owed) with ``owed`` the account's whole funding
    owed, on every symbol; for an ISOLATED position that is subtracted from the position's own
    margin (base = pos.margin - held). A cross payment is never taken from an isolated margin
    (§7), so the isolated long of symbol 2 is refused (2043 price_beyond_bankruptcy) a close AT
    THE MARK (its entry) because its cross long of symbol 1 owes 7 USDT. EXPECTED: the close is
    accepted (only the funding owed on the isolated position itself counts against its margin)."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((1, 3, 5, 7, 9)):            # holders ahead of TRADER in the sweep
        v.deposit(a, 10**10, 5 + i)
    v.deposit(TRADER, 200_000_000, 20)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)          # cross longs of symbol 1
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 100)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 100)          # isolated long of symbol 2, 20x
    v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    te = v.te[1].engine
    for st in v.te:
        st.engine.output_budget = 0                     # the sweep spans records
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    assert te.sweeps and te._funding_owed(TRADER) == 7_000_000   # symbol 1's, cross
    acct = te.accounts[TRADER]
    assert acct.positions[2].size == 100 and acct.positions[2].mode == tc.ISOLATED
    v.order(MM, 5, 2, tc.BUY, 50_000, 100)
    v.order(TRADER, 6, 2, tc.SELL, 50_000, 100)         # close at the mark, its entry price
    v.run()
    codes = [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,)) if e[3] == TRADER and e[5] == 6]
    print("close reports' codes", codes)
    assert 2043 not in codes, "an isolated close at the mark refused for cross funding owed"


def test_a_reduce_only_stop_beside_a_take_profit_limit_goes_out_when_it_fires():
    """Round nine (honest order refused): a reduce-only stop-loss of a long whose take-profit limit
    sell of the same size rests is refused when it fires (2014 reduce_only_would_increase):
    _risk_and_send counts every resting sell (pos.sell_leaves, reduce-only or not) as reducing
    ahead of it, so the stop has no room and the position is left without its stop while the mark
    falls. The take-profit is 4% away and will not fill. EXPECTED: the stop goes to the
    CrossEngine (it reduces the position: a reduce-only order is cut only by what the position
    no longer lets it reduce)."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**10, 3)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 100)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 100)                  # long 100
    v.run()
    v.order(TRADER, 3, 1, tc.SELL, 10_400, 100)                 # take-profit limit, rests
    v.order(TRADER, 4, 1, tc.SELL, 0, 100, ord_type=tc.MARKET, tif=tc.IOC, flags=1,
            trigger_price=9_900, trigger_kind=tc.TRIGGER_STOP)   # reduce-only stop-loss
    v.order(MM, 5, 1, tc.BUY, 9_850, 1000)
    v.run()
    v.mark(1, 9_900)
    v.run()
    rej = [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
           if e[3] == TRADER and e[5] == 4 and e[2] == tc.STATUS_REJECTED]
    pos = v.te[1].engine.accounts[TRADER].positions[1]
    print("stop rejected with", rej, "position", pos.size)
    assert not rej, f"the reduce-only stop-loss was refused ({rej}) when it fired"
    assert pos.size == 0


def test_set_leverage_values_resting_orders_at_their_price_for_the_risk_limit():
    """Round nine: SetLeverage values the exposure of resting orders at the MARK, the pre-trade check
    (and an amend) at max(order price, mark). A buy resting above the mark (no asks), worth tier 2
    at its price (25x at most), is entered at 25x; SetLeverage 50x is then accepted (at the mark the
    exposure is tier 1), and the fill opens a tier-2 position at 50x, which a NewOrder at 50x is
    refused for (2013 risk_limit_exceeded). EXPECTED: SetLeverage refused (2020) as the NewOrder is."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**12, 3)
    v.mark(1, 10_000)
    v.run()
    n = 200_000                                  # 2e11 at the mark (tier 1), 2.08e11 at 10,400
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.BUY, 10_400, n)     # refused at 50x: tier 2 at its price
    v.run()
    first = [e for e in events(v.te[1], (tc.EXEC_REPORT,)) if e[3] == TRADER]
    assert first[-1][16] == 2013
    v.leverage(TRADER, 1, 2500)
    v.order(TRADER, 2, 1, tc.BUY, 10_400, n)     # at 25x: rests (no asks)
    v.run()
    v.leverage(TRADER, 1, 5000)                  # accepted?
    v.run()
    v.order(MM, 3, 1, tc.SELL, 10_400, n)
    v.run()
    te = v.te[1].engine
    pos = te.accounts[TRADER].positions[1]
    tier = te.specs[1].tier(abs(pos.cost))
    print("size", pos.size, "value", pos.cost, "leverage", pos.leverage_x100, "tier max", tier.max_leverage_x100)
    assert pos.leverage_x100 <= tier.max_leverage_x100, \
        f"a position worth {pos.cost} (tier max {tier.max_leverage_x100}) holds {pos.leverage_x100}"


def test_funding_of_a_cross_shard_position_keeps_the_clearing_accounts_balanced():
    """Round nine (bookkeeping): docs/tradingengine.md §8 says the clearing accounts of all shards
    sum to zero across the exchange. Funding breaks it: each shard's clearing pays or receives on
    the other shard's side of a cross-shard position with the payer's ceiling / receiver's floor,
    so the receiving clearing gets the floor and the paying one pays the ceiling: -1 minor unit
    per cross-shard position per interval with a fractional payment (the extra goes to a second
    dust). EXPECTED: sum of clearing balances == 0."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(A, 10**12, 2)
    v.deposit(B, 10**12, 3)
    v.mark(1, 10_001)
    v.run()
    v.order(A, 1, 1, tc.BUY, 10_001, 3)
    v.order(B, 2, 1, tc.SELL, 10_001, 3)
    v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 1000, 1000))  # 0.1%
    v.run()
    te0, te1 = v.te[0].engine, v.te[1].engine
    for _ in range(3):                         # 3 x 3000.3: A pays 3001, B receives 3000
        v.ts_ns = te0.next_funding[1]
        v.tick(1)
    total = te0.clearing.balance + te1.clearing.balance
    assert total == 0, f"the clearing accounts sum to {total} (dust {te0.dust} + {te1.dust})"
