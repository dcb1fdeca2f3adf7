"""The replicator's cheaper paths do what the general ones did (bench/count_replicator.py).

* An APPEND is parsed with the same result and the same errors whether its stream name was
  checked before (remembered) or not, over well-formed and broken messages.
* A one-record frame's meta data (sources, epoch history, ts, last) is written from its header
  alone: the same as the general path writes for the same records in larger frames.
* An APPEND runs in the group commit's transaction without a nested one: a write that fails
  after it began drops the whole group, unacknowledged and unpersisted, and the replicator
  goes on.
* StreamLog.digest (hashed frame by frame, frames parsed at the range's ends only) is the
  digest of read() over the same range, the same bound on bytes, the same damaged frames.
* A comparison reads and hashes its own range once, however many peers answer.
* Catch-up survives a PartialWrite (undone by Store.change) as it survived any bad chunk.
"""
from __future__ import annotations

import hashlib
import random

import pytest
import zmq

from mq import wire
from mq.record import encode, scan
from replicator import server as server_mod
from replicator import store as store_mod
from replicator.server import parse
from replicator.store import CorruptFrame, Store, range_digest
from tests.unit.test_replicator_server import answers


def records(first, n, epoch=1, sources=(7,), ts=None):
    return [(s, ts if ts is not None else 1000 + s, sources[s % len(sources)], s, epoch, 16,
             b"r" * (1 + s % 9)) for s in range(first, first + n)]


def frame(first, n, epoch=1, **kw):
    return encode(records(first, n, epoch, **kw))


# -- parsing ------------------------------------------------------------------------------
def _outcome(fn, parts):
    try:
        return "ok", fn(parts)
    except Exception as exc:  # the same type and text from both parsers
        return type(exc).__name__, str(exc)


GOOD = {"stream": "in.a", "epoch": 3, "first": 5, "last": 6, "commit": 4, "prev_epoch": 2}
ODD = [None, True, False, -1, 0, 1, 5, 6, 7, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, -(1 << 63),
       1.0, 5.0, "5", b"5", [], {}, [5], "in.a", "in a", "", "x" * 201, "\u00e9"]


def _parse_cold(parts):
    server_mod._GOOD_NAMES.clear()
    return parse(wire.APPEND, parts)


def _parse_warm(parts):
    server_mod._GOOD_NAMES.add("in.a")
    return parse(wire.APPEND, parts)


def test_an_append_parses_alike_with_its_stream_name_remembered_or_not():
    rng = random.Random(11)
    good = frame(5, 2)
    cases = [[wire.pack(GOOD), good], [wire.pack(GOOD)], [wire.pack(GOOD), b""],
             [wire.pack(GOOD), good, b"x"], [b"\xc1", good], [wire.pack([1]), good],
             [wire.pack(GOOD), good[:-1]], [wire.pack(GOOD), b"\x00" * 70]]
    for name in GOOD:
        for value in ODD:
            cases.append([wire.pack({**GOOD, name: value}), good])
        rest = dict(GOOD)
        del rest[name]
        cases.append([wire.pack(rest), good])
    for _ in range(300):
        body = {k: rng.choice(ODD + [v, v]) for k, v in GOOD.items() if rng.random() < 0.9}
        cases.append([wire.pack(body), good])
    one = frame(1, 1)   # a frame from seq 1: `first` True or 1.0 equals it and is refused
    for value in ODD:
        cases.append([wire.pack({"stream": "in.a", "epoch": 1, "first": value}), one])
        cases.append([wire.pack({"stream": "in.a", "epoch": 1, "last": value}), one])
    outcomes = set()
    for parts in cases:
        fast = _outcome(_parse_warm, parts)
        assert fast == _outcome(_parse_cold, parts), parts
        outcomes.add(fast[0] if fast[0] != "ok" else "ok")
    assert outcomes >= {"ok", "WireError", "FrameError"}


# -- one-record frames ----------------------------------------------------------------------
def test_one_record_frames_write_the_meta_data_of_larger_frames(tmp_path):
    """The same records as frames of one, and as frames of up to 5, with several sources and
    an epoch change: the same state (last, ts, history, sources) and the same bytes."""
    recs = [(s, 5000 + s // 3, (3, 9, 4)[s % 3], 100 + s, 1 if s < 17 else 2, 16, b"p" * (s % 4))
            for s in range(1, 31)]
    one, many = Store(str(tmp_path / "one")), Store(str(tmp_path / "many"))
    try:
        for r in recs:
            assert one.append("in.a", r[4], encode([r])).ok
        k = 0
        while k < len(recs):
            n = 1 + k % 5
            chunk = recs[k:k + n]
            if len({r[4] for r in chunk}) > 1:   # a master's frame holds one ts and epoch
                chunk = [r for r in chunk if r[4] == chunk[0][4]]
            ts = chunk[-1][1]
            assert many.append("in.a", chunk[0][4],
                               encode([(*r[:1], ts, *r[2:]) for r in chunk])).ok
            k += len(chunk)
        a, b = one.find("in.a"), many.find("in.a")
        assert a.state()["sources"] and a.history == [(1, 1), (2, 17)]
        # each source's last record: the same seq, source_seq and (that frame's) ts
        assert {s[0]: s[1:3] for s in a.sources()} == {s[0]: s[1:3] for s in b.sources()}
        assert (a.last, a.ts_ns, a.history) == (b.last, recs[-1][1], b.history)
        one.close()
        one = Store(str(tmp_path / "one"))   # as persisted, not only in memory
        a = one.find("in.a")
        assert (a.last, a.ts_ns, a.history) == (30, recs[-1][1], [(1, 1), (2, 17)])
        assert [s[:3] for s in a.sources()] == [s[:3] for s in b.sources()]
        assert a.sources() == [(3, 131, 30, 5010), (4, 130, 29, 5009), (9, 129, 28, 5009)]
    finally:
        one.close()
        many.close()


# -- no nested transaction -------------------------------------------------------------------
def _append(stream, first, n, epoch=1):
    return [b"m", wire.APPEND, wire.pack({"stream": stream, "epoch": epoch}),
            frame(first, n, epoch)]


def test_an_append_failing_after_its_first_write_drops_its_group(rep, monkeypatch):
    rep.handle([_append("in.a", 1, 3), _append("in.b", 1, 2)])
    assert [b["ok"] for _k, b in answers(rep)] == [True, True]
    real = store_mod.StreamLog._put_frame

    def put_then_fail(self, txn, first, last, data):
        real(self, txn, first, last, data)   # the frame and its meta data are in the txn
        if self.name == "in.b":
            raise ValueError("injected after the first write")
    monkeypatch.setattr(store_mod.StreamLog, "_put_frame", put_then_fail)
    rep.handle([_append("in.a", 4, 2), _append("in.b", 3, 1), _append("in.c", 1, 1)])
    got = answers(rep)
    # in.a's APPEND went into the dropped transaction: not acknowledged; in.b's failure is
    # answered; in.c's starts a new group and is persisted
    assert [k for k, _b in got] == [wire.ERROR, wire.APPENDED], got
    assert "injected after the first write" in got[0][1]["error"]
    assert got[1][1]["ok"] and got[1][1]["stream"] == "in.c"
    monkeypatch.setattr(store_mod.StreamLog, "_put_frame", real)
    for name, last in (("in.a", 3), ("in.b", 2), ("in.c", 1)):
        log_ = rep.store.find(name)
        assert log_.last == last and scan(log_.read(1))[2] == last
    with rep.store.env.begin() as txn:   # on disk too
        assert txn.get(b"last", db=rep.store.find("in.b").meta_db) == store_mod.U64.pack(2)
    # the master resends and everything goes on
    rep.handle([_append("in.a", 4, 2), _append("in.b", 3, 1)])
    assert [(b["stream"], b["ok"], b["last"]) for _k, b in answers(rep)] == [
        ("in.a", True, 5), ("in.b", True, 3)]


def test_a_refused_append_leaves_the_group_intact(rep):
    """Refusals and bad frames come before any write: the group's other writes stand."""
    rep.handle([_append("in.a", 1, 2)])
    answers(rep)
    bad = _append("in.a", 3, 1)
    bad[3] = bad[3][:-1]
    rep.handle([_append("in.a", 3, 1), _append("in.a", 9, 1), bad, _append("in.a", 1, 1, 0),
                _append("in.a", 4, 1)])
    got = answers(rep)
    assert [(k, b.get("ok"), b.get("reason")) for k, b in got] == [
        (wire.APPENDED, True, ""), (wire.APPENDED, False, "gap"), (wire.ERROR, None, None),
        (wire.APPENDED, False, "fenced"), (wire.APPENDED, True, "")]
    assert rep.store.find("in.a").last == 4


# -- digests ------------------------------------------------------------------------------
def _log_of_frames(tmp_path, sizes):
    st = Store(str(tmp_path / "d"))
    seq = 1
    for n in sizes:
        assert st.append("in.d", 1, frame(seq, n)).ok
        seq += n
    return st, st.find("in.d")


def test_the_digest_of_a_stored_range_is_the_digest_of_its_read(tmp_path):
    rng = random.Random(5)
    sizes = [rng.choice((1, 1, 1, 2, 3, 8)) for _ in range(60)]
    st, log_ = _log_of_frames(tmp_path, sizes)
    try:
        last = log_.last
        ranges = [(1, last), (1, 1), (last, last), (0, 3), (2, last + 5), (last + 1, last + 9)]
        ranges += [tuple(sorted(rng.sample(range(1, last + 1), 2))) for _ in range(150)]
        for a, b in ranges:
            for max_bytes in (1 << 62, 1, 60, 250, rng.randrange(1, 3000)):
                data = log_.read(a, b, max_bytes)
                reached = scan(data)[2] if data else 0
                assert log_.digest(a, b, max_bytes) == (range_digest(data), reached), \
                    (a, b, max_bytes)
    finally:
        st.close()


def test_a_damaged_frame_fails_the_digest_as_it_fails_a_read(tmp_path):
    st, log_ = _log_of_frames(tmp_path, [2, 1, 3, 1, 1, 4])
    try:
        with st.env.begin(write=True) as txn:   # the frame 4..6: one bit flipped
            key = store_mod.U64.pack(4)
            value = bytearray(txn.get(key, db=log_.log_db))
            value[30] ^= 1
            txn.put(key, bytes(value), db=log_.log_db)
        for a, b in ((1, 12), (5, 5), (1, 4), (6, 9)):
            with pytest.raises(CorruptFrame):
                log_.read(a, b)
            with pytest.raises(CorruptFrame):
                log_.digest(a, b)
        for a, b in ((1, 3), (7, 12)):
            assert log_.digest(a, b)[0] == range_digest(log_.read(a, b))
        for max_bytes in (1, 100):   # the read stops before the damaged frame: no error
            data = log_.read(1, 12, max_bytes)
            assert log_.digest(1, 12, max_bytes) == (range_digest(data), scan(data)[2]) \
                and scan(data)[2] < 4
    finally:
        st.close()


class _FakeSock:
    def __init__(self):
        self.sent = []

    def send_multipart(self, msg, flags=0):
        self.sent.append(msg)


def test_a_comparison_hashes_its_own_range_once(rep, monkeypatch):
    for k in range(1, 41):
        rep.handle([[b"m", wire.APPEND, wire.pack({"stream": "in.a", "epoch": 1,
                                                   "commit": k - 1}), frame(k, 1)]])
    answers(rep)
    peers = rep.peers
    peers.socks = [_FakeSock(), _FakeSock(), _FakeSock()]
    peers.addrs = ["p0", "p1", "p2"]
    peers._start_compare("in.a", 0.0)
    asked = peers.socks[0].sent[-1]
    calls = []
    real = store_mod.StreamLog.digest
    monkeypatch.setattr(store_mod.StreamLog, "digest",
                        lambda self, *a: calls.append(a) or real(self, *a))
    rep.handle([[b"p", *asked]])
    answer = rep.sent.pop()
    assert answer[1] == wire.DIGEST and len(calls) == 1   # served: one digest
    for i in range(3):
        peers._on_answer(i, answer[1:])
    assert len(calls) == 2                                 # its own: once for three answers
    assert peers.compare_from["in.a"] == 40 and peers.stats["compared_records"] == 39
    assert "in.a" not in peers.comparing


def test_digest_answers_are_unchanged_on_the_wire(rep):
    """A DIGEST's answer: the sha256 of the records' bytes (older replicators compare it)."""
    for k in range(1, 11):
        rep.handle([[b"m", wire.APPEND, wire.pack({"stream": "in.a", "epoch": 1,
                                                   "commit": k - 1}), frame(k, 1)]])
    answers(rep)
    rep.handle([[b"p", wire.DIGEST, wire.pack({"stream": "in.a", "from": 2, "to": 8})]])
    (kind, body), = answers(rep)
    want = hashlib.sha256(b"".join(frame(k, 1) for k in range(2, 9))).hexdigest()[:32]
    assert kind == wire.DIGEST and body["digest"] == want


class _AnswerSock(_FakeSock):
    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)

    def recv_multipart(self, flags=0):
        if not self.answers:
            raise zmq.Again()
        return self.answers.pop(0)


def test_a_fetched_chunk_failing_after_its_first_write_changes_nothing(rep, monkeypatch):
    """Catch-up appends through Store.change: a PartialWrite there is undone and logged, and
    the replicator's loop goes on (it is not taken for a crash)."""
    rep.handle([_append("in.a", 1, 2)])
    answers(rep)
    real = store_mod.StreamLog._put_frame

    def put_then_fail(self, txn, first, last, data):
        real(self, txn, first, last, data)
        raise ValueError("injected after the first write")
    monkeypatch.setattr(store_mod.StreamLog, "_put_frame", put_then_fail)
    body = {"stream": "in.a", "from": 3, "last": 5, "commit": 5, "epoch": 1, "prev_epoch": 1,
            "req": "fetch"}
    sock = _AnswerSock([[wire.RECORDS, wire.pack(body), frame(3, 3)]])
    rep.peers.socks, rep.peers.addrs = [sock], ["p0"]
    rep.peers.on_events({sock: 1})
    log_ = rep.store.find("in.a")
    assert (log_.last, log_.commit) == (2, 0) and scan(log_.read(1))[2] == 2
    monkeypatch.setattr(store_mod.StreamLog, "_put_frame", real)
    sock.answers.append([wire.RECORDS, wire.pack(body), frame(3, 3)])   # asked again
    rep.peers.on_events({sock: 1})
    assert rep.store.find("in.a").last == 5
