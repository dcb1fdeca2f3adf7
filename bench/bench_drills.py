"""Drill timings: detection, restart, recovery and resumption of `seqex drill`, medians over
many runs, with the baseline of a bare process start measured in the same run.

Method.
* `seqex up` of the default topology (with its CURVE keys) in a temp data directory.
* --runs rounds; each round runs every drill of --drills once, in that order, through
  deploy.drill.run (the code of `seqex drill`), at --rate orders per second of load. A drill
  whose report is not ok (an order lost, applied twice or unacknowledged, replicas that
  differ) is counted and shown; its timings are kept.
* Figures per drill: median and worst of detected_s, restarted_s, recovered_s, resumed_s, and
  of the p99 order latency before and after the strike.
* Baseline (same run): a bare start of the process kind each kill drill restarts, outside the
  cluster: `seqex --insecure replicator` on an empty directory and a fresh port, from spawn to
  its first PING answer (Python's start, imports, the bind); --runs times, the median. A
  killed process cannot be back faster than this plus the supervisor's check (0.5 s) and
  backoff (0.5 s after a first death).
* kill-sequencer on the default topology strikes the stream's master of the moment; its
  standby takes over (``took_over_s``: the standby holds the lock) and the killed one comes
  back as the new standby. --no-standby runs the topology without standbys (``[cluster]
  standby = false``): the restarted master takes over, as before standbys. A process killed
  again within 30 s of its restart waits a doubled backoff (0.5, 1, 2 ... s): --pause 32 keeps
  every restart at the first backoff, the case of a single failure.
* Result hash: sha256 over every report's (drill, orders sent - acknowledged, lost, twice,
  hashes equal) in order: two runs that agree on correctness print the same hash.

Run: python bench/bench_drills.py [--runs 20] [--drills kill-hot-ce,kill-all-hot-ce,...]
     [--rate 200] [--no-standby] [--pause S] [--json OUT]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy import drill  # noqa: E402
from deploy.procs import Group, free_port, free_port_block  # noqa: E402
from mq.control import ping, wait_until  # noqa: E402

FIGURES = ("detected_s", "restarted_s", "recovered_s", "resumed_s")


def bare_start_s(tmp: str, group: Group, i: int) -> float:
    from mq import auth
    auth.reset()   # the drills took the cluster's operator key; the bare process has none
    port = free_port()
    t0 = time.monotonic()
    p = group.spawn(f"bare{i}", ["replicator", "--data", os.path.join(tmp, f"bare{i}"),
                                 "--bind", f"tcp://127.0.0.1:{port}"])
    wait_until(lambda: ping(f"tcp://127.0.0.1:{port}", 0.2) is not None, 60, "a bare start",
               interval_s=0.01)
    took = time.monotonic() - t0
    p.stop()
    return took


def summary(values: list) -> dict:
    xs = [v for v in values if v is not None]
    return {"median": round(statistics.median(xs), 3) if xs else None,
            "max": round(max(xs), 3) if xs else None, "n": len(xs), "missing": len(values) -
            len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    # disk-full needs replicator2's data on a tmpfs (tests/process/test_drills.py): not here
    ap.add_argument("--drills", default="kill-hot-ce,kill-all-hot-ce,kill-te,kill-sequencer,"
                                        "kill-replicator,freeze")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds between rounds: past the supervisor's STABLE_S (30) a "
                         "process killed again is restarted after the first backoff (0.5 s), "
                         "not a doubled one")
    ap.add_argument("--no-standby", action="store_true",
                    help="the default topology with [cluster] standby = false")
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    names = a.drills.split(",")
    tmp = tempfile.mkdtemp(prefix="bench-drills-")
    data = os.path.join(tmp, "data")
    reports: dict[str, list] = {n: [] for n in names}
    bare: list[float] = []
    digest = hashlib.sha256()
    topo_args = []
    if a.no_standby:
        from deploy.topology import DEFAULT
        path = os.path.join(tmp, "no-standby.toml")
        with open(path, "w") as f:
            f.write(DEFAULT.replace("standby = true", "standby = false", 1))
        topo_args = ["--topology", path]
    with Group(os.path.join(tmp, "logs")) as group:
        up = group.spawn("up", ["up", *topo_args, "--data", data, "--base-port",
                                str(free_port_block()), "--ready-timeout", "180"])
        wait_until(lambda: "demo: bob: deposit 4" in up.log() or not up.alive, 300, "seqex up")
        if not up.alive:
            print(up.log())
            return 1
        for r in range(a.runs):
            if r and a.pause:
                time.sleep(a.pause)
            bare.append(bare_start_s(tmp, group, r))
            for n in names:
                rep = drill.run(data, n, rate=a.rate, before_s=1.0, after_s=1.0)
                reports[n].append(rep)
                o = rep["orders"]
                digest.update(json.dumps([n, o["sent"] - o["acknowledged"], o["lost"],
                                          o["applied_twice"],
                                          all(h["equal"] for h in rep["hashes"].values())]
                                         ).encode())
                took = f", took_over {rep['took_over']} at {rep.get('took_over_s')} s, " \
                    f"standby_again {rep['standby_again']}" if "took_over" in rep else ""
                print(f"run {r + 1}/{a.runs} {n}: " + ", ".join(
                    f"{f} {rep[f]}" for f in FIGURES) + f"{took}, ok {rep['ok']}", flush=True)
        group.procs[0].stop(60)
    out = {"runs": a.runs, "rate_per_s": a.rate, "standby": not a.no_standby,
           "bare_replicator_start_s": summary(bare), "drills": {}}
    for n, reps in reports.items():
        out["drills"][n] = {f: summary([r[f] for r in reps]) for f in FIGURES}
        out["drills"][n]["latency_p99_ms_before"] = summary(
            [r["latency_ms"]["before"]["p99"] for r in reps])
        out["drills"][n]["latency_p99_ms_after"] = summary(
            [r["latency_ms"]["after"]["p99"] for r in reps])
        if any("took_over" in r for r in reps):
            out["drills"][n]["took_over_s"] = summary([r.get("took_over_s") for r in reps])
            out["drills"][n]["standby_again"] = sum(bool(r.get("standby_again")) for r in reps)
        out["drills"][n]["not_ok"] = sum(not r["ok"] for r in reps)
        out["drills"][n]["lost"] = sum(r["orders"]["lost"] for r in reps)
        out["drills"][n]["applied_twice"] = sum(r["orders"]["applied_twice"] for r in reps)
    out["result_hash"] = digest.hexdigest()[:16]
    print(json.dumps(out, indent=1))
    base = out["bare_replicator_start_s"]["median"]
    for n, d in out["drills"].items():
        rec = d["recovered_s"]["median"]
        if base and rec:
            print(f"{n}: recovered median {rec} s = {rec / base:.1f} x a bare replicator start "
                  f"({base} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
