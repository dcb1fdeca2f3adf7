"""TradingEngine replicas on the log (real processes on 127.0.0.1): in.te.0 -> 2 hot + 1 warm
TradingEngine replicas (shard 0 of 2) -> out.te.0 (mirror, replicated).

The input is a seeded trading flow recorded from a venue of real CrossEngines
(tests/tradingvenue.py): deposits, marks, funding inputs, orders, cancels, amends, settings and
the CrossEngines' results, fed through a producer and sequenced with the stream's own time and
idle ticks. The flow is "timeless" (no dead-man's switch, no funding boundary within reach), so
the recorded CrossEngine results fit the engine whatever times the sequencer stamps. Last, the
operator's `seqex replay in.te.0 --rebuild` gives the same state hash and a balanced audit. A hot replica is killed with SIGKILL at a seeded point and restarted: it recovers
from its snapshot plus replay, all replicas end with one state hash, the out stream has no gap
and no duplicate, and it equals, byte for byte, a fresh engine run over the in stream's log.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest

from deploy.local import LogCluster
from deploy.procs import tcp
from mq import wire
from mq.control import call, ping, wait_until
from mq.producer import Producer
from tests.process.test_replicas import feed, read_out, reference_outputs, start_replica
from tests.tradingvenue import TIMELESS_FUNDING_NS, random_venue, two_specs
from tradingengine.engine import TradingEngine

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
STEPS = 4_000


@pytest.mark.timeout(600)
def test_tradingengine_replica_recovers_after_sigkill(tmp_path):
    rng = random.Random(f"{SEED}-te")
    venue = random_venue(SEED, STEPS, timeless=True)
    cmds = [(kind, payload) for _seq, _ts, kind, payload in venue.log]
    kill_at = rng.randint(len(cmds) // 4, len(cmds) // 2)
    print(f"seed {SEED}: {len(cmds)} records, kill at {kill_at}")
    specs = two_specs(TIMELESS_FUNDING_NS)
    config = json.dumps({"specs": [dataclasses.asdict(s) for s in specs],
                         "shard": 0, "n_shards": 2})
    engine_args = ("--engine", "tradingengine", "--engine-config", config)
    tmp = str(tmp_path)
    with LogCluster(tmp, stream="in.te.0", replicators=1, policy="first") as cluster:
        cluster.start()
        mirror_in, mirror_pub = tcp(), tcp()
        cluster.group.spawn("mirror", ["mirror", "--stream", "out.te.0", "--inputs", mirror_in,
                                       "--pub", mirror_pub, "--policy", "first",
                                       "--replicator", cluster.rep_addrs[0]])
        wait_until(lambda: ping(mirror_in), 30, "the mirror")
        controls = {n: tcp() for n in ("hotA", "hotB", "warm")}
        procs = {n: start_replica(cluster, n, "warm" if n == "warm" else "hot", mirror_in, tmp,
                                  controls[n], engine_args) for n in controls}
        for n, addr in controls.items():
            wait_until(lambda addr=addr: ping(addr), 30, f"replica {n}")
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        feed(cluster, cmds, kill_at, prod)
        prod.flush(120)
        procs["hotA"].kill()
        feed(cluster, cmds, len(cmds) * 3 // 4, prod)
        procs["hotA"].start()
        feed(cluster, cmds, len(cmds), prod)
        prod.flush(120)
        last = cluster.status()["last"]
        for n in controls:
            wait_until(lambda n=n: (ping(controls[n]) or {}).get("seq", 0) >= last, 120,
                       f"{n} to apply up to {last}")
        cluster.drain()
        last = max(ping(controls[n])["seq"] for n in controls)
        for n in controls:
            wait_until(lambda n=n: ping(controls[n])["seq"] == last, 60, f"{n} at {last}")
        hashes = {n: call(controls[n], wire.HASH)[1]["hash"] for n in controls}
        assert len(set(hashes.values())) == 1, hashes
        assert ping(controls["hotA"])["restored_from"] > 0   # from a snapshot, then replay
        got = read_out(mirror_pub, cluster.rep_addrs, last, stream="out.te.0")
        status = ping(mirror_in)
        assert status["divergences"] == 0, status["alarms"]
        assert [r[0] for r in got] == list(range(1, last + 1))   # no gap, no duplicate
        fresh = TradingEngine(specs, 0, 2)
        assert [r[6] for r in got] == reference_outputs(cluster, last, fresh)
        assert fresh.state_hash().hex() == next(iter(hashes.values()))
        fresh.audit()
        # the operator's rebuild from the log gives the same hash, and the books balance
        rebuilt = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "replay", "in.te.0", "--rebuild", "--to",
             str(last), "--replicator", cluster.rep_addrs[0], "--engine-config", config],
            capture_output=True, text=True, timeout=120, check=True)
        answer = json.loads(rebuilt.stdout.strip().splitlines()[-1])
        assert answer["state_hash"] == fresh.state_hash().hex() and answer["audit"] == "balanced"
        # and the venue's own run, at its own times and without the sequencer's ticks, reached
        # the same books: counters, orders, accounts and positions (the state apart from the
        # log position, the time and the funding schedule)
        books = slice(6, 11), slice(16, None)
        assert [fresh._state()[s] for s in books] == [venue.te._state()[s] for s in books]
