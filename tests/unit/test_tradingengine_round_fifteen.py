"""Round fifteen of the economic campaign (docs/tradingengine.md §5), against round fourteen's
rules (and round sixteen, against this one's), driven as before (tests/liqcascade.py; every engine's audit and money conservation
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


# Round sixteen, against round fifteen's room rule: an amend down counts at its new leaves
# only when the CrossEngine cannot refuse it.


def test_an_amend_down_below_what_has_filled_is_no_room_for_a_second_close():
    """x's amend down to 30 lots is in flight when 40 of them fill: the CrossEngine must
    refuse it (its total is not above what filled), yet the room counts x at 30 - 40 -> 0
    lots, so a reduce-only market close of the whole long is taken beside x's 60; both fill
    and the reduce-only take-profit opens a short."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, 10**11, 3)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 100)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 100)
    v.run()
    v.order(MM, 9, 1, tc.BUY, 9_990, 100)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    assert pos.size == 100
    v.order(TRADER, 3, 1, tc.SELL, 10_050, 100, flags=tc.FLAG_REDUCE_ONLY)      # x, take-profit
    v.run()
    x = next(o for o in acct.orders.values() if o.client_order_id == 3)
    v.order(ACCOMPLICE, 6, 1, tc.BUY, 10_050, 40, tif=tc.IOC)
    n = len(v.te[0].out)
    v.step_until(lambda: len(v.te[0].out) > n)     # the IOC is on its way to in.ce.1
    v.next_in_te(TRADER, tc.AMEND, tc.amend(101, 3, TRADER, 0, 30))     # x down to 30
    v.step_until(lambda: pos.size == 60)
    assert x.pending == PENDING_AMEND and x.cum == 40 and x.amend_qty == 30 and x.leaves == 60
    # a reduce-only market close of the long of 60, beside x's 60 lots (its amend doomed)
    v.next_in_te(TRADER, tc.NEW_ORDER, tc.new_order(7, TRADER, 1, tc.SELL, 0, 60,
                                                    ord_type=tc.MARKET, tif=tc.IOC,
                                                    flags=tc.FLAG_REDUCE_ONLY))
    v.step_until(lambda: any(o.client_order_id == 7 for o in acct.orders.values()))
    # the accomplice lifts x before the cut's cancel of it reaches the CrossEngine
    v.next_in_te(ACCOMPLICE, tc.NEW_ORDER,
                 tc.new_order(8, ACCOMPLICE, 1, tc.BUY, 10_050, 60, tif=tc.IOC))
    v.run()
    fills = [(e[5], e[12]) for e in te_events(v.te[1], (tc.EXEC_REPORT,))
             if e[1] == tc.EXEC_TRADE and e[3] == TRADER and e[5] in (3, 7)]
    assert pos.size >= 0, \
        f"reduce-only sells filled {fills} (coid, lots) against a long of 100: a short of " \
        f"{-pos.size} opened by reduce-only orders (x's doomed amend down counted at 0 lots)"


def test_a_post_only_amend_down_the_crossengine_refuses_is_no_room_for_a_second_close():
    """x (reduce-only, post-only, 100 lots) is amended down to 10 at a price that takes the
    bid: the CrossEngine refuses it, but while it is in flight the room counts x at 10, so a
    reduce-only market close of 90 is taken; it fills, x is back at 100 against a long of
    10, and lifted before the cut's amend lands it opens a short."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, 10**11, 3)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 100)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 100)
    v.run()
    v.order(MM, 9, 1, tc.BUY, 9_990, 100)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    v.order(TRADER, 3, 1, tc.SELL, 10_050, 100,
            flags=tc.FLAG_REDUCE_ONLY | tc.FLAG_POST_ONLY)                     # x
    v.run()
    x = next(o for o in acct.orders.values() if o.client_order_id == 3)
    v.next_in_te(TRADER, tc.AMEND, tc.amend(101, 3, TRADER, 9_990, 10))   # takes the bid
    v.step_until(lambda: x.pending == PENDING_AMEND)
    v.next_in_te(TRADER, tc.NEW_ORDER, tc.new_order(7, TRADER, 1, tc.SELL, 0, 100,
                                                    ord_type=tc.MARKET, tif=tc.IOC,
                                                    flags=tc.FLAG_REDUCE_ONLY))
    v.step_until(lambda: any(o.client_order_id == 7 for o in acct.orders.values()))
    v.next_in_te(ACCOMPLICE, tc.NEW_ORDER,
                 tc.new_order(8, ACCOMPLICE, 1, tc.BUY, 10_050, 100, tif=tc.IOC))
    v.run()
    fills = [(e[5], e[12]) for e in te_events(v.te[1], (tc.EXEC_REPORT,))
             if e[1] == tc.EXEC_TRADE and e[3] == TRADER and e[5] in (3, 7)]
    assert pos.size >= 0, \
        f"reduce-only sells filled {fills} (coid, lots) against a long of 100: a short of " \
        f"{-pos.size} opened by reduce-only orders (x's refused amend down counted at 10)"
