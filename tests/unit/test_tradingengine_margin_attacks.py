"""Where a trader could make the insurance fund (or the fee pools) pay: leverage and margin
changes under open orders and losing positions, reservations that went stale, amends, closing
orders beyond bankruptcy, funding of positions closed mid-sweep, rebates on close-outs
(docs/tradingengine.md §6, §7). Each test drives the whole engine side (tests/liqcascade.py
RoutedVenue: both TradingEngine shards, the CrossEngines and the LiqEngine, routed as the
default topology), checks every engine's audit, the fund >= 0 and money conservation after
every record, then the rule. The strict xfails are known limits (docs/tradingengine.md,
"Known limits").
"""
from __future__ import annotations

import pytest

from tests.liqcascade import RoutedVenue, audited_venue
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.margin import bankruptcy_price, maintenance

MM, TRADER, TAKER = 2, 11, 13        # the market maker on shard 0; the others on shard 1


def venue(fund: int) -> RoutedVenue:
    return audited_venue(two_specs(HOUR), fund)


def isolated_equity_over_maintenance(v: RoutedVenue, account: int, symbol: int) -> int:
    te = v.te[account % 2].engine
    pos = te.accounts[account].positions[symbol]
    spec = te.specs[symbol]
    mark = te.marks[symbol]
    return pos.margin + pos.size * mark * spec.value - pos.cost - maintenance(pos.size, mark, spec)


def isolated_long(leverage_x100: int, qty: int = 500, deposit: int = 10**9,
                  taker: bool = False) -> tuple[RoutedVenue, int]:
    """TRADER (``deposit``: 10 USDT) isolated long ``qty`` at 10,000, bought from MM; the fund
    at 10**11 (``taker``: TAKER on shard 0 with 10,000 USDT)."""
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    if taker:
        v.deposit(TAKER, 10**12, 4)
    v.deposit(TRADER, deposit, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, leverage_x100)
    v.order(MM, 1, 1, tc.SELL, 10_000, qty)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, qty)
    v.run()
    return v, fund


def withdraw_all_then_mark(v: RoutedVenue, fund: int, mark: int) -> None:
    """TRADER withdraws what is available, a bid waits at 8,000, the mark comes again: the
    fund must not pay for the position."""
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(10, TRADER, te._available(acct) - 1))
    v.order(MM, 5, 1, tc.BUY, 8_000, 10_000)
    v.run()
    v.mark(1, mark)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_raising_leverage_of_an_isolated_position_in_loss_frees_margin_its_loss_needs():
    # docs/tradingengine.md §6: an isolated position "can lose no more than that margin";
    # SetLeverage only checks the available balance when the requirement RISES. Raising the
    # leverage of an isolated long that is 75 USDT under water moves its margin (100.2 ->
    # 10.2 USDT) back to the cross balance with no look at the unrealised loss; the trader
    # withdraws it, and the next mark hands the position off at a bankruptcy price far above
    # the mark: the insurance fund pays the loss the margin was there to cover.
    v, fund = isolated_long(500)                                # 5x isolated
    for p in (9_500, 9_000, 8_700, 8_500):
        v.mark(1, p)
        v.run()
    assert isolated_equity_over_maintenance(v, TRADER, 1) > 0    # safe at 8,500
    v.leverage(TRADER, 1, 5000)                                  # 50x: accepted
    v.run()
    refused = [e for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == tc.SET_LEVERAGE]
    assert refused or isolated_equity_over_maintenance(v, TRADER, 1) > 0, \
        "SetLeverage left the isolated position's equity below maintenance"
    withdraw_all_then_mark(v, fund, 8_500)


def test_removing_isolated_margin_of_a_position_in_loss_leaves_it_below_maintenance():
    # docs/tradingengine.md §6: AdjustIsolatedMargin "removes what was added (never below the
    # requirement)": the requirement is on the entry value; the unrealised loss is not looked
    # at. An isolated long with 100 USDT added, 65 USDT under water, takes all 100 back; it is
    # handed off at the next mark at a bankruptcy price above the mark, and the fund pays.
    v, fund = isolated_long(5000)
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, 100_000_000))
    v.run()
    for p in (9_800, 9_500, 9_000, 8_700):
        v.mark(1, p)
        v.run()
    assert not events(v.te[1], (tc.LIQUIDATION,))
    assert isolated_equity_over_maintenance(v, TRADER, 1) > 0
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, -100_000_000))
    v.run()
    refused = [e for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == tc.ADJUST_MARGIN]
    assert refused or isolated_equity_over_maintenance(v, TRADER, 1) > 0, \
        "AdjustIsolatedMargin left the isolated position's equity below maintenance"
    withdraw_all_then_mark(v, fund, 8_700)


def test_a_reducing_order_that_reserved_nothing_opens_a_position_once_the_long_is_gone():
    # docs/tradingengine.md §6: an opposite-side order reserves nothing for the part that
    # reduces the position; "only the rest is opening". The zero reservation is never looked
    # at again when the position it was to reduce goes away by another order's fill: the
    # sell stays on the book with margin 0, the available balance says the whole wallet is
    # free, the trader withdraws it, and the sell then opens a short of 1,000 lots with
    # nothing behind it. The next mark hands it off and the insurance fund pays ~110 USDT.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**9, 3)
    v.deposit(TAKER, 10**12, 4)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)               # long 1,000 (cross, 10x)
    v.run()
    v.order(TRADER, 3, 1, tc.SELL, 10_400, 1000)              # reduces the long: margin 0
    v.order(MM, 4, 1, tc.BUY, 10_000, 1000)
    v.order(TRADER, 5, 1, tc.SELL, 0, 1000, ord_type=tc.MARKET, tif=tc.IOC)   # flat
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    assert acct.positions[1].size == 0
    [resting] = acct.orders.values()
    assert resting.leaves == 1000
    # the sell of 1,000 now opens a short: it must hold that margin (or be cut / refused)
    assert resting.margin > 0 or te._available(acct) < acct.balance, \
        "a resting sell that now opens 1,000 lots holds no margin"
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(10, TRADER, te._available(acct)))
    v.run()
    v.order(TAKER, 6, 1, tc.BUY, 10_400, 1000)                # lifts the stale sell
    v.order(MM, 7, 1, tc.SELL, 11_500, 10_000)
    v.run()
    for p in (10_500, 11_000):
        v.mark(1, p)
        v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_lowering_leverage_under_a_resting_order_gives_an_isolated_position_phantom_margin():
    # docs/tradingengine.md §6/§10: orders are reserved at placement; "leverage changes apply
    # to the position and to new orders". SetLeverage checks only the position's own
    # requirement (none: no position yet). An isolated buy of 1,000 lots reserved at 50x
    # (21 USDT of a 25 USDT wallet); the leverage goes to 1x; the fill then gives the isolated
    # position a margin of 1,000 USDT (its 1x requirement) that the wallet never had. Its
    # equity (margin + unrealised PnL) shows it safe through a 50% fall, the 500 USDT loss is
    # realised and the insurance fund covers 475 USDT of it (DeficitCovered).
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 25_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)               # rests, 50x reservation
    v.run()
    v.leverage(TRADER, 1, 100)                                # 1x: accepted
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    assert pos.size == 1000
    assert pos.margin <= acct.balance, \
        f"isolated margin {pos.margin} is more than the wallet {acct.balance} holds"
    for p in (9_500, 9_000, 8_000, 7_000, 6_000, 5_000):
        v.mark(1, p)
        v.run()
    v.order(MM, 3, 1, tc.BUY, 5_000, 1000)
    v.order(TRADER, 4, 1, tc.SELL, 5_000, 1000)
    v.run()
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_an_amend_grows_an_order_past_the_risk_limit_that_a_new_order_is_refused_at():
    # docs/tradingengine.md §2/§5: a tier "may use at most that leverage; above the last tier
    # nothing more is opened"; the pre-trade check refuses such an order (2013
    # risk_limit_exceeded). AmendOrder (engine.py _amend_order) checks band, reduce-only room
    # and margin, never the risk tier: a 100-lot buy at 50x amended to 1,000,000 lots (worth
    # 1e12, tier 2, at most 25x) is Replaced, while the same NewOrder is refused with 2013.
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**14, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.BUY, 9_900, 1_000_000)
    v.run()
    refused = events(v.te[1], (tc.EXEC_REPORT,))[-1]
    assert refused[1] == tc.EXEC_REJECTED and refused[-2] == 2013    # as documented
    v.order(TRADER, 2, 1, tc.BUY, 9_900, 100)
    v.run()
    v.operator_te(TRADER, tc.AMEND, tc.amend(3, 2, TRADER, qty=1_000_000))
    v.run()
    answer = events(v.te[1], (tc.EXEC_REPORT, tc.CANCEL_REJECTED))[-1]
    assert answer[0] == tc.CANCEL_REJECTED and answer[4] == 2013, \
        f"the amend past the risk limit was accepted: {answer}"


def test_a_closing_order_priced_beyond_bankruptcy_hands_the_loss_to_the_fund():
    # docs/tradingengine.md §6: an order that reduces the position reserves nothing and is
    # not checked against the position's bankruptcy price; the band (5% on symbol 1) is the
    # only limit. A cross long of 1,000 lots at 50x (24.5 USDT of equity) sells everything at
    # the band edge, 9,500, into an accomplice's bid while the mark is 10,000 (the position is
    # nowhere near liquidation): the realised loss of 50 USDT is twice the equity, the fund
    # covers 25.975 USDT (DeficitCovered) and the accomplice has the 50 USDT. BitMEX and
    # Phemex refuse a closing order priced through the position's bankruptcy (liquidation)
    # price.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 25_000_000, 3)
    v.deposit(TAKER, 10**12, 4)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    v.order(TAKER, 3, 1, tc.BUY, 9_500, 1000)                 # the accomplice's bid
    v.order(TRADER, 4, 1, tc.SELL, 9_500, 1000)               # within the band
    v.run()
    covered = [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered} of a loss the trader chose to realise"
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


@pytest.mark.xfail(strict=True, reason="known limit: a cross handoff's bankruptcy price counts "
                   "the other positions' losses, not their gains")
def test_a_cross_handoff_leaves_the_fund_paying_while_the_account_keeps_its_other_gains():
    # docs/tradingengine.md §6: a cross account is kept alive by "gains elsewhere", but the
    # handoff closes the symbol whose mark triggered it at the bankruptcy price of E = the
    # cross base (other positions' LOSSES only, never their gains). A cross long of symbol 1
    # reaches maintenance only once its loss has eaten the base AND the 175 USDT gain of a
    # long of symbol 2: it is handed off at 8,012 while the mark is 6,400, so the fund takes
    # 1,000 lots 16 USDT each above the market (-160.7 USDT) while the account keeps the
    # symbol 2 long and its +175 USDT, free to realise and withdraw.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 200_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 1000)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 1000)
    v.run()
    for m in (52_000, 55_000, 60_000, 65_000, 70_000, 75_000):
        v.mark(2, m)
        v.run()
    v.order(MM, 5, 1, tc.BUY, 6_400, 100_000)                 # a bid at the mark to come
    v.run()
    for m in range(9_800, 6_300, -200):
        v.mark(1, m)
        v.run()
        if events(v.te[1], (tc.LIQUIDATION,)):
            break
    assert events(v.te[1], (tc.LIQUIDATION,)), "no handoff"
    for _ in range(5):
        v.tick(300_000_000)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    b = acct.positions[2]
    equity = acct.balance + b.size * te.marks[2] * te.specs[2].value - b.cost
    lost = fund - v.liq.engine.fund
    assert lost <= 0 or equity <= 0, \
        f"the fund lost {lost} while the account kept an equity of {equity}"


@pytest.mark.xfail(strict=True, reason="known limit: a live order's fill already on its way to "
                   "the CrossEngine when a handoff cancels it is booked")
def test_an_order_filled_on_its_way_out_after_a_handoff_opens_a_position_with_nothing_behind():
    # docs/tradingengine.md §6: a handoff cancels the account's orders in the symbol; the
    # earlier round fixed this for waiting (conditional) orders only. A live order that
    # reduced the handed-off long (a sell of 1,000 at 9,400, margin 0) is cancelled through
    # the CrossEngine, a record later: a bid already on its way to in.ce fills it first, and
    # the fill, arriving after the handoff, opens a short of 1,000 lots (9.4e8 of notional)
    # behind a balance of 94,000 (the maker rebate): far below maintenance, a free option on
    # the insurance fund until the next mark hands it off.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 102_000_000, 3)
    v.deposit(TAKER, 10**12, 4)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)               # cross long, 10x
    v.run()
    for m in (9_800, 9_600, 9_400, 9_300):
        v.mark(1, m)
        v.run()
    v.order(TRADER, 3, 1, tc.SELL, 9_400, 1000)               # reduces the long: margin 0
    v.run()
    v.order(TAKER, 4, 1, tc.BUY, 9_400, 1000)                 # in.ce.1 gets it first ...
    v.mark(1, 9_000)                                          # ... then the handoff's cancel
    v.run()
    assert [h[1:4] for h in events(v.te[1], (tc.LIQUIDATION,))] == [(TRADER, 1, 1000)]
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    spec = te.specs[1]
    mark = te.marks[1]
    assert pos.size == 0 or acct.balance >= maintenance(pos.size, mark, spec), \
        f"after the handoff a fill opened {pos.size} lots behind a balance of {acct.balance}"


def test_a_fill_while_an_amend_up_is_in_flight_releases_the_amends_reservation():
    # docs/tradingengine.md §6: "An order's reservation is released in proportion to its
    # fills"; an amend that needs more "holds the larger reservation until the CrossEngine
    # answers" (engine.py _amend_order). _fill releases o.margin * qty // o.leaves, where
    # o.margin already holds the amend's new total but o.leaves is still the old one: a buy
    # of 100 amended to 10,000 that gets a fill of 99 before the amend reaches the
    # CrossEngine releases 99% of the 10,000-lot reservation. _fit_margin after the Amended
    # only ever lowers it (min), so the order rests with 9,901 lots to buy on 2.1 USDT of the
    # 207.8 USDT it needs, and the account's available balance shows the difference as free.
    from tradingengine.margin import order_cost
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 300_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.BUY, 10_000, 100)
    v.run()
    v.order(MM, 2, 1, tc.SELL, 10_000, 99)                    # in.ce.1 gets it first ...
    v.operator_te(TRADER, tc.AMEND, tc.amend(3, 1, TRADER, qty=10_000))   # ... then the amend
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    [o] = acct.orders.values()
    assert (o.cum, o.leaves) == (99, 9901)
    need = order_cost(o.leaves, o.price, True, te.marks[1], te.specs[1], 5000)
    assert o.margin >= need, f"{o.leaves} lots to buy hold {o.margin} of the {need} they need"


def test_a_liquidation_close_out_pays_a_maker_rebate_no_taker_fee_funds():
    # docs/tradingengine.md §2: "taker + maker >= 0, so no trade drains the fee pool"; §8: a
    # shard's fee pool may go below zero, "over all shards it cannot". The LiqEngine's LIQ pays
    # no trading fees (docs/liqengine.md §5) but its close-out orders still earn the client on
    # the other side a maker rebate (symbol 1: -100 ppm): the fee pools of all shards together
    # drop by the rebate (here 0.89 USDT) on every close-out that meets a resting order.
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 102_000_000, 3)
    v.deposit(4, 10**12, 4)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.order(4, 3, 1, tc.BUY, 8_900, 1000)                     # a resting bid: the maker
    v.run()
    before = sum(st.engine.fee_pool for st in v.te)
    for m in (9_600, 9_300, 9_000):
        v.mark(1, m)
        v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert [h[1:4] for h in events(v.te[1], (tc.LIQUIDATION,))] == [(TRADER, 1, 1000)]
    after = sum(st.engine.fee_pool for st in v.te)
    assert after >= before, f"the venue's fee pools lost {before - after} to a rebate"


def test_an_isolated_buy_above_the_mark_opens_bankrupt_and_the_fund_pays_the_premium():
    # docs/tradingengine.md §6, order cost: "a buy above mark pays the difference at once".
    # It is only reserved: on the fill the reservation is released and the isolated
    # position's margin is its 50x requirement on the entry value (2.15%), while the
    # position is already 5% under water at the mark (a buy at the band edge into an
    # accomplice's ask). Its equity is below zero from the first mark; the handoff at
    # 10,290 (mark 10,000) costs the fund 28.5 USDT, the trader loses only its 21.5 USDT
    # margin, the accomplice gains 50 USDT.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**9, 3)
    v.deposit(TAKER, 10**12, 4)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(TAKER, 1, 1, tc.SELL, 10_500, 1000)               # the accomplice's ask
    v.order(TRADER, 2, 1, tc.BUY, 10_500, 1000)               # inside the 5% band
    v.run()
    assert v.te[1].engine.accounts[TRADER].positions[1].size == 1000
    assert isolated_equity_over_maintenance(v, TRADER, 1) > 0, \
        "the isolated position opened below maintenance at the mark"
    v.order(MM, 3, 1, tc.BUY, 10_000, 10_000)
    v.run()
    v.mark(1, 10_000)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def _funding_sweep_over_records(rate_ppm: int) -> RoutedVenue:
    """Six isolated longs of symbol 1 on shard 1 (accounts 1, 3, 5, 7, 9 and TRADER = 11),
    a funding rate, and an output budget of 0 so the funding sweep pays one holder a record
    (a shard with ~1,000 holders or more spans records at the default budget). TRADER sells
    its long in the boundary's record: the fill comes back before its turn in the sweep."""
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((1, 3, 5, 7, 9, TRADER)):
        v.deposit(a, 10**10, 5 + i)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.operator_te(a, tc.SET_MARGIN_MODE, tc.set_margin_mode(a, 1, tc.ISOLATED))
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    for st in v.te:
        v.put(st, 0x7100_0000, tc.FUNDING_INPUTS, tc.funding_inputs(1, rate_ppm, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns += HOUR                                           # past the boundary
    v.order(MM, 4, 1, tc.BUY, 10_000, 1000)
    v.order(TRADER, 5, 1, tc.SELL, 10_000, 1000)              # closes the long
    v.run()
    for _ in range(6):
        v.tick(1000)
    assert not v.te[1].engine.sweeps
    return v


def test_funding_owed_by_an_isolated_position_closed_before_its_turn_is_paid_by_the_fund():
    # docs/tradingengine.md §7/§11: funding is paid on the size held at the boundary,
    # whenever the holder's turn in the sweep comes. For an isolated position the payment
    # comes out of its margin, and "what a payment finds beyond the margin is covered like a
    # deficit". A holder that closed its isolated position after the boundary has margin 0
    # at its turn: the whole payment (7 USDT) is DeficitCovered, paid by the insurance fund,
    # while the trader's wallet (its former margin back in it) pays nothing.
    v = _funding_sweep_over_records(7500)
    paid = [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert [e[4] for e in paid] == [7_000_000]
    covered = [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered} of the funding of a solvent account"


def test_funding_received_by_an_isolated_position_closed_before_its_turn_is_locked_forever():
    # The other side of the same: a receipt "adds to" the isolated margin, of a position that
    # is flat by then. The flat position keeps a margin of 7 USDT: the account has no order
    # and no position, yet available is 7 USDT below its balance, and AdjustIsolatedMargin
    # refuses to take it back (2025, no position): reserved margin that nothing releases.
    v = _funding_sweep_over_records(-7500)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    assert acct.positions[1].size == 0 and not acct.orders
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, -7_000_000))
    v.run()
    assert te._available(acct) == acct.balance, \
        f"flat and without orders, {acct.balance - te._available(acct)} stays reserved"


def test_a_lower_leverage_reserves_the_open_orders_again_when_the_money_is_there():
    """The accepted side of the first finding: with the money, SetLeverage to a lower
    leverage raises the reservation of the symbol's open orders to the new leverage, and the
    fill then gives the isolated position a margin the wallet backs."""
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 2_000_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    [o] = acct.orders.values()
    at_50x = o.margin
    v.leverage(TRADER, 1, 100)
    v.run()
    assert not [e for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == tc.SET_LEVERAGE]
    assert o.margin > 40 * at_50x and acct.order_margin == o.margin
    assert te._available(acct) == acct.balance - o.margin
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.run()
    pos = acct.positions[1]
    assert pos.size == 1000 and pos.margin <= acct.balance and te._available(acct) >= 0


def test_an_isolated_fill_holds_no_more_margin_than_the_account_backs():
    """A buy resting at 10,000 reserved at a mark of 10,000 (no premium); the mark falls to
    9,600 and the buy is lifted: the 400-tick premium goes into the isolated margin as far as
    the wallet pays it, and no further: the margin never exceeds what the balance holds, and
    the position's liquidation follows from the margin it really has."""
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.mark(1, 10_000)
    v.run()
    te = v.te[1].engine
    v.deposit(TRADER, 22_000_000, 3)
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    acct = te.accounts[TRADER]
    assert acct.orders and te._available(acct) < 2_000_000
    v.mark(1, 9_600)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 9_600, 1000)       # lifts the resting buy at its 10,000
    v.run()
    pos = acct.positions[1]
    # the premium took what the wallet had left, and no more: the margin never exceeded
    # the balance; below maintenance at the mark, the long was handed off in the fill's
    # record (round four), not at the next mark
    assert pos.size == 0 and acct.position_margin == 0 and acct.balance >= 0
    assert [e[1:4] for e in events(v.te[1], (tc.LIQUIDATION,))] == [(TRADER, 1, 1000)]


# -- a second round, against the rules above ---------------------------------------------

def test_funding_of_an_isolated_position_reduced_before_its_turn_is_paid_by_the_fund():
    # The fix pays a position closed before its turn from the balance, but only when it is
    # FLAT (pos.size == 0). A position reduced to 1 lot (or closed and reopened) before its
    # turn is charged the funding of the 1,000 lots it held at the boundary out of the
    # 1-lot margin: the margin cannot pay it, and the insurance fund covers it
    # (DeficitCovered) while the trader's wallet holds its former margin.
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((1, 3, 5, 7, 9, TRADER)):
        v.deposit(a, 10**10, 5 + i)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.operator_te(a, tc.SET_MARGIN_MODE, tc.set_margin_mode(a, 1, tc.ISOLATED))
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    for st in v.te:
        v.put(st, 0x7100_0000, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns += HOUR                                           # past the boundary
    v.order(MM, 4, 1, tc.BUY, 10_000, 999)
    v.order(TRADER, 5, 1, tc.SELL, 10_000, 999)               # keeps 1 lot
    v.run()
    for _ in range(6):
        v.tick(1000)
    assert not v.te[1].engine.sweeps
    paid = [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert [e[4] for e in paid] == [7_000_000]
    covered = [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered} of the funding of a solvent account"


def isolated_buy_resting():
    """One shard, CrossEngine results delivered by hand: TRADER (3 USDT, isolated, 50x) rests
    a buy of 100 at 10,000 (client order id 1)."""
    from tests.tradingvenue import Venue
    v = Venue(two_specs(HOUR), auto=False)
    v.deposit(MM, 10**15)
    v.deposit(TRADER, 300_000_000)
    v.mark(1, 10_000)
    v.apply(tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(TRADER, 1, 5000))
    v.order(1, TRADER, tc.BUY, 10_000, 100)
    v.deliver()
    return v


def test_a_fill_during_an_amend_up_frees_the_reservation_for_withdrawal_and_the_fund_pays():
    # The previous round's fix (_fit_margin sets exactly what the order needs on Replaced)
    # leaves the window open: a fill that arrives while an amend up is in flight still
    # releases o.margin * qty // o.leaves, where o.margin is the amend's grown reservation
    # (10,000 lots) and o.leaves the old 100: 99% of it becomes available. The trader
    # withdraws it; the Replaced then grows the reservation back with no available check
    # (available -205 USDT), the fill opens an isolated long whose margin (204.9 USDT)
    # _isolated_opened takes as "backed" by the released reservation, and the handoff at the
    # next mark realises that margin from a balance of 5 USDT: the fund covers 199.8 USDT.
    from tests.tradingvenue import events_of
    v = isolated_buy_resting()
    te = v.te
    acct = te.accounts[TRADER]
    v.order(2, MM, tc.SELL, 10_000, 99)                       # in.ce.1 gets it first ...
    v.apply(tc.AMEND, tc.amend(3, 1, TRADER, qty=10_000))     # ... then the amend
    v.deliver(1)                                              # the fill of 99
    v.apply(tc.WITHDRAW, tc.transfer(v.next_transfer_id(), TRADER, te._available(acct)))
    v.deliver()                                               # Replaced
    assert te._available(acct) >= 0, \
        f"{acct.order_margin} reserved on a balance of {acct.balance}: the rest was withdrawn"
    v.order(4, MM, tc.SELL, 10_000, 9_901)
    v.deliver()
    out = v.mark(1, 9_700)
    out += v.deliver()
    covered = [e for e in events_of(out, tc.DEFICIT_COVERED) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered}"


def test_an_isolated_maker_fill_leaves_margin_above_the_balance_by_its_fee():
    # _isolated_opened cuts the margin to what "its order's released reservation plus the
    # available balance backs"; the released reservation includes the taker fee to open that
    # the fill then pays (as a maker, symbol 2: 200 ppm) from the balance, so the cut stops
    # the fee short: an isolated margin the balance does not hold (the existing test passes
    # only because symbol 1's maker fee is a rebate).
    from tests.tradingvenue import Venue
    v = Venue(two_specs(HOUR))
    v.deposit(MM, 10**15)
    v.deposit(TRADER, 30_000_000)
    v.mark(2, 50_000)
    v.apply(tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(TRADER, 2, 2000))
    v.order(1, TRADER, tc.BUY, 50_000, 1000, symbol=2)
    te = v.te
    acct = te.accounts[TRADER]
    v.apply(tc.WITHDRAW, tc.transfer(v.next_transfer_id(), TRADER, te._available(acct)))
    assert te._available(acct) == 0
    v.mark(2, 49_000)
    v.order(2, MM, tc.SELL, 49_000, 1000, symbol=2)          # lifts the buy at 50,000
    pos = acct.positions[2]
    assert pos.size == 1000
    assert pos.margin <= acct.balance, \
        f"isolated margin {pos.margin} above the balance {acct.balance}"


def test_a_reducing_order_with_a_cancel_in_flight_escapes_the_refit_and_opens_unbacked():
    # _refit_reducing skips orders with o.pending == PENDING_CANCEL. A cancel is not a done
    # deal: a buy that reaches in.ce before it fills the order anyway. A long of 1,000 with a
    # reducing sell S (margin 0); the trader cancels S and closes the long with a market
    # sell; an accomplice's bid reaches in.ce.1 before the cancel. After the close S (still
    # live, cancel in flight) holds 0, available says the whole wallet is free, the trader
    # withdraws it, and S then opens a short of 1,000 with nothing behind it: handed off at
    # the next mark at 10,395 while the mark is 10,600 (the fund's loss).
    from tests.tradingvenue import _CE_NEW, Venue
    v = Venue(two_specs(HOUR), shard=0, n_shards=2, auto=False)
    mm, trader, accomplice = 2, 4, 3                          # the accomplice on shard 1
    v.deposit(mm, 10**15)
    v.deposit(trader, 300_000_000)
    v.mark(1, 10_000)
    v.order(1, mm, tc.SELL, 10_000, 1000)
    v.order(2, trader, tc.BUY, 10_000, 1000)
    v.deliver()
    v.order(3, trader, tc.SELL, 10_400, 1000)                 # S: reduces, margin 0
    v.order(4, mm, tc.BUY, 10_000, 1000)
    v.deliver()
    v.order(5, trader, tc.SELL, 0, 1000, ord_type=tc.MARKET, tif=tc.IOC)   # the close
    v.ce_seq[1] += 1                                          # the accomplice's bid ...
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, 32, _CE_NEW(777, 10_400, 1000, accomplice,
                                                           tc.BUY, tc.LIMIT, tc.GTC, 0, 0))
    v.pending.append(tc.ce_events(1, out))
    v.apply(tc.CANCEL, tc.cancel(6, 3, trader))              # ... then the cancel of S
    v.deliver(1)                                              # the close's fill
    te = v.te
    acct = te.accounts[trader]
    assert acct.positions[1].size == 0
    [s] = acct.orders.values()
    assert s.leaves == 1000
    assert s.margin > 0 or te._available(acct) < acct.balance, \
        "a live sell that now opens 1,000 lots holds no margin (its cancel is in flight)"


def test_a_closing_order_beyond_bankruptcy_enters_as_opening_and_an_amend_frees_it():
    # 2043 is checked only for the part of a NEW order that reduces (reducible = size less
    # the same side's leaves), and on an amend only when the PRICE changes. A cross long of
    # 1,000 at 50x (bankruptcy 9,760): a sell at 9,500 is refused (2043). But with a sell S1
    # of 1,000 at 10,000 ahead of it, the sell at 9,500 counts as opening and is accepted
    # (reserving 70 USDT of a temporary deposit); S1 is cancelled; a qty-only amend (999)
    # skips the 2043 check and _fit_margin, now "exactly what it needs", drops the
    # reservation to 0 (it reduces now). The deposit is withdrawn, the accomplice lifts the
    # sell at 9,500 and the fund covers 29.4 USDT (DeficitCovered).
    from tests.tradingvenue import _CE_NEW, Venue, events_of
    v = Venue(two_specs(HOUR), shard=0, n_shards=2)
    mm, trader, accomplice = 2, 4, 3                          # the accomplice on shard 1
    v.deposit(mm, 10**15)
    v.deposit(trader, 25_000_000)
    v.mark(1, 10_000)
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(trader, 1, 5000))
    v.order(1, mm, tc.SELL, 10_000, 1000)
    v.order(2, trader, tc.BUY, 10_000, 1000)
    out = v.order(3, trader, tc.SELL, 9_500, 1000)
    assert events_of(out, tc.EXEC_REPORT)[-1][-2] == 2043     # refused directly
    v.order(4, trader, tc.SELL, 10_000, 1000)                 # S1 ahead
    v.deposit(trader, 100_000_000)
    v.order(5, trader, tc.SELL, 9_500, 1000)                  # accepted: "opening"
    v.apply(tc.CANCEL, tc.cancel(6, 4, trader))
    v.apply(tc.AMEND, tc.amend(7, 5, trader, qty=999))
    te = v.te
    acct = te.accounts[trader]
    v.apply(tc.WITHDRAW, tc.transfer(v.next_transfer_id(), trader, te._available(acct)))
    v.ce_seq[1] += 1
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, 32, _CE_NEW(777, 9_500, 999, accomplice,
                                                           tc.BUY, tc.LIMIT, tc.GTC, 0, 0))
    v.pending.append(tc.ce_events(1, out))
    out = v.deliver()
    covered = [e for e in events_of(out, tc.DEFICIT_COVERED) if e[1] == trader]
    assert not covered, f"the fund covered {covered} of a close the trader priced"


def test_a_refit_past_the_balance_hands_off_a_healthy_position_in_another_symbol():
    # _refit_reducing grows a reservation "even past the available balance". _maintain of
    # another cross symbol counts that reservation out of the money behind its position
    # (_cross_base less order_margin) and cancels only ITS symbol's orders: the healthy
    # position is handed off instead of the order being cancelled. Cross long of symbol 1 at
    # 10,400 with two sells resting against it: S2 at 10,100 (reducing, 0) and S3 at 10,050
    # (opening, reserved); the mark goes to 10,450 and S3 is lifted: S2 is refit with the
    # premium to 56.2 USDT, available -3.6 USDT. A long of symbol 2 (maintenance ~9 USDT on a
    # balance of 70 USDT) is then handed off at 48,018 at a mark of 49,200.
    from tests.tradingvenue import Venue, events_of
    v = Venue(two_specs(HOUR))
    v.deposit(MM, 10**15)
    v.deposit(TRADER, 106_000_000)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(TRADER, 1, 5000))
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(TRADER, 2, 2000))
    v.order(1, MM, tc.SELL, 50_000, 1000, symbol=2)
    v.order(2, TRADER, tc.BUY, 50_000, 1000, symbol=2)
    v.order(3, MM, tc.SELL, 10_400, 1000)
    v.order(4, TRADER, tc.BUY, 10_400, 1000)
    v.order(5, TRADER, tc.SELL, 10_100, 1000)                 # S2
    v.order(6, TRADER, tc.SELL, 10_050, 1000)                 # S3
    v.mark(1, 10_450)
    v.order(7, MM, tc.BUY, 10_050, 1000)                      # lifts S3: symbol 1 flat
    te = v.te
    acct = te.accounts[TRADER]
    assert acct.positions[1].size == 0 and acct.positions[2].size == 1000
    balance = acct.balance
    out = v.mark(2, 49_200)
    assert not events_of(out, tc.LIQUIDATION), \
        f"a long with a balance of {balance} behind it was handed off: " \
        f"{events_of(out, tc.LIQUIDATION)} (a resting sell's refit reservation counted first)"


def test_lowering_leverage_while_an_amend_up_is_in_flight_gives_phantom_isolated_margin():
    # The previous round's fix re-reserves open orders at the new leverage in SetLeverage,
    # from o.leaves at o.price; during an amend in flight those are the OLD figures (100
    # lots) and o.margin already holds the amend's 10,000 lots at 50x, so nothing grows and
    # 50x -> 1x is accepted with no check. The Replaced then sets, in _fit_margin, "exactly
    # what the order needs": 10,000 lots at 1x = 10,005 USDT on a 300 USDT balance
    # (available -9,705 USDT), unchecked. The fill gives the isolated long a 1x margin of
    # 10,000 USDT that _isolated_opened takes as backed by the released reservation: it is
    # never liquidated through a 40% fall, and its close covers 3,702 USDT from the fund.
    from tests.tradingvenue import events_of
    v = isolated_buy_resting()
    te = v.te
    acct = te.accounts[TRADER]
    v.apply(tc.AMEND, tc.amend(2, 1, TRADER, qty=10_000))    # in flight ...
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(TRADER, 1, 100))   # ... 1x: accepted
    v.deliver()                                               # Replaced
    assert te._available(acct) >= 0, \
        f"{acct.order_margin} reserved on a balance of {acct.balance}"
    v.order(3, MM, tc.SELL, 10_000, 10_000)
    v.deliver()
    out: list = []
    for m in (9_500, 9_000, 8_000, 7_000, 6_000):
        out += v.mark(1, m)
        out += v.deliver()
    v.order(4, MM, tc.BUY, 6_000, 10_000)
    v.deliver()
    out += v.order(5, TRADER, tc.SELL, 6_000, 10_000)
    out += v.deliver()
    covered = [e for e in events_of(out, tc.DEFICIT_COVERED) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered}"


# -- a third round ---------------------------------------------------------------------------

def iso_bk(te, account, symbol):
    pos = te.accounts[account].positions[symbol]
    return bankruptcy_price(pos.size, pos.cost, pos.margin, te.specs[symbol])


def test_removing_isolated_margin_strands_a_closing_order_beyond_bankruptcy():
    # An isolated short with extra margin places a closing buy above the mark, within the
    # bankruptcy price its margin gives. AdjustIsolatedMargin then removes the extra: it
    # checks the equity at the mark (_isolated_safe) but not the resting closing order
    # (_strands_closing_orders looks at cross positions and money leaving the cross balance
    # only). The accomplice sells into the buy beyond the moved bankruptcy price.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**8, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)                               # 50x isolated
    v.order(MM, 1, 1, tc.BUY, 10_000, 500)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 500)               # short 500 @ 10,000
    v.run()
    te = v.te[1].engine
    pos = te.accounts[TRADER].positions[1]
    assert pos.size == -500
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, 15_000_000))
    v.run()
    bk = iso_bk(te, TRADER, 1)
    assert bk >= 10_450
    v.order(TRADER, 3, 1, tc.BUY, 10_450, 500)                # closing buy, within bk now
    v.run()
    assert any(o.client_order_id == 3 for o in te.accounts[TRADER].orders.values())
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, -15_000_000))
    v.run()
    refused = [e for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == tc.ADJUST_MARGIN]
    bk = iso_bk(te, TRADER, 1)
    assert refused or bk >= 10_450, \
        f"the margin removal left a resting closing buy at 10,450 beyond bankruptcy {bk}"


def test_removing_isolated_margin_then_accomplice_fill_makes_the_fund_pay():
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**8, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 500)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 500)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, 15_000_000))
    v.run()
    v.order(TRADER, 3, 1, tc.BUY, 10_450, 500)
    v.run()
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 1, -15_000_000))
    v.run()
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(10, TRADER, te._available(acct) - 1))
    v.run()
    mm0 = v.te[0].engine.accounts[MM].balance
    v.order(MM, 4, 1, tc.SELL, 10_450, 500)                   # the accomplice sells into it
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    covered = events(v.te[1], (tc.DEFICIT_COVERED,))
    print("covered", covered, "fund", v.liq.engine.fund, "mm gain", v.te[0].engine.accounts[MM].balance - mm0)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_raising_isolated_leverage_strands_a_closing_order_and_the_fund_pays():
    # As above, with SetLeverage: a 10x isolated short rests a closing buy at 10,450 (its
    # bankruptcy price is 11,000); raising the leverage to 50x takes its margin down to
    # 1e7 (bankruptcy 10,200): _isolated_safe at the mark passes, the resting buy is not
    # looked at. The trader withdraws what was freed, the accomplice sells into the buy.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**8, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 1000)                               # 10x isolated
    v.order(MM, 1, 1, tc.BUY, 10_000, 500)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 500)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    assert acct.positions[1].size == -500
    v.order(TRADER, 3, 1, tc.BUY, 10_450, 500)
    v.run()
    assert any(o.client_order_id == 3 for o in acct.orders.values())
    v.leverage(TRADER, 1, 5000)                               # 50x: accepted
    v.run()
    refused = [e for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == tc.SET_LEVERAGE]
    assert refused or iso_bk(te, TRADER, 1) >= 10_450, \
        f"SetLeverage left the resting closing buy beyond bankruptcy {iso_bk(te, TRADER, 1)}"
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(10, TRADER, te._available(acct) - 1))
    v.run()
    v.order(MM, 4, 1, tc.SELL, 10_450, 500)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_a_mark_move_elsewhere_that_strands_a_cross_closing_order_cancels_it():
    # A cross short of symbol 1 rests a closing buy at 10,450 (5% over the mark), within
    # its bankruptcy price when entered (the cross base is 34.7 USDT: ~10,695). Symbol 2's
    # mark then falls: the loss of the cross long there lowers the base, and with it the
    # short's bankruptcy price, to ~10,414; the account stays well above maintenance. Nothing
    # looked at the resting buy again (the 2043 check ran at entry, amend and money leaving
    # the balance only): the accomplice sold into it 36 ticks beyond bankruptcy, the trader's
    # equity went below zero, symbol 2 was handed off and the fund paid. A cross account
    # of several positions is checked at every mark of each; that check now cancels the
    # closes the mark stranded (reason 8), here at 32,000.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 35_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 500)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 500)           # cross short 500 @ 10,000
    v.order(MM, 3, 2, tc.SELL, 50_000, 100)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 100)            # cross long 100 @ 50,000
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.order(TRADER, 5, 1, tc.BUY, 10_450, 500)            # accepted: within bankruptcy
    v.run()
    assert [o.price for o in acct.orders.values()] == [10_450]
    for p in (47_000, 44_000, 41_000, 38_000, 35_000):
        v.mark(2, p)
        v.run()
    assert [o.price for o in acct.orders.values()] == [10_450]       # bk 10,479: within
    for p in (32_000, 30_000):
        v.mark(2, p)
        v.run()
    assert not acct.orders                                # bk 10,437: cancelled, reason 8
    assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
            if e[3] == TRADER and e[5] == 5 and e[1] == tc.EXEC_CANCELED] == [8]
    assert not events(v.te[1], (tc.LIQUIDATION,))         # healthy: equity ~20 USDT > ~5.5
    v.order(MM, 6, 1, tc.SELL, 10_450, 500)               # the accomplice's sell rests
    v.run()
    v.mark(2, 29_990)
    v.run()
    v.order(MM, 7, 2, tc.BUY, 30_000, 1000)               # a bid for the close-out
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund, f"the fund paid {fund - v.liq.engine.fund}"


def test_a_solvent_cross_account_cannot_stop_out_a_losing_position_kept_alive_by_gains():
    # A cross account (20 USDT) holds a short of symbol 1 (10x, 100 lots @ 10,000) and a long
    # of symbol 2 (100 lots @ 50,000), with a reduce-only stop-loss market buy on the short
    # at a mark of 12,000. Symbol 2 doubles (+35 USDT), symbol 1 rises to 12,500 (-25 USDT):
    # the account's equity is ~30 USDT, far above maintenance (~1.4 USDT), and it is not
    # handed off ("gains elsewhere keep a cross account alive"). But the short's bankruptcy
    # price counts the other position's losses only (11,992): the stop-loss fires with its
    # protection price cut to 11,992 below the mark and the asks (12,500) and expires
    # unfilled; a reduce-only limit at the ask is refused (2043); a market buy expires. The
    # trader cannot cut the loss it can pay for; the short rides on, for the fund, until
    # the gain elsewhere is gone.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 20_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 1000)
    v.leverage(TRADER, 2, 1000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 100)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 100)
    v.order(MM, 3, 2, tc.SELL, 50_000, 100)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 100)
    v.run()
    v.order(TRADER, 9, 1, tc.BUY, 0, 100, ord_type=tc.MARKET, tif=tc.IOC,
            flags=tc.FLAG_REDUCE_ONLY, trigger_price=12_000, trigger_kind=tc.TRIGGER_STOP,
            trigger_by=tc.BY_MARK)
    v.run()
    for p in range(55_000, 100_001, 5_000):
        v.mark(2, p)
        v.run()
    v.order(MM, 5, 1, tc.SELL, 12_500, 1000)              # asks to buy back from
    v.run()
    for p in (10_500, 11_000, 11_500, 12_000, 12_500):
        v.mark(1, p)
        v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    assert not events(v.te[1], (tc.LIQUIDATION,))
    equity = acct.balance + sum(p.size * te.marks[s] * te.specs[s].value - p.cost
                                for s, p in acct.positions.items())
    assert equity > 25_000_000                            # solvent by far
    v.order(TRADER, 10, 1, tc.BUY, 12_500, 100, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    assert acct.positions[1].size == 0, \
        "neither the stop-loss nor a reduce-only buy at the ask could close the short"



def test_funding_of_an_isolated_position_reduced_mid_sweep_then_withdrawn_is_paid_by_the_fund():
    # docs §7: funding of a position whose size changed since the boundary is paid from the
    # balance (the fix of the last round). Nothing holds that payment back from the
    # available balance in the meantime: after the boundary, before its turn in the sweep,
    # the trader reduces its isolated long of 1,000 lots to 1 (the margin goes back to the
    # wallet) and withdraws everything available. At its turn, the 7 USDT owed on the
    # boundary size find a cross balance of (almost) nothing: DeficitCovered, the fund pays.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((1, 3, 5, 7, 9, TRADER)):
        v.deposit(a, 10**10, 5 + i)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.operator_te(a, tc.SET_MARGIN_MODE, tc.set_margin_mode(a, 1, tc.ISOLATED))
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    for st in v.te:
        v.put(st, 0x7100_0000, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.ts_ns += HOUR                                           # past the boundary
    v.order(MM, 4, 1, tc.BUY, 10_000, 999)
    v.order(TRADER, 5, 1, tc.SELL, 10_000, 999)               # keeps 1 lot
    v.run()
    assert te.sweeps, "the sweep is still running"
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(100, TRADER, te._available(acct) - 1))
    v.run()
    for _ in range(6):
        v.tick(1000)
    assert not te.sweeps
    paid = [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert [e[4] for e in paid] == [7_000_000]
    covered = [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert not covered, f"the fund covered {covered} of the trader's funding"


def test_an_amend_that_only_cuts_the_quantity_of_a_closing_order_is_accepted():
    # The 2043 check runs on an amend that moves the price or grows the order, not on one
    # that only cuts it: a closing buy whose bankruptcy price a mark move elsewhere brought
    # near (10,479 against its 10,450) is cut from 500 to 100 lots at the same price.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 35_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 500)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 500)
    v.order(MM, 3, 2, tc.SELL, 50_000, 100)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 100)
    v.run()
    v.order(TRADER, 5, 1, tc.BUY, 10_450, 500)
    v.run()
    for p in (47_000, 44_000, 41_000, 38_000, 35_000):
        v.mark(2, p)
        v.run()
    v.operator_te(TRADER, tc.AMEND, tc.amend(6, 5, TRADER, price=0, qty=100))
    v.run()
    refused = events(v.te[1], (tc.CANCEL_REJECTED,))
    assert not refused, f"a quantity cut was refused: {refused}"
    acct = v.te[1].engine.accounts[TRADER]
    assert [(o.price, o.qty) for o in acct.orders.values()] == [(10_450, 100)]


# -- round four: the close-out's price, funding, a handoff's other positions, reduce-only in
# flight, an isolated premium behind other orders, a resting order the mark ran past --------


def test_a_close_out_ioc_does_not_sell_into_a_bid_far_below_the_mark():
    # docs/liqengine.md §6: the IOC goes at the worst price the free fund can pay for, and no
    # further from the mark than the symbol's band. Without the band, the only bid (an
    # accomplice's at half the mark) took the 1,000 lots and the fund paid it 4.755e8.
    fund = 10**10
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TAKER, 10**12, 4)
    v.deposit(TRADER, 25_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)               # cross long 1,000 at 50x
    v.run()
    v.order(TAKER, 3, 1, tc.BUY, 5_000, 1000)                 # the only bid: half the mark
    v.run()
    v.mark(1, 9_850)                                          # handed off near bankruptcy
    v.run()
    assert [e[1:3] for e in events(v.te[1], (tc.LIQUIDATION,))] == [(TRADER, 1)]
    for _ in range(5):
        v.tick(300_000_000)
    band = 9_850 * v.te[1].engine.specs[1].band_ppm // 1_000_000
    assert v.te[TAKER % 2].engine.accounts[TAKER].positions[1].size == 0
    paid = fund - v.liq.engine.fund
    assert paid <= 1000 * band * 100, f"the fund paid {paid}"   # (the rest: held, then ADL)


def _isolated_long_with_its_close_at_bankruptcy_and_funding_due() -> tuple[RoutedVenue, int]:
    """TRADER isolated long 1,000 of symbol 1 at 50x (25 USDT), a sell resting at exactly its
    bankruptcy price, funding of 0.75% due at the next boundary; TAKER on shard 0."""
    from tests.liqcascade import SRC_ORACLE
    v, _fund = isolated_long(5000, 1000, 25_000_000, taker=True)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 3, 1, tc.SELL, bk, 1000)                  # a close at the bankruptcy price
    v.run()
    assert [o.price for o in acct.orders.values()] == [bk]
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7_500, 7_500))
    v.run()
    return v, bk


def test_funding_cancels_a_close_that_its_payment_left_beyond_bankruptcy():
    # A close resting at exactly the isolated long's bankruptcy price; 0.75% of funding out
    # of the margin moves that price past it. Without the cancel an accomplice lifted it and
    # the fund covered 2,902,000 (DeficitCovered).
    v, bk = _isolated_long_with_its_close_at_bankruptcy_and_funding_due()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    v.tick(HOUR)
    v.tick(1_000_000)
    assert [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert not events(v.te[1], (tc.LIQUIDATION,))             # still above maintenance
    assert te._bankruptcy(acct, 1, pos) > bk
    assert not acct.orders, "the close beyond the moved bankruptcy price is cancelled"
    v.order(TAKER, 4, 1, tc.BUY, bk, 1000)
    v.run()
    assert pos.size == 1000
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]


def test_a_cross_handoff_hands_off_the_other_losing_position_it_leaves_at_zero_equity():
    # The handoff of symbol 2 takes the account's money but symbol 1's loss: symbol 1's long
    # is left at zero equity, below maintenance. It used to stay the account's until symbol
    # 1's next mark, and the move in between was the fund's (3,000,000 in the helper's run).
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 60_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 2500)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 500)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 500)
    v.order(MM, 3, 2, tc.SELL, 50_000, 2000)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 2000)
    v.run()
    v.mark(1, 9_960)
    v.run()
    assert not events(v.te[1], (tc.LIQUIDATION,))
    for p in range(49_900, 45_000, -100):                     # symbol 2 falls to its handoff
        v.mark(2, p)
        v.run()
        if events(v.te[1], (tc.LIQUIDATION,)):
            break
    handoffs = events(v.te[1], (tc.LIQUIDATION,))
    assert [e[1:3] for e in handoffs] == [(TRADER, 2), (TRADER, 1)]
    te = v.te[1].engine
    assert all(p.size == 0 for p in te.accounts[TRADER].positions.values())


def test_a_reduce_only_order_filled_on_its_way_out_after_the_close_is_backed():
    # A reduce-only sell holds nothing; a market sell closes the long and the cut's cancel of
    # the reduce-only sell is a record away; the trader withdraws what is available; a bid
    # already on its way fills the reduce-only sell. It used to open a short of 1,000 behind
    # the maker rebate alone: now it reserves what it would open once the long is gone.
    from tests.tradingvenue import _CE_NEW, Venue
    v = Venue(two_specs(HOUR), shard=0, n_shards=2, auto=False)
    mm, trader, accomplice = 2, 4, 3
    v.deposit(mm, 10**15)
    v.deposit(trader, 300_000_000)
    v.mark(1, 10_000)
    v.order(1, mm, tc.SELL, 10_000, 1000)
    v.order(2, trader, tc.BUY, 10_000, 1000)
    v.deliver()
    v.order(3, trader, tc.SELL, 10_000, 1000, flags=tc.FLAG_REDUCE_ONLY)
    v.order(4, mm, tc.BUY, 9_990, 1000)
    v.deliver()
    te = v.te
    acct = te.accounts[trader]
    assert [o.margin for o in acct.orders.values() if o.client_order_id == 3] == [0]
    v.order(5, trader, tc.SELL, 0, 1000, ord_type=tc.MARKET, tif=tc.IOC)
    v.ce_seq[1] += 1                                          # the bid reaches in.ce.1 first
    out = v.ces[1].apply(v.ce_seq[1], v.ts_ns, 32, _CE_NEW(777, 10_000, 1000, accomplice,
                                                           tc.BUY, tc.LIMIT, tc.GTC, 0, 0))
    v.pending.append(tc.ce_events(1, out))
    v.deliver(1)                                              # the close: flat, the cut sent
    assert acct.positions[1].size == 0
    assert [o.margin > 0 for o in acct.orders.values() if o.client_order_id == 3] == [True]
    v.apply(tc.WITHDRAW, tc.transfer(v.next_transfer_id(), trader, te._available(acct)))
    v.deliver()                                               # the bid's fill, then the cut
    pos = acct.positions[1]
    mark = te.marks[1]
    equity = acct.balance + pos.size * mark * te.specs[1].value - pos.cost
    assert pos.size == -1000
    assert equity > maintenance(pos.size, mark, te.specs[1])
    te.check_invariants()


def test_an_isolated_premium_comes_before_the_accounts_other_orders():
    # An isolated sell rests while the mark rises 4.5%; an accomplice lifts it at its price.
    # The premium went into the margin and straight out again because another order held the
    # balance: the short opened at equity -3.4e6 and the fund paid 3,406,052. Now the premium
    # stays and the other order, whose money it took, is cancelled.
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TAKER, 10**12, 4)
    v.deposit(TRADER, 100_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.SELL, 10_000, 200)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    free = te._available(acct)
    v.leverage(TRADER, 2, 100)
    v.order(TRADER, 2, 2, tc.BUY, 40_000, free // (40_000 * 7) - 5)   # the rest of the wallet
    v.run()
    assert te._available(acct) < 2_000_000
    for p in (10_100, 10_200, 10_300, 10_400, 10_450):
        v.mark(1, p)
        v.run()
    v.order(TAKER, 3, 1, tc.BUY, 10_000, 200)                 # 450 ticks below the mark
    v.run()
    pos = acct.positions[1]
    assert pos.size == -200
    assert isolated_equity_over_maintenance(v, TRADER, 1) > 0
    assert not [o for o in acct.orders.values() if o.symbol == 2], "the other order goes"
    assert acct.order_margin + acct.position_margin <= acct.balance
    v.order(MM, 4, 1, tc.SELL, 10_450, 10_000)
    v.mark(1, 10_450)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund


def _cross_sell_lifted_after_the_mark_rose() -> tuple[RoutedVenue, int]:
    fund = 10**11
    v = venue(fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(TAKER, 10**12, 4)
    v.deposit(TRADER, 5_000_000, 3)                           # 0.05 USDT, cross
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.SELL, 10_000, 200)               # opens a short: ~4.1e6 reserved
    v.run()
    for p in (10_100, 10_200, 10_300, 10_400, 10_450):
        v.mark(1, p)
        v.run()
    v.order(MM, 3, 1, tc.SELL, 10_450, 10_000)                # asks for a close-out
    v.order(TAKER, 2, 1, tc.BUY, 10_000, 200)                 # lifts it 450 below the mark
    v.run()
    return v, fund


def test_an_account_that_opens_below_maintenance_at_the_mark_is_handed_off_in_that_record():
    # The fill of a resting cross sell the mark ran past opens a short whose loss at the mark
    # is more than the account holds: it is handed off in the record of the fill, not at
    # the symbol's next mark.
    v, _fund = _cross_sell_lifted_after_the_mark_rose()
    from mq.record import decode
    te = v.te[1].engine
    assert te.accounts[TRADER].positions[1].size == 0
    assert [e[1:4] for e in events(v.te[1], (tc.LIQUIDATION,))] == [(TRADER, 1, -200)]

    def records_with(pick) -> list[int]:
        return [k for k, frame in enumerate(v.te[1].out)
                if any(pick(e) for r in decode(frame) for e in tc.decode_events(r[6]))]
    opened = records_with(lambda e: e[0] == tc.POSITION and e[1:4] == (TRADER, 1, -200))
    handed = records_with(lambda e: e[0] == tc.LIQUIDATION and e[1] == TRADER)
    assert opened == handed, "handed off in the record of the fill"


@pytest.mark.xfail(strict=True, reason="known limit: an opening order's reservation is not "
                   "looked at again when the mark runs past its price")
def test_a_resting_cross_sell_the_mark_ran_past_opens_bankrupt_and_the_fund_pays():
    # An order reserves its loss against the mark when it is entered; while it rests the mark
    # may run past it, and nothing cancels it: the fill at 10,000 with the mark at 10,450
    # costs 9e6 against a balance of 0.05 USDT. The handoff comes in the same record now, but
    # the fill's own loss is the fund's.
    v, fund = _cross_sell_lifted_after_the_mark_rose()
    for _ in range(5):
        v.tick(300_000_000)
    assert v.liq.engine.fund >= fund


# -- round five: against round four's rules -----------------------------------------------


@pytest.mark.parametrize("isolated", [False, True])
def test_a_record_of_fills_at_a_loss_stays_within_the_output_bound(isolated):
    # Round four checked an account that a fill opened at a loss (or left short) inside the
    # CrossEngine record, outside any sweep budget: each check may cancel 200 orders. One
    # taker filling 80 such one-lot bids sent 15,920 cancels to CrossEngine 2, whose answer
    # came back to the shard as one record of 1.4 MB (FrameError: the shard halted, on every
    # replay). The checks are sweep units now (SWEEP_CHECK), within the output budget.
    from mq.record import decode
    from tradingengine.engine import worst_case_output
    n_victims = 80
    v = RoutedVenue(two_specs(HOUR), n_shards=2)
    v.fund_deposit(1, 10**11)
    v.deposit(4, 10**15, 1)                                   # the taker, shard 0
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    victims = [11 + 2 * k for k in range(n_victims)]
    tid = 10
    for a in victims:
        v.deposit(a, 10**10, tid)
        tid += 1
        if isolated:
            v.operator_te(a, tc.SET_MARGIN_MODE, tc.set_margin_mode(a, 1, tc.ISOLATED))
        v.leverage(a, 1, 5000)
        v.order(a, 1, 1, tc.BUY, 10_000, 1)
        for k in range(199):
            v.order(a, 2 + k, 2, tc.BUY, 46_000 - k, 1)
    v.run()
    te = v.te[1].engine
    for a in victims:
        v.operator_te(a, tc.WITHDRAW, tc.transfer(tid, a, te._available(te.accounts[a])))
        tid += 1
    v.run()
    v.mark(1, 9_800)                        # the bids at 10,000 open at a loss against it
    v.run()
    start = len(v.te[1].out)
    v.order(4, 1, 1, tc.SELL, 10_000, n_victims, tif=tc.IOC)
    v.run()
    sizes = [len(r[6]) for fr in v.te[1].out[start:] for r in decode(fr)]
    assert max(sizes) <= worst_case_output()["record"]
    assert all(te.accounts[a].positions[1].size == 1 for a in victims)
    for st in v.te:
        st.engine.check_invariants()


def test_a_cross_handoffs_other_positions_go_in_one_order_live_and_after_a_restore():
    # The other cross positions a handoff leaves were checked in the order of the account's
    # positions dict: live, the order it first touched each symbol (1, 3, 2 here); restored
    # from a snapshot, by symbol. With three symbols a replica restored from a snapshot
    # replayed the same records to other handoffs and balances. They go by symbol now.
    from tests.liqcascade import check_books
    from tests.tradingvenue import spec
    from tradingengine.engine import TradingEngine
    from tradingengine.margin import Tier
    s3 = spec(3, value=100, max_leverage_x100=5_000, maker_fee_ppm=-100, taker_fee_ppm=500,
              funding_interval_ns=HOUR, band_ppm=50_000,
              tiers=(Tier(2 * 10**11, 10_000, 0, 5_000), Tier(10**13, 20_000, 2 * 10**9, 2_500)))
    v = RoutedVenue([*two_specs(HOUR), s3], n_shards=2, on_record=check_books)
    v.fund_deposit(1, 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 30_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.mark(3, 10_000)
    v.run()
    for sym, lev in ((1, 5000), (3, 5000), (2, 2000)):        # touched in the order 1, 3, 2
        v.leverage(TRADER, sym, lev)
    v.run()
    for k, (sym, price, qty) in enumerate(((1, 10_000, 500), (3, 10_000, 500),
                                           (2, 50_000, 200))):
        v.order(MM, 1 + 2 * k, sym, tc.SELL, price, qty)
        v.order(TRADER, 2 + 2 * k, sym, tc.BUY, price, qty)
    v.run()
    te1 = v.te[1]
    assert list(te1.engine.accounts[TRADER].positions) == [1, 3, 2]
    at, snap = len(te1.inputs), te1.engine.snapshot()
    v.mark(3, 9_930)
    v.mark(2, 49_650)
    v.run()
    assert not events(te1, (tc.LIQUIDATION,))
    for p in range(9_950, 9_000, -10):
        v.mark(1, p)
        v.run()
        if events(te1, (tc.LIQUIDATION,)):
            break
    assert [e[2] for e in events(te1, (tc.LIQUIDATION,))] == [1, 2, 3]
    back = TradingEngine.restore(snap)
    for k in range(at, len(te1.inputs)):
        assert back.apply_frame(te1.inputs[k]) == te1.out[k], f"in.te.1 {k + 1} diverges"


def test_a_premium_beyond_the_balance_cancels_only_the_orders_that_cover_it():
    # An isolated 1-lot bid lifted 10 ticks over a mark that moved 0.1% puts 1,000 units of
    # premium into the position: a few hundred more than the account's balance held beside
    # its 199 quotes on symbol 2. Round four cancelled all 199 (a griefer's lever: a one-lot
    # fill empties a solvent account's book). Now only the newest quotes that cover the
    # shortfall go: here one.
    v = venue(10**11)
    victim, attacker = 15, 4
    v.deposit(MM, 10**15, 1)
    v.deposit(attacker, 10**12, 2)
    v.deposit(victim, 10**10, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.operator_te(victim, tc.SET_MARGIN_MODE, tc.set_margin_mode(victim, 1, tc.ISOLATED))
    v.leverage(victim, 1, 5000)
    v.order(victim, 1, 1, tc.BUY, 10_000, 1)
    for k in range(199):
        v.order(victim, 2 + k, 2, tc.BUY, 46_000 - k, 1)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[victim]
    v.operator_te(victim, tc.WITHDRAW, tc.transfer(9, victim, te._available(acct)))
    v.run()
    v.mark(1, 9_990)
    v.run()
    v.order(attacker, 1, 1, tc.SELL, 10_000, 1, tif=tc.IOC)
    v.run()
    assert acct.positions[1].size == 1
    assert isolated_equity_over_maintenance(v, victim, 1) > 0
    left = sorted(o.client_order_id for o in acct.orders.values() if o.symbol == 2)
    assert left == list(range(2, 200)), "only the newest quote (ClOrdID 200) is cancelled"
    assert acct.order_margin + acct.position_margin <= acct.balance


# -- round six: margin that moves behind a resting close, and funding in flight -----------

ACCOMPLICE = 4                         # on shard 0, as MM


def _funded(balance: int) -> RoutedVenue:
    """The market maker, the accomplice (shard 0) and TRADER (``balance``) funded; marks of
    10,000 and 50,000."""
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**12, 4)
    v.deposit(TRADER, balance, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    return v


def _cross_long_with_its_close_at_bankruptcy(bid_first: bool = False
                                             ) -> tuple[RoutedVenue, int]:
    """TRADER (30 USDT) cross long 1,000 of symbol 1 at 50x, a sell resting at exactly its
    cross bankruptcy price; symbol 2 at 20x, nothing there yet (``bid_first``: a bid of one
    lot at 55,000, ClOrdID 4, entered before the close, so the close's price counts it)."""
    v = _funded(30_000_000)
    v.leverage(TRADER, 1, 5000)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    if bid_first:
        v.order(TRADER, 4, 2, tc.BUY, 55_000, 1)
        v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 3, 1, tc.SELL, bk, 1000)
    v.run()
    return v, bk


def _lift_and_fill(v: RoutedVenue, bk: int, qty: int) -> None:
    """The accomplice lifts the close at bk, then sells the trader's symbol 2 bid (if it is
    there) at 55,000; no mark moves. The fund must not pay."""
    v.order(ACCOMPLICE, 5, 1, tc.BUY, bk, 1000, tif=tc.IOC)
    v.run()
    v.order(ACCOMPLICE, 6, 2, tc.SELL, 55_000, qty, tif=tc.IOC)
    v.order(MM, 7, 2, tc.BUY, 50_000, 100_000)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert v.liq.engine.fund >= 10**11


def _rejects(v: RoutedVenue, kind: int) -> list:
    return [e[1] for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[2] == kind]


@pytest.mark.parametrize("amend", [False, True])
def test_an_order_whose_margin_moves_a_resting_close_beyond_bankruptcy_is_refused(amend):
    # The cross bankruptcy price counts what orders hold: a bid of symbol 2 reserving the
    # whole of what is available (8.49 USDT) moved the close's bankruptcy price from 9,710 to
    # 9,795 and was accepted; the accomplice lifted the close (the balance went to 0.6 USDT
    # under 8.49 of reservation), then filled the bid: a long on no money, handed off at
    # 54,499 with the mark at 50,000, and the fund paid 4.84 USDT. Withdrawals and isolated
    # margin were refused this; new orders and amends now are (2044).
    v, bk = _cross_long_with_its_close_at_bankruptcy(bid_first=amend)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    qty = te._available(acct) // 58_000                # at the band's edge: all of it
    if amend:
        v.operator_te(TRADER, tc.AMEND, tc.amend(9, 4, TRADER, qty=qty))
        v.run()
        (rej,) = [e for e in events(v.te[1], (tc.CANCEL_REJECTED,)) if e[1] == TRADER]
        assert rej[4] == 2044
        assert [o.leaves for o in acct.orders.values() if o.symbol == 2] == [1]
    else:
        v.order(TRADER, 4, 2, tc.BUY, 55_000, qty)
        v.run()
        assert [o.symbol for o in acct.orders.values()] == [1]
        assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
                if e[3] == TRADER and e[5] == 4] == [2044]
    assert not te._stranded(acct, 0)
    _lift_and_fill(v, bk, qty)


def test_a_lower_isolated_leverage_that_moves_a_cross_close_beyond_bankruptcy_is_refused():
    # 20x -> 4x on an isolated long moved 7 USDT of the cross balance into its margin and the
    # cross close's bankruptcy price from 9,728 to 9,798; after the close was lifted, the
    # balance held less than the isolated margin, and the isolated long sold at the band's
    # edge left the fund 1.13 USDT to pay. Refused now (2044).
    v = _funded(30_000_000)
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
    v.leverage(TRADER, 2, 2000)
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 2, tc.SELL, 50_000, 100)
    v.order(TRADER, 2, 2, tc.BUY, 50_000, 100)
    v.order(MM, 3, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 4, 1, tc.BUY, 10_000, 1000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 5, 1, tc.SELL, bk, 1000)
    v.run()
    v.leverage(TRADER, 2, 400)
    v.run()
    assert _rejects(v, tc.SET_LEVERAGE) == [2044]
    assert acct.positions[2].leverage_x100 == 2000
    v.order(ACCOMPLICE, 6, 1, tc.BUY, bk, 1000, tif=tc.IOC)
    v.run()
    v.order(TRADER, 8, 2, tc.SELL, 45_000, 100)
    v.order(ACCOMPLICE, 9, 2, tc.BUY, 45_000, 100, tif=tc.IOC)
    v.run()
    for _ in range(3):
        v.tick(300_000_000)
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert v.liq.engine.fund >= 10**11


def _six_cross_longs(balance: int, leverage: int = 1000, setup=None) -> RoutedVenue:
    """Five holders and TRADER (``balance``, at ``leverage``) cross long 1,000 of symbol 1,
    the accomplice on shard 0; ``setup(v)`` before the funding inputs of 0.75% are given;
    the output budget at 0, so that a funding sweep spans records."""
    from tests.liqcascade import SRC_ORACLE
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**12, 4)
    for i, a in enumerate((1, 3, 5, 7, 9)):
        v.deposit(a, 10**10, 5 + i)
    v.deposit(TRADER, balance, 20)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.leverage(a, 1, leverage if a == TRADER else 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    v.run()
    if setup is not None:
        setup(v)
        v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    return v


def _funding_in_flight(isolated_leverage: int, isolated_qty: int = 0, isolated_bid: int = 0
                       ) -> tuple[RoutedVenue, object]:
    """Six cross longs of symbol 1 (TRADER's among them, 200 USDT; and an isolated long of
    symbol 2 when asked) and a funding sweep that spans records (output budget 0); TRADER
    closes its cross long after the boundary, before its turn: it still owes the interval's
    7 USDT."""
    def setup(v):
        v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
        v.leverage(TRADER, 2, isolated_leverage)
        if isolated_qty:
            v.order(MM, 3, 2, tc.SELL, 50_000, isolated_qty)
            v.order(TRADER, 4, 2, tc.BUY, 50_000, isolated_qty)
        if isolated_bid:
            v.order(TRADER, 3, 2, tc.BUY, 50_000, isolated_bid)      # rests
    v = _six_cross_longs(200_000_000, setup=setup)
    te = v.te[1].engine
    v.ts_ns = te.next_funding[1]
    v.order(MM, 5, 1, tc.BUY, 10_000, 1000)
    v.order(TRADER, 6, 1, tc.SELL, 10_000, 1000)
    v.run()
    acct = te.accounts[TRADER]
    assert acct.positions[1].size == 0 and te.sweeps and te._funding_owed(TRADER) == 7_000_000
    return v, acct


def _settle_funding_and_withdraw_all(v: RoutedVenue, acct, qty: int) -> None:
    te = v.te[1].engine
    for _ in range(8):
        v.tick(1000)
    assert not te.sweeps
    assert [e[4] for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER] == [7_000_000]
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    if qty:
        v.order(MM, 7, 2, tc.BUY, 50_000, qty)
        v.order(TRADER, 8, 2, tc.SELL, 50_000, qty)
        v.run()
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(31, TRADER, te._available(acct)))
    v.run()
    assert v.liq.engine.fund >= 10**11


def test_margin_moved_into_an_isolated_position_waits_for_the_funding_it_owes():
    # Withdrawals waited for the account's turn in a funding sweep; AdjustIsolatedMargin did
    # not: the trader moved its whole cross balance into an isolated margin, the cross payment
    # found the balance below the isolated margins at its turn and the fund covered the 7
    # USDT (then the trader closed the isolated long and withdrew everything). Now 2045.
    v, acct = _funding_in_flight(2000, 100)
    te = v.te[1].engine
    assert acct.positions[2].size == 100
    v.operator_te(TRADER, tc.ADJUST_MARGIN, tc.adjust_margin(TRADER, 2, te._available(acct) - 1))
    v.run()
    assert _rejects(v, tc.ADJUST_MARGIN) == [2045]
    v.leverage(TRADER, 2, 100)                   # a larger isolated margin: the same
    v.run()
    assert _rejects(v, tc.SET_LEVERAGE) == [2045]
    _settle_funding_and_withdraw_all(v, acct, 100)


def test_a_new_isolated_order_waits_for_the_funding_the_account_owes():
    # The same with no AdjustIsolatedMargin: a new isolated 1x long took the balance (the
    # fund covered 5.54 USDT). An order that would reserve margin for an isolated position
    # waits for the account's turn too (2045); one on a cross symbol does not.
    v, acct = _funding_in_flight(100)
    te = v.te[1].engine
    qty = te._available(acct) // (50_000 * 7 + 50_000 * 7 * 8 // 1000)
    v.order(MM, 3, 2, tc.SELL, 50_000, qty)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, qty)
    v.run()
    assert acct.positions[2].size == 0
    assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
            if e[3] == TRADER and e[5] == 4] == [2045]
    v.order(TRADER, 9, 1, tc.BUY, 9_990, 10)     # cross: accepted while the sweep runs
    v.run()
    assert [o.symbol for o in acct.orders.values()] == [1]
    v.operator_te(TRADER, tc.CANCEL_ALL, tc.cancel_all(10, TRADER, 0, 0))
    v.run()
    _settle_funding_and_withdraw_all(v, acct, 0)


@pytest.mark.xfail(strict=True, reason="known limit: a fill already on its way when funding "
                   "cancels a stranded close is booked beyond the moved bankruptcy price")
def test_a_close_lifted_on_its_way_as_funding_cancels_it_leaves_the_fund_paying():
    # Round five's funding cancel (reason 8) goes through the CrossEngine a record later: an
    # accomplice's IOC at the old bankruptcy price sequenced into in.te.0 just before the
    # Tick that pays funding on shard 1 reaches in.ce.1 ahead of the cancel and fills the
    # close beyond the moved price: the fund covers 2.9 USDT. docs/tradingengine.md §13.
    v, bk = _isolated_long_with_its_close_at_bankruptcy_and_funding_due()
    te = v.te[1].engine
    v.deposit(ACCOMPLICE, 10**12, 4)                      # on shard 0: its in.te is first
    v.run()
    v.ts_ns = te.next_funding[1]
    v.order(ACCOMPLICE, 4, 1, tc.BUY, bk, 1000, tif=tc.IOC)
    for st in v.streams():
        v.put(st, 0, tc.KIND_TICK, b"")
    v.run()
    for _ in range(3):
        v.tick(300_000_000)
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]


# -- round seven: against round six's rules --------------------------------------------------


def _cross_long_at_50x(balance: int, symbol2_lots: int = 0) -> tuple[RoutedVenue, object]:
    """TRADER cross long 1,000 of symbol 1 at 50x (and symbol2_lots of symbol 2 at 20x); the
    accomplice on shard 0."""
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**12, 4)
    v.deposit(TRADER, balance, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    if symbol2_lots:
        v.order(MM, 3, 2, tc.SELL, 50_000, symbol2_lots)
        v.order(TRADER, 4, 2, tc.BUY, 50_000, symbol2_lots)
    v.run()
    return v, v.te[1].engine.accounts[TRADER]


def _fund_untouched(v: RoutedVenue) -> None:
    for _ in range(5):
        v.tick(300_000_000)
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert v.liq.engine.fund >= 10**11


def test_an_amend_in_flight_counts_at_its_new_price():
    # A close resting safely at 10,200 is amended down to the bankruptcy price (accepted);
    # a withdrawal of everything available in the same batch was checked against the close at
    # its old price: accepted, the amend landed beyond the moved bankruptcy price, the
    # accomplice lifted it and the fund covered 8.41 USDT of money withdrawn. An order may
    # fill at either price until the CrossEngine answers the amend: both count.
    v, acct = _cross_long_at_50x(30_000_000)
    te = v.te[1].engine
    v.order(TRADER, 3, 1, tc.SELL, 10_200, 1000)
    v.run()
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.operator_te(TRADER, tc.AMEND, tc.amend(4, 3, TRADER, price=bk))
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(77, TRADER, te._available(acct)))
    v.run()
    assert _rejects(v, tc.WITHDRAW) == [2024]
    assert [o.price for o in acct.orders.values()] == [bk]
    v.order(ACCOMPLICE, 6, 1, tc.BUY, bk, 1000, tif=tc.IOC)
    v.run()
    _fund_untouched(v)


@pytest.mark.parametrize("amend", [False, True])
def test_an_order_that_closes_and_opens_is_checked_with_its_own_reservation(amend):
    # A sell of 1,420 against a cross long of 1,000 (bankruptcy price 9,510) at 9,510 passed
    # 2043 against the price before its own reservation: the 29 USDT it reserved for the 420
    # lots it opens moved the price to 9,800, the accomplice lifted it, the short opened on
    # nothing and the fund paid 19.9 USDT (6.9 when a resting sell was amended down to it).
    from tradingengine.margin import order_cost
    v, acct = _cross_long_at_50x(50_000_000)
    te = v.te[1].engine
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    q = 1
    while order_cost(q + 1, bk, False, 10_000, te.specs[1], 5000) <= te._available(acct):
        q += 1
    if amend:
        v.order(TRADER, 3, 1, tc.SELL, 10_400, 1000 + q)
        v.run()
        # resting, it holds what it reserves: the bound as it stands with it (9,602 here);
        # amended down to it, it reserves more (the loss against the mark) and moves it again
        bk = te._bankruptcy(acct, 1, acct.positions[1])
        v.operator_te(TRADER, tc.AMEND, tc.amend(4, 3, TRADER, price=bk))
        v.run()
        assert [e[4] for e in events(v.te[1], (tc.CANCEL_REJECTED,)) if e[1] == TRADER] \
            == [2043]
    else:
        v.order(TRADER, 3, 1, tc.SELL, bk, 1000 + q)
        v.run()
        assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
                if e[3] == TRADER and e[5] == 3] == [2043]
    assert not te._stranded(acct, 0)
    v.order(ACCOMPLICE, 8, 1, tc.BUY, bk, 1000 + q, tif=tc.IOC)
    v.order(MM, 9, 1, tc.SELL, 10_000, 100_000)
    v.run()
    _fund_untouched(v)


def test_a_loss_realised_on_one_cross_position_cancels_the_closes_it_strands_elsewhere():
    # Cross longs of symbol 1 (close resting at its bankruptcy price) and symbol 2; symbol 2
    # closed at 45,000 against a mark of 50,000 (within its own bound, reserving nothing):
    # the realised loss moved symbol 1's bankruptcy price to 9,716, nothing looked at its
    # close again (and with one cross position left, no mark does), and the fund covered
    # 9.9 USDT. The record of the fill now checks the account (reason 8).
    v, acct = _cross_long_at_50x(40_000_000, symbol2_lots=300)
    te = v.te[1].engine
    bk1 = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 5, 1, tc.SELL, bk1, 1000)
    v.run()
    p2 = max(te._bankruptcy(acct, 2, acct.positions[2]), 45_000)
    v.order(TRADER, 6, 2, tc.SELL, p2, 300)
    v.run()
    assert len(acct.orders) == 2
    v.order(ACCOMPLICE, 7, 2, tc.BUY, p2, 300, tif=tc.IOC)
    v.run()
    assert acct.positions[2].size == 0 and te._bankruptcy(acct, 1, acct.positions[1]) > bk1
    assert not acct.orders, "the close left beyond its bankruptcy price is cancelled"
    v.order(ACCOMPLICE, 8, 1, tc.BUY, bk1, 1000, tif=tc.IOC)
    v.run()
    assert acct.positions[1].size == 1000
    _fund_untouched(v)


def test_a_close_entered_while_funding_is_owed_counts_the_funding():
    # After the boundary, before its turn in the sweep, the trader closed its cross long at
    # its bankruptcy price into the accomplice's bid: at its turn it owed 7 USDT on a balance
    # of 0.02 and the fund covered 6.98. Funding owed to a sweep in flight is not the
    # account's money: the close is beyond the bound it leaves (2043).
    v = _six_cross_longs(40_000_000, leverage=5000)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.ts_ns = te.next_funding[1] - 1
    v.order(ACCOMPLICE, 6, 1, tc.BUY, bk, 1000)
    v.run()
    v.ts_ns += 1
    v.order(TRADER, 7, 1, tc.SELL, bk, 1000)
    v.run()
    assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
            if e[3] == TRADER and e[5] == 7] == [2043]
    assert te._funding_owed(TRADER) == 7_000_000
    for _ in range(10):
        v.tick(1000)
    assert [e[4] for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER] == [7_000_000]
    _fund_untouched(v)


def test_a_higher_reservation_of_isolated_orders_waits_for_the_funding_owed():
    # 2045 looked at the isolated position's margin only: with no position, SetLeverage 20x
    # -> 1x grew a resting isolated bid's reservation from 9 to 199 USDT mid-sweep, the bid
    # filled into an isolated margin and the fund covered the cross payment (6.1 USDT).
    v, acct = _funding_in_flight(2000, isolated_bid=566)
    held = acct.order_margin
    v.leverage(TRADER, 2, 100)
    v.run()
    assert _rejects(v, tc.SET_LEVERAGE) == [2045]
    assert acct.order_margin == held and acct.positions[2].leverage_x100 == 2000
    v.order(ACCOMPLICE, 7, 2, tc.SELL, 50_000, 566, tif=tc.IOC)
    v.run()
    _settle_funding_and_withdraw_all(v, acct, 0)


def test_an_account_that_receives_funding_is_not_held_back():
    # 2045 refused every account the sweep had yet to reach, a receiver too (an isolated
    # short receiving at a positive rate had an isolated bid refused). Only money owed counts.
    from tests.liqcascade import SRC_ORACLE
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((1, 3, 5, 7, 9)):
        v.deposit(a, 10**10, 5 + i)
    v.deposit(TRADER, 10**10, 20)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.order(MM, 1, 1, tc.BUY, 10_000, 6000)
    for a in (1, 3, 5, 7, 9, TRADER):
        v.operator_te(a, tc.SET_MARGIN_MODE, tc.set_margin_mode(a, 1, tc.ISOLATED))
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.SELL, 10_000, 1000)
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
    v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    te = v.te[1].engine
    v.ts_ns = te.next_funding[1]
    v.order(TRADER, 3, 2, tc.BUY, 49_000, 10)
    v.run()
    assert [o.client_order_id for o in te.accounts[TRADER].orders.values()] == [3]
    assert te.sweeps and te._funding_owed(TRADER) == 0
    for _ in range(10):
        v.tick(1000)
    assert [e[4] for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER] == [-7_000_000]


# -- round eight: against round seven's rules ------------------------------------------------


def test_a_fee_beyond_the_gain_of_a_close_cancels_the_closes_it_strands_elsewhere():
    # Closing 20,000 lots of symbol 1 at their entry price realised nothing but paid a 10
    # USDT fee: the cross base fell, symbol 2's close at its bankruptcy price was left beyond
    # it (45,367 against 45,417) and the fund covered 5.4 USDT when it was lifted. The check
    # of the record's fills runs when the balance falls, fee or loss.
    v = _funded(950_000_000)
    v.leverage(TRADER, 1, 5000)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 20_000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 20_000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 28_571)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 28_571)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk2 = te._bankruptcy(acct, 2, acct.positions[2])
    v.order(TRADER, 5, 2, tc.SELL, bk2, 28_571)
    v.run()
    v.order(MM, 6, 1, tc.BUY, 10_000, 20_000)
    v.order(TRADER, 7, 1, tc.SELL, 10_000, 20_000, tif=tc.IOC)
    v.run()
    assert acct.positions[1].size == 0 and not acct.orders
    v.order(ACCOMPLICE, 8, 2, tc.BUY, bk2, 28_571, tif=tc.IOC)
    v.run()
    _fund_untouched(v)


def test_a_reduce_only_cut_during_the_traders_amend_keeps_the_amends_price():
    # A reduce-only sell at 9,740 amended to 10,500 while a fill of another close cut it: the
    # cut went as an amend at the old price, the CrossEngine applied both in turn and the
    # order went back to 9,740 (the trader's amend undone), with a window in which the engine
    # saw 10,500 and nothing in flight: a withdrawal of everything was accepted there and the
    # fund paid 5.14 USDT. The cut now goes at the amend's price.
    v, acct = _cross_long_at_50x(30_000_000)
    v.order(TRADER, 3, 1, tc.SELL, 9_740, 1000, flags=tc.FLAG_REDUCE_ONLY)
    v.order(TRADER, 4, 1, tc.SELL, 9_720, 10)
    v.run()
    v.order(ACCOMPLICE, 5, 1, tc.BUY, 9_720, 10, tif=tc.IOC)
    v.operator_te(TRADER, tc.AMEND, tc.amend(6, 3, TRADER, price=10_500))
    v.run()
    assert [(o.price, o.leaves) for o in acct.orders.values()] == [(10_500, 990)]
    assert [e[9] for e in events(v.te[1], (tc.EXEC_REPORT,))
            if e[3] == TRADER and e[5] == 3 and e[1] == tc.EXEC_REPLACED] == [10_500, 10_500]


def test_an_isolated_order_that_closes_and_opens_is_not_held_to_its_own_reservation():
    # Round seven checked an order that closes and opens with its reservation taken out of
    # the position's money: for an isolated position that is its margin, which the
    # reservation (from the wallet) does not touch; a sell of 1,500 against an isolated long
    # of 1,000 at 40 ticks inside its bankruptcy price was refused (2043) on a 9,979 USDT
    # wallet while a sell of 1,000 at the same price was accepted.
    v, _fund = isolated_long(5000, 1000, 10_000_000_000)
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 4, 1, tc.SELL, bk + 40, 1500)
    v.run()
    assert [(o.price, o.leaves) for o in acct.orders.values()] == [(bk + 40, 1500)]


def test_a_check_goes_ahead_of_a_funding_sweep_in_flight():
    # The check of a record's fills was queued behind a funding sweep spanning records: the
    # close it was to cancel stayed live for as long, and was lifted (the fund covered 9.9
    # USDT). It goes ahead of every sweep but earlier checks now.
    from tests.liqcascade import SRC_ORACLE
    holders = tuple(range(13, 93, 2))
    v = venue(10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**12, 4)
    for i, a in enumerate(holders):
        v.deposit(a, 10**10, 100 + i)
    v.deposit(TRADER, 40_000_000, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 1000 + 10 * len(holders))
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 1000)
    for a in holders:
        v.order(a, 2, 1, tc.BUY, 10_000, 10)
    v.order(MM, 3, 2, tc.SELL, 50_000, 300)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 300)
    v.run()
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 1000, 0))
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    v.tick(1)
    bk1 = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 5, 1, tc.SELL, bk1, 1000)
    v.run()
    p2 = max(te._bankruptcy(acct, 2, acct.positions[2]), 45_000)
    v.order(TRADER, 6, 2, tc.SELL, p2, 300)
    v.run()
    assert te.sweeps and te.sweeps[0][0] == 3                   # funding, spanning records
    v.order(ACCOMPLICE, 7, 2, tc.BUY, p2, 300, tif=tc.IOC)
    v.run()
    assert [sw[0] for sw in te.sweeps][:2] == [8, 3]            # the check first
    v.tick(1)
    assert not acct.orders, "the stranded close is cancelled at the next record"


def test_an_adl_that_realises_a_loss_cancels_the_closes_it_strands_elsewhere():
    # An ADL closed TRADER's short of symbol 2 at the victim's bankruptcy price, realising
    # -21 USDT: symbol 1's close at its bankruptcy price was left beyond it and the fund (1
    # USDT, so that ADL runs) covered 15.7 USDT when it was lifted. An ADL's loss queues the
    # check as a fill's does.
    from tests.liqcascade import check_books
    from tradingengine.margin import liquidation_price
    victim = 7
    v = audited_venue(two_specs(HOUR), 1_000_000)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**12, 4)
    v.deposit(TRADER, 400_000_000, 3)
    v.deposit(victim, 60_000_000, 5)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.leverage(victim, 2, 2000)
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 10_000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 10_000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 3000)
    v.order(victim, 4, 2, tc.BUY, 50_000, 3000)
    v.run()
    te = v.te[1].engine
    acct, vacct = te.accounts[TRADER], te.accounts[victim]
    vpos = vacct.positions[2]
    bkv = te._bankruptcy(vacct, 2, vpos)
    v.mark(2, liquidation_price(vpos.size, vpos.cost, vacct.balance - vacct.order_margin,
                                te.specs[2]) + 20)
    v.run()
    v.order(MM, 5, 2, tc.BUY, bkv - 1001, 3000)
    v.order(TRADER, 6, 2, tc.SELL, bkv - 1001, 3000)
    v.run()
    state: dict = {}

    def hook(v, st):                  # the close goes in at the bound of the mark's record
        check_books(v, st)
        if st is v.te[1] and not state and te.marks[2] == 46_210:
            state["bk1"] = te._bankruptcy(acct, 1, acct.positions[1])
            v.order(TRADER, 7, 1, tc.SELL, state["bk1"], 10_000)
    v.on_record = hook
    v.mark(2, 46_210)                 # the victim handed off; no bid: ADL of TRADER's short
    v.run()
    for _ in range(6):
        v.tick(300_000_000)
    (adl,) = [e for e in events(v.te[1], (tc.ADL_APPLIED,)) if e[2] == TRADER]
    assert adl[6] < 0, "the ADL realised a loss"
    assert not acct.orders, "the close it left beyond its bankruptcy price is cancelled"
    v.order(ACCOMPLICE, 8, 1, tc.BUY, state["bk1"], 10_000, tif=tc.IOC)
    v.run()
    for _ in range(5):
        v.tick(300_000_000)
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]


def test_an_amend_is_checked_with_the_funding_owed_and_its_larger_reservation_together():
    # A sell of 1,100 against a cross long of 1,000, amended mid-sweep to a price inside the
    # bound lowered by the 7 USDT of funding owed, and inside the bound lowered by its own
    # larger reservation, but beyond the bound lowered by both: accepted, filled, and the
    # fund paid 1.17 USDT. Both count together now (2043).
    v = _six_cross_longs(50_000_000, leverage=5000,
                         setup=lambda v: v.order(TRADER, 3, 1, tc.SELL, 10_400, 1100))
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    owed = te._funding_owed(TRADER)
    (o,) = acct.orders.values()
    pos = acct.positions[1]
    price = None
    for p in range(9_000, 10_400):
        need = max(te._order_cost(acct, o, p, o.leaves) - o.margin, 0)
        if (p >= te._bankruptcy(acct, 1, pos, owed) and p >= te._bankruptcy(acct, 1, pos, need)
                and p < te._bankruptcy(acct, 1, pos, owed + need)
                and need <= te._available(acct)):
            price = p
            break
    assert owed == 7_000_000 and price is not None
    v.operator_te(TRADER, tc.AMEND, tc.amend(4, 3, TRADER, price=price))
    v.run()
    assert [e[4] for e in events(v.te[1], (tc.CANCEL_REJECTED,)) if e[1] == TRADER] == [2043]
    assert [x.price for x in acct.orders.values()] == [10_400]
