"""The mirror master of an out.* stream (real processes on 127.0.0.1).

Three replicas of one engine send their outputs: A and B identical, C different at one seq;
A sends its first two frames out of order. The out stream holds every seq once, in order, with
the first copy of each (A's); the divergence alarm fires once, naming the seq and both
replicas; with a replicator behind the mirror, a subscriber reads 1..N exactly once.
"""
from __future__ import annotations

import pytest
import zmq

from deploy.procs import Group, tcp
from mq import wire
from mq.control import ping, wait_until
from mq.record import decode, encode
from mq.subscriber import Subscriber

N, CHUNK, BAD = 3000, 100, 1234


def outputs(replica: str) -> list[bytes]:
    frames = []
    for first in range(1, N + 1, CHUNK):
        frames.append(encode([(s, 10**18 + s, 7, s, 3, 32, b"BAD" if replica == "C" and s == BAD
                               else b"out-%d" % s) for s in range(first, first + CHUNK)]))
    return frames


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["first", "none"])
def test_mirror_keeps_first_copies_and_raises_divergence(tmp_path, policy):
    inputs, pub, rep = tcp(), tcp(), tcp()
    with Group(str(tmp_path / "logs")) as group:
        reps = []
        if policy != "none":
            group.spawn("replicator", ["replicator", "--data", str(tmp_path / "r0"), "--bind", rep])
            wait_until(lambda: ping(rep), 30, "the replicator")
            reps = ["--replicator", rep]
        group.spawn("mirror", ["mirror", "--stream", "out.ce.X", "--inputs", inputs, "--pub", pub,
                               "--policy", policy, *reps])
        wait_until(lambda: ping(inputs), 30, "the mirror")
        sub = Subscriber("out.ce.X", pub, [rep]) if policy != "none" else None
        ctx = zmq.Context.instance()
        socks = {}
        for name in "ABC":
            socks[name] = ctx.socket(zmq.DEALER)
            socks[name].connect(inputs)
        a = outputs("A")
        order = {"A": [a[1], a[0], *a[2:]], "B": outputs("B"), "C": outputs("C")}
        # A's copies must arrive first: frames on different connections are fair-queued, so
        # B and C send only once the mirror has accepted all of A's.
        for frame in order["A"]:
            socks["A"].send_multipart([wire.DATA, wire.pack({"replica": "A"}), frame])
        wait_until(lambda: (ping(inputs) or {}).get("accepted") == N, 60, "A's outputs")
        for name in "BC":
            for frame in order[name]:
                socks[name].send_multipart([wire.DATA, wire.pack({"replica": name}), frame])
        # the comparison and the commit point move on their own: wait for both
        status = wait_until(lambda: (lambda st: st if st and st["copies_compared"] >= 2 * N
                                     and st["last"] == N
                                     and (policy == "none" or st["committed"] == N)
                                     else None)(ping(inputs)),
                            120, "both later copies to be compared and every record committed")
        assert status["divergences"] == 1
        assert status["alarms"] == [{"seq": BAD, "first_copy": "A", "divergent": "C"}]
        assert status["accepted"] == N and status["committed"] == N
        if sub is not None:  # without replicators there is no replay to read from the start
            got = []
            while len(got) < N:
                for _f, _l, frame in sub.poll(1000):
                    got.extend(decode(frame))
            sub.close()
            assert [r[0] for r in got] == list(range(1, N + 1))
            assert [r[6] for r in got] == [b"out-%d" % s for s in range(1, N + 1)]
        for sock in socks.values():
            sock.close(0)
