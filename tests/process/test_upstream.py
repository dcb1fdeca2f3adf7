"""A stream that takes another stream as a source (in.ce.X takes orders out of out.te.N):

1. the kind-16 records of the upstream stream are taken exactly once, in order, each with its
   upstream seq as source_seq, across a SIGKILL of the downstream sequencer at a seeded point;
2. an upstream with a route mask (in.te.1 taking out.ce.T with route=0x2) takes exactly the
   records of a real out stream (CrossEngine replica -> mirror) whose route has that bit, each
   with its upstream seq as source_seq and its route and payload unchanged."""
from __future__ import annotations

import os
import random

import pytest

from deploy.local import LogCluster
from deploy.procs import tcp
from mq.control import ping, replay, wait_until
from mq.producer import Producer
from mq.record import decode
from mq.sources import OPERATOR_SOURCE
from tests.process.test_log_processes import producer_args
from tests.process.test_replicas import commands, feed, read_out, start_replica, wait_servable

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
            # (read short, the replay would name an older last16)
            wait_servable(up.rep_addrs[0], "in.up", up.stats()["committed"])
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


@pytest.mark.timeout(600)
def test_an_upstream_route_mask_takes_only_the_matching_records_of_an_out_stream(tmp_path):
    tmp = str(tmp_path)
    cmds = commands()[:3000]
    with LogCluster(os.path.join(tmp, "ce"), stream="in.ce.T", replicators=1,
                    policy="first") as ce:
        ce.start()
        mirror_in, mirror_pub, control = tcp(), tcp(), tcp()
        ce.group.spawn("mirror", ["mirror", "--stream", "out.ce.T", "--inputs", mirror_in,
                                  "--pub", mirror_pub, "--policy", "first",
                                  "--replicator", ce.rep_addrs[0]])
        wait_until(lambda: ping(mirror_in), 30, "the mirror")
        start_replica(ce, "hot", "hot", mirror_in, tmp, control,
                      ("--engine-config", '{"n_shards": 4}'))
        wait_until(lambda: ping(control), 30, "the replica")
        spec = (f"stream=out.ce.T,source={SOURCE},pub={mirror_pub},"
                f"replicators={ce.rep_addrs[0]},route=0x2")
        down = LogCluster(os.path.join(tmp, "te"), stream="in.te.1", replicators=1,
                          policy="first", sequencer_args=["--upstream", spec])
        with down:
            down.start()
            prod = Producer(OPERATOR_SOURCE, ce.prod_addr)
            prod.connect()
            feed(ce, cmds, len(cmds), prod)
            prod.flush(120)
            prod.close()
            last = ce.stats()["last"]
            out = read_out(mirror_pub, ce.rep_addrs, last)
            wanted = [(r[0], r[6], r[7]) for r in out if r[7] & 0x2]
            assert 0 < len(wanted) < len(out)
            wait_until(lambda: _position(down, "out.ce.T") == wanted[-1][0] + 1, 120,
                       f"the downstream to take out.ce.T up to {wanted[-1][0]}")
            down.drain()
            down.stop()
        ce.stop()
    taken = [(r[3], r[6], r[7]) for r in decode(down.read_logs()[0][1]) if r[2] == SOURCE]
    assert taken == wanted, "the downstream did not take exactly the records routed to bit 1"


def _position(cluster: LogCluster, stream: str = "in.up") -> int:
    return cluster.status().get("upstreams", {}).get(stream, {}).get("next", 0)
