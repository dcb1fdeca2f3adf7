"""The subscriber's replay against replicators that do not answer. In-process ROUTER sockets on
loopback stand in for the replicators; the subscriber's clock is a fake one that the test moves,
and poll(0) takes one step, so no assertion depends on the wall clock (which only bounds how
long a message may take to arrive)."""
from __future__ import annotations

import pytest
import zmq

from mq import subscriber as subscriber_mod
from mq import wire
from mq.record import encode
from mq.subscriber import REPLAY_TIMEOUT_MAX_S, REPLAY_TIMEOUT_S, Subscriber

STREAM = "in.sub"
ARRIVES_S = 10.0   # a message on loopback arrives within this (only a bound)


def records(first: int, last: int) -> bytes:
    return encode([(s, s, 9, s, 1, 32, b"x") for s in range(first, last + 1)])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(monkeypatch):
    """Two fake replicators, a subscriber connected to both, and its clock."""
    ctx = zmq.Context.instance()
    reps = []
    for _ in range(2):
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.bind("tcp://127.0.0.1:*")
        reps.append(s)
    clock = Clock()
    monkeypatch.setattr(subscriber_mod.time, "monotonic", clock)
    sub = Subscriber(STREAM, "tcp://127.0.0.1:1",
                     [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in reps])
    for dealer, rep in zip(sub.replicas, reps, strict=True):   # connected before the test
        dealer.send_multipart([b"hello"])
        assert rep.poll(int(ARRIVES_S * 1000))
        rep.recv_multipart()
    yield sub, reps, clock
    sub.close()
    for s in reps:
        s.close(0)


def asked(rep: zmq.Socket, wait_s: float = ARRIVES_S):
    """The REPLAY this fake replicator got, or None if none came within wait_s."""
    if not rep.poll(int(wait_s * 1000)):
        return None
    ident, kind, body = rep.recv_multipart()
    assert kind == wire.REPLAY
    return ident, wire.unpack(body)


def answer(rep, ident, req: dict, frame: bytes) -> None:
    rep.send_multipart([ident, wire.RECORDS, wire.pack(
        {"stream": STREAM, "from": req["from"], "req": req["req"]}), frame])


def test_a_silent_replicator_is_left_for_the_next_after_the_replay_timeout(setup):
    sub, (a, b), clock = setup
    sub.poll(0)
    assert asked(a)
    start = clock.t
    clock.t += REPLAY_TIMEOUT_S * 0.9
    sub.poll(0)
    sub.poll(0)
    assert asked(b, 0.2) is None          # not yet
    clock.t = start + 0.25
    sub.poll(0)
    sub.poll(0)
    assert asked(b)                       # a quarter second of silence, not a second


def test_the_wait_doubles_while_no_replicator_answers_then_follows_the_answers(setup):
    sub, (a, b), clock = setup
    waits = []
    for rep in (a, b, a, b, a):
        sub.poll(0)
        got = asked(rep)
        assert got
        waits.append(sub.timeout_s)       # what this ask may wait
        clock.t += sub.timeout_s + 0.001
        sub.poll(0)                       # its timeout: on to the next
    assert waits == [REPLAY_TIMEOUT_S * 2 ** k for k in range(4)] + [REPLAY_TIMEOUT_MAX_S]
    sub.poll(0)
    ident, req = asked(b)
    clock.t += 0.3                        # it took 0.3 s to answer
    answer(b, ident, req, records(1, 3))
    out = []
    for _ in range(1000):
        out = sub.poll(0)
        if out:
            break
        b.poll(1)   # let it arrive
    assert [(first, last) for first, last, _fr in out] == [(1, 3)]
    assert sub.timeout_s == pytest.approx(0.6)   # twice what the last answer took


def test_a_late_answer_that_continues_the_stream_is_taken(setup):
    """A slow replicator's answer, come after the subscriber asked the next one, still starts
    at the seq the subscriber wants: it is taken, not thrown away; a later one from where the
    subscriber no longer stands is dropped."""
    sub, (slow, other), clock = setup
    sub.poll(0)
    ident, req = asked(slow)
    clock.t += REPLAY_TIMEOUT_S + 0.001
    sub.poll(0)
    sub.poll(0)
    assert asked(other)
    answer(slow, ident, req, records(1, 4))
    out = []
    for _ in range(10_000):
        out = sub.poll(0)
        if out:
            break
        slow.poll(1)   # let it arrive
    assert [(first, last) for first, last, _fr in out] == [(1, 4)] and sub.next_seq == 5
    answer(slow, ident, req, records(1, 4))
    for _ in range(20):
        assert sub.poll(0) == []
        slow.poll(1)
    assert sub.next_seq == 5
