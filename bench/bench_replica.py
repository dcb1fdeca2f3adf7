"""Benchmark of engine replicas on the log: recovery, replay, and the whole path.

Recovery. A log holds 1,000,000 resting orders (non-crossing limit orders on 20,000 levels a
side) followed by 100,000 records of a mixed order flow. A snapshot of the CrossEngine after
the first part is written where a replica looks for it. A replica process is then started and
timed from launch until it has applied the whole log: restore the snapshot, replay 100,000
records from the replicator, reach the head. Baselines in the same run: restoring the snapshot
in-process, and reading the 100,000 records from the replicator without applying them.
Replay throughput = records replayed and applied per second, in-process (read + apply_frame).

Whole path. A producer sends N orders (a seeded mixed flow) into in.ce.B; 2 hot and 1 warm
CrossEngine replicas apply them; the mirror forwards out.ce.B to a subscriber. Orders/s =
N / (first submit -> last result delivered). Baseline: raw pyzmq PUSH -> PULL of the same record
size, batched 256 per message, in the same run (bench_mq.raw_ceiling).

Result hashes: the state hash after recovery (equal to the in-process rebuild, or the run
fails) and sha256 of the out stream's payloads.

Run: python bench/bench_replica.py [--repeat 3] [--orders 200000] [--only recovery|path]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_crossengine import resting_book  # noqa: E402
from bench.bench_mq import raw_ceiling  # noqa: E402
from crossengine.engine import CrossEngine  # noqa: E402
from deploy.local import LogCluster  # noqa: E402
from deploy.procs import tcp  # noqa: E402
from mq import wire  # noqa: E402
from mq.control import call, ping, replay, wait_until  # noqa: E402
from mq.producer import Producer  # noqa: E402
from mq.record import decode, scan  # noqa: E402
from mq.replica import write_snapshot  # noqa: E402
from mq.subscriber import Subscriber  # noqa: E402
from tests.property.test_crossengine_determinism import flow  # noqa: E402

ENGINE = {"max_qty": 1_000_000}


def feed(prod: Producer, cmds: list[tuple[int, bytes]], window: int = 200_000) -> None:
    for i in range(0, len(cmds), 512):
        prod.submit_many(cmds[i:i + 512])
        prod.poll(0)
        while prod.unacked > window:
            prod.poll(5)
    prod.flush(600)


def recovery(resting: int, tail: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="seqex-recovery-") as root:
        with LogCluster(root, "in.ce.R", replicators=1, policy="first") as cluster:
            cluster.start()
            prod = Producer(1, cluster.prod_addr, max_inflight=400_000)
            prod.connect()
            feed(prod, resting_book(resting))
            snap_seq = cluster.status()["last"]
            feed(prod, [(k, p) for f in flow(tail, seed=5) for r in decode(f)
                        for k, p in [(r[5], r[6])]])
            cluster.drain()
            top = ping(cluster.rep_addrs[0])["streams"]["in.ce.R"]["last"]
            eng = CrossEngine(**ENGINE, capacity=resting + 16)
            for frame in replay(cluster.rep_addrs[0], "in.ce.R", 1, snap_seq):
                eng.apply_frame(frame)
            state = eng.snapshot()
            write_snapshot(os.path.join(root, "snap"), "in.ce.R", snap_seq, state, 3)
            t0 = time.perf_counter()
            CrossEngine.restore(state)
            restore_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            read = sum(scan(f)[0] for f in replay(cluster.rep_addrs[0], "in.ce.R", snap_seq + 1))
            read_s = time.perf_counter() - t0
            restored = CrossEngine.restore(state)
            t0 = time.perf_counter()
            for f in replay(cluster.rep_addrs[0], "in.ce.R", snap_seq + 1):
                restored.apply_frame(f)
            replay_rate = read / (time.perf_counter() - t0)
            control = tcp()
            t0 = time.perf_counter()
            cluster.group.spawn("replica", [
                "replica", "--name", "r", "--stream", "in.ce.R", "--pub", cluster.pub_addr,
                "--replicator", cluster.rep_addrs[0], "--control", control, "--role", "warm",
                "--snapshots", os.path.join(root, "snap"), "--engine-config",
                '{"max_qty": 1000000}'])
            wait_until(lambda: (ping(control, 0.2) or {}).get("seq") == top, 120, "recovery",
                       interval_s=0.005)
            recovered_s = time.perf_counter() - t0
            h = call(control, wire.HASH)[1]["hash"]
            if h != restored.state_hash().hex():
                raise SystemExit("the recovered replica's state differs from the rebuild")
    return {"recovery_s": recovered_s, "restore_s": restore_s, "read_s": read_s,
            "replayed": read, "replay_rate": replay_rate, "hash": h[:16]}


def whole_path(orders: int) -> dict:
    cmds = [(r[5], r[6]) for f in flow(orders, seed=9) for r in decode(f)]
    with tempfile.TemporaryDirectory(prefix="seqex-path-") as root:
        with LogCluster(root, "in.ce.B", replicators=1, policy="first") as cluster:
            cluster.start()
            m_in, m_pub = tcp(), tcp()
            cluster.group.spawn("mirror", ["mirror", "--stream", "out.ce.B", "--inputs", m_in,
                                           "--pub", m_pub, "--policy", "first", "--replicator",
                                           cluster.rep_addrs[0]])
            wait_until(lambda: ping(m_in), 30, "the mirror")
            for n, role in (("hot0", "hot"), ("hot1", "hot"), ("warm0", "warm")):
                control = tcp()
                cluster.group.spawn(n, [
                    "replica", "--name", n, "--stream", "in.ce.B", "--pub", cluster.pub_addr,
                    "--replicator", cluster.rep_addrs[0], "--control", control, "--role", role,
                    "--mirror", m_in, "--engine-config", '{"max_qty": 1000000}'])
                wait_until(lambda control=control: ping(control), 30, n)
            sub = Subscriber("out.ce.B", m_pub, cluster.rep_addrs)
            sub.poll(100)
            prod = Producer(1, cluster.prod_addr, max_inflight=400_000)
            prod.connect()
            start_seq = cluster.status()["last"] + 1
            h = hashlib.sha256()
            got = 0
            t0 = time.perf_counter()
            feed(prod, cmds)
            top = cluster.status()["last"]
            while sub.next_seq <= top:
                for _f, _l, frame in sub.poll(200):
                    for r in decode(frame):
                        if r[0] >= start_seq and r[2] == 1:
                            got += 1
                            h.update(r[6])
            elapsed = time.perf_counter() - t0
            sub.close()
    return {"orders": got, "rate": got / elapsed, "hash": h.hexdigest()[:16]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--resting", type=int, default=1_000_000)
    ap.add_argument("--tail", type=int, default=100_000)
    ap.add_argument("--orders", type=int, default=200_000)
    ap.add_argument("--only", choices=("recovery", "path"),
                    help="run only the recovery and replay part, or only the whole path")
    a = ap.parse_args()
    if a.only != "path":
        recovery_report(a)
    if a.only != "recovery":
        path_report(a)


def recovery_report(a: argparse.Namespace) -> None:
    recs = sorted((recovery(a.resting, a.tail) for _ in range(a.repeat)),
                  key=lambda r: r["recovery_s"])
    r = recs[len(recs) // 2]
    each = " ".join(f"{x['recovery_s']:.2f}" for x in recs)
    print(f"[recovery] replica process with {a.resting:,} resting orders in its snapshot and "
          f"{r['replayed']:,} records to replay: caught up {r['recovery_s']:.2f} s after launch "
          f"(median of {a.repeat}: {each}); baselines: restore alone {r['restore_s']:.2f} s, "
          f"reading the "
          f"records alone {r['read_s']:.2f} s; state hash {r['hash']} = the in-process rebuild",
          flush=True)
    print(f"[replay] read + apply in-process: {r['replay_rate']:,.0f} records/s", flush=True)


def path_report(a: argparse.Namespace) -> None:
    ceiling = statistics.median(raw_ceiling(tcp(), 2_000_000, 256) for _ in range(a.repeat))
    paths = sorted((whole_path(a.orders) for _ in range(a.repeat)), key=lambda p: p["rate"])
    p = paths[len(paths) // 2]
    print(f"[whole path] producer -> in.ce -> 2 hot + 1 warm CrossEngines -> out.ce -> "
          f"subscriber: {p['rate']:,.0f} orders/s ({p['orders']:,} orders, median of "
          f"{a.repeat}); raw pyzmq ceiling {ceiling:,.0f} records/s (ratio "
          f"{p['rate'] / ceiling:.3f}); out hash {p['hash']}", flush=True)


if __name__ == "__main__":
    main()
