"""The producer client against a scripted master (a ROUTER socket in this process).

Proves: every refusal reaches the caller as an exception with its reason (a batch the master
would refuse is refused at submit, before it takes a source_seq; an ERROR answer is raised by
poll); the outbox is bounded (submit waits, then raises Backpressure, queueing nothing);
stall probes back off; a WELCOME acknowledges nothing, so after a failover every record's
real seq is learnt from the duplicate ACKs, and each source_seq is reported exactly once;
seqs() is an idempotent wait: a retry after its timeout submits nothing again.
"""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from mq import producer as producer_mod
from mq import sockets, wire
from mq.producer import Backpressure, Producer, Refused
from mq.record import MAX_FRAME, MAX_PAYLOAD, scan_producer

SRC = 7


class Master:
    """A scripted sequencer: records what the producer sends, answers what the test says."""

    def __init__(self):
        self.sock = sockets.router("tcp://127.0.0.1:*")
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ident = b""

    def recv(self, timeout_s: float = 5.0) -> tuple[bytes, dict | tuple]:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("the producer sent nothing")
        msg = self.sock.recv_multipart()
        self.ident = msg[0]
        if msg[1] == wire.DATA:
            return msg[1], scan_producer(msg[3])     # (src, ss_first, count)
        return msg[1], wire.unpack(msg[2])

    def drain(self, timeout_s: float = 0.2) -> list:
        out = []
        while True:
            try:
                out.append(self.recv(timeout_s))
            except TimeoutError:
                return out

    def send(self, kind: bytes, body: dict) -> None:
        self.sock.send_multipart([self.ident, kind, wire.pack(body)])

    def welcome(self, nxt: int, durable: int, epoch: int = 1) -> None:
        self.send(wire.WELCOME, {"src": SRC, "next": nxt, "durable": durable, "epoch": epoch})


@pytest.fixture
def master():
    m = Master()
    yield m
    m.sock.close(0)


def connected(master: Master, **kw) -> Producer:
    prod = Producer(SRC, master.addr, **kw)
    prod._hello()
    kind, body = master.recv()
    assert kind == wire.HELLO and body == {"src": SRC}
    master.welcome(1, 1)
    prod._receive(5000)
    assert prod.next_ss == 1
    return prod


def test_connect_stops_at_the_masters_refusal(master):
    """A master that answers HELLO with ERROR (the source is not this peer's) refuses it for
    good: connect() raises its reason at once, instead of asking again every 200 ms until
    its timeout (and the master counting a refusal each time)."""
    prod = Producer(SRC, master.addr)
    t = threading.Thread(target=lambda: (master.recv(), master.send(
        wire.ERROR, {"src": SRC, "error": "source_not_registered"})))
    t.start()
    start = time.monotonic()
    with pytest.raises(Refused, match="source_not_registered"):
        prod.connect(timeout_s=10)
    assert time.monotonic() - start < 5
    t.join()
    assert [m for m in master.drain() if m[0] == wire.HELLO] == []
    prod.close()
    # a source_clash passes: the other connection may be one going away; asked again
    prod = Producer(SRC, master.addr)

    def clash_then_welcome():
        master.recv()
        master.send(wire.ERROR, {"src": SRC, "reason": "source_clash",
                                 "error": "source 7 is in use by another live producer"})
        master.recv()
        master.welcome(3, 3)
    t = threading.Thread(target=clash_then_welcome)
    t.start()
    prod.connect(timeout_s=10)
    t.join()
    assert prod.next_ss == 3 and [r.code for r in prod.refusals] == ["source_clash"]
    prod.close()


def test_an_error_answer_is_raised_with_its_reason(master):
    prod = connected(master)
    prod.submit(16, [b"a", b"b"])
    assert master.recv()[0] == wire.DATA
    master.send(wire.ERROR, {"error": "batch of 70000000 bytes exceeds 67108864"})
    deadline = time.monotonic() + 5
    with pytest.raises(Refused, match="answered ERROR: batch of 70000000 bytes exceeds"):
        while time.monotonic() < deadline:
            prod.poll(50)
    prod.close()


def test_a_batch_the_master_would_refuse_is_refused_at_submit(master):
    prod = connected(master)
    cases = [
        (lambda: prod.submit(16, []), "at least one record"),
        (lambda: prod.submit(16, [b"x" * (MAX_PAYLOAD + 1)]), "exceeds"),
        (lambda: prod.submit(70_000, [b"x"]), "int"),
        (lambda: prod.submit_many([(16, b"x" * MAX_PAYLOAD)] * (MAX_FRAME // MAX_PAYLOAD + 1)),
         f"exceeds {MAX_FRAME}"),
    ]
    for call, reason in cases:
        with pytest.raises(Refused, match=reason):
            call()
        assert prod.next_ss == 1 and not prod.outbox   # no source_seq was taken
    assert master.drain() == []
    assert prod.submit(16, [b"fine"]) == (1, 1)
    prod.close()


def test_the_outbox_is_bounded_and_a_full_one_pushes_back(master):
    prod = connected(master, max_outbox=100, block_s=0.3)
    prod.submit(16, [b"r"] * 60)
    prod.submit(16, [b"r"] * 40)
    started = time.monotonic()
    with pytest.raises(Backpressure, match="outbox full"):
        prod.submit(16, [b"r"])
    assert time.monotonic() - started >= 0.3
    assert prod.next_ss == 101 and prod.unacked == 100   # the refused batch took nothing
    # acknowledgements make room while a submit waits
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 61, "runs": [[1, 60, 1000]]})
    assert prod.submit(16, [b"r"] * 50, block_s=5) == (101, 150)
    assert prod.poll(0) == [(1, 60, 1000)]     # the runs received while it waited
    prod.close()


def test_stall_probes_back_off_with_jitter(master, monkeypatch):
    monkeypatch.setattr(producer_mod, "RESEND_MAX_S", 1.6)
    prod = connected(master, resend_after_s=0.1)
    prod.submit(16, [b"r"])
    hellos = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        prod.poll(10)
        while master.sock.poll(0):
            kind, _ = master.recv()
            if kind == wire.HELLO:
                hellos.append(time.monotonic())
    gaps = [b - a for a, b in zip(hellos, hellos[1:], strict=False)]
    # a fixed 0.1 s would probe ~35 times; doubling (0.1 .. 1.6 s, +-25%) about 6
    assert 3 <= len(hellos) <= 9, gaps
    assert gaps[-1] > 2 * gaps[0], gaps
    prod.close()


def polled_empty(prod: Producer, between=None) -> list:
    """Poll until the outbox is empty (5 s at most), calling ``between`` after each poll;
    the runs acknowledged meanwhile."""
    got: list = []
    deadline = time.monotonic() + 5
    while prod.outbox and time.monotonic() < deadline:
        got += prod.poll(20)
        if between is not None:
            between()
    return got


def resent_from(master: Master, prod: Producer, got: list) -> int:
    """Poll until the producer sends DATA again; the first source_seq it sends."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got += prod.poll(20)
        data = [m for m in master.drain(0.05) if m[0] == wire.DATA]
        if data:
            return data[0][1][1]
    raise AssertionError("the producer sent nothing again")


def test_after_a_failover_the_real_seqs_are_learnt_each_once(master):
    prod = connected(master, resend_after_s=0.2)
    for _ in range(3):
        prod.submit(16, [b"r"] * 10)           # source_seqs 1..30
    assert [m[1][1] for m in master.drain() if m[0] == wire.DATA] == [1, 11, 21]
    # the first master acks 1..10 and dies; the new one adopted the log with 1..30 committed
    master.send(wire.ACK, {"src": SRC, "next": 11, "runs": [[1, 10, 100]]})
    assert prod.poll(200) == [(1, 10, 100)]
    master.welcome(31, 31, epoch=2)
    got: list = []
    assert resent_from(master, prod, got) == 11, "the unacknowledged records were not resent"
    assert got == [], "a WELCOME named no seqs, yet records were reported acknowledged"
    # An ACK that passes 21..30 without naming their seqs: the producer asks for them.
    master.send(wire.ACK, {"src": SRC, "next": 31, "runs": [[11, 20, 110]]})
    assert resent_from(master, prod, got) == 21
    assert got == [(11, 20, 110)]
    # The master names 21..24 (and 11..20 again); it asks for 25 on.
    master.send(wire.ACK, {"src": SRC, "next": 31, "runs": [[21, 24, 120], [11, 20, 110]]})
    assert resent_from(master, prod, got) == 25
    assert got == [(11, 20, 110), (21, 24, 120)]
    # Asked, the master answers the duplicates 25..30 and names no seq: it forgot them.
    # Reported once, as None, at once.
    master.send(wire.ACK, {"src": SRC, "next": 31, "runs": [], "dups": [[25, 30]]})
    got += polled_empty(prod)
    got += prod.poll(50)
    assert got == [(11, 20, 110), (21, 24, 120), (25, 30, None)]
    assert prod.seqs(9, 12) == [108, 109, 110, 111]
    assert prod.seqs(24, 26) == [123, None, None]
    prod.close()


def test_seqs_is_an_idempotent_wait(master):
    prod = connected(master)
    first, last = prod.submit(16, [b"a", b"b", b"c"])
    with pytest.raises(TimeoutError, match="stay queued"):
        prod.seqs(first, last, timeout_s=0.2)
    assert prod.next_ss == 4 and prod.outbox    # nothing was submitted again, nothing dropped
    sent = [m for m in master.drain() if m[0] == wire.DATA]
    assert all(m[1][1] == 1 for m in sent)       # only ever source_seqs 1..3
    master.send(wire.ACK, {"src": SRC, "next": 4, "runs": [[1, 3, 500]]})
    assert prod.seqs(first, last, timeout_s=5) == [500, 501, 502]
    assert prod.seqs(first, last, timeout_s=0) == [500, 501, 502]
    with pytest.raises(ValueError):
        prod.seqs(4, 4)
    prod.close()


def test_an_earlier_incarnations_records_are_not_reported_or_asked_for(master):
    """The source's records 1..5 are in the log but uncommitted (an earlier producer process
    sent them); this producer starts at 6 and is told only about its own records."""
    prod = Producer(SRC, master.addr)
    prod._hello()
    master.recv()
    master.welcome(6, 1)
    prod._receive(5000)
    assert prod.next_ss == 6
    prod.submit(16, [b"a", b"b"])
    assert [m[1][1] for m in master.drain() if m[0] == wire.DATA] == [6]
    master.send(wire.ACK, {"src": SRC, "next": 8, "runs": [[6, 7, 40]]})
    got = []
    got += polled_empty(prod)
    assert got == [(6, 7, 40)] and prod.stats["seq_queries"] == 0
    assert [m for m in master.drain() if m[0] == wire.DATA] == []
    prod.close()


def test_asking_for_seqs_survives_refusals_and_repeated_welcomes(master):
    """While it asks for the seqs of 11..20, a REFUSE (the master expects 21) must not make it
    skip them, and each WELCOME that answers a stall probe rewinds it again, however long the
    backoff has grown (a WELCOME once was deduplicated against the growing backoff, and the
    producer hung)."""
    prod = connected(master, resend_after_s=0.1)
    prod.submit(16, [b"r"] * 10)
    prod.submit(16, [b"r"] * 10)                 # source_seqs 1..20
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 21, "runs": [[1, 10, 100]]})
    got: list = []
    assert resent_from(master, prod, got) == 11   # it asks for 11..20
    master.send(wire.REFUSE, {"src": SRC, "next": 21})
    assert resent_from(master, prod, got) == 11   # not from 21
    # the master stays silent: every stall probe's WELCOME brings another resend from 11
    for _ in range(3):
        deadline = time.monotonic() + 5
        while True:
            got += prod.poll(10)
            hellos = [m for m in master.drain(0.01) if m[0] == wire.HELLO]
            if hellos:
                break
            assert time.monotonic() < deadline, "no stall probe"
        master.welcome(21, 21)
        assert resent_from(master, prod, got) == 11
    master.send(wire.ACK, {"src": SRC, "next": 21, "runs": [[11, 20, 300]]})
    got += polled_empty(prod)
    assert got == [(1, 10, 100), (11, 20, 300)]
    prod.close()


def test_a_replaying_producer_told_of_records_it_has_not_resent_yet_does_not_wait_for_them(
        master):
    """A producer restarted with its persisted outbox (next_ss=1) resends 1..10 while its
    earlier incarnation's 1..30 are committed; the master names all 30. The records it queues
    next (11..30) are already committed and reported: flush must not wait for an ACK of them
    (it once did, forever: they sat in the outbox, below what counted as sent)."""
    prod = Producer(SRC, master.addr, next_ss=1)
    prod.submit(16, [b"r"] * 10)
    assert [m[1][1] for m in master.drain() if m[0] == wire.DATA] == [1]
    master.send(wire.ACK, {"src": SRC, "next": 31, "runs": [[1, 30, 100]]})
    assert prod.poll(2000) == [(1, 30, 100)]
    prod.submit(16, [b"r"] * 10)                 # 11..20: committed, nothing new to send
    assert prod.flush(2) == [] and not prod.outbox
    prod.submit(16, [b"r"] * 15)                 # 21..35: 31..35 are new
    assert prod.unacked == 5
    assert [m[1][1:] for m in master.drain() if m[0] == wire.DATA] == [(31, 5)]
    master.send(wire.ACK, {"src": SRC, "next": 36, "runs": [[31, 35, 130]]})
    assert prod.flush(5) == [(31, 35, 130)] and not prod.outbox
    prod.close()


def test_a_replaying_producer_reports_none_only_for_what_the_master_was_asked(master):
    """A producer replays its persisted outbox at its own pace (next_ss=1, the earlier
    incarnation's 1..40 committed). The master forgot the seqs of 1..10 and remembers
    11..40. Asked for 1..10 (the only records queued when it asked), it names none: those
    are reported as None, and 11..40, queued later, are asked for and reported with their
    seqs. (The process test tests/process/test_log_faults_under_load.py found the whole
    stretch up to the ACK's `next` reported as None, records the master remembered too.)"""
    prod = Producer(SRC, master.addr, next_ss=1, resend_after_s=0.1)
    prod.submit(16, [b"r"] * 10)                           # 1..10
    assert [m[1][1] for m in master.drain() if m[0] == wire.DATA] == [1]
    master.send(wire.ACK, {"src": SRC, "next": 41, "runs": []})   # forgotten: asks for 1
    got = prod.poll(2000)
    prod.submit(16, [b"r"] * 10)                           # 11..20, queued after the ask
    master.drain()
    # the answer to the ask: 1..10 are duplicates whose seqs it no longer knows
    master.send(wire.ACK, {"src": SRC, "next": 41, "runs": [], "dups": [[1, 10]]})
    deadline = time.monotonic() + 5
    while prod.reported < 10 and time.monotonic() < deadline:
        got += prod.poll(20)
    assert got == [(1, 10, None)], got
    prod.submit(16, [b"r"] * 20)                           # 21..40
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 41, "runs": [[11, 40, 511]]})
    got += polled_empty(prod)
    assert got == [(1, 10, None), (11, 40, 511)], got
    assert not prod.outbox and prod.unacked == 0
    prod.close()


def test_a_slow_answer_to_an_ask_is_waited_for_not_taken_as_forgotten(master, monkeypatch):
    """Asked for the seqs of 21..30, the master is slow to answer: an ACK of other records
    arrives first, after resend_after_s. The producer asks again rather than report 21..30
    with no seq, and reports the seqs the master then names. (It once reported None as soon
    as an ask outlived resend_after_s, for records the master knew: a busy master answering
    a second late made `seqex account deposit` fail with "acknowledged without its seq".)
    A master that never answers with dups (an older build) is given up on after
    ASK_GIVE_UP_S, as far as the ask went."""
    prod = connected(master, resend_after_s=0.1)
    for _ in range(3):
        prod.submit(16, [b"r"] * 10)                       # 1..30
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 31, "runs": [[1, 20, 100]]})
    got: list = []
    assert resent_from(master, prod, got) == 21            # it asks for 21..30
    prod.submit(16, [b"r"] * 5)                            # 31..35, queued after the ask
    time.sleep(0.3)                                        # the master is slow
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 36, "runs": [[31, 35, 140]]})
    assert resent_from(master, prod, got) == 21            # asked again, nothing reported
    assert got == [(1, 20, 100)], got
    master.send(wire.ACK, {"src": SRC, "next": 36, "runs": [[21, 30, 130]],
                           "dups": [[21, 30]]})
    got += polled_empty(prod)
    assert got == [(1, 20, 100), (21, 35, 130)] or got == [(1, 20, 100), (21, 30, 130),
                                                          (31, 35, 140)], got
    assert prod.stats["unknown_seqs"] == 0
    # an older master: asked for 41..45, it never names dups; given up on after the limit
    monkeypatch.setattr("mq.producer.ASK_GIVE_UP_S", 0.5)
    prod.submit(16, [b"r"] * 10)                           # 36..45
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 46, "runs": [[36, 40, 150]]})
    got += polled_empty(prod, lambda: master.send(wire.ACK, {"src": SRC, "next": 46,
                                                             "runs": []}))
    assert got[-2:] == [(36, 40, 150), (41, 45, None)], got
    prod.close()


def test_a_producer_that_keeps_no_results_reports_by_poll_only(master):
    """keep_results=0 (the gateway, the mark-price source: they poll and run for days): the
    acknowledged runs go to poll() and nowhere else, and seqs() says it cannot answer."""
    prod = connected(master, keep_results=0)
    prod.submit(16, [b"r"] * 10)
    master.drain()
    master.send(wire.ACK, {"src": SRC, "next": 11, "runs": [[1, 10, 500]]})
    deadline = time.monotonic() + 10
    got = []
    while not got and time.monotonic() < deadline:
        got = prod.poll(50)
    assert got == [(1, 10, 500)] and len(prod.results) == 0
    with pytest.raises(ValueError, match="keeps no results"):
        prod.seqs(1, 10, 0.1)
    prod.close()
