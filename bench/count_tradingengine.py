"""Instructions per request of the TradingEngine, compiled and interpreted, under callgrind.

Method. Wall-clock figures on a shared VM move by ±20% between runs; instruction counts do
not. This script builds the benchmark's engine state (2,000 accounts) and its request flow
(20,000 requests, bench_tradingengine.py), then applies the requests (`--apply 1`) or not
(`--apply 0`). Run each way under valgrind's callgrind and subtract: the difference divided by
the requests is the instructions per request.

Run (the interpreter itself, not a pyenv shim, or valgrind measures the shell):
    PY=$(python -c 'import sys; print(sys.executable)')
    for engine in compiled interpreted; do for apply in 0 1; do
      valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY bench/count_tradingengine.py \\
        --engine $engine --apply $apply 2>&1 | grep Collected
    done; done
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_tradingengine as b  # noqa: E402

from tradingengine.engine import TradingEngine  # noqa: E402
from tradingengine.reference import interpreted  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["compiled", "interpreted"], default="compiled")
    ap.add_argument("--apply", type=int, choices=[0, 1], default=1)
    ap.add_argument("--requests", type=int, default=20_000)
    args = ap.parse_args()
    setup = b.setup_records(2_000)
    requests = b.request_records(args.requests, 2_000)
    cls = TradingEngine if args.engine == "compiled" else interpreted()
    te = b.engine_at_start(cls, setup)
    if args.apply:
        b.run_phase(te, requests, len(setup))


if __name__ == "__main__":
    main()
