"""Instructions per operation of the CrossEngine, by kind, under callgrind.

Method. Wall-clock figures on a shared VM move by ±20% between runs; instruction counts do
not. This script builds a book with the independent flow of bench_crossengine.py (about 4,000
orders resting over about 110 levels a side), then encodes a batch of operations of one kind
as frames of 1,024 records and applies them (`--apply 1`) or not (`--apply 0`), through
`apply_scanned_frame` as the replica host does (its subscriber has already checked each frame)
or, with `--call frame`, through `apply_frame` (which checks the frame first: ~18 a record). Under valgrind's callgrind the difference of the two totals, divided by the
operations, is the instructions per operation: the engine's work plus apply_frame's per-record
share of the frame (header copy, route).

Kinds:
* `rest`: limit orders that rest (1 + Exp(mean 20) ticks behind the touch, a new level now
  and then), the `_new_order` + `_book_link` + `_index_link` path;
* `cancel`: cancels by client order id of orders resting near the touch;
* `flow`: the independent flow itself (55% limit, 35% cancel, 5% market, 5% IOC).

Run every kind both ways and print the table (needs valgrind):
    python bench/count_crossengine.py --report
One measurement (the interpreter itself, not a pyenv shim, or valgrind measures the shell;
--report fixes PYTHONHASHSEED=0, without which two runs differ by tens per operation):
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY bench/count_crossengine.py \\
        --kind rest --apply 1 2>&1 | grep Collected
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_crossengine import INDEPENDENT, frames, independent_flow  # noqa: E402
from bench.callgrind import collected  # noqa: E402
from crossengine import codec as c  # noqa: E402
from crossengine.engine import CrossEngine  # noqa: E402

KINDS = ("rest", "cancel", "flow")
SETUP = 60_000            # operations of the independent flow before the measured ones


def batch(kind: int, ops: int, eng: CrossEngine) -> list[tuple[int, bytes]]:
    """The measured operations, for an engine in the state the setup left."""
    rng = random.Random(5)
    book = eng.book(1)
    bid, ask = book["bids"][0][0], book["asks"][0][0]
    out = []
    mu = math.log(10)
    for n in range(ops):
        side = c.BUY if n % 2 else c.SELL
        d = 1 + int(rng.expovariate(1 / 20))
        price = bid - d + 1 if side == c.BUY else ask + d - 1
        out.append((c.NEW_ORDER, c.new_order(10_000_000 + n, side, price,
                                             min(5000, 1 + int(rng.lognormvariate(mu, 1.0))),
                                             rng.randint(1, 1000))))
    if kind == "rest":
        return out
    # cancel: rest them in the setup, cancel them (shuffled) in the measured part
    for f in frames(out):
        eng.apply_frame(f)
    cancels = [(c.CANCEL, c.cancel(client_order_id=c.NEW_ORDER_S.unpack(p)[0],
                                   account=c.NEW_ORDER_S.unpack(p)[3])) for _k, p in out]
    rng.shuffle(cancels)
    return cancels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=KINDS, default="rest")
    ap.add_argument("--apply", type=int, choices=[0, 1], default=1)
    ap.add_argument("--ops", type=int, default=20_480)
    ap.add_argument("--call", choices=["scanned", "frame"], default="scanned",
                    help="apply_scanned_frame, as the replica host calls it (its subscriber "
                         "has checked each frame), or apply_frame (checks the frame first)")
    ap.add_argument("--report", action="store_true",
                    help="run every kind both ways under callgrind and print the table")
    a = ap.parse_args()
    if a.report:
        return report(a.ops)
    setup, _plain = independent_flow(SETUP + (a.ops if a.kind == "flow" else 0), 7)
    eng = CrossEngine(**INDEPENDENT)
    if a.kind == "flow":
        setup, measured = setup[:SETUP], setup[SETUP:]
    for f in frames(setup):
        eng.apply_frame(f)
    if a.kind != "flow":
        measured = batch(a.kind, a.ops, eng)
    fr = frames(measured)
    apply = eng.apply_scanned_frame if a.call == "scanned" else eng.apply_frame
    if a.apply:
        for f in fr:
            apply(f)


def report(ops: int) -> None:
    for kind, call in [(k, "scanned") for k in KINDS] + [("rest", "frame"), ("cancel", "frame")]:
        got = [collected(__file__, ["--kind", kind, "--apply", str(apply), "--ops", str(ops),
                                    "--call", call])[0] for apply in (0, 1)]
        how = "apply_scanned_frame" if call == "scanned" else "apply_frame"
        print(f"[instructions] {kind}: {(got[1] - got[0]) / ops:,.0f} per operation "
              f"({ops:,} operations through {how}, callgrind)", flush=True)


if __name__ == "__main__":
    main()
