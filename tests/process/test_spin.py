"""--spin-us: a sequencer and replicators that poll without sleeping after each input move a
stream exactly as the sleeping ones do (every record once, in order, the replicators equal),
and go back to sleeping in the poll when the input stops."""
from __future__ import annotations

import os
import struct
import time

import pytest

from deploy.local import LogCluster
from mq.control import replay, wait_until
from mq.record import decode

COUNT = 6_000


@pytest.mark.timeout(300)
def test_spinning_master_and_replicators_move_the_stream(tmp_path):
    spin = ["--spin-us", "300"]
    with LogCluster(str(tmp_path), "in.spin", replicators=2, policy="quorum",
                    sequencer_args=spin, replicator_args=spin) as cluster:
        cluster.start()
        acks = str(tmp_path / "acks.txt")
        p = cluster.group.spawn("producer", [
            "produce", "--sequencer", cluster.prod_addr, "--source", "1", "--count", str(COUNT),
            "--rate", "3000", "--batch", "16", "--acks", acks])
        assert p.wait(240) == 0, p.log()

        def logs():
            return [[r for frame in replay(addr, "in.spin", 1) for r in decode(frame)]
                    for addr in cluster.rep_addrs]

        def replicated():
            held = logs()
            return sum(1 for r in held[0] if r[2] == 1) == COUNT and \
                all(other[:len(held[0])] == held[0] for other in held[1:])
        wait_until(replicated, 120, "both replicators hold every record")
        recs = logs()[0]
        assert [r[0] for r in recs] == list(range(1, len(recs) + 1))
        ours = [r for r in recs if r[2] == 1]
        assert [r[3] for r in ours] == list(range(1, COUNT + 1))
        assert all(struct.unpack_from("<Q", r[6])[0] == r[3] for r in ours)
        # idle again: the spinning processes sleep in their polls (well under a core each)
        procs = [cluster.sequencer, *cluster.replicators]
        time.sleep(0.5)
        before = [cpu_s(x.popen.pid) for x in procs]
        time.sleep(2.0)
        used = [cpu_s(x.popen.pid) - b for x, b in zip(procs, before, strict=True)]
        assert all(u < 1.0 for u in used), f"CPU seconds in 2 s idle: {used}"


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
