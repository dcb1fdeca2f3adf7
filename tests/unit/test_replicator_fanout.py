"""Fan-out from the replicators (docs/log.md): a replicator started with a publisher publishes
a frame only when all of these hold, and only after the transaction that stores it committed:
* the master's APPEND says one copy commits it (`fanout`, policy `first`);
* the frame lengthened this replicator's log (a resend of what it holds is not published);
* its records carry the APPEND's epoch (a former master's records, re-sent by a new master,
  commit later, by the master's rule, and reach subscribers through the master).
A commit that fails (a full disk) publishes nothing of its group.
"""
from __future__ import annotations

import os
import time

import lmdb
import pytest
import zmq

from mq import wire
from mq.record import encode
from replicator.server import Replicator, parse
from replicator.store import PartialWrite
from tests.unit.test_replicator_server import full_disk_on_commit


def frame(first, n, epoch=1):
    return encode([(s, s, 1, s, epoch, 16, b"r") for s in range(first, first + n)])


def append(first, n, epoch=1, fanout=True, frame_epoch=None, stream="in.a"):
    body = {"stream": stream, "epoch": epoch}
    if fanout is not None:
        body["fanout"] = fanout
    return [b"m", wire.APPEND, wire.pack(body), frame(first, n, frame_epoch or epoch)]


@pytest.fixture
def fan(tmp_path):
    tag = f"{tmp_path.name}-{os.getpid()}"   # inproc names are freed lazily: never reuse one
    rep = Replicator(str(tmp_path / "rep"), f"inproc://rep-{tag}", check=False,
                     pub=f"inproc://rep-pub-{tag}")
    rep.sent = []
    rep._send = lambda replies: rep.sent.extend(replies)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(rep.pub_endpoint)
    # A subscription reaches a PUB asynchronously: publish probes until one arrives.
    deadline = time.monotonic() + 10
    while not sub.poll(10):
        assert time.monotonic() < deadline, "the subscription never reached the publisher"
        rep.pub.send_multipart([b"probe", b""])
    while sub.poll(50):
        sub.recv_multipart()
    yield rep, sub
    sub.close(0)
    rep.pub.close(0)
    rep.sock.close(0)
    rep.store.close()


def published(sub) -> list[tuple[bytes, bytes]]:
    out = []
    while sub.poll(50):
        topic, data = sub.recv_multipart()
        out.append((topic, data))
    return out


def acks(rep) -> list[dict]:
    out = [wire.unpack(m[2]) for m in rep.sent]
    rep.sent.clear()
    return out


def test_a_committed_own_epoch_frame_is_published_once_with_its_topic(fan):
    rep, sub = fan
    rep.handle([append(1, 3), append(4, 2)])
    assert [a["ok"] for a in acks(rep)] == [True, True]
    assert published(sub) == [(b"in.a\0", frame(1, 3)), (b"in.a\0", frame(4, 2))]
    assert rep.stats["published_frames"] == 2


def test_without_the_masters_word_nothing_is_published(fan):
    rep, sub = fan
    rep.handle([append(1, 3, fanout=None), append(4, 1, fanout=False)])
    assert [a["ok"] for a in acks(rep)] == [True, True]
    assert published(sub) == []


def test_a_resend_a_gap_and_a_fenced_master_publish_nothing(fan):
    rep, sub = fan
    rep.handle([append(1, 3, epoch=2)])
    assert len(published(sub)) == 1
    rep.handle([append(1, 3, epoch=2)])                # held already: acknowledged, not again
    rep.handle([append(9, 1, epoch=2)])                # a gap: refused
    rep.handle([append(4, 1, epoch=1)])                # an older master: fenced
    assert [a["ok"] for a in acks(rep)] == [True, True, False, False]
    assert published(sub) == []


def test_a_former_masters_records_resent_are_stored_but_not_published(fan):
    rep, sub = fan
    rep.handle([append(1, 2, epoch=1)])
    acks(rep)
    published(sub)
    # a new master (epoch 2) re-sends epoch-1 records it adopted, then its own
    rep.handle([append(3, 2, epoch=2, frame_epoch=1), append(5, 1, epoch=2)])
    assert [a["ok"] for a in acks(rep)] == [True, True]
    assert published(sub) == [(b"in.a\0", frame(5, 1, 2))]
    assert rep.store.find("in.a").last == 5


def test_a_failed_commit_publishes_nothing_and_later_commits_only_their_own(fan, monkeypatch):
    rep, sub = fan
    full = full_disk_on_commit(rep, monkeypatch)
    rep.handle([append(1, 3), append(4, 1)])
    assert [(a["ok"], a["reason"]) for a in acks(rep)] == [(False, "disk_full")] * 2
    assert published(sub) == []
    full["on"] = False
    rep.write_retry_at = 0.0
    rep.handle([append(1, 1)])
    assert acks(rep)[0]["ok"]
    assert published(sub) == [(b"in.a\0", frame(1, 1))]


def test_fanout_must_be_a_boolean():
    body = wire.pack({"stream": "in.a", "epoch": 1, "fanout": 1})
    with pytest.raises(wire.WireError, match="fanout"):
        parse(wire.APPEND, [body, frame(1, 1)])


def test_a_frame_truncated_later_in_its_group_is_not_published(fan):
    # A new master's CLAIM and TRUNCATE in the same group as a former master's APPEND: the
    # group commits without the frame, so it must not go out after the commit.
    rep, sub = fan
    rep.handle([append(1, 2)])
    acks(rep)
    published(sub)
    claim = [b"n", wire.CLAIM, wire.pack({"stream": "in.a", "epoch": 2, "claimant": 7})]
    truncate = [b"n", wire.TRUNCATE, wire.pack({"stream": "in.a", "epoch": 2, "after": 2})]
    rep.handle([append(3, 2), append(1, 1, stream="in.b"), claim, truncate, append(3, 1, 2)])
    assert [a.get("ok") for a in acks(rep)] == [True, True, True, True, True]
    assert rep.store.find("in.a").last == 3
    assert published(sub) == [(b"in.b\0", frame(1, 1)), (b"in.a\0", frame(3, 1, 2))]


@pytest.mark.parametrize("failure", [
    lmdb.DiskError("mdb_put: No space left on device"),   # a full disk mid-group
    PartialWrite("a write failed halfway"),                # the group is dropped
    lmdb.CorruptedError("damaged file"),                   # ends the turn (quarantine)
])
def test_a_group_dropped_by_a_failed_write_publishes_nothing_of_it(fan, monkeypatch, failure):
    # The frames stored before the failing write were in the aborted transaction: they must
    # not go out with a later group's commit.
    rep, sub = fan
    write = rep._write
    calls = {"n": 0}

    def failing(txn, kind, req):
        calls["n"] += 1
        if calls["n"] == 2:
            raise failure
        return write(txn, kind, req)
    monkeypatch.setattr(rep, "_write", failing)
    try:
        rep.handle([append(1, 3), append(4, 1)])
    except lmdb.CorruptedError:
        rep.store.forget()   # what the quarantine's reopening does to the memory of the logs
    assert not [a for a in acks(rep) if a.get("ok")]
    rep.disk_full_since = None
    rep.handle([append(1, 1)])
    assert acks(rep)[0]["ok"]
    assert published(sub) == [(b"in.a\0", frame(1, 1))]
