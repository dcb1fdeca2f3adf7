"""Round twelve of the economic campaign (docs/tradingengine.md §5, §11), against round
eleven's rules, driven as before (tests/liqcascade.py; every engine's audit and money
conservation after every record). A reduce-only cut sent while the trader's own amend of the
order was in flight was worked out from the leaves before that amend: behind an amend down,
the cut took the order back up by lots counted nowhere; and with two amends in flight, the
cut's answer was taken for the trader's next amend, releasing its growth while it was still
on its way. A cut now waits for the answer. Each test failed on the code before."""
from __future__ import annotations

from tests.liqcascade import audited_venue
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import PENDING_AMEND

MM, ACCOMPLICE, TRADER = 2, 4, 11


def test_a_cut_sent_behind_a_shrinking_amend_does_not_grow_the_order_uncounted():
    fund = 10**11
    q = 150_000
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, 3_200_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    # a 50x long of 150,000 lots (1,500 USDT) on 32 USDT
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, q)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, q)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    bk = te._bankruptcy(acct, 1, pos)
    # D: a plain sell of 1 lot at the bankruptcy price; B: behind it, a reduce-only sell of
    # the whole long
    v.order(TRADER, 4, 1, tc.SELL, bk, 1)
    v.run()
    v.order(TRADER, 3, 1, tc.SELL, bk, q, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    b = next(o for o in acct.orders.values() if o.client_order_id == 3)
    # an accomplice lifts D (the long shrinks to q - 1) just before the trader's amend
    # taking B down to 1 lot reaches the CrossEngine: the reduce-only cut the fill queues
    # is computed from B's old 150,000 lots and takes it to 149,999, sent behind the amend
    v.order(ACCOMPLICE, 5, 1, tc.BUY, bk, 1, tif=tc.IOC)
    v.operator_te(TRADER, tc.AMEND, tc.amend(6, 3, TRADER, 0, 1))
    while v.queue:
        v._apply(*v.queue.popleft())
        if b.leaves == 1 and b.pending == 0:
            break
    # the amend to 1 is answered; the cut (1 -> 149,999 at the CrossEngine) is in flight,
    # yet the side's leaves count B at 1
    assert pos.size == q - 1 and b.leaves == 1 and pos.sell_leaves == 1
    # a plain close of q - 2 at the bankruptcy price: 1 lot ahead, it reserves nothing
    bk2 = te._bankruptcy(acct, 1, pos)
    v.order(TRADER, 7, 1, tc.SELL, bk2, q - 2)
    v.run()
    v.order(ACCOMPLICE, 8, 1, tc.BUY, bk2, 2 * q, tif=tc.IOC)
    v.order(MM, 9, 1, tc.SELL, 10_000, 2 * q)
    v.run()
    for _ in range(10):
        v.tick(300_000_000)
        v.mark(1, 10_000)
        v.run()
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    lost = fund - v.liq.engine.fund
    assert lost <= 0 and not covered, f"the fund lost {lost}, covered {covered}"


def test_a_reduce_only_cut_never_leaves_the_order_larger_than_the_trader_asked():
    """The same race with nothing else around it: the trader amends a reduce-only sell of
    100 lots down to 10; the cut the engine sends behind it (computed on 100) leaves the order
    at 99 lots at the CrossEngine - 89 lots the trader did not ask for (a reduce-only cut
    may only cut)."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, 10**11, 3)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 100)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 100)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.order(TRADER, 4, 1, tc.SELL, 10_100, 1)
    v.run()
    v.order(TRADER, 3, 1, tc.SELL, 10_200, 100, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(ACCOMPLICE, 5, 1, tc.BUY, 10_100, 1, tif=tc.IOC)
    v.operator_te(TRADER, tc.AMEND, tc.amend(6, 3, TRADER, 0, 10))
    v.run()
    b = next(o for o in acct.orders.values() if o.client_order_id == 3)
    assert acct.positions[1].size == 99
    assert b.leaves <= 10, f"the trader amended the order to 10; it rests with {b.leaves}"


def _setup(deposit: int, q: int, r: int, leverage_x100: int | None):
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, deposit, 3)
    v.mark(1, 10_000)
    v.run()
    if leverage_x100:
        v.leverage(TRADER, 1, leverage_x100)
    v.order(MM, 1, 1, tc.SELL, 10_000, q)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, q)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    # D: a plain sell of 1 lot at the mark; R (older) and B: reduce-only sells of the long
    v.order(TRADER, 3, 1, tc.SELL, 10_000, 1)
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 10_400, r, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    v.order(TRADER, 5, 1, tc.SELL, 10_300, q - r, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    b = next(o for o in acct.orders.values() if o.client_order_id == 5)
    return v, te, acct, b


def _race(v, b, new_price: int, grown_total: int) -> None:
    """The trader moves B's price; an accomplice lifts D just before that amend reaches the
    CrossEngine, and the fill's reduce-only cut of B (1 lot) is sent behind it. When the
    trader's amend is answered (B no longer pending), the trader cancels R and grows B into
    R's room: the cut is still in flight."""
    v.order(ACCOMPLICE, 6, 1, tc.BUY, 10_000, 1, tif=tc.IOC)
    v.operator_te(TRADER, tc.AMEND, tc.amend(7, 5, TRADER, new_price, 0))
    v.step_until(lambda: b.price == new_price and b.pending == 0)
    v.next_in_te(TRADER, tc.AMEND, tc.amend(9, 5, TRADER, 0, grown_total))
    v.next_in_te(TRADER, tc.CANCEL, tc.cancel(8, 4, TRADER))
    v.step_until(lambda: b.pending == PENDING_AMEND)


def test_a_close_beside_an_amend_whose_growth_the_cuts_answer_released_reserves_it():
    """The 50x long of 150,000 lots (1,500 USDT) on 32 USDT, with 100 USDT more on deposit.
    R reduce-only sell of 100,000 at 10,400, B of 50,000 moved to 9,800. After the race B
    grows by 99,999 lots (reserving them: R is ahead); the cut's answer releases the growth
    and B's reservation while the grow is in flight; the trader withdraws the 100 USDT, and
    once R's cancel is answered enters a plain sell of 100,000 at the bankruptcy price that
    sees 49,999 lots ahead and reserves nothing. One IOC lifts both: a short of 100,000 at
    2% below the mark on no money; the fund pays 18.80 USDT."""
    q, r, extra = 150_000, 100_000, 10_000_000_000
    fund = 10**11
    v, te, acct, b = _setup(3_200_000_000 + extra, q, r, 5000)
    pos = acct.positions[1]
    _race(v, b, 9_800, q - 1)
    v.step_until(lambda: b.leaves == q - r - 1)   # the cut's answer
    v.next_in_te(TRADER, tc.WITHDRAW, tc.transfer(50, TRADER, extra))
    v.step_until(lambda: acct.balance < extra)
    v.step_until(lambda: 4 not in [o.client_order_id for o in acct.orders.values()])
    bk = te._bankruptcy(acct, 1, pos)
    v.next_in_te(TRADER, tc.NEW_ORDER, tc.new_order(10, TRADER, 1, tc.SELL, bk, r))
    v.run()
    v.order(ACCOMPLICE, 11, 1, tc.BUY, 9_800, 2 * q, tif=tc.IOC)
    v.order(MM, 12, 1, tc.SELL, 10_000, 2 * q)
    v.run()
    for _ in range(10):
        v.tick(300_000_000)
        v.mark(1, 10_000)
        v.run()
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    lost = fund - v.liq.engine.fund
    assert lost <= 0 and not covered, f"the fund lost {lost}, covered {covered}"
