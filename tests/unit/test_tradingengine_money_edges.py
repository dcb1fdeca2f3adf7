"""Where money could leak at the edges of the margin rules: a handoff whose clamped price does
not cover the account's other cross losses, funding that an isolated margin cannot pay, and a
withdrawal that passes the available-balance check while maintenance at the mark exceeds the
margin held on the entry value (docs/tradingengine.md §6, §7).

Each scenario runs the whole engine side (both TradingEngine shards, the CrossEngines and the
LiqEngine, routed as the default topology, tests/liqcascade.py), and checks the books of every
engine after it (deploy/audit.py).
"""
from __future__ import annotations

from tests.liqcascade import SRC_ORACLE, RoutedVenue, audited_venue, check_books
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, TIMELESS_FUNDING_NS, Venue, events_of, two_specs
from tradingengine import codec as tc
from tradingengine.margin import maintenance

MM, TRADER, TAKER = 2, 11, 13        # the market maker on shard 0; the others on shard 1


def books_balance(v: RoutedVenue) -> None:
    for st in v.te:
        st.engine.check_invariants()
    check_books(v, v.liq)


def venue(fund: int) -> RoutedVenue:
    return audited_venue(two_specs(HOUR), fund)


def deposit(v: RoutedVenue, account: int, amount: int, tid: int) -> None:
    v.deposit(account, amount, tid)


def test_a_handoff_never_carries_a_negative_residue_into_the_insurance_fund():
    # The trader is short 10 of symbol 2 and has a stale bid for 5,000 of symbol 1 at twice a
    # mark that walked down. Filled there, its cross losses exceeded its balance and the
    # long stayed the account's until a mark: at symbol 2's next mark the short's bankruptcy
    # price clamped at one tick and the residue was base + realised < 0, which the LiqEngine
    # booked as a fund change and halted on (the fund below zero), or paid. A fill that
    # opens at a loss against the mark is now checked in its own record (docs/tradingengine.md
    # §6, "Between marks"): the long goes first, at its bankruptcy price, and the short it
    # leaves at zero equity follows at once, each with a residue of zero or more.
    fund = 100_000_000
    v = venue(fund)
    deposit(v, MM, 10**15, 2)
    deposit(v, TRADER, 10**9, 3)
    deposit(v, TAKER, 10**12, 4)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.run()
    v.order(MM, 1, 2, tc.BUY, 50_000, 10)
    v.order(TRADER, 2, 2, tc.SELL, 50_000, 10)
    v.leverage(TRADER, 1, 5000)
    v.order(TRADER, 3, 1, tc.BUY, 10_000, 5000)
    v.run()
    for p in range(9_500, 4_999, -500):
        v.mark(1, p)
        v.run()
    v.order(TAKER, 4, 1, tc.SELL, 5_000, 5000)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    handoffs = events(v.te[1], (tc.LIQUIDATION,))
    assert [(h[1], h[2], h[3]) for h in handoffs] == [(TRADER, 1, 5000), (TRADER, 2, -10)]
    assert all(h[6] >= 0 for h in handoffs)
    assert all(p.size == 0 for p in acct.positions.values()) and acct.balance == 0
    assert v.liq.engine.fund >= fund          # the residues came in; nothing paid out yet
    books_balance(v)
    v.mark(2, 50_000)
    v.mark(1, 5_000)
    v.run()
    books_balance(v)


def test_funding_of_an_isolated_position_comes_out_of_its_margin_never_below_zero():
    v = venue(10**11)
    deposit(v, MM, 10**15, 2)
    deposit(v, TRADER, 11_000_000, 3)
    v.mark(1, 10_000)
    v.run()
    v.operator_te(TRADER, tc.SET_MARGIN_MODE, tc.set_margin_mode(TRADER, 1, 1))
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.SELL, 10_000, 500)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 500)
    v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    margin, balance = pos.margin, acct.balance
    free = balance - margin
    for st in v.te:
        v.put(st, SRC_ORACLE, tc.FUNDING_INPUTS, tc.funding_inputs(1, 100_000, 0))
    v.run()
    v.ts_ns += HOUR + 1
    v.tick(1000)
    v.run()
    paid = [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert len(paid) == 1
    amount = paid[0][4]
    assert 0 < amount < margin
    # the margin paid it, the rest of the wallet did not: before, the margin stayed where it
    # was and the balance beside it drained, interval after interval, into DeficitCovered
    assert pos.margin == margin - amount
    assert acct.balance - pos.margin == free
    books_balance(v)
    # two more intervals with no mark between them: the third payment is more than the margin
    # left; the margin goes to zero and the fund pays the rest, not the trader's free balance
    v.ts_ns += 2 * HOUR
    v.tick(1000)
    v.run()
    paid = [e for e in events(v.te[1], (tc.FUNDING,)) if e[1] == TRADER]
    assert len(paid) == 3
    assert pos.margin == 0 and acct.balance == free
    covered = [e for e in events(v.te[1], (tc.DEFICIT_COVERED,)) if e[1] == TRADER]
    assert sum(e[2] for e in covered) == 3 * amount - margin
    books_balance(v)
    v.mark(1, 10_000)                         # at zero margin it is handed off at the next mark
    v.run()
    assert pos.size == 0 and acct.balance == free
    books_balance(v)


def test_a_withdrawal_leaves_the_cross_equity_above_maintenance_at_the_mark():
    # A short at 50x whose mark doubled: its margin is held on the entry value, its
    # maintenance is on the value at the mark, which is now the larger. A withdrawal of all
    # that `available` shows was accepted and left the account to be handed off at the next
    # mark.
    v = venue(10**11)
    deposit(v, MM, 10**15, 2)
    deposit(v, TRADER, 10**12, 3)
    v.mark(1, 10_000)
    v.run()
    v.leverage(TRADER, 1, 5000)
    v.order(MM, 1, 1, tc.BUY, 10_000, 100)
    v.order(TRADER, 2, 1, tc.SELL, 10_000, 100)
    v.run()
    for p in (10_400, 10_800, 11_300, 11_800, 12_400, 13_000, 14_000, 15_000, 16_000, 17_000,
              18_000, 19_000, 20_000):
        v.mark(1, p)
        v.run()
    te = v.te[1].engine
    acct = te.accounts[TRADER]
    pos = acct.positions[1]
    spec = te.specs[1]

    def equity() -> int:
        return acct.balance + pos.size * te.marks[1] * spec.value - pos.cost

    need = maintenance(pos.size, te.marks[1], spec)
    available = te._available(acct)
    headroom = equity() - need
    assert 0 < headroom <= available          # the case: available is not the bound
    for tid, amount, refused in ((90, available, True), (91, headroom, True),
                                 (92, headroom - 1, False)):
        v.operator_te(TRADER, tc.WITHDRAW, tc.transfer(tid, TRADER, amount))
        v.run()
        answer = events(v.te[1], (tc.REQUEST_REJECTED, tc.TRANSFER))[-1]
        if refused:
            assert answer[:3] == (tc.REQUEST_REJECTED, 2024, tc.WITHDRAW), answer
        else:
            assert answer[:4] == (tc.TRANSFER, tid, TRADER, amount), answer
    assert equity() - need == 1
    v.mark(1, 20_000)
    v.run()
    assert pos.size == -100                   # not handed off
    books_balance(v)


# -- a second round of the campaign: conditional orders, funding's reports -------------------

def test_a_reduce_only_stop_reached_by_the_mark_that_liquidates_does_not_open_a_position():
    # The mark that reaches a short's reduce-only stop-loss also puts the short below
    # maintenance. The trigger fired first and sent the stop to the CrossEngine; the handoff
    # could not recall it, and it filled against the ask after the position was gone: a
    # reduce-only order opened a long with nothing behind it.
    v = Venue(two_specs(TIMELESS_FUNDING_NS))
    v.deposit(1, 8_000_000)
    v.deposit(2, 10**14)
    v.mark(1, 10_000)
    v.order(1, 2, tc.BUY, 10_000, 30)
    v.order(2, 1, tc.SELL, 10_000, 30)
    v.order(3, 1, tc.BUY, 0, 20, ord_type=tc.MARKET, tif=tc.IOC, flags=tc.FLAG_REDUCE_ONLY,
            trigger_price=11_000, trigger_kind=tc.TRIGGER_STOP, trigger_by=tc.BY_MARK)
    v.order(4, 2, tc.SELL, 13_000, 100)
    events = v.mark(1, 13_000)
    assert [(e[1], e[3]) for e in events_of(events, tc.LIQUIDATION)] == [(1, -30)]
    assert v.position(1).size == 0
    stop = [e for e in events_of(events, tc.EXEC_REPORT) if e[5] == 3]
    assert stop and chr(stop[-1][1]) == "4", stop      # cancelled with the handoff
    v.te.check_invariants()


def test_a_stop_by_last_price_fires_on_the_mark_until_the_first_trade():
    v = Venue(two_specs(TIMELESS_FUNDING_NS))
    v.deposit(1, 10**12)
    v.mark(2, 50_000)
    v.order(7, 1, tc.SELL, 0, 5, symbol=2, ord_type=tc.MARKET, tif=tc.IOC,
            trigger_price=49_000, trigger_kind=tc.TRIGGER_STOP, trigger_by=tc.BY_LAST)
    assert not [e for e in events_of(v.mark(2, 49_500), tc.EXEC_REPORT)
                if e[1] == tc.EXEC_TRIGGERED]
    fired = [e for e in events_of(v.mark(2, 49_000), tc.EXEC_REPORT)
             if e[1] == tc.EXEC_TRIGGERED]
    assert [e[5] for e in fired] == [7]       # it waited for ever before


def test_cross_funding_never_takes_an_isolated_margin_and_is_reported():
    v = Venue(two_specs(HOUR))
    v.deposit(1, 30_000_000)
    v.deposit(2, 10**15)
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    v.apply(tc.SET_MARGIN_MODE, tc.set_margin_mode(1, 2, tc.ISOLATED))
    v.order(1, 2, tc.SELL, 50_000, 10, symbol=2)
    v.order(2, 1, tc.BUY, 50_000, 10, symbol=2)       # isolated long of symbol 2
    v.apply(tc.SET_LEVERAGE, tc.set_leverage(1, 1, 5000))
    v.order(3, 2, tc.SELL, 10_000, 1400, symbol=1)
    v.order(4, 1, tc.BUY, 10_000, 1400, symbol=1)     # cross long of symbol 1, 50x, no gain
    acct = v.te.accounts[1]
    iso = acct.positions[2]
    cross = acct.balance - iso.margin
    margin = iso.margin
    v.apply(tc.FUNDING_INPUTS, tc.funding_inputs(1, 7500, 0))
    events = v.apply(tc.KIND_TICK, b"", dt_ns=4 * HOUR)
    paid = sum(e[4] for e in events_of(events, tc.FUNDING) if e[1] == 1 and e[2] == 1)
    covered = sum(e[2] for e in events_of(events, tc.DEFICIT_COVERED) if e[1] == 1)
    assert paid > cross
    assert covered == paid - cross            # the cross part pays what it has, no more
    assert iso.margin == margin and acct.balance == margin
    # each payment is followed by the account's status: the LiqEngine ranks ADL by it
    statuses = [e for e in events_of(events, tc.ACCOUNT) if e[1] == 1]
    assert statuses and statuses[-1][2] == acct.balance
    assert [e for e in events_of(events, tc.POSITION) if e[1] == 1 and e[2] == 1]
    v.te.check_invariants()
