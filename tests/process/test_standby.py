"""A hot standby master on real processes (docs/operations.md "Standby masters"): a sequencer
and its standby on one lock (``--standby-lock``), the same endpoints, against a replicator.
The standby binds nothing while the master holds the lock; when the master is SIGKILLed under
load the kernel releases the lock, the standby takes over with a higher epoch on the same
endpoints, and the producers' records keep being acknowledged: every record in the log
exactly once, every acknowledgement true. The killed master, started again, waits as the new
standby."""
from __future__ import annotations

import os
import time

import pytest

from deploy.local import LogCluster
from deploy.supervisor import master_lock_holder, waiting_standby
from mq.control import ping, wait_until
from tests.process.test_failover import check_exactly_once, replicated_equally
from tests.process.test_log_processes import producer_args

COUNT = 20_000

pytestmark = pytest.mark.slow


class _Spec:   # what supervisor.waiting_standby reads of a ProcSpec
    def __init__(self, args: list[str]):
        self.args = args


def _sequencer_args(cluster: LogCluster, lock: str) -> list[str]:
    args = ["sequencer", "--stream", cluster.stream, "--producers", cluster.prod_addr,
            "--pub", cluster.pub_addr, "--policy", cluster.policy,
            "--tick-ms", str(cluster.tick_ms)]
    for addr in cluster.rep_addrs:
        args += ["--replicator", addr]
    return args + ["--standby-lock", lock]


def _acked(tmp: str, src: int) -> int:
    """Records of source src acknowledged so far (its acks file)."""
    try:
        with open(os.path.join(tmp, f"acks{src}.txt")) as f:
            return sum(int(b) - int(a) + 1 for a, b, first in
                       (line.split() for line in f if line.strip()) if first != "-"
                       and int(first) > 0)
    except (OSError, ValueError):
        return 0


@pytest.mark.timeout(600)
def test_the_standby_takes_over_a_killed_master_with_nothing_lost(tmp_path):
    tmp = str(tmp_path)
    lock = os.path.join(tmp, "locks", "in.test.lock")   # its directory is created too
    with LogCluster(tmp, replicators=1, policy="quorum") as cluster:
        cluster.sequencer_args = ["--standby-lock", lock]
        cluster.start()
        master = cluster.sequencer
        wait_until(lambda: master_lock_holder(lock) == master.popen.pid, 30, "the lock held")
        spec = _Spec(_sequencer_args(cluster, lock))
        standby = cluster.group.spawn("sequencer.standby", spec.args)
        wait_until(lambda: "standby: waiting" in standby.log(), 60, "the standby waiting")
        # waiting: alive, bound to nothing, not the holder; the master still serves
        assert standby.alive and waiting_standby(spec, standby.popen.pid)
        assert not waiting_standby(spec, master.popen.pid)
        assert master_lock_holder(lock) == master.popen.pid
        old_epoch = cluster.stats()["epoch"]
        producers = [cluster.group.spawn(f"producer{s}", producer_args(cluster, tmp, s, COUNT,
                                                                       4_000)) for s in (1, 2)]
        wait_until(lambda: cluster.status().get("last", 0) >= COUNT // 2, 180, "traffic")
        acked_before = sum(_acked(tmp, s) for s in (1, 2))
        assert 0 < acked_before < 2 * COUNT, "the kill must come while the load runs"
        master.kill()
        struck = time.monotonic()
        st = wait_until(lambda: (lambda s: s if (s or {}).get("epoch", 0) > old_epoch else None)(
            ping(cluster.prod_addr)), 60, "the standby's takeover")
        took_s = time.monotonic() - struck
        print(f"the standby answers with epoch {st['epoch']} {took_s:.3f} s after the kill")
        assert master_lock_holder(lock) == standby.popen.pid
        assert not waiting_standby(spec, standby.popen.pid)
        assert "taking over" in standby.log()
        # the producers' records keep being acknowledged, by the standby
        wait_until(lambda: sum(_acked(tmp, s) for s in (1, 2)) > acked_before + 1000, 120,
                   "acknowledgements after the takeover")
        # the killed master, started again, is the new standby
        cluster.sequencer = standby
        master.start()
        wait_until(lambda: "standby: waiting" in master.log(), 60, "the old master waiting")
        assert waiting_standby(spec, master.popen.pid)
        for p in producers:
            assert p.wait(300) == 0, p.log()
        # the waiting standby first: a drained master would hand it the stream
        master.stop()
        cluster.drain()
        wait_until(lambda: replicated_equally(cluster), 60, "the replicator")
        cluster.stop()
    recs = check_exactly_once(cluster, tmp, [1, 2], COUNT)
    epochs = sorted({r[4] for r in recs})
    assert epochs[0] == old_epoch and epochs[-1] == st["epoch"] > old_epoch
