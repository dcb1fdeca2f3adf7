"""Round thirteen of the economic campaign (docs/tradingengine.md §5, §6, §11), against round
twelve's rules, driven as before (tests/liqcascade.py; every engine's audit and money
conservation after every record). Each test failed on the code before its fix."""
from __future__ import annotations

from tests.liqcascade import audited_venue, trader_long
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import PENDING_AMEND
from tradingengine.margin import position_margin

MM, ACCOMPLICE, TRADER = 2, 4, 11


def test_a_stop_an_older_mark_reached_is_not_sent_ahead_of_a_newer_marks_handoff():
    """VICTIM (account 1, the lowest holder) is a 50x long of 1,000 USDT on 21 USDT with a
    reduce-only stop-market sell of it all at 9,950. Mark 9,940 reaches the stop but leaves
    VICTIM above maintenance; its maintenance sweep (one unit a record, output budget 0) checks
    VICTIM, then goes on. Mark 9,880 comes while it goes on: VICTIM is now at maintenance,
    but the sweep in progress has passed it, and the new sweep from the start is queued
    behind the first mark's trigger sweep. The trigger sweep sends the stop, the new sweep
    hands VICTIM off (the stop's cancel follows it), and the stop then sells 100,000 lots
    into a bid at 9,850: a short on nothing."""
    VICTIM, H3, H5 = 1, 3, 5
    Q = 100_000
    fund = 10**11
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((VICTIM, H3, H5)):
        v.deposit(a, 2_100_000_000 if a == VICTIM else 10**11, 3 + i)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 3 * Q)
    for a in (VICTIM, H3, H5):
        v.leverage(a, 1, 5000)
        v.order(a, 2, 1, tc.BUY, 10_000, Q)
    v.run()
    te = v.te[1].engine
    v.order(VICTIM, 3, 1, tc.SELL, 0, Q, ord_type=tc.MARKET, tif=tc.IOC,
            flags=tc.FLAG_REDUCE_ONLY, trigger_price=9_950, trigger_kind=tc.TRIGGER_STOP)
    v.order(MM, 4, 1, tc.BUY, 9_850, Q)
    v.run()
    assert te.accounts[VICTIM].positions[1].size == Q
    budget = te.output_budget
    te.output_budget = 0
    v.mark(1, 9_940)
    v.mark(1, 9_880)
    for _ in range(6):
        v.put(v.te[1], 0, tc.KIND_TICK, b"")
    v.run()
    te.output_budget = budget
    for _ in range(5):
        v.tick(300_000_000)
        v.mark(1, 9_880)
        v.run()
    handoffs = [e for e in events(v.te[1], (tc.LIQUIDATION,)) if e[1] == VICTIM]
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == VICTIM)
    lost = fund - v.liq.engine.fund
    assert len(handoffs) <= 1 and not covered and lost <= 0, \
        f"the stop opened a short after the handoff: handoffs {len(handoffs)}, " \
        f"covered {covered}, fund lost {lost}"


def test_two_reduce_only_orders_amended_in_turn_are_never_cut():
    """Long 100; reduce-only sells A of 60 (at 10,200) and B of 40 (at 10,300), and a plain
    sell of 50 at 10,100. The trader keeps an amend of A or B in flight at every moment (each
    is re-sent as soon as its answer is in: a price moved by a tick back and forth): when
    the plain sell is lifted, the long is 50 and the reduce-only orders 100, and the cut
    that §5 says follows every fill waits for an amend in flight, for ever. The reduce-only
    orders stay at 100 lots against a long of 50, and one IOC lifting both opens a short of
    50 by reduce-only orders (§5: a reduce-only order is cut after every fill of the account,
    a record later; here 20 CrossEngine answers later it still is not). No money is lost here:
    each order holds what it would open (engine._cut_reduce_only returns while any
    reducing-side reduce-only order is PENDING_AMEND; only _amended / an amend's reject queue
    it again, and by then the trader's next amend is in flight)."""
    v, te, acct, pos = trader_long(TRADER, 100)
    v.order(TRADER, 3, 1, tc.SELL, 10_200, 60, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 10_300, 40, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 5, 1, tc.SELL, 10_100, 50)
    v.run()
    a = next(o for o in acct.orders.values() if o.client_order_id == 3)
    b = next(o for o in acct.orders.values() if o.client_order_id == 4)
    coid = [100]

    def amend(o, price):
        coid[0] += 1
        v.next_in_te(TRADER, tc.AMEND, tc.amend(coid[0], o.client_order_id, TRADER, price, 0))

    # both amends in flight; the accomplice's IOC reaches the CrossEngine first
    v.order(ACCOMPLICE, 6, 1, tc.BUY, 10_100, 50, tif=tc.IOC)
    n = len(v.te[0].out)
    v.step_until(lambda: len(v.te[0].out) > n)     # the IOC is on its way to in.ce.1
    amend(b, 10_301)
    amend(a, 10_201)
    v.step_until(lambda: pos.size == 50)
    assert a.pending == PENDING_AMEND and b.pending == PENDING_AMEND
    for i in range(10):
        for o, base in ((a, 10_200), (b, 10_300)):
            v.step_until(lambda o=o: o.pending == 0)
            amend(o, base + (i % 2))
    # 20 answers later (none of them, nor the fill, followed by a cut), the reduce-only
    # sells still rest at 100 lots against the long of 50
    ro = sum(o.leaves for o in acct.orders.values() if o.flags & tc.FLAG_REDUCE_ONLY)
    # the accomplice lifts them both, while the trader goes on
    v.order(ACCOMPLICE, 7, 1, tc.BUY, 10_301, 100, tif=tc.IOC)
    n = len(v.te[0].out)
    v.step_until(lambda: len(v.te[0].out) > n)
    v.step_until(lambda: a.pending == 0)
    amend(a, 10_201)
    v.run()
    assert ro <= 50 and pos.size >= 0, \
        f"reduce-only sells of {ro} lots rested against a long of 50, never cut; " \
        f"lifted, they left a position of {pos.size}"


def test_a_lower_isolated_leverage_does_not_take_the_cross_equity_below_maintenance():
    """§6: money that leaves the cross balance (a withdrawal, an addition to an isolated
    margin) must leave the cross equity above the maintenance of the cross positions at their
    marks (2024 / 2012), since `available` counts position margin on the entry value. A
    SetLeverage that lowers an isolated position's leverage moves money from the cross balance
    into that margin, checked against `available` (_spendable) only. A cross 50x short of
    100,000 lots at 10,000 (1,000 USDT) whose mark rose to 21,000 (tier 2: maintenance 23.05
    USDT at the mark, 2.54 USDT above what `available` counts); the trader withdraws what
    AdjustIsolatedMargin would also be refused for, then lowers its isolated long's leverage
    (symbol 2, 20x to 10x) by exactly what is left available: accepted, the cross equity is
    2.54 USDT below maintenance, and the next mark hands the short off."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 2_000 * 10**8, 3)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 2, tc.ISOLATED))
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 100_000)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 100_000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 200_000)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 200_000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    p2 = acct.positions[2]
    assert acct.positions[1].size == -100_000 and p2.size == 200_000
    v.mark(1, 21_000)
    v.run()
    available = te._available(acct)
    grow = position_margin(p2.size, p2.cost, te.specs[2], 1000) + p2.extra - p2.margin
    assert te._cross_headroom(acct) < available and grow > available - te._cross_headroom(acct)
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(50, TRADER, available - grow))
    v.run()
    assert te._available(acct) == grow          # the withdrawal passed (headroom held)
    v.leverage(TRADER, 2, 1000)
    v.run()
    headroom = te._cross_headroom(acct)
    v.tick(10**9)
    v.mark(1, 21_000)
    v.run()
    handoffs = [e for e in events(v.te[1], (tc.LIQUIDATION,)) if e[1] == TRADER]
    assert headroom > 0 and not handoffs, \
        f"SetLeverage moved {grow} into an isolated margin and left the cross equity " \
        f"{-headroom} below maintenance: handed off {handoffs}"
