"""Fan-out from the replicators on real processes (docs/log.md), every process with CURVE.

1. Policy `first`, two replicators that publish: a subscriber that listens to the replicators
   only (not to the master) gets every record exactly once and in order, the same bytes as
   the replicators' logs, while the master is SIGKILLed and replaced and a replicator is
   SIGKILLed and restarted under load; most of it comes live, not by replay.
2. Policy `quorum`: one copy does not commit a record, so the master does not let the
   replicators publish; a subscriber listening to them gets everything by replay only.
"""
from __future__ import annotations

import os
import random
import time

import pytest

from deploy.local import LogCluster
from mq import auth
from mq.subscriber import Subscriber
from tests.process.test_failover import check_exactly_once
from tests.process.test_log_processes import producer_args

SEED = int(os.environ.get("SEQEX_SEED", "20261204"))


class Listener:
    """A subscriber on the replicators' publishers, polled while the test waits."""

    def __init__(self, cluster: LogCluster):
        self.sub = Subscriber(cluster.stream, cluster.rep_pubs, cluster.rep_addrs)
        self.frames: list[bytes] = []
        self.next_seq = 1

    def finish(self, cluster: LogCluster, producer, timeout_s: float) -> tuple[int, dict]:
        """Until the producer is done and everything committed is delivered; then drain the
        cluster. Returns the last seq and the subscriber's stats."""
        self.pump(lambda: producer.popen.poll() is not None, timeout_s, "the producer")
        assert producer.wait(10) == 0, producer.log()
        last = cluster.status()["last"]
        self.pump(lambda: self.next_seq > last, timeout_s, f"seq {last}")
        stats = dict(self.sub.stats)
        self.sub.close()
        cluster.drain()
        return last, stats

    def pump(self, until, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            for first, last, frame in self.sub.poll(20):
                assert first == self.next_seq, (first, self.next_seq)
                self.frames.append(frame)
                self.next_seq = last + 1


def _cluster(tmp: str, policy: str) -> LogCluster:
    keys_dir = os.path.join(tmp, "keys")
    os.makedirs(keys_dir)
    return LogCluster(tmp, replicators=2, policy=policy, fanout=True, keys_dir=keys_dir,
                      producers={"producer1": [1]})


@pytest.mark.timeout(600)
def test_replicators_fan_out_exactly_once_across_kills(tmp_path):
    rng = random.Random(f"{SEED}-fanout")
    count = 6_000
    kill_master_at = rng.randint(1_000, 2_500)
    kill_replicator_at = rng.randint(3_000, 4_500)
    victim = rng.randrange(2)
    print(f"seed {SEED}: master killed at seq {kill_master_at}, replicator {victim} at "
          f"{kill_replicator_at}")
    tmp = str(tmp_path)
    cluster = _cluster(tmp, "first")
    try:
        with cluster:
            auth.configure(cluster.keys_dir, "operator")
            cluster.start()
            listener = Listener(cluster)
            producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, count,
                                                                      2_000))
            listener.pump(lambda: listener.next_seq > kill_master_at, 120, "the first kill")
            cluster.sequencer.kill()
            cluster.start_sequencer()
            listener.pump(lambda: listener.next_seq > kill_replicator_at, 120, "the second kill")
            cluster.replicators[victim].kill()
            listener.pump(lambda: listener.next_seq > kill_replicator_at + 500, 120,
                          "records with one replicator")
            cluster.restart_replicator(victim)
            last, stats = listener.finish(cluster, producer, 300)
    finally:
        auth.reset()
    check_exactly_once(cluster, tmp, [1], count)
    logs = cluster.read_logs()
    got = b"".join(listener.frames)
    longest = max(logs)[1]
    assert got == longest[:len(got)] and listener.next_seq - 1 >= last
    print("subscriber:", stats)
    assert stats["live_frames"] > stats["replayed_frames"], stats


@pytest.mark.timeout(300)
def test_under_quorum_the_replicators_publish_nothing(tmp_path):
    tmp = str(tmp_path)
    cluster = _cluster(tmp, "quorum")
    try:
        with cluster:
            auth.configure(cluster.keys_dir, "operator")
            cluster.start()
            listener = Listener(cluster)
            producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 500,
                                                                      1_000))
            _last, stats = listener.finish(cluster, producer, 120)
    finally:
        auth.reset()
    check_exactly_once(cluster, tmp, [1], 500)
    assert stats["live_frames"] == 0 and stats["replayed_frames"] > 0, stats
