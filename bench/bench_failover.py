"""Benchmark of log resilience: master failover time and replicator catch-up speed.

Failover. Three replicators (quorum), a master, a producer at 20,000 records/s and a
subscriber, all real processes on loopback. The master is killed with SIGKILL and its successor
started at once on the same endpoints. Reported, as medians of --repeat runs:
* kill -> the successor's first record stamped (its ts_ns), and kill -> that record delivered
  at the subscriber (which also has to notice the new master);
* successor process start -> its first record, and the baseline: how long a bare Python
  process that imports the sequencer's modules takes on this machine, the floor of any
  restart.

Catch-up. A replicator is killed, the log grows by N records (64-byte payloads) on its peer,
the master is stopped, and the replicator restarted: records/s = N / (restart -> its last seq
equals the peer's). Baseline in the same run: reading the same range from the peer with
mq.control.replay (the replay service's own speed).

Result hash: sha256 over (seq, source, source_seq) of the caught-up replicator's log, and the
failover runs' check that every acknowledged record is in the log once.

Run: python bench/bench_failover.py [--repeat 3] [--records 2000000]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.local import LogCluster  # noqa: E402
from mq.control import ping, replay, wait_until  # noqa: E402
from mq.record import decode, scan  # noqa: E402
from mq.subscriber import Subscriber  # noqa: E402


def process_start_floor() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mq.sequencer, replicator.store, deploy.cli"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def failover_once() -> dict:
    with tempfile.TemporaryDirectory(prefix="seqex-failover-") as root:
        with LogCluster(root, "in.bench", replicators=3, policy="quorum") as cluster:
            cluster.start()
            sub = Subscriber("in.bench", cluster.pub_addr, cluster.rep_addrs)
            cluster.group.spawn("producer", [
                "produce", "--sequencer", cluster.prod_addr, "--source", "1", "--count",
                "2000000", "--rate", "20000", "--batch", "64"])
            wait_until(lambda: cluster.status().get("last", 0) > 40_000, 60, "traffic")
            old_epoch = cluster.status()["epoch"]
            while sub.poll(0):
                pass
            kill_ns = time.time_ns()
            cluster.sequencer.kill()
            start_ns = time.time_ns()
            cluster.sequencer = cluster.group.spawn("successor", [
                "sequencer", "--stream", "in.bench", "--producers", cluster.prod_addr,
                "--pub", cluster.pub_addr, "--policy", "quorum",
                *sum((["--replicator", a] for a in cluster.rep_addrs), [])])
            first_ts = delivered_ns = None
            deadline = time.monotonic() + 60
            while first_ts is None and time.monotonic() < deadline:
                for _f, _l, frame in sub.poll(100):
                    for r in decode(frame):
                        if r[4] > old_epoch:
                            first_ts, delivered_ns = r[1], time.time_ns()
                            break
                    if first_ts:
                        break
            sub.close()
            if first_ts is None:
                raise SystemExit("the successor forwarded nothing within 60 s")
    return {"kill_to_stamped_s": (first_ts - kill_ns) / 1e9,
            "kill_to_delivered_s": (delivered_ns - kill_ns) / 1e9,
            "start_to_stamped_s": (first_ts - start_ns) / 1e9}


def catchup_once(records: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqex-catchup-") as root:
        with LogCluster(root, "in.bench", replicators=2, policy="first") as cluster:
            cluster.start()
            cluster.replicators[1].kill()
            prod = cluster.group.spawn("producer", [
                "produce", "--sequencer", cluster.prod_addr, "--source", "1", "--count",
                str(records), "--batch", "1024", "--window", "500000"])
            if prod.wait(600) != 0:
                raise SystemExit(prod.log())
            cluster.drain()
            top = ping(cluster.rep_addrs[0])["streams"]["in.bench"]["last"]
            t0 = time.perf_counter()
            got = sum(scan(f)[0] for f in replay(cluster.rep_addrs[0], "in.bench", 1, top))
            replay_rate = got / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            cluster.restart_replicator(1)
            wait_until(lambda: (ping(cluster.rep_addrs[1]) or {}).get("streams", {}).get(
                "in.bench", {}).get("last") == top, 300, "catch-up")
            elapsed = time.perf_counter() - t0
            cluster.stop()
        logs = cluster.read_logs()
        if logs[0] != logs[1]:
            raise SystemExit("the caught-up replicator differs from its peer")
        h = hashlib.sha256()
        for r in decode(logs[1][1]):
            h.update(b"%d:%d:%d;" % (r[0], r[2], r[3]))
    return {"records": top, "rate": top / elapsed, "replay_rate": replay_rate,
            "hash": h.hexdigest()[:16]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--records", type=int, default=2_000_000)
    a = ap.parse_args()
    floor = statistics.median(process_start_floor() for _ in range(a.repeat))
    runs = [failover_once() for _ in range(a.repeat)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"[failover] kill -> first record of the successor stamped {med['kill_to_stamped_s']:.3f} s,"
          f" delivered {med['kill_to_delivered_s']:.3f} s; successor start -> first record "
          f"{med['start_to_stamped_s']:.3f} s; bare process start {floor:.3f} s (ratio "
          f"{med['start_to_stamped_s'] / floor:.2f}); medians of {a.repeat}", flush=True)
    cats = sorted((catchup_once(a.records) for _ in range(a.repeat)), key=lambda r: r["rate"])
    c = cats[len(cats) // 2]
    print(f"[catch-up] {c['records']:,} records from a peer: {c['rate']:,.0f} records/s; raw "
          f"replay of the same range {c['replay_rate']:,.0f} records/s (ratio "
          f"{c['rate'] / c['replay_rate']:.2f}); median of {a.repeat}; log hash {c['hash']}",
          flush=True)


if __name__ == "__main__":
    main()
