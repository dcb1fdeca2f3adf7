"""TradingEngine replicas on the log (real processes on 127.0.0.1): in.te.0 -> 2 hot + 1 warm
TradingEngine replicas (shard 0 of 2) -> out.te.0 (mirror, replicated).

The input is a seeded trading flow recorded from a venue of real CrossEngines
(tests/tradingvenue.py): deposits, marks, funding inputs, orders, cancels, amends, settings and
the CrossEngines' results, fed through a producer and sequenced with the stream's own time and
idle ticks. The flow is "timeless" (no dead-man's switch, no funding boundary within reach), so
the recorded CrossEngine results fit the engine whatever times the sequencer stamps. A hot
replica is killed with SIGKILL at a seeded point and restarted (tests/process/test_replicas.py
runs the scenario): it recovers from its snapshot plus replay, all replicas end with one state
hash, the out stream has no gap and no duplicate, and it equals, byte for byte, a fresh engine
run over the in stream's log. Last, the operator's `seqex replay in.te.0 --rebuild` gives the
same state hash and a balanced audit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random

import pytest

from deploy.local import LogCluster
from tests.process.test_cluster import seqex
from tests.process.test_replicas import reference_outputs, run_replicas
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
        last, state_hash, got = run_replicas(cluster, tmp, "out.te.0", cmds, kill_at,
                                             engine_args=engine_args)
        fresh = TradingEngine(specs, 0, 2)
        assert [r[6] for r in got] == reference_outputs(cluster, last, fresh)
        assert fresh.state_hash().hex() == state_hash
        fresh.audit()
        # the operator's rebuild from the log gives the same hash, and the books balance
        rebuilt = seqex("replay", "in.te.0", "--rebuild", "--json", "--to", str(last), "--replicator",
                        cluster.rep_addrs[0], "--engine-config", config)
        assert rebuilt.returncode == 0, rebuilt.stderr
        answer = json.loads(rebuilt.stdout.strip().splitlines()[-1])
        assert answer["state_hash"] == fresh.state_hash().hex() and answer["audit"] == "balanced"
        # and the venue's own run, at its own times and without the sequencer's ticks, reached
        # the same books: counters, orders, accounts and positions (the state apart from the
        # log position, the time and the funding schedule)
        books = slice(6, 11), slice(16, None)
        assert [fresh._state()[s] for s in books] == [venue.te._state()[s] for s in books]
