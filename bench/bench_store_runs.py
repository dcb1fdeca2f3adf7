"""A replicator writing a catch-up frame of many source runs: StreamLog's append (one walk over
the frame for the source table) against the walk from the frame's start for each run that it
replaced (the baseline, measured in the same run). Prints both times, their ratio and a hash of
the source table written.

    python bench/bench_store_runs.py [--records 40000] [--sources 2]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

from mq.record import encode, offset_of, scan, source_runs
from replicator.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--sources", type=int, default=2, help="interleaved one record at a time")
    a = ap.parse_args()
    ss = dict.fromkeys(range(1, a.sources + 1), 1)
    recs = []
    for i in range(a.records):
        src = 1 + i % a.sources
        recs.append((i + 1, 1_000 + i, src, ss[src], 1, 16, b"x" * 64, 0))
        ss[src] += 1
    frame = encode(recs)
    _n, first, _last = scan(frame)
    runs = source_runs(frame)
    t = time.perf_counter()
    for _src, ss_first, ss_last, seq_first in runs:           # the baseline: each run's
        offset_of(frame, seq_first + (ss_last - ss_first) - first)   # walk from the start
    walk = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        store = Store(d + "/lmdb", "os", map_size=1 << 30)
        t = time.perf_counter()
        assert store.append("s", 1, frame).ok
        append = time.perf_counter() - t
        table = store.stream("s").sources()
        store.close()
    digest = hashlib.sha256(repr(table).encode()).hexdigest()[:16]
    print(f"frame of {a.records:,} records, {len(runs):,} source runs")
    print(f"append (one walk, LMDB write included): {append * 1e3:,.1f} ms")
    print(f"baseline, a walk from the start per run (no write): {walk * 1e3:,.1f} ms")
    print(f"ratio append / baseline: {append / walk:.4f}   source table hash {digest}")


if __name__ == "__main__":
    main()
