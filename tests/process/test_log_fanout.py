"""Fan-out from the replicators on real processes (docs/log.md), every process with CURVE.

1. Policy `first`, two replicators that publish: a subscriber that listens to the replicators
   only (not to the master) gets every record exactly once and in order, the same bytes as
   the replicators' logs, while the master is SIGKILLed and replaced and a replicator is
   SIGKILLed and restarted under load; most of it comes live, not by replay.
2. Policy `quorum`: one copy does not commit a record, so the master does not let the
   replicators publish; a subscriber listening to them gets everything by replay only.
3. A replicator whose disk fills up under load (a small tmpfs; CURVE off) and resumes: it
   publishes no seq twice and every frame it published is the bytes its log holds there.
   Skipped, with the reason, where tmpfs cannot be mounted. (A group whose commit failed
   published later with the next one would show here only where the master resent the same
   records to it by APPEND; here its peer catches it up instead, and the frame it would wrongly
   publish is committed on the peer with the same bytes, so no single fault makes that
   mistake visible at this level: tests/unit/test_replicator_fanout.py holds the failed
   commit, the failed write and the damaged file deterministically.)
"""
from __future__ import annotations

import os
import random
import time

import pytest
import zmq

from deploy.local import LogCluster
from mq import auth
from mq.control import ping, stats
from mq.record import HEADER_SIZE, decode, scan
from mq.subscriber import Subscriber
from tests.process.test_failover import check_exactly_once
from tests.process.test_log_processes import producer_args
from tests.process.test_replicator_faults import SmallDiskCluster, free_bytes, stream_last

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
        last = cluster.stats()["last"]
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


@pytest.mark.timeout(600)
def test_a_replicator_on_a_full_disk_publishes_only_what_it_stored(tmp_path, tmpfs):
    tmp = str(tmp_path)
    with SmallDiskCluster(tmp, tmpfs, replicators=2, policy="first", fanout=True) as cluster:
        cluster.start()
        raw = zmq.Context.instance().socket(zmq.SUB)   # every frame replicator 1 publishes
        raw.setsockopt(zmq.SUBSCRIBE, b"")
        raw.setsockopt(zmq.RCVHWM, 0)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(cluster.rep_pubs[1])
        frames: list[bytes] = []

        def take(until, timeout_s: float, what: str) -> None:
            deadline = time.monotonic() + timeout_s
            while not until():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                while raw.poll(20):
                    frames.append(raw.recv_multipart()[1])
        try:
            producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 2_000, 0))
            take(lambda: producer.popen.poll() is not None, 120, "the first producer")
            assert producer.wait(10) == 0, producer.log()
            ballast = os.path.join(tmpfs, "ballast")   # about 256 KiB left: the disk fills
            with open(ballast, "wb") as f:
                f.write(b"\0" * max(0, free_bytes(tmpfs) - (256 << 10)))
            producer = cluster.group.spawn("producer2",
                                           producer_args(cluster, tmp, 2, 30_000, 5_000))
            take(lambda: (ping(cluster.rep_addrs[1]) or {}).get("disk_full_refusals", 0) > 3,
                 120, "replicator 1 to refuse writes on its full disk")
            os.unlink(ballast)   # room again: it resumes by itself and is resent the rest
            take(lambda: producer.popen.poll() is not None, 300, "the second producer")
            assert producer.wait(10) == 0, producer.log()
            top = stream_last(cluster.rep_addrs[0], cluster.stream)
            take(lambda: stream_last(cluster.rep_addrs[1], cluster.stream) >= top, 120,
                 "replicator 1 to hold everything")
            cluster.drain()   # the master stops, and with it the idle ticks
            take(lambda: not raw.poll(500), 30, "the feed to go quiet")
            st = stats(cluster.rep_addrs[1])
        finally:
            raw.close(0)
        cluster.stop()
    # (the raw socket may miss the first frames, published before its subscription arrived)
    assert st["disk_full_refusals"] > 3 and st["published_frames"] >= len(frames)
    log = cluster.read_logs()[1][1]
    offsets = {}          # seq -> (offset, length) of each record in replicator 1's log
    pos = 0
    for rec in decode(log):
        size = HEADER_SIZE + len(rec[6])
        offsets[rec[0]] = (pos, size)
        pos += size
    seen: set[int] = set()
    for frame in frames:
        _n, first, last = scan(frame)
        twice = seen.intersection(range(first, last + 1))
        assert not twice, f"seqs {min(twice)}..{max(twice)} published twice"
        seen.update(range(first, last + 1))
        start = offsets[first][0]
        assert log[start:start + len(frame)] == frame, f"published {first}..{last} differs"
    assert len(seen) > 2_000, len(seen)
