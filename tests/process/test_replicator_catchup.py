"""Replicators catch up from, and repair from, their peers (real processes on 127.0.0.1).

1. A replicator killed with SIGKILL while the log moves on, restarted after its master is
   gone, fetches the missing range from its peer's replay service and ends byte-identical.
2. A frame damaged on disk (bytes changed under LMDB, as bit rot would) is found by the
   replicator's comparison with its peers and replaced by the peers' bytes.
3. A replicator holding a stale, never committed tail of epoch 1, restarted after the next
   master (epoch 2) committed more records and left, catches up from its peer: the stale tail
   is truncated and replaced, never spliced onto.
"""
from __future__ import annotations

import pytest

from deploy.local import LogCluster
from mq.control import ping, stats, wait_until
from mq.record import decode, encode
from replicator.store import U64, Store
from tests.process.test_log_processes import producer_args


def stream_last(addr: str, stream: str) -> int:
    stats = ping(addr) or {}
    return stats.get("streams", {}).get(stream, {}).get("last", -1)


def down_while_written(cluster: LogCluster, tmp: str, victim: int, drain: bool = False) -> int:
    """Replicator ``victim`` killed, a producer writes 30,000 records (then the sequencer is
    drained, with ``drain``), the replicator restarted: the top of replicator 0, once the
    restarted one has caught up to it."""
    cluster.replicators[victim].kill()
    producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 30_000, 0))
    assert producer.wait(120) == 0, producer.log()
    if drain:
        cluster.drain()
    top = stream_last(cluster.rep_addrs[0], cluster.stream)
    cluster.restart_replicator(victim)
    wait_until(lambda: stream_last(cluster.rep_addrs[victim], cluster.stream) >= top, 120,
               f"replicator {victim} to catch up to {top}")
    return top


@pytest.mark.timeout(600)
def test_restarted_replicator_catches_up_from_its_peer(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=2, policy="first") as cluster:
        cluster.start()
        # no master any more (drained): only the peer can bring replicator 1 up
        top = down_while_written(cluster, tmp, 1, drain=True)
        assert top > 30_000
        assert stats(cluster.rep_addrs[1])["caught_up_records"] >= 30_000
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1]


@pytest.mark.timeout(600)
def test_damaged_frame_is_repaired_from_peers(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
        cluster.start()
        producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 5_000, 0))
        assert producer.wait(120) == 0, producer.log()
        cluster.drain()
        wait_until(lambda: len({stream_last(a, cluster.stream) for a in cluster.rep_addrs}) == 1,
                   60, "equal replicators")
        cluster.replicators[0].stop()
        store = Store(cluster.data_dir(0), map_size=1 << 30)
        log = store.stream(cluster.stream)
        with store.env.begin(write=True) as txn:
            cur = txn.cursor(db=log.log_db)
            assert cur.first()
            key, value = cur.key(), bytearray(cur.value())
            value[len(value) // 2] ^= 0xFF  # one byte flipped: the CRC no longer matches
            txn.put(key, bytes(value), db=log.log_db)
        store.close()
        cluster.restart_replicator(0)
        wait_until(lambda: stats(cluster.rep_addrs[0])["repaired_records"] > 0, 60,
                   "the damaged range to be repaired")
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1] == logs[2]


@pytest.mark.timeout(600)
def test_catch_up_over_a_stale_tail(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=2, policy="first") as cluster:
        cluster.start()
        producer = cluster.group.spawn("producer1", producer_args(cluster, tmp, 1, 2_000, 0))
        assert producer.wait(120) == 0, producer.log()
        cluster.drain()
        wait_until(lambda: stream_last(cluster.rep_addrs[1], cluster.stream)
                   == stream_last(cluster.rep_addrs[0], cluster.stream), 60, "equal replicators")
        cluster.replicators[1].stop()
        # Replicator 1 keeps a tail that the epoch-1 master stamped and never committed
        # (it died first): written to its store while it is stopped.
        store = Store(cluster.data_dir(1), map_size=1 << 30)
        log = store.stream(cluster.stream)
        common, epoch = log.last, log.last_epoch
        stale = encode([(common + i, log.ts_ns + i, 77, i, epoch, 16, b"stale %d" % i)
                        for i in range(1, 51)])
        assert store.append(cluster.stream, epoch, stale).ok
        store.close()
        # The next master runs with replicator 0 alone, commits more records, and leaves.
        cluster.start_sequencer()
        producer = cluster.group.spawn("producer2", producer_args(cluster, tmp, 2, 2_000, 0))
        assert producer.wait(120) == 0, producer.log()
        cluster.drain()
        top = stream_last(cluster.rep_addrs[0], cluster.stream)
        assert top > common + 2_000
        cluster.restart_replicator(1)   # only its peer can bring it up now
        wait_until(lambda: stream_last(cluster.rep_addrs[1], cluster.stream) == top, 60,
                   f"replicator 1 to catch up to {top}")
        assert stats(cluster.rep_addrs[1])["truncated_records"] == 50
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1]
    assert not any(r[2] == 77 for r in decode(logs[1][1])), "a stale record survived"


@pytest.mark.timeout(600)
def test_a_damaged_catch_up_frame_is_repaired_under_load(tmp_path):
    """A replicator that was down catches up from its peers in frames of tens of thousands of
    records (one LMDB value each). One of them, across the 10,000-record comparison window, is
    damaged on disk while the replicator is stopped; restarted while a producer writes, the
    replicator repairs it from its peers. Before, the comparison found it every second and the
    repair refused it for good ("reaches out of the repaired range")."""
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
        cluster.start()
        down_while_written(cluster, tmp, 2)
        cluster.replicators[2].stop()
        store = Store(cluster.data_dir(2), map_size=1 << 30)
        log = store.stream(cluster.stream)
        with store.env.begin(write=True) as txn:
            cur = txn.cursor(db=log.log_db)
            if not cur.set_range(U64.pack(10_001)):
                assert cur.last()                   # the last frame holds 10,001
            elif U64.unpack(cur.key())[0] != 10_001:
                assert cur.prev()
            key, value = cur.key(), bytearray(cur.value())
            end = U64.unpack(cur.key())[0] - 1 if cur.next() else log.last
            assert U64.unpack(key)[0] < 10_001 < end, "no catch-up frame across 10,001"
            value[len(value) // 2] ^= 0xFF   # the CRC no longer matches
            txn.put(key, bytes(value), db=log.log_db)
        store.close()
        load = cluster.group.spawn("producer2", producer_args(cluster, tmp, 2, 20_000, 2_000))
        cluster.restart_replicator(2)
        wait_until(lambda: stats(cluster.rep_addrs[2])["repaired_records"] > 0, 120,
                   "the damaged catch-up frame to be repaired")
        assert load.wait(120) == 0, load.log()
        cluster.drain()
        wait_until(lambda: len({stream_last(a, cluster.stream) for a in cluster.rep_addrs}) == 1,
                   60, "equal replicators")
        cluster.stop()
    logs = cluster.read_logs()
    assert logs[0] == logs[1] == logs[2]
