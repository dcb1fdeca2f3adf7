"""Round fourteen of the economic campaign (docs/tradingengine.md §5, §6, §11), against round
thirteen's rules, driven as before (tests/liqcascade.py; every engine's audit and money
conservation after every record). Each test failed on the code before its fix."""
from __future__ import annotations

from tests.liqcascade import audited_venue, trader_long
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import PENDING_AMEND

MM, ACCOMPLICE, TRADER = 2, 4, 11


def test_a_handoff_in_a_trigger_unit_that_drops_the_accounts_other_fired_stop_does_not_halt():
    """Round thirteen's race with two reduce-only stops of VICTIM, both reached by mark
    9,940 (so both in the trigger sweep's `fired` list). The sweep runs after mark 9,880 put
    VICTIM at maintenance: its first stop's _maintain hands VICTIM off and cancels (drops,
    at once) both stops; the loop then reads the second with waiting[order_id]: KeyError,
    the engine halts on every replica (engine._fire_triggered, `o = waiting[order_id]`)."""
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
    for coid in (3, 5):
        v.order(VICTIM, coid, 1, tc.SELL, 0, Q // 2, ord_type=tc.MARKET, tif=tc.IOC,
                flags=tc.FLAG_REDUCE_ONLY, trigger_price=9_950,
                trigger_kind=tc.TRIGGER_STOP)
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
    assert len(handoffs) == 1 and te.accounts[VICTIM].positions[1].size == 0


def test_a_cut_beside_an_amend_down_in_flight_cuts_no_more_than_the_excess():
    """Long 100; reduce-only sells A of 60 (older, 10,200) and B of 40 (newer, 10,300), and a
    plain sell of 50 at 10,100. The trader amends B down to 10 lots; while that amend is in
    flight the plain sell is lifted (long 50) and the cut runs: B counts at its 40 lots
    before the amend (the larger), excess 50, B is skipped and the older A is amended from 60
    to 10. B's answer (10 lots) queues the cut again while the cut's own amend of A is in
    flight: A now counts at its 60 lots before the cut (the larger), total 70 against 50, and
    B is cancelled (reason 7). Once every answer is in: A 10 lots of reduce-only sells
    against a long of 50, 40 lots cut for nothing, the newest-first rule of §5 broken on the
    way. engine._cut_reduce_only counts an order with an amend in flight at
    leaves + amend_grow, its leaves BEFORE the amend, even when that amend is the cut's own
    amend down (already deducted from the excess by the cut that sent it): each cut that
    follows before its answer cuts the same lots again out of the other orders."""
    v, te, acct, pos = trader_long(TRADER, 100)
    v.order(TRADER, 3, 1, tc.SELL, 10_200, 60, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 10_300, 40, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 5, 1, tc.SELL, 10_100, 50)
    v.run()
    b = next(o for o in acct.orders.values() if o.client_order_id == 4)
    v.order(ACCOMPLICE, 6, 1, tc.BUY, 10_100, 50, tif=tc.IOC)
    n = len(v.te[0].out)
    v.step_until(lambda: len(v.te[0].out) > n)     # the IOC is on its way to in.ce.1
    v.next_in_te(TRADER, tc.AMEND, tc.amend(101, 4, TRADER, 10_300, 10))
    v.step_until(lambda: pos.size == 50)
    assert b.pending == PENDING_AMEND
    v.run()
    assert pos.size == 50
    left = {o.client_order_id: o.leaves for o in acct.orders.values()
            if o.flags & tc.FLAG_REDUCE_ONLY}
    assert sum(left.values()) == 50, \
        f"reduce-only sells {left} against a long of 50: cut {50 - sum(left.values())} " \
        f"lots more than the excess"


def test_two_fills_in_a_row_do_not_cut_the_cuts_own_amend_twice():
    """No trader amend at all. Long 100; reduce-only sells X of 20 (oldest, 10,400) and A of
    60 (10,200); plain sells of 50 and 1 at 10,100. Two IOC buys of another account lift the
    plain sells in two CrossEngine records, one after the other. The first fill (long 50)
    cuts A from 60 to 30 (an amend, in flight). The second fill (long 49) cuts again before
    that amend's answer: A counts at its 60 lots before the cut's own amend, total 80 against
    49, excess 31, A is skipped and X (20 lots, older) is cancelled. Once every answer is in:
    A 30 against a long of 49, 19 lots cut for nothing (A 29 + X 20 were due), and the older X
    cancelled for lots the first cut had already taken off A (engine._cut_reduce_only,
    `total += o.leaves + o.amend_grow` for the cut's own amend down)."""
    v, te, acct, pos = trader_long(TRADER, 100)
    v.order(TRADER, 3, 1, tc.SELL, 10_400, 20, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 10_200, 60, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 5, 1, tc.SELL, 10_100, 50)
    v.order(TRADER, 6, 1, tc.SELL, 10_100, 1)
    v.run()
    v.order(ACCOMPLICE, 7, 1, tc.BUY, 10_100, 50, tif=tc.IOC)
    v.order(ACCOMPLICE, 8, 1, tc.BUY, 10_100, 1, tif=tc.IOC)
    v.run()
    assert pos.size == 49
    left = {o.client_order_id: o.leaves for o in acct.orders.values()
            if o.flags & tc.FLAG_REDUCE_ONLY}
    assert sum(left.values()) == 49, \
        f"reduce-only sells {left} against a long of 49: cut {49 - sum(left.values())} " \
        f"lots more than the excess"
