"""Round eleven of the economic campaign (docs/tradingengine.md §5-§7, §11), against rounds
nine and ten's rules, driven as they were (tests/liqcascade.py; every engine's audit and money
conservation after every record). Each test failed on the code before its fix."""
from __future__ import annotations

import pytest

from tests.liqcascade import SRC_ORACLE, audited_venue
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.margin import order_cost

MM, ACCOMPLICE, TRADER = 2, 4, 11
FAR = 101                           # behind AHEAD in a funding sweep
AHEAD = tuple(range(1, 40, 2))      # holders ahead of FAR in the funding sweep
Q = 150_000


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


@pytest.mark.parametrize("second", ["plain", "reduce_only", "amended"])
def test_a_close_entered_while_another_close_grows_by_amend_reserves_what_it_opens(second):
    """A 50x long of 150,000 lots (1,500 USDT) on 32 USDT. A sell of 1 lot rests at the
    long's bankruptcy price; an amend takes it to 150,000 and, before the CrossEngine
    answers, a second sell of 150,000 at the same price enters (plain or reduce-only; or a
    second 1-lot sell is amended to 150,000 in the same way): it counts only the 1 lot
    ahead of it, so it reserves the margin of 1 lot (0.0004 USDT). One IOC lifts both: the
    first closes the long, the second opens a 150,000 short at 2% below the mark on no
    money, handed off at once, and the fund pays 29.36 USDT. (Two plain sells entered one
    after the other are checked right: the second reserves the whole short, and is refused.)"""
    fund = 10**11
    q = 150_000
    v, te, acct = _long(fund, 3_200_000_000, q, 5000)
    bk = te._bankruptcy(acct, 1, acct.positions[1])
    v.order(TRADER, 3, 1, tc.SELL, bk, 1)
    if second == "amended":
        v.order(TRADER, 4, 1, tc.SELL, bk, 1)
    v.run()
    # the amend and the second order both reach the engine before the CrossEngine's answer
    v.operator_te(TRADER, tc.AMEND, tc.amend(5, 3, TRADER, 0, q))
    if second == "amended":
        v.operator_te(TRADER, tc.AMEND, tc.amend(6, 4, TRADER, 0, q))
    else:
        v.order(TRADER, 4, 1, tc.SELL, bk, q,
                flags=tc.FLAG_REDUCE_ONLY if second == "reduce_only" else 0)
    v.run()
    v.order(ACCOMPLICE, 6, 1, tc.BUY, bk, 2 * q, tif=tc.IOC)
    v.order(MM, 7, 1, tc.SELL, 10_000, 2 * q)
    v.run()
    for _ in range(10):
        v.tick(300_000_000)
        v.mark(1, 10_000)
        v.run()
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER)
    lost = fund - v.liq.engine.fund
    assert lost <= 0 and not covered, f"the fund lost {lost}, covered {covered}"


def _far_long_behind_holders(fund: int, mode: int):
    """A 50x long of Q lots for FAR on 32 USDT (cross or isolated), behind the AHEAD holders
    in a funding sweep of symbol 1, the mark at 10,000."""
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    v.deposit(ACCOMPLICE, 10**13, 3)
    for i, a in enumerate(AHEAD):
        v.deposit(a, 10**10, 10 + i)
    v.deposit(FAR, 3_200_000_000, 99)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, Q + 1000 * len(AHEAD))
    for a in AHEAD:
        v.order(a, 2, 1, tc.BUY, 10_000, 1000)
    if mode == tc.ISOLATED:
        v.operator_te(FAR, tc.SET_MARGIN_MODE, tc.set_margin_mode(FAR, 1, tc.ISOLATED))
    v.leverage(FAR, 1, 5000)
    v.order(FAR, 2, 1, tc.BUY, 10_000, Q)
    v.run()
    return v


def test_a_position_closed_before_its_turn_cannot_spend_the_funding_it_owes():
    """A 50x long of 150,000 lots (1,500 USDT) on 32 USDT owes 10.5 USDT to a funding sweep
    that spans records. Before the sweep reaches it, the trader closes the long at the mark
    (its margin goes back to the cross balance, which now owes the 10.5 USDT) and spends
    all its available balance on a 50x buy at the band's edge, 5% over the mark, from an
    accomplice: the order's check counts no funding owed. At its turn the balance pays, the
    new long's equity is -1.39 USDT, it is handed off above the mark and the insurance fund
    pays 1.39 USDT of the funding. A withdrawal of the same money would have been refused
    (2024); the order should be held to the available balance less what the cross balance
    owes, as the close's 2043 check is."""
    fund = 10**11
    v = _far_long_behind_holders(fund, tc.CROSS)
    te = v.te[1].engine
    acct = te.accounts[FAR]
    assert acct.positions[1].size == Q
    # funding at the cap, its sweep spanning records (the output budget at 0)
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.run()
    budget = te.output_budget
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    owed = te._funding_owed(FAR)
    assert te.sweeps and owed == 1_050_000_000
    # before its turn: close at the mark, then spend everything on a buy 5% over the mark
    v.order(MM, 10, 1, tc.BUY, 10_000, Q)
    v.order(FAR, 11, 1, tc.SELL, 10_000, Q, tif=tc.IOC)
    v.run()
    assert acct.positions[1].size == 0 and te._funding_owed(FAR) == owed
    q = te._available(acct) // order_cost(1, 10_500, True, 10_000, te.specs[1], 5000)
    v.order(ACCOMPLICE, 12, 1, tc.SELL, 10_500, q)
    v.order(FAR, 13, 1, tc.BUY, 10_500, q, tif=tc.IOC)
    v.run()
    for _ in range(100):
        if not te.sweeps:
            break
        v.tick(1)
    assert not te.sweeps
    for st in v.te:
        st.engine.output_budget = budget
    v.order(MM, 14, 1, tc.BUY, 10_000, 100_000)
    for _ in range(20):
        v.tick(300_000_000)
        v.mark(1, 10_000)
        v.run()
    paid = sum(e[4] for e in events(v.te[1], (tc.FUNDING,)) if e[1] == FAR)
    assert paid == owed
    lost = fund - v.liq.engine.fund
    assert lost <= 0, f"the insurance fund paid {lost} of the trader's {paid} of funding"


def test_a_shrunk_isolated_position_at_zero_margin_pays_out_of_its_gain():
    """An isolated 50x long of 150,000 lots, its wallet withdrawn, the mark 4% up: three
    hourly fundings at 0.7% take its margin to zero (the third partly out of its gain, 60
    USDT, as §7 says). At the fourth, during a sweep that spans records and before its
    turn, it sells 2,000 lots (a shrink that leaves its margin at zero): the payment then
    found no balance, skipped the kept margin (zero) and, with it, the position's gain
    (57 USDT): the fund covered 10.16 of the 10.92 USDT."""
    fund = 10**11
    v = _far_long_behind_holders(fund, tc.ISOLATED)
    te = v.te[1].engine
    acct = te.accounts[FAR]
    pos = acct.positions[1]
    v.operator_te(FAR, tc.WITHDRAW, tc.transfer(100, FAR, te._available(acct)))
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    v.mark(1, 10_400)
    v.run()
    for _ in range(3):
        v.ts_ns = te.next_funding[1]
        v.tick(1)
        v.mark(1, 10_400)
        v.run()
    assert pos.size == Q and pos.margin == 0 and acct.balance == 0
    assert not [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == FAR]
    # the fourth funding, its sweep spanning records (the output budget at 0)
    budget = te.output_budget
    for st in v.te:
        st.engine.output_budget = 0
    v.ts_ns = te.next_funding[1]
    v.tick(1)
    assert te.sweeps and te._funding_owed(FAR) > 0
    v.order(MM, 10, 1, tc.BUY, 10_400, 2000)
    v.order(FAR, 11, 1, tc.SELL, 10_400, 2000, tif=tc.IOC)
    v.run()
    assert pos.size == Q - 2000 and pos.margin == 0
    for _ in range(100):
        if not te.sweeps:
            break
        v.tick(1)
    assert not te.sweeps
    for st in v.te:
        st.engine.output_budget = budget
    assert pos.size * 10_400 * 100 - pos.cost > 0          # the gain is still there
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == FAR)
    assert not covered, f"the fund covered {covered} while the position's gain could pay"


def test_a_reduce_only_stop_is_not_sent_ahead_of_its_accounts_handoff():
    """Three 50x longs of 1,000 USDT on 21 USDT each (accounts 1, 3, 5), the last with a
    reduce-only stop-market sell of its whole long at 9,950. A mark of 9,890 puts all three
    at maintenance; its sweep spans records and hands off 1, then 3; a second mark of
    9,890 arrives in between, and its maintenance sweep goes behind the first mark's
    trigger sweep. The stop fires, reaches the CrossEngine, account 5 is handed off, and
    the stop then sells 100,000 lots into a bid at 9,850: a short on nothing, its fee
    covered (0.49 USDT) and handed off at 9,845 with the mark at 9,890 (4.5 USDT of loss
    for the fund at the mark)."""
    D1, D2, VICTIM = 1, 3, 5
    Q = 100_000
    fund = 10**11
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(MM, 10**15, 2)
    for i, a in enumerate((D1, D2, VICTIM)):
        v.deposit(a, 2_100_000_000, 3 + i)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 3 * Q)
    for a in (D1, D2, VICTIM):
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
    v.mark(1, 9_890)
    v.mark(1, 9_890)
    v.put(v.te[1], 0, tc.KIND_TICK, b"")
    v.put(v.te[1], 0, tc.KIND_TICK, b"")
    v.run()
    te.output_budget = budget
    for _ in range(5):
        v.tick(300_000_000)
        v.mark(1, 9_890)
        v.run()
    handoffs = [e for e in events(v.te[1], (tc.LIQUIDATION,)) if e[1] == VICTIM]
    covered = sum(e[2] for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == VICTIM)
    assert len(handoffs) == 1 and not covered, \
        f"the stop opened a short after the handoff: handoffs {handoffs}, covered {covered}"


def test_orders_accepted_at_a_leverage_keep_that_leverage_allowed():
    """Symbol 1's first tier (50x) ends at 2,000 USDT. At 50x: a sell of 1 lot at 10,490
    (passive) and a sell of 199,999 lots at the mark, 10,000: the second is valued at
    200,000 x 10,000 (its own price), within the tier, and accepted. A SetLeverage to the
    same 50x then values the side at the highest of its prices, 200,000 x 10,490, beyond
    the tier, and is refused (2020): the orders hold a leverage their own checks would
    refuse, by the rule §6 says both follow."""
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(TRADER, 10**12, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 1, 1, tc.SELL, 10_490, 1)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 199_999)
    v.run()
    te = v.te[1].engine
    live = sorted(o.client_order_id for o in te.accounts[TRADER].orders.values())
    v.leverage(TRADER, 1, 5000)
    v.run()
    refused = [e[1] for e in events(v.te[1], (tc.REQUEST_REJECTED,)) if e[3] == TRADER]
    assert not (live == [1, 2] and refused == [2020]), \
        "the new order passed the tier that SetLeverage at the same leverage refuses"

