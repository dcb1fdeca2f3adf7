"""The level index of a wide book: thousands of price levels a side, so that the blocks of a
side's index split, merge and empty. The compiled engine must match the reference event for
event, keep its invariants, and survive snapshot/restore, whatever the width."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine

CONFIG = dict(max_qty=1_000_000, max_orders=100_000, max_fills=1_000)


def _drive(seed: int, ops: int, width: int, check_every: int) -> None:
    rng = random.Random(seed)
    eng, ref = CrossEngine(**CONFIG), ReferenceEngine(**CONFIG)
    live: list[int] = []
    mid = 1_000_000
    for step in range(1, ops + 1):
        r = rng.random()
        if r < 0.6 or not live:
            side = c.BUY if rng.random() < 0.5 else c.SELL
            d = rng.randrange(-3, width)  # a few cross
            price = mid - d if side == c.BUY else mid + d
            cmd = (c.NEW_ORDER, c.new_order(step, side, price, rng.randint(1, 30),
                                            rng.randint(1, 20)))
        elif r < 0.92:
            oid = live.pop(rng.randrange(len(live)))
            cmd = (c.CANCEL, c.cancel(order_id=oid))
        elif r < 0.97:
            side = c.BUY if rng.random() < 0.5 else c.SELL
            cmd = (c.NEW_ORDER, c.new_order(step, side, 0, rng.randint(1, 3000),
                                            rng.randint(1, 20), c.MARKET, c.IOC))
        else:
            oid = rng.choice(live)
            cmd = (c.AMEND, c.amend(order_id=oid, price=mid + rng.randrange(-width, width)))
        a = eng.apply(step, 0, *cmd)
        b = ref.apply(step, 0, *cmd)
        assert a == b, (step, c.decode_events(a), c.decode_events(b))
        for ev in c.decode_events(a):
            if ev[0] == c.EV_ACCEPTED and cmd[0] == c.NEW_ORDER:
                live.append(ev[1])
        if step % check_every == 0:
            eng.check_invariants()
            assert eng.snapshot() == ref.snapshot()
            back = CrossEngine.restore(eng.snapshot())
            assert back.state_hash() == eng.state_hash()
            assert back.book() == eng.book()
    eng.check_invariants()
    assert eng.state_hash() == ref.state_hash()


def test_wide_book_matches_the_reference_through_splits_and_merges():
    _drive(seed=1, ops=6_000, width=5_000, check_every=1_500)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), width=st.sampled_from([2, 50, 300, 2_000]))
def test_any_width_matches_the_reference(seed, width):
    _drive(seed, ops=1_200, width=width, check_every=400)


def test_emptying_a_wide_side_from_the_best_and_from_the_worst():
    eng = CrossEngine(**CONFIG)
    n = 1_000
    for i in range(n):
        eng.apply(i, 0, c.NEW_ORDER, c.new_order(i + 1, c.BUY, 10_000 - i, 1, 1))
        eng.apply(i, 0, c.NEW_ORDER, c.new_order(n + i + 1, c.SELL, 20_000 + i, 1, 1))
    eng.check_invariants()
    assert len(eng.book()["bids"]) == n and len(eng.book()["asks"]) == n
    # take the asks from the worst end, the bids by a sweep from the best
    for i in range(n - 1, -1, -1):
        eng.apply(0, 0, c.CANCEL, c.cancel(client_order_id=n + i + 1, account=1))
        if i % 97 == 0:
            eng.check_invariants()
    eng.apply(0, 0, c.NEW_ORDER, c.new_order(5 * n, c.SELL, 0, n, 2, c.MARKET, c.IOC))
    eng.check_invariants()
    assert eng.book() == {"bids": [], "asks": []}
    assert len(eng) == 0
