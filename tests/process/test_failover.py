"""Master failover on real processes (3 replicators, quorum).

1. The master is SIGKILLed under load and a new one started: nothing acknowledged is lost, no
   seq is reused, every record is in the log exactly once.
2. The master is frozen (SIGSTOP), a standby takes over on other endpoints and producers move
   to it, resending everything from their first record; the old master is then thawed
   (SIGCONT): every write it attempts is refused, it stops, and the log holds nothing of its
   after the takeover.
Along the log, across every takeover, ts never goes back and moves by at most the step bound.
"""
from __future__ import annotations

import os
import random
import signal

import pytest

from deploy.local import LogCluster
from mq.control import ping, wait_until
from mq.record import decode
from tests.process.test_log_processes import lines, producer_args

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
COUNT = 20_000


def check_exactly_once(cluster: LogCluster, tmp: str, sources: list[int], count: int) -> list:
    logs = cluster.read_logs()
    n, data = logs[0]
    for last, other in logs[1:]:
        common = min(last, n)
        assert other[:len(data)] == data[:len(other)] or common == 0
    recs = decode(max(logs)[1])
    assert [r[0] for r in recs] == list(range(1, len(recs) + 1))
    epochs = [r[4] for r in recs]
    assert epochs == sorted(epochs), "epochs go down along the log"
    stamps = [r[1] for r in recs]
    assert all(0 <= b - a <= 1_000_000_000 for a, b in zip(stamps, stamps[1:], strict=False)), \
        "ts goes back, or jumps by more than the step bound, along the log (across failover)"
    seen: dict[tuple[int, int], int] = {}
    for seq, _ts, src, ss, *_ in recs:
        if src:
            assert (src, ss) not in seen, f"record {src}:{ss} sequenced twice"
            seen[(src, ss)] = seq
    for src in sources:
        assert sorted(ss for s, ss in seen if s == src) == list(range(1, count + 1))
        for ss_first, ss_last, seq_first in lines(os.path.join(tmp, f"acks{src}.txt")):
            if seq_first > 0:
                for k in range(ss_last - ss_first + 1):
                    assert seen[(src, ss_first + k)] == seq_first + k
    return recs


def replicated_equally(cluster: LogCluster) -> int:
    lasts = []
    for addr in cluster.rep_addrs:
        stats = wait_until(lambda addr=addr: ping(addr), 30, f"replicator {addr}")
        lasts.append(stats["streams"][cluster.stream]["last"])
    return lasts[0] if len(set(lasts)) == 1 else 0


@pytest.mark.timeout(600)
def test_master_killed_under_load_is_replaced_without_loss(tmp_path):
    rng = random.Random(f"{SEED}-failover")
    kill_at = rng.randint(COUNT // 2, COUNT * 2)
    print(f"seed {SEED}: kill the master at seq {kill_at}")
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
        cluster.start()
        producers = [cluster.group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT,
                                                                       5_000)) for s in (1, 2, 3)]
        wait_until(lambda: cluster.status().get("last", 0) >= kill_at, 120, f"seq {kill_at}")
        old_epoch = cluster.stats()["epoch"]
        cluster.sequencer.kill()
        cluster.start_sequencer()
        assert cluster.stats()["epoch"] > old_epoch
        for p in producers:
            assert p.wait(300) == 0, p.log()
        cluster.drain()
        wait_until(lambda: replicated_equally(cluster), 60, "equal replicators")
        cluster.stop()
    check_exactly_once(cluster, tmp, [1, 2, 3], COUNT)


@pytest.mark.timeout(600)
def test_a_thawed_old_master_has_every_write_refused(tmp_path):
    tmp = str(tmp_path)
    with LogCluster(tmp, replicators=3, policy="quorum") as cluster:
        cluster.start()
        old = cluster.sequencer
        producers = [cluster.group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT,
                                                                       5_000)) for s in (1, 2)]
        wait_until(lambda: cluster.status().get("last", 0) >= COUNT // 2, 120, "traffic")
        old_epoch = cluster.stats()["epoch"]
        old.popen.send_signal(signal.SIGSTOP)  # frozen, not dead: it still believes it leads
        for p in producers:
            p.kill()
        cluster.start_sequencer(new_endpoints=True, name="standby")
        new_epoch = cluster.stats()["epoch"]
        assert new_epoch > old_epoch
        producers = [cluster.group.spawn(f"producer{s}-again", producer_args(
            cluster, tmp, s, COUNT, 20_000) + ["--resend-from", "1"]) for s in (1, 2)]
        old.popen.send_signal(signal.SIGCONT)
        assert old.wait(60) != 0, "the old master should stop once it is refused"
        assert "fenced" in old.log()
        for p in producers:
            assert p.wait(300) == 0, p.log()
        cluster.drain()
        wait_until(lambda: replicated_equally(cluster), 60, "equal replicators")
        cluster.stop()
    recs = check_exactly_once(cluster, tmp, [1, 2], COUNT)
    first_new = next(r[0] for r in recs if r[4] == new_epoch)
    assert all(r[4] == new_epoch for r in recs if r[0] >= first_new), \
        "a record of an older epoch was written after the takeover"
