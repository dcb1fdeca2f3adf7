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


def delivered(sub, rep, turns: int = 10_000) -> list:
    """What the subscriber delivers once an answer of rep's arrives (empty if none within
    turns of a millisecond's wall-clock wait)."""
    for _ in range(turns):
        out = sub.poll(0)
        if out:
            return out
        rep.poll(1)   # let it arrive
    return []


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
    assert [(first, last) for first, last, _fr in delivered(sub, b)] == [(1, 3)]
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
    out = delivered(sub, slow)
    assert [(first, last) for first, last, _fr in out] == [(1, 4)] and sub.next_seq == 5
    answer(slow, ident, req, records(1, 4))
    for _ in range(20):
        assert sub.poll(0) == []
        slow.poll(1)
    assert sub.next_seq == 5


def left_behind_then_live(sub, a, b, clock):
    """The subscriber asks A, leaves it after REPLAY_TIMEOUT_S, B says "nothing more": live.
    Returns A's request (ident, body), still unanswered."""
    sub.poll(0)
    ident_a, req_a = asked(a)
    clock.t += REPLAY_TIMEOUT_S + 0.001
    sub.poll(0)
    sub.poll(0)
    ident_b, req_b = asked(b)
    answer(b, ident_b, req_b, b"")
    for _ in range(10_000):
        sub.poll(0)
        if not sub.replaying:
            break
        b.poll(1)
    assert not sub.replaying and sub.next_seq == 1
    return ident_a, req_a


def test_a_late_answer_that_comes_once_live_does_not_keep_a_socket_readable(setup):
    """A replicator left behind answers once the subscriber is live: the answer is read and
    dropped, not left in the socket, where every caller that waits on sockets() (a master's
    upstream, the gateway's waiter) would wake for it turn after turn."""
    sub, (a, b), clock = setup
    ident_a, req_a = left_behind_then_live(sub, a, b, clock)
    answer(a, ident_a, req_a, b"")
    assert sub.replicas[0].poll(10_000)        # it arrived
    polled = [(s, zmq.POLLIN) for s in sub.sockets()]
    spins = 0
    for _ in range(50):                        # what a caller's loop does, turn after turn
        events = dict(zmq.zmq_poll(polled, 0))
        if not events:
            break
        spins += 1
        if sub.due(events, clock.t):
            sub.poll(0)
        clock.t += 0.001                       # a turn: a millisecond
    # read within DRAIN_EVERY_S (10 ms) of live steps, not left there
    assert spins <= 11, f"woke {spins} turns in a row for a message nobody reads"


def test_a_stale_empty_answer_does_not_end_the_silence_probe_replay(setup):
    """A stale "nothing more" (a replicator's answer to a request the subscriber left, still
    from next_seq because the feed is silent) that arrives during the next replay (the
    silence probe's) does not end it: the probe's own answer, which holds records, is taken,
    not left for the next probe a second later."""
    sub, (a, b), clock = setup
    ident_a, req_a = left_behind_then_live(sub, a, b, clock)
    clock.t += 1.1                              # the feed is silent: probe the replicators
    sub.poll(0)
    assert sub.replaying
    answer(a, ident_a, req_a, b"")              # A's late "nothing more", from 1, now
    assert sub.replicas[0].poll(10_000)
    out, got_b = [], None
    for _ in range(10_000):
        out += sub.poll(0)
        got_b = asked(b, 0.001)
        if got_b:
            break
    assert got_b, "the probe asks B"
    answer(b, got_b[0], got_b[1], records(1, 5))  # B now holds 1..5
    for _ in range(300):                          # 0.3 s of fake time, well under a probe
        out += sub.poll(0)
        if out:
            break
        clock.t += 0.001
        b.poll(1)
    assert [(first, last) for first, last, _ in out] == [(1, 5)], \
        f"replaying={sub.replaying}: B's records wait for the next silence probe"


def test_an_answer_for_another_stream_is_dropped(setup):
    """An answer that names another stream is not taken, even from the seq wanted."""
    sub, (a, _b), _clock = setup
    sub.poll(0)
    ident, req = asked(a)
    a.send_multipart([ident, wire.RECORDS, wire.pack(
        {"stream": "in.other", "from": req["from"], "req": req["req"]}), records(1, 2)])
    for _ in range(50):
        assert sub.poll(0) == []
        a.poll(1)
    assert sub.next_seq == 1 and sub.replaying
