"""Benchmark of `seqex up`: how long the default topology takes to answer, fresh and after a crash.

Method. Each round runs `seqex up` of the default topology (40 processes, CURVE keys) in a new
temporary data directory on its own ports, twice per build:
* fresh: from the spawn of `seqex up` to its "seqex is up" line (every process answered);
* after a crash: the supervisor is SIGKILLed (its processes get SIGTERM and end: the round
  waits until none is left, so both builds start from the same state), then `seqex up` again
  on the same directory, timed the same way; the replicas restore their snapshots and replay.
Then `seqex down`. Builds alternate within every round, the order flipping each round.
* Baseline in the same run: the same code starting one process after another (each waits for
  the one before it to answer), as `seqex up` did before its waves: `start_waves` is replaced
  by one process per wave in the benchmark's child, nothing else changes.
* Result hash: sha256 of the sorted names of the processes that answered in every start; a
  start that left one out changes it.

Run: python bench/bench_up.py [--repeat 3] [--base-port 26000]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deploy.supervisor import earlier_run  # noqa: E402

# The child: `seqex up`, with one process per wave when asked (the baseline).
CHILD = """
import sys
from deploy import supervisor
if sys.argv[1] == "one-by-one":
    supervisor.start_waves = lambda specs: [[spec] for spec in specs]
from deploy.cli import main
sys.exit(main(sys.argv[2:]))
"""


def start(mode: str, data: str, port: int, log: str, timeout_s: float = 600
          ) -> tuple[subprocess.Popen, float, list[str]]:
    """Spawn `seqex up`; (its process, seconds to "seqex is up", the processes it started)."""
    t0 = time.monotonic()
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, "up", "--data", data,
                             "--base-port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)
    while True:
        with open(log) as f:
            text = f.read()
        if "seqex is up" in text:
            took = time.monotonic() - t0
            names = [line.split()[1] for line in text.splitlines()
                     if line.startswith("  started ")]
            return proc, took, names
        if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
            proc.kill()
            raise SystemExit(f"seqex up ({mode}) did not come up: {text[-2000:]}")
        time.sleep(0.05)


def gone(data: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while earlier_run(data):
        if time.monotonic() > deadline:
            for pid in earlier_run(data):
                os.kill(pid, signal.SIGKILL)
            raise SystemExit(f"processes of {data} still running {timeout_s:g} s after the crash")
        time.sleep(0.05)


def one_round(mode: str, port: int, names: list) -> tuple[float, float]:
    tmp = tempfile.mkdtemp(prefix="bench-up-")
    data = os.path.join(tmp, "data")
    try:
        sup, fresh, started = start(mode, data, port, os.path.join(tmp, "up1.log"))
        names.append(sorted(started))
        sup.kill()                       # the crash
        sup.wait()
        gone(data)
        sup, again, started = start(mode, data, port, os.path.join(tmp, "up2.log"))
        names.append(sorted(started))
        sup.send_signal(signal.SIGTERM)  # as Ctrl-C or `seqex down`
        sup.wait(120)
        gone(data)
        return fresh, again
    finally:
        for pid in earlier_run(data):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=26000)
    a = ap.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"waves": [], "one-by-one": []}
    names: list = []
    for r in range(a.repeat):
        order = ["waves", "one-by-one"] if r % 2 == 0 else ["one-by-one", "waves"]
        for mode in order:
            fresh, again = one_round(mode, a.base_port, names)
            figures[mode].append((fresh, again))
            print(f"round {r + 1} {mode:<10} fresh {fresh:6.2f} s   after a crash {again:6.2f} s",
                  flush=True)
    if any(n != names[0] for n in names):
        print("the starts did not all start the same processes", file=sys.stderr)
        return 1
    med = {m: (statistics.median(f[0] for f in v), statistics.median(f[1] for f in v))
           for m, v in figures.items()}
    print(f"\n`seqex up` of the default topology ({len(names[0])} processes), medians of "
          f"{a.repeat} alternating rounds:")
    print(f"{'':<28}{'fresh':>10}{'after a crash':>16}")
    for m, label in (("waves", "waves (seqex up)"), ("one-by-one", "one by one (baseline)")):
        print(f"{label:<28}{med[m][0]:>9.2f}s{med[m][1]:>15.2f}s")
    print(f"{'ratio waves / one by one':<28}{med['waves'][0] / med['one-by-one'][0]:>10.2f}"
          f"{med['waves'][1] / med['one-by-one'][1]:>16.2f}")
    digest = hashlib.sha256("\n".join(names[0]).encode()).hexdigest()[:16]
    print(f"result hash {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
