"""A producer learns the real seq of every record across a sequencer failover (real
processes on 127.0.0.1: two replicators at quorum, a sequencer, two open-loop producers).

The sequencer is killed with SIGKILL mid-stream, at a seeded point, and a new one takes over.
A new master's WELCOME says how far each source is committed but names no seqs; records the
old master committed without its ACK reaching the producer must still come back with their
seqs. Proves: each producer's acknowledged runs cover every one of its source_seqs exactly
once, none of them without a seq, and each names the seq the record holds in the log.
"""
from __future__ import annotations

import os
import random

import pytest

from deploy.local import LogCluster
from mq.control import wait_until
from mq.record import decode
from tests.process.test_log_processes import lines, producer_args
from tests.seed import CAMPAIGN_SEEDS

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
COUNT, RATE = 8_000, 2_500   # per producer


@pytest.mark.timeout(600)
def test_acks_carry_the_real_seqs_across_a_sequencer_failover(tmp_path):
    rng = random.Random(f"{SEED}-producer-failover")
    kill_at = rng.randint(COUNT // 2, COUNT)
    print(f"seed {SEED}: kill the sequencer at seq {kill_at}")
    tmp = str(tmp_path)
    with LogCluster(tmp, policy="quorum") as cluster:
        cluster.start()
        producers = [cluster.group.spawn(f"producer{s}",
                                         producer_args(cluster, tmp, s, COUNT, RATE))
                     for s in (1, 2)]
        wait_until(lambda: cluster.status().get("last", 0) >= kill_at, 120, f"seq {kill_at}")
        cluster.sequencer.kill()
        cluster.start_sequencer()
        for p in producers:
            assert p.wait(300) == 0, p.log()
        cluster.drain()
        cluster.stop()
    log = decode(cluster.read_logs()[0][1])
    at = {(r[2], r[3]): r[0] for r in log if r[2] != 0}
    for src in (1, 2):
        reported: list[int] = []
        unknown = 0
        for ss_first, ss_last, seq_first in lines(os.path.join(tmp, f"acks{src}.txt")):
            reported += range(ss_first, ss_last + 1)
            if seq_first < 0:
                unknown += ss_last - ss_first + 1
                continue
            for k in range(ss_last - ss_first + 1):
                assert at[(src, ss_first + k)] == seq_first + k, "an ack named a wrong seq"
        assert sorted(reported) == list(range(1, COUNT + 1)), \
            f"source {src}: acknowledged runs do not cover 1..{COUNT} exactly once"
        assert reported == sorted(reported), f"source {src}: runs out of order"
        assert unknown == 0, f"source {src}: {unknown} records acknowledged without their seq"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", CAMPAIGN_SEEDS)
def test_producer_failover_campaign(tmp_path, monkeypatch, seed):
    """The failover above at ten kill points, each a fresh cluster."""
    monkeypatch.setattr(__import__(__name__, fromlist=["SEED"]), "SEED", seed)
    test_acks_carry_the_real_seqs_across_a_sequencer_failover(tmp_path)
