"""Wide and sparse books (issue 16, book width): levels 10**12 ticks apart, at the ends of the
price range, on the boundaries of the engine's rungs, emptied and refilled so that rungs are
freed and reused, and a book of more than a million levels. The compiled engine must match
the reference event for event, keep its invariants, restore to the same bytes, and hold memory
in proportion to its live levels, not to the price range they span.

SEQEX_SLOW=1 (or -m slow) runs the million-level book; the default run builds 2**17 levels
the same way."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.record import encode
from mq.sources import OPERATOR_SOURCE

TOP = 1 << 62              # the largest max_price the engine allows
RUNG = 512                 # ticks a rung of the engine spans (engine.pxd RB)
FAR = 10**12               # ticks between the sparse clusters


def _price_pool(rng: random.Random, tick: int) -> list[int]:
    """Prices (on the tick, in 1 .. 2**62) that stress the level index: the lowest and the
    highest ticks, clusters 10**12 ticks apart, both sides of rung and word boundaries (the
    asks' side ticks count down from 2**62), and a dense band."""
    last = TOP // tick                     # the highest tick in range
    ticks = {1, 2, 3, last, last - 1, last - 2, last - RUNG, last - RUNG + 1}
    for k in range(1, 40):
        base = k * FAR
        if base < last:
            ticks.update({base, base + 1, base - 1})
    for _k in range(1, 30):
        b = rng.randrange(1, last // RUNG) * RUNG
        ticks.update({b - 1, b, b + 1, b + 63, b + 64, b + 65})
    band = rng.randrange(1, last - 5_000)
    ticks.update(band + d for d in range(0, 3_000, 7))
    return sorted(t * tick for t in ticks if 1 <= t <= last)


def _lockstep(seed: int, tick: int, ops: int, check_every: int) -> None:
    rng = random.Random(seed)
    cfg = dict(tick_size=tick, max_price=TOP // tick * tick, max_qty=1_000_000,
               max_orders=100_000)
    eng, ref = CrossEngine(**cfg), ReferenceEngine(**cfg)
    pool = _price_pool(rng, tick)
    live: list[int] = []
    for step in range(1, ops + 1):
        r = rng.random()
        src = 7
        if r < 0.6 or not live:
            side = c.BUY if rng.random() < 0.5 else c.SELL
            # bids from the lower half of the pool, asks from above its 45th percentile: a
            # few cross, and a sweep can meet levels 10**12 ticks apart
            n = len(pool)
            i = rng.randrange(n // 2) if side == c.BUY else rng.randrange(n * 9 // 20, n)
            cmd = (c.NEW_ORDER, c.new_order(step, side, pool[i], rng.randint(1, 40),
                                            rng.randint(1, 30)))
        elif r < 0.85:
            cmd = (c.CANCEL, c.cancel(order_id=live.pop(rng.randrange(len(live)))))
        elif r < 0.89:
            side = c.BUY if rng.random() < 0.5 else c.SELL
            cmd = (c.NEW_ORDER, c.new_order(step, side, 0, rng.randint(1, 600),
                                            rng.randint(1, 30), c.MARKET, c.IOC))
        elif r < 0.998:
            cmd = (c.AMEND, c.amend(order_id=rng.choice(live), price=rng.choice(pool)))
        else:
            # the whole book goes: every rung is freed, and the next orders reuse them
            cmd, src = (c.MASS_CANCEL, b""), OPERATOR_SOURCE
        a = eng.apply(step, 0, *cmd, source=src)
        b = ref.apply(step, 0, *cmd, source=src)
        assert a == b, (step, cmd[0], c.decode_events(a), c.decode_events(b))
        for ev in c.decode_events(a):
            if ev[0] == c.EV_ACCEPTED and cmd[0] == c.NEW_ORDER:
                live.append(ev[1])
            elif ev[0] == c.EV_MASS_CANCELLED and ev[1] == 2:
                live.clear()
        if step % check_every == 0:
            _same_after_restore(eng, ref)
    _same_after_restore(eng, ref)


def _same_after_restore(eng: CrossEngine, ref: ReferenceEngine) -> None:
    eng.check_invariants()
    snap = eng.snapshot()
    assert snap == ref.snapshot()
    assert eng.book() == ref.book()
    for check in (False, True):
        back = CrossEngine.restore(snap, check=check)
        assert back.snapshot() == snap
        back.check_invariants()
        assert back.book() == eng.book()


def test_sparse_book_matches_the_reference_at_the_ends_of_the_range():
    _lockstep(seed=16, tick=1, ops=20_000, check_every=2_500)


def test_sparse_book_with_a_large_tick():
    _lockstep(seed=17, tick=7, ops=10_000, check_every=2_500)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), tick=st.sampled_from([1, 3, 64, 1 << 20, (1 << 40) + 1]))
def test_any_sparse_book_matches_the_reference(seed, tick):
    _lockstep(seed, tick, ops=2_000, check_every=500)


def _rungs(eng: CrossEngine) -> tuple[int, int]:
    """(live rungs, rung pool capacity) over both sides."""
    st = eng.index_stats()
    return (st["bid_rungs"][0] + st["ask_rungs"][0],
            st["bid_rungs"][3] + st["ask_rungs"][3])


def _sizes(eng: CrossEngine) -> list[int]:
    st = eng.index_stats()
    return [st[f"{s}_levels"][1] for s in ("bid", "ask")] + \
        [x for s in ("bid", "ask") for x in st[f"{s}_rungs"][1::2]]


def test_memory_follows_the_live_levels_not_the_range():
    """Two orders 10**12 ticks apart open two rungs, not a ladder between them; emptied rungs
    go back to the pool and are reused: 20,000 placements at prices spread over the whole
    range, never more than 8 live at once, leave the pools and maps at their first sizes."""
    eng = CrossEngine(max_qty=1_000)
    eng.apply(1, 0, c.NEW_ORDER, c.new_order(1, c.BUY, FAR, 1, 1))
    eng.apply(2, 0, c.NEW_ORDER, c.new_order(2, c.BUY, 2 * FAR, 1, 1))
    assert _rungs(eng)[0] == 2
    eng.apply(3, 0, c.CANCEL, c.cancel(client_order_id=1, account=1))
    eng.apply(4, 0, c.CANCEL, c.cancel(client_order_id=2, account=1))
    assert _rungs(eng)[0] == 0
    first = _sizes(eng)
    rng = random.Random(5)
    live: list[tuple[int, int]] = []
    seq = 10
    for n in range(100, 20_100):
        side = c.BUY if n % 2 else c.SELL
        # bids low, asks high: nothing crosses
        t = rng.randrange(1, TOP // 2) if side == c.BUY else rng.randrange(TOP // 2, TOP)
        seq += 1
        eng.apply(seq, 0, c.NEW_ORDER, c.new_order(n, side, t, 1, 1 + n % 3))
        live.append((n, 1 + n % 3))
        if len(live) == 8:
            for cl, acct in live:
                seq += 1
                out = eng.apply(seq, 0, c.CANCEL, c.cancel(client_order_id=cl, account=acct))
                assert c.decode_events(out)[0][0] == c.EV_CANCELLED
            live.clear()
            assert _rungs(eng)[0] == 0
    eng.check_invariants()
    assert _sizes(eng) == first                  # no rung pool or map, no level map grew
    assert len(eng) == 0 and eng.book() == {"bids": [], "asks": []}


def _frames(cmds: list[tuple[int, bytes]], first_seq: int) -> list[bytes]:
    out = []
    for i in range(0, len(cmds), 1024):
        out.append(encode([(first_seq + i + k, 0, 7, first_seq + i + k, 1, kind, payload)
                           for k, (kind, payload) in enumerate(cmds[i:i + 1024])]))
    return out


def _wide_book(n_asks: int) -> None:
    """n_asks ask levels (a dense band, the rest spread over the range, entered in random
    order), a few thousand bids 10**12 ticks apart; then, in lockstep with the reference
    restored from the engine's snapshot, sweeps, cancels and refills."""
    rng = random.Random(n_asks)
    tick = 3
    cfg = dict(tick_size=tick, max_price=TOP // tick * tick, max_qty=1_000_000,
               max_orders=4_000_000, capacity=1 << 21)
    last = TOP // tick
    lo = last // 2
    band = set(rng.sample(range(lo, lo + 3 * n_asks), n_asks * 7 // 10))
    while len(band) < n_asks:
        band.add(rng.randrange(lo + 3 * n_asks, last + 1))
    asks = list(band)
    rng.shuffle(asks)
    bids = [k * FAR for k in range(1, 3_001)] + list(range(1, 40))
    rng.shuffle(bids)
    cmds, model = [], {}
    for k, t in enumerate(asks):
        q = 1 + k % 50
        cmds.append((c.NEW_ORDER, c.new_order(k + 1, c.SELL, t * tick, q, 1 + k % 5_000)))
        model[t * tick] = (q, 1)
    bid_model = {}
    for k, t in enumerate(bids):
        q = 1 + k % 9
        cmds.append((c.NEW_ORDER, c.new_order(10**9 + k, c.BUY, t * tick, q, 1 + k % 5_000)))
        bid_model[t * tick] = (q, 1)
    eng = CrossEngine(**cfg)
    for f in _frames(cmds, 1):
        eng.apply_frame(f)
    assert len(eng) == len(cmds)
    book = eng.book()
    assert book["asks"] == [(p, *model[p]) for p in sorted(model)]
    assert book["bids"] == [(p, *bid_model[p]) for p in sorted(bid_model, reverse=True)]
    eng.check_invariants()
    snap = eng.snapshot()
    assert CrossEngine.restore(snap).snapshot() == snap
    # the reference restores from the engine's bytes (asks come worst last: appended cheaply)
    ref = ReferenceEngine.restore(snap)
    assert ref.snapshot() == snap
    seq = len(cmds) + 1
    ask_prices = sorted(model)
    for step in range(1_500):
        r = rng.random()
        seq += 1
        if r < 0.35:
            # refill at a price of the band or far out, both sides
            t = rng.choice(ask_prices) // tick + rng.choice([-1, 0, 1, RUNG])
            side = c.SELL if rng.random() < 0.7 else c.BUY
            if side == c.BUY:
                t = rng.randrange(1, lo)
            cmd = (c.NEW_ORDER, c.new_order(2 * 10**9 + step, side, t * tick, 1 + step % 20,
                                            1 + step % 5_000))
        elif r < 0.65:
            k = rng.randrange(len(asks))
            cmd = (c.CANCEL, c.cancel(client_order_id=k + 1, account=1 + k % 5_000))
        elif r < 0.85:
            # a buy sweeping up to max_fills makers from the best ask (levels emptied)
            cmd = (c.NEW_ORDER, c.new_order(3 * 10**9 + step, c.BUY, 0, rng.randint(1, 3_000),
                                            9_999, c.MARKET, c.IOC))
        else:
            cmd = (c.NEW_ORDER, c.new_order(4 * 10**9 + step, c.SELL, 0, rng.randint(1, 200),
                                            9_998, c.MARKET, c.IOC))
        a = eng.apply(seq, 0, *cmd, source=7)
        b = ref.apply(seq, 0, *cmd, source=7)
        assert a == b, (step, c.decode_events(a)[:4], c.decode_events(b)[:4])
    eng.check_invariants()
    snap = eng.snapshot()
    assert snap == ref.snapshot()
    back = CrossEngine.restore(snap, check=True)
    assert back.snapshot() == snap and back.book() == eng.book()


def test_a_wide_book_of_a_hundred_thousand_levels():
    _wide_book(1 << 17)


@pytest.mark.slow
def test_a_wide_book_of_a_million_levels():
    _wide_book(1_050_000)
