"""Round seventeen of the economic campaign (docs/tradingengine.md §6, docs/liqengine.md §6),
and rounds eighteen and nineteen against its rules, driven as before (tests/liqcascade.py; every engine's audit and money conservation after every
record): what an ADL's loss may take. An ADL closes a position at the bankruptcy price of the
one handed off; after a gap that price is worse than the mark for the account it reaches.
Each test failed on the code before its fix.

Common ground: symbol 1 (value 100, 50x, maintenance 1%); a 50x long bought at 10,000 is
handed off when the mark gaps to 9,000, at its bankruptcy price (9,790; 9,795 for the larger
long); the fund cannot hold it, and the ADL reaches V, the only short, opened at 9,000 after
the gap."""
from __future__ import annotations

from liqengine import codec as lc
from mq.sources import OPERATOR_SOURCE
from tests.liqcascade import SRC_LIQ_OUT, te_events, trader_long
from tradingengine import codec as tc

MM, LONG, V = 2, 3, 5
USDT = 10**8
Q2 = 285_714           # a 20x cross long of symbol 2 at 50,000


def gapped(fund: int, deposit: int, qty: int):
    """LONG's 50x long of ``qty`` at 10,000 (deposit), and the fund; then the caller gaps."""
    v, te, _acct, pos = trader_long(LONG, qty, MM, fund=fund, deposit=deposit,
                                    leverage_x100=5000, mark2=50_000)
    assert pos.size == qty
    return v, te


def isolated_short(v, qty: int, deposit: int, cross_leverage: int = 0) -> None:
    """V: an isolated 50x short of ``qty`` at 9,000, after the gap (and symbol 2's leverage)."""
    v.deposit(V, deposit, 5)
    v.operator_te(V, tc.SET_MARGIN_MODE, tc.set_margin_mode(V, 1, tc.ISOLATED))
    v.leverage(V, 1, 5000)
    if cross_leverage:
        v.leverage(V, 2, cross_leverage)
    v.order(MM, 3, 1, tc.BUY, 9_000, qty)
    v.run()
    v.order(V, 4, 1, tc.SELL, 9_000, qty)
    v.run()


def until_adl(v, marks=(9_000,)) -> None:
    """The LiqEngine's close-out window passes, then its ADL."""
    for _ in range(10):
        v.tick(300_000_000)
        for sym, mark in enumerate(marks, 1):
            v.mark(sym, mark)
        v.run()


def test_an_adl_takes_an_isolated_position_no_further_than_its_margin():
    """V (1,000 USDT) holds its isolated short with 18.46 USDT of margin; the ADL at 9,790
    realised 79 USDT of loss and took all of it from V's balance, 60.54 beyond the margin."""
    v, te = gapped(1, 22 * USDT, 100_000)            # an exhausted fund
    v.mark(1, 9_000)                                  # the gap: LONG handed off at 9,790
    v.run()
    isolated_short(v, 100_000, 1_000 * USDT)
    acct = te.accounts[V]
    margin, before = acct.positions[1].margin, acct.balance
    until_adl(v)
    adls = [e for e in te_events(v.te[1], (tc.ADL_APPLIED,)) if e[2] == V]
    assert adls and adls[0][4] == 100_000 and adls[0][6] == -79 * USDT
    assert acct.positions[1].size == 0
    assert before - acct.balance == margin, "an isolated position lost more than its margin"
    covered = sum(c[2] for c in te_events(v.te[1], (tc.DEFICIT_COVERED,)) if c[1] == V)
    assert covered == 79 * USDT - margin


def test_an_isolated_adl_loss_leaves_the_cross_closes_within_their_bankruptcy_prices():
    """V also holds a cross long of symbol 2 with a sell close resting at 46,100, inside its
    bankruptcy price. The isolated ADL's loss came off the cross balance (60.5 USDT), which
    moved that price to about 48,500, and nothing cancelled the close: lifted, it made the
    fund pay 48.33 USDT."""
    v, te = gapped(1, 22 * USDT, 100_000)
    v.mark(1, 9_000)
    v.run()
    isolated_short(v, 100_000, 110 * USDT, cross_leverage=2000)
    v.order(MM, 5, 2, tc.SELL, 50_000, Q2)
    v.run()
    v.order(V, 6, 2, tc.BUY, 50_000, Q2)             # cross long, symbol 2
    v.run()
    v.order(V, 7, 2, tc.SELL, 46_100, Q2)            # a stop-loss limit within its bankruptcy
    v.run()
    until_adl(v, (9_000, 50_000))
    assert [e for e in te_events(v.te[1], (tc.ADL_APPLIED,)) if e[2] == V]
    debt = v.liq.engine.fund_debt
    v.order(MM, 8, 2, tc.BUY, 46_100, Q2, tif=tc.IOC)   # the accomplice lifts the close
    v.run()
    assert v.liq.engine.fund_debt == debt, "the close filled beyond its bankruptcy price"


def test_an_adl_deficit_comes_out_of_the_accounts_cross_gains_before_the_fund():
    """V, all cross: a long of symbol 2 at 50,000 in profit by 99.99 USDT at 55,000, and a 50x
    short of symbol 1 at 9,000; balance 93.4 USDT. The ADL at 9,795 realised 159 USDT of loss:
    the fund covered 65.60 USDT while V kept the winning long (then sold it and withdrew)."""
    v, te = gapped(100 * USDT, 43 * USDT, 200_000)
    v.deposit(V, 95 * USDT, 5)
    v.run()
    v.leverage(V, 2, 2000)
    v.leverage(V, 1, 5000)
    v.order(MM, 3, 2, tc.SELL, 50_000, Q2)
    v.order(V, 4, 2, tc.BUY, 50_000, Q2)
    v.run()
    v.mark(1, 9_000)                                  # the gap: LONG handed off at 9,795
    v.mark(2, 55_000)
    v.run()
    v.order(MM, 5, 1, tc.BUY, 9_000, 200_000)        # MM closes its short ...
    v.run()
    v.order(V, 6, 1, tc.SELL, 9_000, 200_000)        # ... against V's new cross short
    v.run()
    acct = te.accounts[V]
    long2 = acct.positions[2]
    value = te.specs[2].value
    gain = long2.size * 55_000 * value - long2.cost
    until_adl(v)
    adls = [e for e in te_events(v.te[1], (tc.ADL_APPLIED,)) if e[2] == V]
    assert adls and adls[0][6] < 0
    covered = [c for c in te_events(v.te[1], (tc.DEFICIT_COVERED,)) if c[1] == V]
    assert not covered, f"the fund covered {covered} while V held a gain of {gain}"
    assert acct.balance >= 0 and long2.size == Q2
    # the gain paid the deficit: what is left of it at the mark is less by as much
    assert long2.size * 55_000 * value - long2.cost < gain


def short_with_close(deposit: int, close_qty: int):
    """V: an isolated 50x short of 200,000 at 9,000 after the gap (an exhausted fund), and a
    buy close of ``close_qty`` resting at 9,150, within its bankruptcy price (about 9,180)."""
    v, te = gapped(1, 22 * USDT, 100_000)
    v.mark(1, 9_000)
    v.run()
    isolated_short(v, 200_000, deposit)
    v.order(V, 5, 1, tc.BUY, 9_150, close_qty)
    v.run()
    return v, te


def adl_queued(v) -> bool:
    return any(st is v.te[1] and src == SRC_LIQ_OUT
               and any(e[0] == lc.ADL for e in lc.decode_events(p))
               for (st, src, _k, p, _r) in v.queue)


def until_adl_racing(v, qty: int | None) -> None:
    """As until_adl; when the LiqEngine's record with the Adl is queued for V's shard, an
    accomplice's IOC sell of ``qty`` at 9,150 goes ahead of it (None: no accomplice)."""
    done = qty is None
    for _ in range(10):
        v.ts_ns += 300_000_000
        for st in v.streams():
            v.put(st, 0, tc.KIND_TICK, b"")
        v.mark(1, 9_000)
        if not done:
            v.step_until(lambda: adl_queued(v))
            if adl_queued(v):
                v.queue.appendleft((v.te[0], OPERATOR_SOURCE, tc.NEW_ORDER,
                                    tc.new_order(9, MM, 1, tc.SELL, 9_150, qty, tif=tc.IOC), 0))
                done = True
        v.run()
    assert done


def test_an_isolated_adl_leaves_the_rest_of_the_position_its_margin():
    """Round eighteen: the ADL closes 100,000 of V's isolated 200,000 at 9,790 (79 USDT of
    loss). Taken from the margin the rest held too, the rest sat at zero margin, its
    bankruptcy price at the mark, while V's close at 9,150 was being cancelled through the
    CrossEngine: an accomplice's IOC already on its way filled it with the mark at 9,000 and
    the fund covered 14.73 USDT more. (A close of all 200,000 filled so also opens a long on
    nothing: a known limit, docs/tradingengine.md §13, as for a handoff's cancels.)"""
    for close in (100_000,):
        base, _ = short_with_close(38 * USDT, close)
        until_adl_racing(base, None)
        covered = sum(e[2] for e in te_events(base.te[1], (tc.DEFICIT_COVERED,)) if e[1] == V)
        v, te = short_with_close(38 * USDT, close)
        rest = te.accounts[V].positions[1]
        margin = rest.margin
        until_adl_racing(v, close)
        for _ in range(3):
            v.tick(300_000_000)
            v.mark(1, 9_000)
            v.run()
        raced = sum(e[2] for e in te_events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == V)
        assert raced == covered == 79 * USDT - margin // 2, (close, raced, covered)
        assert v.liq.engine.fund_debt <= base.liq.engine.fund_debt, close


def test_a_cross_adl_loss_checks_the_accounts_reservations():
    """Round nineteen: V (80 USDT) is cross short 100,000 of symbol 1 at 9,000 and has an
    opening buy of symbol 2 resting (51.36 USDT reserved). The ADL at 9,790 took 79 USDT and
    left the reservation above the balance (0.55 USDT) with no check queued: the order then
    filled, a 1,000 USDT long on 0.35 USDT, handed off after a 2% move: the fund paid 19.65
    USDT."""
    v, te = gapped(1, 22 * USDT, 100_000)
    v.mark(1, 9_000)
    v.run()
    v.deposit(V, 80 * USDT, 5)
    v.run()
    v.leverage(V, 1, 5000)
    v.leverage(V, 2, 2000)
    v.order(MM, 3, 1, tc.BUY, 9_000, 100_000)
    v.run()
    v.order(V, 4, 1, tc.SELL, 9_000, 100_000)       # cross short
    v.run()
    v.order(V, 5, 2, tc.BUY, 50_000, Q2)            # an opening buy of symbol 2
    v.run()
    acct = te.accounts[V]
    assert acct.order_margin > 50 * USDT
    until_adl(v, (9_000, 50_000))
    assert [e for e in te_events(v.te[1], (tc.ADL_APPLIED,)) if e[2] == V][0][6] == -79 * USDT
    assert not acct.orders and acct.order_margin == 0, "the reservation outlived its money"
    v.order(MM, 6, 2, tc.SELL, 50_000, Q2, tif=tc.IOC)
    v.run()
    assert acct.positions[2].size == 0


def test_an_isolated_adl_with_no_close_on_its_way_takes_the_rests_gain_first():
    """Round nineteen: V's isolated short of 200,000 at 9,000 (36.92 USDT of margin); the mark
    is at 8,700 when the ADL closes 100,000 at 9,790 (79 USDT of loss, 18.46 released). The
    fund covered 60.54 USDT while the rest kept a 30 USDT gain at the mark, which V then
    realised (10.21 USDT up on its deposit). With no order of the symbol on its way (nothing
    can fill beyond a moved bankruptcy price) the rest's gain pays first, as for funding."""
    v, te = gapped(1, 22 * USDT, 100_000)
    v.mark(1, 9_000)
    v.run()
    isolated_short(v, 200_000, 40 * USDT)
    acct = te.accounts[V]
    pos = acct.positions[1]
    released = pos.margin // 2
    v.mark(1, 8_700)
    v.run()
    until_adl(v, (8_700,))
    assert pos.size == -100_000
    covered = sum(c[2] for c in te_events(v.te[1], (tc.DEFICIT_COVERED,)) if c[1] == V)
    assert covered == 79 * USDT - released - 30 * USDT
    assert pos.size * 8_700 * 100 - pos.cost == 0       # the rest's gain paid
