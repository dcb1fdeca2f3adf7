"""The sequenced log survives SIGKILL of any of its processes.

Real processes on 127.0.0.1: two replicators, a sequencer, three producers and two durable
subscribers move 100k records. At seeded points a replicator, the sequencer and a subscriber
are killed with SIGKILL and restarted; after the sequencer's restart a producer is killed too
and restarted resending everything from its first record, so the new master must recognise
what the old one sequenced. Afterwards:
* every record a producer saw acknowledged is in the log exactly once, at the seq the ack
  named, and every record of every producer is in the log exactly once;
* every replicator holds identical bytes for 1..N, with epochs that never go down;
* every subscriber wrote 1..N exactly once, in order, matching the log.
With curve=True (the campaign's CURVE variant) every process, producer and subscriber has its
own key and the roles are checked on every message: the same guarantees must hold.
"""
from __future__ import annotations

import os
import random
import struct

import pytest

from deploy.local import LogCluster
from deploy.procs import Group
from mq import auth
from mq.control import wait_until
from mq.record import KIND_TICK, decode

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
PER_PRODUCER = 33_334
RATE = 7_000  # per producer: about 5 s of traffic, long enough to kill things mid-stream


def producer_args(cluster: LogCluster, tmp: str, src: int, count: int, rate: int) -> list[str]:
    return [*cluster.key_args(f"producer{src}"), "produce", "--sequencer", cluster.prod_addr, "--source", str(src),
            "--count", str(count), "--rate", str(rate), "--batch", "32",
            "--acks", os.path.join(tmp, f"acks{src}.txt")]


def run_tail(group: Group, cluster: LogCluster, tmp: str, i: int):
    args = [*cluster.key_args("subscriber"), "tail", cluster.stream, "--pub", cluster.pub_addr, "--out",
            os.path.join(tmp, f"sub{i}.txt")]
    for addr in cluster.rep_addrs:
        args += ["--replicator", addr]
    return group.spawn(f"subscriber{i}", args)


def lines(path: str) -> list[list[int]]:
    with open(path) as f:
        return [[-1 if x == "-" else int(x) for x in line.split()] for line in f]


def check_log(cluster: LogCluster, tmp: str, count: int, subs: int) -> int:
    logs = cluster.read_logs()
    n, data = logs[0]
    assert n > 3 * count
    for i, (last, other) in enumerate(logs[1:], 1):
        assert (last, other) == (n, data), f"replicator {i} differs from replicator 0"
    recs = decode(data)
    assert [r[0] for r in recs] == list(range(1, n + 1))
    epochs = [r[4] for r in recs]
    assert epochs == sorted(epochs), "epochs go down along the log"
    assert all(a[1] <= b[1] for a, b in zip(recs, recs[1:], strict=False)), "ts goes back"
    by_key: dict[tuple[int, int], int] = {}
    for seq, _ts, src, ss, _ep, kind, payload, _route in recs:
        if src == 0:
            assert kind == KIND_TICK
            continue
        assert (src, ss) not in by_key, f"record {src}:{ss} sequenced twice"
        assert struct.unpack_from("<Q", payload)[0] == ss, "payload does not match its number"
        by_key[(src, ss)] = seq
    for src in (1, 2, 3):
        assert sorted(ss for s, ss in by_key if s == src) == list(range(1, count + 1))
        for ss_first, ss_last, seq_first in lines(os.path.join(tmp, f"acks{src}.txt")):
            if seq_first < 0:
                continue  # acknowledged as a duplicate by a master that forgot its seq
            for k in range(ss_last - ss_first + 1):
                assert by_key[(src, ss_first + k)] == seq_first + k, "ack named a wrong seq"
    for i in range(subs):
        got = lines(os.path.join(tmp, f"sub{i}.txt"))
        assert [g[0] for g in got] == list(range(1, n + 1)), f"subscriber {i} is not 1..N once"
        assert all(recs[g[0] - 1][2:4] == (g[1], g[2]) for g in got)
    return n


@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy", ["quorum", "first"])
def test_log_survives_sigkill_of_replicator_sequencer_and_subscriber(tmp_path, policy,
                                                                     curve=False):
    try:
        _survives_sigkill(tmp_path, policy, curve)
    finally:
        auth.reset()


def _survives_sigkill(tmp_path, policy: str, curve: bool) -> None:
    rng = random.Random(f"{SEED}-{policy}")
    total = 3 * PER_PRODUCER
    kill_replicator_at = rng.randint(total // 10, total * 3 // 10)
    kill_sequencer_at = rng.randint(total * 4 // 10, total * 6 // 10)
    kill_subscriber_at = rng.randint(total * 2 // 10, total * 8 // 10)
    kill_producer_at = rng.randint(kill_sequencer_at + total // 20, total * 8 // 10)
    print(f"seed {SEED} policy {policy}: kill replicator at {kill_replicator_at}, sequencer at "
          f"{kill_sequencer_at}, subscriber at {kill_subscriber_at}, producer 2 at "
          f"{kill_producer_at}")
    tmp = str(tmp_path)
    victim = rng.randrange(2)
    keys = {"keys_dir": os.path.join(tmp, "keys"), "producers": {
        "producer1": [1], "producer2": [2], "producer3": [3], "subscriber": []}} if curve else {}
    with LogCluster(tmp, policy=policy, **keys) as cluster:
        if curve:
            auth.configure(cluster.keys_dir, "operator")  # this process: the operator's tools
        cluster.start()
        group = cluster.group
        subs = [run_tail(group, cluster, tmp, i) for i in range(2)]
        producers = [group.spawn(f"producer{src}", producer_args(
            cluster, tmp, src, PER_PRODUCER, RATE)) for src in (1, 2, 3)]
        pending = sorted([(kill_replicator_at, "replicator"), (kill_sequencer_at, "sequencer"),
                          (kill_subscriber_at, "subscriber"), (kill_producer_at, "producer")])
        while pending:
            at, what = pending[0]
            wait_until(lambda at=at: cluster.status().get("last", 0) >= at, 120,
                       f"seq {at} before killing the {what}")
            pending.pop(0)
            if what == "replicator":
                cluster.replicators[victim].kill()
                cluster.restart_replicator(victim)
            elif what == "sequencer":
                cluster.sequencer.kill()
                cluster.start_sequencer()
            elif what == "subscriber":
                subs[1].kill()
                subs[1].start()
            else:
                producers[1].kill()
                producers[1] = group.spawn("producer2-again", producer_args(
                    cluster, tmp, 2, PER_PRODUCER, RATE * 4) + ["--resend-from", "1"])
        for p in producers:
            assert p.wait(300) == 0, p.log()
        cluster.drain()
        n_expected = _replicated_last(cluster)
        for i in range(2):
            path = os.path.join(tmp, f"sub{i}.txt")
            wait_until(lambda path=path: os.path.exists(path) and _last_line_seq(path) >= n_expected,
                       120, f"subscriber {i} to reach seq {n_expected}")
        cluster.stop()
    n = check_log(cluster, tmp, PER_PRODUCER, subs=2)
    assert n == n_expected


def _replicated_last(cluster: LogCluster) -> int:
    """The last seq every replicator holds once they agree. The sequencer's drain waits a
    bounded time (5 s) for every replicator; under `first` one restarted far behind on a busy
    machine (40,000 records) catches up from its peer after that, so wait for it."""
    from mq.control import ping
    lasts: list = []

    def agree() -> bool:
        lasts[:] = []
        for addr in cluster.rep_addrs:
            stats = wait_until(lambda addr=addr: ping(addr), 30, f"replicator {addr}")
            lasts.append(stats["streams"][cluster.stream]["last"])
        return len(set(lasts)) == 1
    wait_until(agree, 240, "the replicators holding one log after the drain", interval_s=0.5)
    return lasts[0]


def _last_line_seq(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n")
    if end < 0:
        return 0
    start = data.rfind(b"\n", 0, end) + 1
    return int(data[start:end].split()[0])


def test_drain_of_a_dead_master_is_an_error_that_names_its_log(tmp_path):
    """drain() does not wait out its whole timeout on a master that died: the error names what
    its log ends with."""
    with LogCluster(str(tmp_path), replicators=1) as cluster:
        cluster.start()
        cluster.sequencer.kill()
        with open(cluster.sequencer.log_path, "a") as f:
            f.write("something else\n")
        with pytest.raises(TimeoutError, match="dead, its log ends: .*something else"):
            cluster.drain(5)
