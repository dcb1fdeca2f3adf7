"""Round ten of the economic campaign (docs/tradingengine.md §5-§7), against round nine's
rules, driven as round nine was (tests/liqcascade.py; every engine's audit and money
conservation after every record). Each test failed on the code before its fix."""
from __future__ import annotations

import pytest

from tests.liqcascade import SRC_ORACLE, audited_venue
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc

MM, TRADER, ACCOMPLICE = 2, 11, 4
N = 100_000
AHEAD = (1, 3, 5, 7, 9)       # holders ahead of TRADER in a funding sweep


def _sweep_in_flight(v, te) -> None:
    """Funding at the cap, its sweep spanning records (the output budget at 0)."""
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    assert te.sweeps


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_an_isolated_position_changed_before_its_turn_in_a_sweep_pays_out_of_its_margin(change):
    """An isolated 10x long (about 100 USDT of margin), the trader's free cross money
    withdrawn before the funding time; during a sweep that spans records and before the
    trader's turn, a resting isolated order of the trader's fills (a bid: the long grows; an
    ask: it shrinks). Such a position was charged to the cross balance, as if it had closed,
    and the fund covered the payment (6.99 of 7.00 USDT) while its margin held 100 USDT. An
    isolated position still open pays out of its own margin."""
    fund = 10**11
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    for i, a in enumerate(AHEAD):
        v.deposit(a, 10**10, 5 + i)
    v.deposit(TRADER, 2 * 10**10, 20)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 10 * N)
    for a in AHEAD:
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.leverage(TRADER, 1, 1000)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, N)
    v.run()
    v.operator_te(MM, tc.CANCEL_ALL, tc.cancel_all(9, MM))
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    if change == "grows":
        v.order(TRADER, 3, 1, tc.BUY, 9_990, 1000)
    else:
        v.order(TRADER, 3, 1, tc.SELL, 10_010, 1000)
    v.run()
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(30, TRADER, te._available(acct)))
    v.run()
    _sweep_in_flight(v, te)
    assert te._funding_owed(TRADER) > 0
    if change == "grows":
        v.order(ACCOMPLICE, 4, 1, tc.SELL, 9_990, 1000, tif=tc.IOC)
    else:
        v.order(ACCOMPLICE, 4, 1, tc.BUY, 10_010, 1000, tif=tc.IOC)
    v.run()
    for _ in range(10):
        v.tick(1)
    assert not te.sweeps
    pos = acct.positions[1]
    assert pos.size == (N + 1000 if change == "grows" else N - 1000)
    paid = sum(e[4] for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER)
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    assert paid > 0 and not covered, f"the fund covered {covered} of {paid}"
    assert v.liq.engine.fund >= fund


def test_a_cross_close_at_the_mark_is_not_refused_for_funding_an_isolated_position_owes():
    """An isolated long owes 3.5 USDT to a sweep in flight, which its 50 USDT of margin pays;
    the account's cross long of another symbol has 3 USDT of cross equity. Its close at the
    mark (its entry) was refused (2043): the cross check counted the account's whole funding
    owed, though an isolated position's comes out of its own margin."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate(AHEAD):
        v.deposit(a, 10**10, 5 + i)
    v.deposit(TRADER, 10**10, 20)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, tc.ISOLATED))
    v.order(MM, 1, 1, tc.SELL, 10_000, N)
    for a in (*AHEAD, TRADER):
        v.leverage(a, 1, 1000)
        v.order(a, 2, 1, tc.BUY, 10_000, 10_000 if a != TRADER else 50_000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(30, TRADER,
                                                   te._available(acct) - 300_000_000))
    v.leverage(TRADER, 2, 2000)
    v.order(MM, 3, 2, tc.SELL, 50_000, 1000)
    v.order(TRADER, 4, 2, tc.BUY, 50_000, 1000)
    v.run()
    assert acct.positions[2].mode == tc.CROSS and acct.positions[2].size == 1000
    _sweep_in_flight(v, te)
    assert te._funding_owed(TRADER) == te._funding_owed(TRADER, 1) > 0
    v.order(MM, 5, 2, tc.BUY, 50_000, 1000)
    v.order(TRADER, 6, 2, tc.SELL, 50_000, 1000)
    v.run()
    codes = [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,)) if e[3] == TRADER and e[5] == 6]
    assert 2043 not in codes and acct.positions[2].size == 0, codes


def _long(fund: int, deposit: int, qty: int, leverage_x100: int):
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 4)
    v.deposit(TRADER, deposit, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, leverage_x100)
    v.order(MM, 1, 1, tc.SELL, 10_000, qty)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, qty)
    v.run()
    te = v.te[1].engine
    return v, te, te.accounts[TRADER]


def test_a_reduce_only_close_beside_a_plain_one_reserves_what_it_would_open():
    """Round nine let a reduce-only order count only the reduce-only orders ahead of it (a
    stop-loss beside a take-profit limit was refused when it fired), and it reserved nothing.
    A plain close and a reduce-only close of a 50x long, both at its bankruptcy price, lifted
    by one IOC: the plain one closed the long, the reduce-only one opened a short on no money,
    handed off at once, and the fund paid 29.4 USDT. A reduce-only order now reserves what it
    opens if the orders ahead of it fill first: with no money for that it is refused (2012);
    with the money, a short it opens is reserved and the fund pays nothing."""
    fund = 10**11
    v, te, acct = _long(fund, 3_200_000_000, 150_000, 5000)   # 32 USDT, 1,500 USDT long
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 3, 1, tc.SELL, bk, 150_000)
    v.order(TRADER, 4, 1, tc.SELL, bk, 150_000, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    assert [e[16] for e in events(v.te[1], (tc.EXEC_REPORT,))
            if e[3] == TRADER and e[5] == 4] == [2012]
    v.order(ACCOMPLICE, 5, 1, tc.BUY, bk, 300_000, tif=tc.IOC)
    v.order(MM, 6, 1, tc.SELL, 10_000, 300_000)
    v.run()
    for _ in range(20):
        v.tick(300_000_000)
        v.mark(1, 10_000)
        v.run()
    assert v.liq.engine.fund >= fund
    # with the money: the reduce-only sell rests, reserved for the short it may open
    v, te, acct = _long(fund, 10**10, 100, 1000)
    v.order(TRADER, 3, 1, tc.SELL, 10_100, 100)
    v.order(TRADER, 4, 1, tc.SELL, 10_100, 100, flags=tc.FLAG_REDUCE_ONLY)
    v.run()
    (ro,) = [o for o in acct.orders.values() if o.client_order_id == 4]
    assert ro.leaves == 100 and ro.margin > 0
    v.order(ACCOMPLICE, 5, 1, tc.BUY, 10_100, 200, tif=tc.IOC)
    v.run()
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    assert not covered and v.liq.engine.fund >= fund
