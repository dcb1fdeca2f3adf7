"""What a session's memory of its orders costs the TradingEngine (docs/tradingengine.md §12).

One session uses N ClOrdIDs and finishes N orders through the engine's own bookkeeping
(`TradingEngine._keep_finished`, as a fill or cancel does). Measured with tracemalloc:

* baseline: bytes per used ClOrdID (the set a session always kept);
* bytes per finished order (the session's done and finished maps and the engine's order ->
  session map), and its ratio to the baseline;
* snapshot bytes per finished order (the session's row in msgpack, with and without them).

    python bench/bench_session_memory.py [--orders N]

N defaults to MAX_SESSION_DONE (the most a session keeps). Prints a hash of the session's row.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tracemalloc

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_tradingengine import specs  # noqa: E402
from tradingengine import codec as c  # noqa: E402
from tradingengine.engine import MAX_SESSION_DONE, Order, Session, TradingEngine  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=MAX_SESSION_DONE)
    a = p.parse_args(argv)
    n = min(a.orders, MAX_SESSION_DONE)
    rng = random.Random(1)
    coids = [rng.getrandbits(63) for _ in range(n)]
    te = TradingEngine(specs())
    key = (1, 9)
    sess = te.sessions[key] = Session(*key)
    orders = []
    for i, coid in enumerate(coids):
        o = Order(i + 1, 1, 1, coid, c.BUY, c.LIMIT, c.GTC, 0, 100, 1)
        o.sess = key
        orders.append(o)
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    for coid in coids:
        sess.clordids[coid] = None
    t1 = tracemalloc.get_traced_memory()[0]
    for o in orders:
        te._keep_finished(sess, o, c.STATUS_FILLED)
    t2 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    te.check_invariants()
    with_done = msgpack.packb(sess.row(), use_bin_type=True)
    without = msgpack.packb(sess.row()[:-1] + [[]], use_bin_type=True)
    per_coid = (t1 - t0) / n
    per_done = (t2 - t1) / n
    print(f"bench_session_memory: {n:,} ClOrdIDs used and {n:,} orders finished in one session")
    print(f"  baseline: {per_coid:.0f} bytes per used ClOrdID")
    print(f"  finished orders: {per_done:.0f} bytes each ({per_done / per_coid:.1f}x the "
          f"baseline), {per_done * n / 1e6:.1f} MB for the session's {n:,}")
    print(f"  snapshot: {(len(with_done) - len(without)) / n:.1f} bytes per finished order")
    print(f"result hash {hashlib.sha256(with_done).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
