"""Faults at the sequencer, on real processes (127.0.0.1).

1. A replicator comes back holding an older epoch's tail where the master has written: the
   master's APPEND is refused as a conflict; under policy "all" the stream stalls until the
   master reconciles that replicator (claim, TRUNCATE, resend), and then everything commits.
2. A replicator outage longer than the resend window under "all": the master holds at most
   its uncommitted bound and refuses the rest (busy), nothing is evicted or acknowledged
   early, and the stream resumes by itself when the replicator returns.
3. Two live producer connections claim one source id: the second is refused with the reason
   source_clash; once the first is gone, the second takes the source over.
4. The replicators have seen the last u32 epoch: the master refuses to start, with the
   operator's next step and exit status 78, instead of crash-looping.
5. A new master while one replicator is empty reads only the tail it needs, not the whole
   log, and the stream goes on.
"""
from __future__ import annotations

import os
import shutil

import pytest

from deploy.local import LogCluster
from deploy.procs import tcp
from mq import sockets, wire
from mq.control import ping, replay, stats, wait_until
from mq.master import MAX_EPOCH
from mq.producer import Producer
from mq.record import decode, encode
from mq.sequencer import EX_CONFIG
from replicator.store import Store

STREAM = "in.test"
K = 50   # records of epoch 1 that every replicator holds before the master starts


def epoch1_records(first: int, last: int, tag: bytes) -> bytes:
    return encode([(s, 1_000 + s, 9, s, 1, 32, tag + b"%06d" % s) for s in range(first, last + 1)])


def make_store(path: str, extra_to: int = K, commit: int = K) -> None:
    """1..K of epoch 1 (the same bytes everywhere), then K+1..extra_to of epoch 1 that only
    this replicator holds (a stale tail of a master that died)."""
    store = Store(path, map_size=1 << 28)
    assert store.append(STREAM, 1, epoch1_records(1, K, b"common")).ok
    if extra_to > K:
        assert store.append(STREAM, 1, epoch1_records(K + 1, extra_to, b"stale-")).ok
    store.change(STREAM, lambda log, txn: log.set_commit(txn, commit))
    store.close()


def submit(prod: Producer, count: int, batch: int = 50, payload: int = 20) -> None:
    for _ in range(0, count, batch):
        prod.submit(32, [b"p" * payload] * batch)
        prod.poll(0)


def check_logs(cluster: LogCluster, src: int, count: int) -> list:
    logs = cluster.read_logs()
    assert all(log == logs[0] for log in logs[1:]), "replicators differ"
    recs = decode(logs[0][1])
    assert [r[0] for r in recs] == list(range(1, len(recs) + 1))
    assert [r[4] for r in recs] == sorted(r[4] for r in recs)
    assert all(a[1] <= b[1] for a, b in zip(recs, recs[1:], strict=False)), "ts went back"
    assert sorted(r[3] for r in recs if r[2] == src) == list(range(1, count + 1))
    return recs


@pytest.mark.timeout(300)
def test_a_conflict_at_the_sequencer_heals_under_policy_all(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=2, policy="all", peers=False) as cluster:
        for i in range(2):
            make_store(cluster.data_dir(i))
        cluster.start()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        submit(prod, 500)
        prod.flush(60)
        victim = cluster.replicators[1]
        victim.kill()
        # It comes back with an older epoch's tail that reaches beyond what the master wrote.
        shutil.rmtree(cluster.data_dir(1))
        top = cluster.stats()["last"]
        make_store(cluster.data_dir(1), extra_to=top + 2_000)
        submit(prod, 500)
        cluster.restart_replicator(1)
        prod.flush(60)  # under "all", nothing commits until replicator 1 is reconciled
        status = cluster.stats()
        assert status["reconciled"] >= 3, status
        assert "conflict" in cluster.sequencer.log()
        cluster.drain()
        prod.close()
        cluster.stop()
    recs = check_logs(cluster, 1, 1000)
    assert not [r for r in recs if r[6].startswith(b"stale-")]


@pytest.mark.timeout(300)
def test_an_outage_longer_than_the_window_pushes_back_and_resumes(tmp_path):
    """Replicator 1 is down while the producer submits 3x the master's resend window."""
    window, bound = 9 << 20, 256 << 10
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=2, policy="all", sequencer_args=[
            "--window-bytes", str(window), "--max-uncommitted-bytes", str(bound)]) as cluster:
        cluster.start()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        submit(prod, 1_000, batch=20, payload=1000)
        prod.flush(60)
        cluster.replicators[1].kill()
        total = 1_000 + 3 * window // 1040
        submit(prod, total - 1_000, batch=20, payload=1000)
        wait_until(lambda: prod.poll(50) is not None and cluster.stats()["busy"] > 0, 60,
                   "the master to push back")
        committed = cluster.stats()["committed"]
        for _ in range(20):  # the bound holds while the producer keeps pushing
            prod.poll(50)
            status = cluster.stats()
            assert status["uncommitted_bytes"] <= bound + (4 << 20)
            assert status["committed"] == committed
        assert prod.unacked > (total - 1_000) // 2, "records were acknowledged during the outage"
        cluster.restart_replicator(1)
        prod.flush(120)
        count = prod.next_ss - 1
        assert count >= total
        cluster.drain()
        prod.close()
        cluster.stop()
    check_logs(cluster, 1, count)


@pytest.mark.timeout(120)
def test_a_second_live_producer_of_a_source_is_refused_with_source_clash(tmp_path):
    with LogCluster(str(tmp_path), replicators=1, policy="first") as cluster:
        cluster.start()
        first = sockets.dealer(cluster.prod_addr, routing_id=b"first")
        second = sockets.dealer(cluster.prod_addr, routing_id=b"second")

        def hello(sock):
            sock.send_multipart([wire.HELLO, wire.pack({"src": 5})])
            assert sock.poll(5000), "no answer to HELLO"
            while True:
                msg = sock.recv_multipart()
                if msg[0] != wire.PONG:   # liveness probes of the master are ignored
                    return msg[0], wire.unpack(msg[1])

        assert hello(first)[0] == wire.WELCOME
        kind, body = hello(second)
        assert kind == wire.ERROR and body["reason"] == "source_clash" and body["src"] == 5
        assert "source 5" in body["error"]
        first.close(0)
        wait_until(lambda: hello(second)[0] == wire.WELCOME, 30, "the source to be free")
        assert cluster.stats()["clashes"] >= 1
        second.close(0)


@pytest.mark.timeout(120)
def test_a_master_refuses_an_epoch_beyond_u32_with_the_next_step(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=1, policy="first") as cluster:
        store = Store(cluster.data_dir(0), map_size=1 << 28)
        store.change(STREAM, lambda log, txn: log.claim(txn, MAX_EPOCH))
        store.close()
        rep = cluster.rep_addrs[0]
        cluster.replicators.append(cluster.group.spawn(
            "replicator0", ["replicator", "--data", cluster.data_dir(0), "--bind", rep]))
        wait_until(lambda: ping(rep), 60, "the replicator")
        seq = cluster.group.spawn("sequencer", [
            "sequencer", "--stream", STREAM, "--producers", tcp(), "--pub", tcp(),
            "--policy", "first", "--replicator", rep])
        assert seq.wait(60) == EX_CONFIG
        assert "Next step" in seq.log() and "OverflowError" not in seq.log()
        st = stats(rep)
        assert st["streams"][STREAM]["epoch"] == MAX_EPOCH  # nothing beyond it was claimed
    assert os.path.exists(cluster.data_dir(0))


@pytest.mark.timeout(300)
def test_an_empty_replicator_does_not_make_a_new_master_read_the_whole_log(tmp_path):
    """Counted on the replicators' side (bytes they replayed), so that the figure does not
    depend on the master's own account. No peers: nothing else replays."""
    count = 40_000
    with LogCluster(str(tmp_path), replicators=3, policy="quorum", peers=False) as cluster:
        cluster.start()
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        submit(prod, count, batch=500, payload=8)
        prod.flush(120)

        def commits():
            return {(ping(a) or {}).get("streams", {}).get(STREAM, {}).get("commit")
                    for a in cluster.rep_addrs}
        top = cluster.stats()["committed"]
        wait_until(lambda: min(commits() - {None} or {0}) >= top, 30,
                   "the replicators to learn the commit point")
        log_bytes = 0
        for frame in replay(cluster.rep_addrs[0], STREAM):
            log_bytes += len(frame)
        cluster.sequencer.kill()
        cluster.replicators[2].kill()
        shutil.rmtree(cluster.data_dir(2))
        cluster.restart_replicator(2)
        before = sum(stats(a)["replayed_bytes"] for a in cluster.rep_addrs)
        cluster.start_sequencer()
        assert cluster.stats()["last"] > count
        read = sum(stats(a)["replayed_bytes"] for a in cluster.rep_addrs) - before
        print(f"the new master read {read} of {log_bytes} bytes")
        # before the fix: the whole log, because replicator 2 agreed up to seq 0
        assert read < log_bytes // 2, (read, log_bytes)
        submit(prod, 500, batch=50, payload=8)
        prod.flush(60)
        prod.close()
