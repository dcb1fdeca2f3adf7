"""Round fifteen of the economic campaign (docs/tradingengine.md §5), against round fourteen's
rules, driven as before (tests/liqcascade.py; every engine's audit and money conservation
after every record): how a reduce-only order with an amend in flight counts, in the cut and
in the room of the others. Each test failed on the code before its fix."""
from __future__ import annotations

from tests.liqcascade import audited_venue, te_events, trader_long
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import PENDING_AMEND

MM, ACCOMPLICE, TRADER = 2, 4, 11


def test_a_cut_beside_a_refused_amend_up_leaves_no_lots_cut_for_nothing():
    """Long 100; reduce-only sells A 30 (older) and B 50 (newer, post-only), a plain sell of
    10. B is amended to 70 at a price that takes a bid (the CrossEngine refuses it) while the
    plain sell is lifted (long 90). The cut counted B at 70 and cut A to 20 for it; after the
    refusal 70 lots of reduce-only sells stood against a long of 90 (80 were due)."""
    v, te, acct, pos = trader_long(TRADER, 100)
    v.order(MM, 9, 1, tc.BUY, 9_990, 5)          # a bid the post-only amend would take
    v.run()
    assert pos.size == 100
    v.order(TRADER, 3, 1, tc.SELL, 10_200, 30, flags=tc.FLAG_REDUCE_ONLY)          # A, older
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 10_300, 50,
            flags=tc.FLAG_REDUCE_ONLY | tc.FLAG_POST_ONLY)                          # B, newer
    v.run()
    v.order(TRADER, 5, 1, tc.SELL, 10_100, 10)                                      # plain
    v.run()
    b = next(o for o in acct.orders.values() if o.client_order_id == 4)
    v.order(ACCOMPLICE, 6, 1, tc.BUY, 10_100, 10, tif=tc.IOC)
    n = len(v.te[0].out)
    v.step_until(lambda: len(v.te[0].out) > n)     # the IOC is on its way to in.ce.1
    # B grows to 70 (room 100 - 30) at a price that takes the bid: the CrossEngine refuses it
    v.next_in_te(TRADER, tc.AMEND, tc.amend(101, 4, TRADER, 9_990, 70))
    v.step_until(lambda: pos.size == 90)
    assert b.pending == PENDING_AMEND
    v.run()
    assert pos.size == 90
    left = {o.client_order_id: o.leaves for o in acct.orders.values()
            if o.flags & tc.FLAG_REDUCE_ONLY}
    assert left.get(4) == 50, left                 # the amend was refused
    assert sum(left.values()) == 80, \
        f"reduce-only sells {left} against a long of 90: {80 - sum(left.values())} lots " \
        f"cut for nothing (A was cut for B's refused growth)"


def test_a_stop_loss_firing_beside_an_amend_down_in_flight_is_not_refused():
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(TRADER, 10**11, 3)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 100)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 100)
    v.run()
    v.order(MM, 7, 1, tc.BUY, 9_800, 200)
    v.run()
    te = v.te[1].engine
    pos = te.accounts[TRADER].positions[1]
    assert pos.size == 100
    v.order(TRADER, 3, 1, tc.SELL, 10_500, 100, flags=tc.FLAG_REDUCE_ONLY)    # take-profit
    v.order(TRADER, 4, 1, tc.SELL, 0, 90, ord_type=tc.MARKET, tif=tc.IOC,
            flags=tc.FLAG_REDUCE_ONLY, trigger_price=9_900, trigger_kind=tc.TRIGGER_STOP)
    v.run()
    v.mark(1, 9_850)
    v.next_in_te(TRADER, tc.AMEND, tc.amend(101, 3, TRADER, 0, 10))          # TP down to 10
    v.run()
    for _ in range(3):
        v.tick(300_000_000)
    rejects = [e for e in te_events(v.te[1], (tc.EXEC_REPORT,))
               if e[1] == tc.EXEC_REJECTED and e[3] == TRADER]
    assert not rejects and pos.size == 10, \
        f"stop-loss refused while the take-profit's amend down was in flight: {rejects}, " \
        f"long {pos.size} left"
