"""A mark crash through many leveraged longs on 2 shards, the whole engine side routed as the
topology routes it (tests/liqcascade.py): TradingEngines hand off, the LiqEngine closes out in
the CrossEngine's book, pays from the insurance fund and auto-deleverages the market makers.

Checked after every record of every engine: each engine's own audit, the global sum of
deploy/audit.py (te_books + liq_books = deposits), the fund never below zero, and ADL only when
the fund cannot hold the close-out: every Adl belongs to a close-out that entered ADL phase with
a free fund (fund - reserves) at or below zero or below its exposure at mark. At rest after
each step of the crash (only what the fund holds left open): the clearing positions and
balances of all engines net to zero per symbol. After the crash the makers bid a fresh ladder
from the last mark down (the market refills) and everything runs to quiescence; then every
position left is above maintenance, LIQ is flat, and the fund moved by exactly its residues,
deficits and the close-out differences recomputed from the CrossEngine's trades of LIQ. No Adl at all when the fund is rich, whatever the ladder.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossengine import codec as cc
from deploy.audit import Report
from liqengine import codec as lc
from mq.record import decode
from tests.liqcascade import RoutedVenue
from tests.tradingvenue import spec
from tradingengine import codec as tc
from tradingengine.margin import maintenance

MID = 10_000
MM = (1, 2)            # market makers, one per shard


def _check_record(v: RoutedVenue, st) -> None:
    eng = st.engine
    if st is v.liq:
        eng.audit()
        assert eng.fund >= 0, f"fund {eng.fund} below zero at in.liq seq {eng.seq}"
        # ADL fires only when the fund cannot hold the close-out: every Adl of this record
        # belongs to a close-out that entered ADL phase with a free fund (fund - reserves) at
        # or below zero or below its exposure at mark, or with fewer lots than the market
        # takes (min_qty, 1 here)
        for adl_id, cid, (free, exposure, qty) in v.adl_free[v.adl_seen:]:
            assert free <= 0 or free < exposure or qty < 1, \
                f"Adl {adl_id} of close-out {cid}: free fund {free} (exposure {exposure}) " \
                f"at its entry"
        v.adl_seen = len(v.adl_free)
    elif st in v.te:
        eng.audit()
    books = v.books()
    assert sum(b.total() for b in books) == sum(b.deposits for b in books), \
        f"global audit off after {st.name} seq {st.seq}"


def _at_rest(v: RoutedVenue) -> None:
    r = Report(v.books(), 0.0)      # what `seqex audit` checks at rest
    assert r.at_rest, f"clearing does not net to zero: {r.clearing_net()} (lots), " \
        f"{[(b.name, b.clearing) for b in r.engines]} (money)"


def cascade(n_longs: int, fund: int, ladder: int, crash_to: int, seed: int,
            deep_floor: bool = False) -> dict:
    """Build the longs, crash the mark, run to quiescence; check; return the figures."""
    s = spec(1, value=10, max_leverage_x100=10_000, band_ppm=100_000)
    v = RoutedVenue([s], n_shards=2, on_record=_check_record)
    v.adl_seen = 0
    tid = 1
    for a in MM:
        v.deposit(a, 10**14, tid)
        tid += 1
    v.mark(1, MID)
    v.run()
    if fund:
        v.fund_deposit(tid, fund)
        tid += 1
    longs = list(range(10, 10 + n_longs))
    coid = 1_000
    for i, a in enumerate(longs):
        lev = (2_000, 5_000, 10_000)[(i * 7 + seed) % 3]
        qty = 1 + (i * 13 + seed) % 20
        v.deposit(a, qty * MID * 10 * 100 // lev + 2_000 + (i * 31 + seed) % 500, tid)
        tid += 1
        v.leverage(a, 1, lev)
        coid += 1
        v.order(MM[i % 2], coid, 1, tc.SELL, MID, qty)
        coid += 1
        v.order(a, coid, 1, tc.BUY, MID, qty)
        v.run()
    # the market makers' bids under the market, thin: where the close-outs go
    step = max(1, MID // 200)
    for k in range(1, 16):
        coid += 1
        v.order(MM[k % 2], coid, 1, tc.BUY, MID - k * step, ladder)
    if deep_floor:
        coid += 1
        v.order(MM[0], coid, 1, tc.BUY, MID - 999, 10**5)
    v.run()
    _at_rest(v)
    fund0 = v.liq.engine.fund
    # the crash, in steps, each run with Ticks until only what the fund holds is left
    price = MID
    while price > crash_to:
        price = max(crash_to, price - MID // 40)
        v.mark(1, price)
        v.run()
        _settle(v, v.settled)
    # the market refills: the makers bid a fresh ladder from the last mark down, deep enough
    # for what LIQ holds; the held close-outs' next IOCs close there
    held = v.liq.engine.liq[1][0]
    for k in range(5):
        coid += 1
        v.order(MM[k % 2], coid, 1, tc.BUY, price - k * step, ladder + max(held, 0))
    v.run()
    _settle(v, v.quiet)
    return _check_outcome(v, s, fund0)


def _settle(v: RoutedVenue, done) -> None:
    for _ in range(400):
        if done():
            break
        v.tick(50_000_000)
    assert done(), f"not {done.__name__} after 400 Ticks"
    _at_rest(v)


def _check_outcome(v: RoutedVenue, s, fund0: int) -> dict:
    liq = v.liq.engine
    # every position left is above maintenance at the last mark
    mark = liq.marks[1]
    for shard in v.te:
        for acct in shard.engine.accounts.values():
            pos = acct.positions.get(1)
            if pos is not None and pos.size and not acct.orders:
                equity = acct.balance + pos.size * mark * s.value - pos.cost
                assert equity > maintenance(pos.size, mark, s), \
                    f"account {acct.account_id} below maintenance and not liquidated"
    # out.liq: takeovers (close-out ids in order), fund changes, Adls
    takeovers, reasons, adls = [], {1: 0, 2: 0, 3: 0, 4: 0}, 0
    for events in v.liq_events():
        for ev in events:
            if ev[0] == lc.TAKEOVER:
                takeovers.append(ev)
            elif ev[0] == lc.FUND_CHANGED:
                reasons[ev[3]] += ev[2]
            elif ev[0] == lc.ADL:
                adls += 1
    bp = {cid: (ev[5], 1 if ev[4] > 0 else -1) for cid, ev in enumerate(takeovers, 1)}
    # the close-out differences, from the CrossEngine's trades of LIQ
    coids, diffs, filled = {}, 0, 0
    for frame in v.ce[1].out:
        for rec in decode(frame):
            for ev in cc.decode_events(rec[6]):
                if ev[0] == cc.EV_ACCEPTED and ev[3] == lc.LIQ_ACCOUNT:
                    coids[ev[1]] = ev[2]
                elif ev[0] == cc.EV_TRADE and lc.LIQ_ACCOUNT in (ev[4], ev[5]):
                    order = ev[2] if ev[4] == lc.LIQ_ACCOUNT else ev[3]
                    price, side = bp[coids[order] // 4]
                    diffs += (ev[6] - price) * ev[7] * s.value * side
                    filled += ev[7]
    assert reasons[3] == diffs, f"fund's close-out changes {reasons[3]} != differences {diffs}"
    assert liq.fund - fund0 == reasons[2] + reasons[3] + reasons[4], (liq.fund, fund0, reasons)
    assert liq.fund >= 0 and liq.fund_debt >= 0
    assert all(n == 0 for n, _c, _r in liq.liq.values()), "LIQ still holds a position"
    assert len(v.adl_free) == adls and all(free <= 0 or free < exposure or qty < 1
                                           for _a, _c, (free, exposure, qty) in v.adl_free)
    return {"takeovers": len(takeovers), "filled": filled, "adls": adls, "diffs": diffs,
            "residues": reasons[2], "deficits": reasons[4], "fund": liq.fund,
            "records": v.records}


def test_cascade_small_fund_empty_adl():
    """An empty fund and a thin book: close-outs in the market, then ADL of the makers."""
    f = cascade(n_longs=16, fund=0, ladder=3, crash_to=8_000, seed=1)
    assert f["takeovers"] >= 10 and f["adls"] > 0 and f["filled"] > 0, f


def test_cascade_rich_fund_deep_book_no_adl():
    """A rich fund and a deep bid: every close-out fills in the market, no ADL at all."""
    f = cascade(n_longs=16, fund=10**12, ladder=3, crash_to=9_100, seed=2, deep_floor=True)
    assert f["takeovers"] >= 10 and f["adls"] == 0, f
    assert f["diffs"] < 0, f            # the fund paid for the fills under bankruptcy


def test_cascade_fund_holds_what_a_thin_ladder_cannot_take():
    """A fund that covers the held exposure and a thin ladder: the ladder is eaten, the fund
    holds the rest (no Adl) and the held close-outs close in the refilled book."""
    f = cascade(n_longs=16, fund=10**7, ladder=3, crash_to=8_000, seed=1)
    assert f["takeovers"] >= 10 and f["adls"] == 0, f
    assert f["filled"] > 15 * 3, f      # more than the first ladder held: the refill took it


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(4, 14), fund=st.sampled_from([0, 10**5, 10**7, 10**12]),
       ladder=st.integers(1, 8), crash=st.integers(8_000, 9_700), seed=st.integers(0, 50),
       deep=st.booleans())
def test_cascade_properties(n, fund, ladder, crash, seed, deep):
    f = cascade(n, fund, ladder, crash, seed, deep_floor=deep)
    if fund >= 10**12:
        assert f["adls"] == 0, f


@pytest.mark.slow
def test_cascade_big():
    f = cascade(n_longs=200, fund=10**6, ladder=20, crash_to=7_000, seed=5)
    assert f["takeovers"] >= 150 and f["adls"] > 0, f
