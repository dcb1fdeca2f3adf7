"""A stream that takes another stream as a source (in.ce.X takes orders out of out.te.N):
the kind-16 records of the upstream stream are taken exactly once, in order, each with its
upstream seq as source_seq, across a SIGKILL of the downstream sequencer at a seeded point."""
from __future__ import annotations

import os
import random

import pytest

from deploy.local import LogCluster
from mq.control import replay, wait_until
from mq.record import decode
from tests.process.test_log_processes import producer_args

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))
COUNT = 15_000
SOURCE = 500


@pytest.mark.timeout(600)
def test_upstream_taken_exactly_once_across_sigkill(tmp_path):
    rng = random.Random(f"{SEED}-upstream")
    kill_at = rng.randint(COUNT // 4, COUNT)
    print(f"seed {SEED}: kill the downstream sequencer at its seq {kill_at}")
    tmp = str(tmp_path)
    up = LogCluster(os.path.join(tmp, "up"), stream="in.up", replicators=1, policy="first")
    with up:
        up.start()
        spec = (f"stream=in.up,source={SOURCE},pub={up.pub_addr},"
                f"replicators={up.rep_addrs[0]},kinds=16")
        down = LogCluster(os.path.join(tmp, "down"), stream="in.down", replicators=1,
                          policy="first", sequencer_args=["--upstream", spec])
        with down:
            down.start()
            producers = [up.group.spawn(f"producer{s}", producer_args(up, tmp, s, COUNT, 6_000)
                                        + ["--kind", str(15 + s)]) for s in (1, 2)]
            wait_until(lambda: down.status().get("last", 0) >= kill_at, 120, f"seq {kill_at}")
            down.sequencer.kill()
            down.start_sequencer()
            for p in producers:
                assert p.wait(300) == 0, p.log()
            up.drain()
            last16 = max(r[0] for f in replay(up.rep_addrs[0], "in.up") for r in decode(f)
                         if r[5] == 16)
            # the downstream's position in in.up is one past the last record it took
            wait_until(lambda: _position(down) == last16 + 1, 120,
                       f"the downstream to take in.up up to {last16}")
            down.drain()
            down.stop()
        up.stop()
    upstream = decode(up.read_logs()[0][1])
    wanted = [(r[0], r[6]) for r in upstream if r[5] == 16]
    assert len(wanted) == COUNT
    taken = [(r[3], r[6]) for r in decode(down.read_logs()[0][1]) if r[2] == SOURCE]
    assert taken == wanted, "the downstream did not take each kind-16 record exactly once, in order"


def _position(cluster: LogCluster) -> int:
    return cluster.status().get("upstreams", {}).get("in.up", {}).get("next", 0)
