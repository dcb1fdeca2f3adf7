"""Adversarial property tests of the CrossEngine's level map and rungs (engine.pyx: side_find,
lmap_grow / lmap_del, side_open_rung / side_close_rung, walk_next, _drop_level's next best).

* the extreme ends of the price range with any tick, up to ticks that leave one or two
  prices, checked against the reference after every command and through restore;
* books of a few thousand levels under poor hash multipliers (every key's home in the last
  slot, so probe runs wrap round the table and every deletion's backward shift crosses it;
  every home in slot 0; two clusters), built, emptied in random order, refilled and swept;
* empty-and-refill cycles by every path that frees a level (cancel, cancel all, mass cancel,
  a sweep, an amend away): the rung pool and the maps stop growing once they fit the book;
* whole frames of such commands (apply_frame), restored every third frame;
* a level-map grow of one side reads in proportion to that side, not to the level pool."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine import engine as ce
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.record import encode
from mq.sources import OPERATOR_SOURCE
from tests.property.test_crossengine_adversarial import framed, lockstep

TOP = 1 << 62
RUNG = 512
MASK64 = (1 << 64) - 1
POOR = [MASK64, 1, (1 << 63) + 1, (1 << 32) + 1, 3]


class Pair:
    """The engine and the reference in lockstep; the engine's restored copy as a shadow."""

    def __init__(self, **cfg):
        self.eng = CrossEngine(**cfg)
        self.ref = ReferenceEngine(**cfg)
        self.shadow = None
        self.seq = 0

    def do(self, kind, payload=b"", src=7):
        self.seq += 1
        a = self.eng.apply(self.seq, 0, kind, payload, source=src)
        b = self.ref.apply(self.seq, 0, kind, payload, source=src)
        assert a == b, (self.seq, kind, c.decode_events(a)[:6], c.decode_events(b)[:6])
        if self.shadow is not None:
            assert self.shadow.apply(self.seq, 0, kind, payload, source=src) == a
        return c.decode_events(a)

    def new(self, cl, side, price, qty=1, acct=1, ot=c.LIMIT, tif=c.GTC, fl=0, stp=0):
        return self.do(c.NEW_ORDER, c.new_order(cl, side, price, qty, acct, ot, tif, fl, stp))

    def check(self, restore=True):
        self.eng.check_invariants()
        snap = self.eng.snapshot()
        assert snap == self.ref.snapshot()
        assert self.eng.book() == self.ref.book()
        if self.shadow is not None:
            assert self.shadow.snapshot() == snap
            self.shadow.check_invariants()
        if restore:
            back = CrossEngine.restore(snap, check=True)
            assert back.snapshot() == snap and back.book() == self.eng.book()
            self.shadow = back

    def live(self):
        return list(self.ref.orders)


# -- the ends of the range ------------------------------------------------------------------
EXTREME_TICKS = [1, 2, 3, 511, 512, 513, (1 << 40) + 1, (1 << 53) - 1, 1 << 60, (1 << 61) - 1,
                 1 << 61, (1 << 62) // 3, (1 << 62) - 1, 1 << 62]


@settings(max_examples=300, deadline=None)
@given(tick=st.sampled_from(EXTREME_TICKS), mul=st.sampled_from([None] + POOR),
       ops=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([c.BUY, c.SELL]),
                              st.integers(0, 11), st.integers(1, 5), st.integers(1, 3)),
                    min_size=1, max_size=60))
def test_the_ends_of_the_range_with_any_tick(tick, mul, ops):
    ce.seed_hashes(multiplier=mul)
    try:
        last = TOP // tick
        # the lowest and highest ticks, and around the rung and word boundaries near both
        cands = sorted({t for t in (1, 2, 3, 63, 64, 65, 511, 512, 513, last, last - 1,
                                    last - 2, last - 63, last - 64, last - 511, last - 512,
                                    last - 513, last - last % RUNG, last - last % RUNG + 1)
                        if 1 <= t <= last})
        p = Pair(tick_size=tick, max_price=last * tick, max_qty=100, max_orders=1000,
                 max_fills=7)
        for k, (op, side, pi, qty, acct) in enumerate(ops):
            price = cands[pi % len(cands)] * tick
            if op <= 2:
                p.new(k + 1, side, price, qty, acct, stp=k % 5)
            elif op == 3 and p.live():
                p.do(c.AMEND, c.amend(order_id=p.live()[pi % len(p.live())], price=price))
            elif op == 4 and p.live():
                p.do(c.CANCEL, c.cancel(order_id=p.live()[pi % len(p.live())]))
            elif op == 5:
                p.new(k + 1, side, 0, qty * 5, acct, c.MARKET, c.IOC)
            if k % 7 == 0:
                p.check()
        p.check()
        p.do(c.MASS_CANCEL, src=OPERATOR_SOURCE)
        p.check()
    finally:
        ce.seed_hashes()


def test_one_price_books():
    """tick == max_price: the one price 2**62 (bid tick 1, ask tick 2**62 - 1: the last tick
    of its rung); tick 2**61: two prices; tick 1: prices 1 and 2**62 (ask tick 0, bid rung
    2**53)."""
    for tick, prices in ((1 << 62, [1 << 62]), (1 << 61, [1 << 61, 1 << 62]),
                         (1, [1, 2, TOP - 1, TOP])):
        p = Pair(tick_size=tick, max_price=TOP, max_qty=100, max_orders=100)
        cl = 0
        for _rounds in range(3):
            for side in (c.SELL, c.BUY):
                for pr in (prices if side == c.SELL else prices[:1]):
                    cl += 1
                    p.new(cl, side, pr, 2, 1 + cl % 2)
            p.check()
            cl += 1
            p.new(cl, c.BUY, 0, 3, 9, c.MARKET, c.IOC)
            p.check()
            cl += 1
            p.new(cl, c.SELL, 0, 50, 9, c.MARKET, c.IOC)
            p.check()


# -- poor multipliers, wide books -----------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(mul=st.sampled_from(POOR), seed=st.integers(0, 2**32),
       tick=st.sampled_from([1, 5, 1 << 20, (1 << 40) + 1]), n=st.integers(100, 2500))
def test_poor_multiplier_wide_books(mul, seed, tick, n):
    ce.seed_hashes(multiplier=mul)
    try:
        _wide_books(mul, seed, tick, n)
    finally:
        ce.seed_hashes()


def _wide_books(mul, seed, tick, n):
    rng = random.Random(seed)
    last = TOP // tick
    half = last // 2
    p = Pair(tick_size=tick, max_price=last * tick, max_qty=1000, max_orders=100_000,
             max_fills=1000)

    def some_ticks(k, lo, hi):
        out = set()
        while len(out) < k:
            r = rng.random()
            if r < 0.4:
                out.add(rng.randrange(lo, hi))
            elif r < 0.8:   # near rung and word boundaries
                b = rng.randrange(lo // RUNG + 1, hi // RUNG) * RUNG
                out.add(b + rng.choice([-1, 0, 1, 63, 64, 65, 511]))
            else:           # a dense run
                b = rng.randrange(lo, hi - 100)
                out.update(range(b, b + rng.randint(1, 40)))
        return [t for t in out if lo <= t < hi]

    bids = some_ticks(n, 1, half)
    asks = some_ticks(n, half + 1, last + 1)
    cl = 0
    for round_no in range(3):
        for t in bids:
            cl += 1
            p.new(cl, c.BUY, t * tick, 1 + cl % 4, 1 + cl % 7)
        for t in asks:
            cl += 1
            p.new(cl, c.SELL, t * tick, 1 + cl % 4, 1 + cl % 7)
        p.check()
        # half of the levels out in random order (backward shifts all over the runs)
        ids = p.live()
        rng.shuffle(ids)
        for oid in ids[:len(ids) // 2]:
            p.do(c.CANCEL, c.cancel(order_id=oid))
        p.check(restore=False)
        # amends that move orders across rungs, both ways
        for oid in rng.sample(p.live(), min(200, len(p.live()))):
            o = p.ref.orders[oid]
            lo, hi = (1, half) if o.side == c.BUY else (half + 1, last + 1)
            p.do(c.AMEND, c.amend(order_id=oid, price=rng.randrange(lo, hi) * tick))
        # sweeps through up to max_fills levels each side
        cl += 1
        p.new(cl, c.SELL, 0, 999, 99, c.MARKET, c.IOC)
        cl += 1
        p.new(cl, c.BUY, 0, 999, 99, c.MARKET, c.IOC)
        p.check()
        if round_no == 1:
            for a in range(1, 8):
                p.do(c.CANCEL_ALL, c.cancel_all(a, rng.choice([0, c.BUY, c.SELL])))
        else:
            p.do(c.MASS_CANCEL, src=OPERATOR_SOURCE)
        p.check()
        bids = some_ticks(n, 1, half)
        asks = some_ticks(n, half + 1, last + 1)


# -- freed rungs and levels are reused ---------------------------------------------------------
def _pools(eng):
    s = eng.index_stats()
    return (s["bid_levels"][1], s["ask_levels"][1], s["bid_rungs"][1], s["ask_rungs"][1],
            s["bid_rungs"][3], s["ask_rungs"][3])


@pytest.mark.parametrize("how", ["cancel", "cancel_all", "mass", "sweep", "amend_away"])
def test_every_way_of_emptying_frees_rungs_for_reuse(how):
    """300 levels in 300 distinct rungs (and levels at the rungs' first and last ticks), each
    round at new prices, emptied one way: after the first round no pool or map grows."""
    rng = random.Random(how)
    tick = 3
    last = TOP // tick
    p = Pair(tick_size=tick, max_price=last * tick, max_qty=1000, max_orders=10_000,
             max_fills=1000)
    first = None
    cl = 0
    for round_no in range(8):
        rungs = rng.sample(range(2, last // RUNG // 2 - 2), 150)
        ticks = sorted({r * RUNG + d for r in rungs for d in (0, RUNG - 1)})[:300]
        for t in ticks:
            cl += 1
            p.new(cl, c.BUY, t * tick, 1, 1 + cl % 3)
        if how == "cancel":
            for oid in p.live():
                p.do(c.CANCEL, c.cancel(order_id=oid))
        elif how == "cancel_all":
            for a in (1, 2, 3):
                p.do(c.CANCEL_ALL, c.cancel_all(a, c.BUY))
        elif how == "mass":
            p.do(c.MASS_CANCEL, src=OPERATOR_SOURCE)
        elif how == "sweep":
            cl += 1
            p.new(cl, c.SELL, 0, 1000, 9, c.MARKET, c.IOC)
        else:
            # every order amended to one far price (its level and rung emptied), then out
            for oid in p.live():
                p.do(c.AMEND, c.amend(order_id=oid, price=(last // 2 - 7) * tick))
            for oid in p.live():
                p.do(c.CANCEL, c.cancel(order_id=oid))
        assert len(p.ref.orders) == 0
        p.check(restore=False)
        s = p.eng.index_stats()
        assert s["bid_rungs"][0] == 0 and s["bid_levels"][0] == 0
        if first is None:
            first = _pools(p.eng)
        assert _pools(p.eng) == first, (round_no, _pools(p.eng), first)


# -- the cost of a level-map grow --------------------------------------------------------------
def test_a_small_sides_map_grow_does_not_read_the_other_sides_levels():
    """A side's level-map grow reads that side's map, not the level pool, while the side holds
    few of the pool's levels (the other side wide, or the pool left large by a mass cancel).
    Counted, not timed (index_stats' grow_reads): before the fix each of the ask side's four
    grows read the whole pool, 2^21 levels, about 1.5-3 ms each."""
    n = 1 << 17
    eng = CrossEngine(max_orders=1 << 20, max_qty=1000, capacity=1 << 18)
    seq = 1
    for i in range(0, n, 1024):
        eng.apply_frame(encode([(seq + k, 0, 7, seq + k, 1, c.NEW_ORDER,
                                 c.new_order(i + k + 1, c.BUY, 1000 + i + k, 1, 1 + k % 999))
                                for k in range(1024)]))
        seq += 1024
    big = eng.index_stats()["bid_grow_reads"]
    assert big >= n            # the wide side's own grows read the pool: the test sees reads

    def asks(base: int) -> int:
        nonlocal seq
        before = eng.index_stats()["ask_grow_reads"]
        for k in range(300):   # the ask map grows at its 33rd, 65th, 129th and 257th level
            seq += 1
            eng.apply(seq, 0, c.NEW_ORDER, c.new_order(base + k, c.SELL, 10**9 + k, 1, 7))
        return eng.index_stats()["ask_grow_reads"] - before

    assert asks(10**7) <= 2 * 512          # the old maps' slots: 64 + 128 + 256 + 512 at most
    seq += 1
    eng.apply(seq, 0, c.MASS_CANCEL, b"", source=OPERATOR_SOURCE)   # the pool stays large
    assert eng.index_stats()["ask_levels"][0] == 0
    assert asks(2 * 10**7) <= 2 * 512


# -- whole frames -----------------------------------------------------------------------------
def _edge_records(rng, tick, last, n):
    """n records over rung-boundary prices of both sides, with sweeps, amends, cancels by
    client id and cancel alls (sources: clients 7, the operator for mass cancels)."""
    mid = last // 2 // RUNG * RUNG
    bid_t = [t for b in (RUNG, 2 * RUNG, mid - (1 << 41), mid - 3 * RUNG) for t in
             (b - 1, b, b + 1, b + 63, b + 64) if 1 <= t < mid]
    ask_t = [t for b in (mid + RUNG, mid + (1 << 41), last - last % RUNG, last) for t in
             (b - 1, b, b + 1, b - 64, b - 65) if mid < t <= last]
    recs, cl = [], 0
    for _ in range(n):
        r = rng.random()
        cl += 1
        acct = rng.randint(1, 3)
        if r < 0.55:
            side = rng.choice([c.BUY, c.SELL])
            t = rng.choice(bid_t if side == c.BUY else ask_t)
            if rng.random() < 0.05:
                t = rng.choice(ask_t if side == c.BUY else bid_t)     # crosses
            recs.append((7, c.NEW_ORDER, c.new_order(cl, side, t * tick, rng.randint(1, 9), acct,
                                                     stp=rng.randint(0, 4))))
        elif r < 0.7:
            recs.append((7, c.CANCEL, c.cancel(client_order_id=rng.randint(1, cl),
                                                account=acct)))
        elif r < 0.85:
            recs.append((7, c.AMEND, c.amend(client_order_id=rng.randint(1, cl), account=acct,
                                              price=rng.choice(bid_t + ask_t) * tick,
                                              qty=rng.choice([0, 3, 12]))))
        elif r < 0.93:
            recs.append((7, c.NEW_ORDER, c.new_order(cl, rng.choice([c.BUY, c.SELL]), 0,
                                                     rng.randint(5, 200), acct, c.MARKET,
                                                     rng.choice([c.IOC, c.FOK]),
                                                     stp=rng.randint(0, 4))))
        elif r < 0.99:
            recs.append((7, c.CANCEL_ALL, c.cancel_all(acct, rng.choice([0, c.BUY, c.SELL]))))
        else:
            recs.append((OPERATOR_SOURCE, c.MASS_CANCEL, b""))
    return recs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), tick=st.sampled_from([1, 7, 512, (1 << 40) + 1]),
       mul=st.sampled_from([None] + POOR), sizes=st.sampled_from([[1], [3, 50], [1024]]))
def test_frames_over_rung_edges_agree_with_the_reference(seed, tick, mul, sizes):
    ce.seed_hashes(multiplier=mul)
    try:
        rng = random.Random(seed)
        last = TOP // tick
        cfg = dict(tick_size=tick, max_price=last * tick, max_qty=1000, max_orders=10_000,
                   max_fills=50)
        frames = framed(_edge_records(rng, tick, last, 1500), sizes, seed)
        eng, ref = lockstep(cfg, frames, restore_at=set(range(0, len(frames), 3)))
        assert eng.book() == ref.book()
    finally:
        ce.seed_hashes()
