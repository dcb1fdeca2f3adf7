"""The masters' shell on its hot path (bench/count_master.py counts it): sends and receives
under pyzmq's wrappers carry messages exactly as send_multipart / recv_multipart do; an
upstream subscription is polled only when it has something to do; a mirror decodes each
replica's DATA head once and still names every replica right.
"""
from __future__ import annotations

import itertools

import pytest
import zmq

from mq import sockets, wire
from mq.mirror import Mirror
from mq.record import encode
from mq.sequencer import Sequencer, Upstream
from mq.subscriber import SILENCE_PROBE_S, Subscriber

_n = itertools.count()


@pytest.fixture
def pair():
    ctx = zmq.Context.instance()
    addr = f"inproc://test-master-shell-{next(_n)}"
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(addr)
    b.connect(addr)
    yield a, b
    a.close(0)
    b.close(0)


@pytest.mark.parametrize("parts", [[b"one"], [b"APPEND", b"", b"x" * 100], [b"a", b"b", b"c", b"d"]])
def test_send_parts_and_recv_parts_are_send_multipart_and_recv_multipart(pair, parts):
    a, b = pair
    sockets.send_parts(a, parts, sockets.NOBLOCK)
    sockets.send_parts(a, parts, 0, False)     # zero-copy, as for a large frame
    assert b.recv_multipart() == parts
    assert b.recv_multipart() == parts
    a.send_multipart(parts)
    assert sockets.recv_parts(b, sockets.NOBLOCK) == parts
    a.send_multipart(parts)
    assert [f.bytes for f in sockets.recv_frames(b)] == parts
    assert not sockets.readable(b)


def test_a_send_that_cannot_go_now_raises_again_and_queues_nothing():
    sock = sockets.dealer("tcp://127.0.0.1:1", immediate=True)   # never connected
    try:
        with pytest.raises(zmq.Again):
            sockets.send_parts(sock, [wire.APPEND, b"{}", b"records"], sockets.NOBLOCK)
        with pytest.raises(zmq.Again):
            sockets.recv_parts(sock, sockets.NOBLOCK)
    finally:
        sock.close(0)


def test_a_live_idle_subscription_is_due_only_for_input_or_the_silence_probe():
    sub = Subscriber("out.x", "tcp://127.0.0.1:1", ["tcp://127.0.0.1:2"])
    try:
        sub.replaying = False
        now = sub.heard_at
        assert not sub.due({}, now)
        assert sub.due({sub.sub: zmq.POLLIN}, now)                   # live input
        assert sub.due({}, now + SILENCE_PROBE_S + 0.001)            # silent: probe
        sub.held = (5, 5, b"")
        assert sub.due({}, now)                                      # a gap to fill
        sub.held, sub.replaying = None, True
        assert sub.due({}, now)                                      # replay steps
    finally:
        sub.close()


class FakeSub:
    def __init__(self) -> None:
        self.polls = 0
        self.is_due = False

    def due(self, events, now) -> bool:   # noqa: ARG002
        return self.is_due

    def poll(self, timeout_ms=0):   # noqa: ARG002
        self.polls += 1
        return []


def test_the_sequencer_polls_an_upstream_only_when_it_is_due():
    up = Upstream.parse("stream=out.x,source=1001,pub=tcp://127.0.0.1:1,"
                        "replicators=tcp://127.0.0.1:2")
    seq = Sequencer("in.x", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", ["tcp://127.0.0.1:3"],
                    upstreams=[up])
    try:
        up.sub = fake = FakeSub()
        seq.events = {}             # a turn whose poll saw nothing of it
        seq._take_sources()
        assert fake.polls == 0
        fake.is_due = True
        seq._take_sources()
        assert fake.polls == 1
        fake.is_due = False
        seq.events = None           # outside the loop (nothing polled): always asked
        seq._take_sources()
        assert fake.polls == 2
    finally:
        seq.close()


def test_a_mirror_names_each_replica_by_its_own_data_head():
    m = Mirror("out.x", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", [], policy="none")
    m.recover()
    m._reply = lambda ident, kind, body: None   # noqa: ARG005
    try:
        rec = [(1, 10**18, 7, 1, 3, 32, b"out")]
        other = [(1, 10**18, 7, 1, 3, 32, b"OUT")]
        msgs = []
        for ident, name, frame in [(b"A", "replica-a", encode(rec)),
                                   (b"B", "replica-b", encode(other)),
                                   (b"A", "replica-a", encode(rec)),
                                   (b"B", "replica-b", encode(other))]:
            head = wire.pack({"replica": name})
            msgs.append((ident, wire.DATA, [ident, wire.DATA, head, frame]))
        m._waiting = lambda: iter(msgs)
        m._sequence_waiting()
        assert [(a["first_copy"], a["divergent"]) for a in m.alarms] == \
            [("replica-a", "replica-b")] * 2
    finally:
        m.close()


def test_a_stop_while_taking_over_ends_the_recovery():
    """SIGTERM (stop()) while no replicator answers: recover() returns at once rather than
    trying until its deadline, and sequences nothing."""
    import threading
    import time

    from mq.master import RecoveryStopped
    seq = Sequencer("in.x", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", ["tcp://127.0.0.1:3"])
    try:
        threading.Timer(0.3, seq.stop).start()
        t0 = time.monotonic()
        with pytest.raises(RecoveryStopped):
            seq.recover(deadline_s=60)
        assert time.monotonic() - t0 < 10
    finally:
        seq.close()
