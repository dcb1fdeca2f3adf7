"""The replicator's handling of operating faults, driven in-process with injected failures.

* A full disk: a failing commit persists and acknowledges nothing (each write of its group is
  refused with "disk_full"), leaves no stream or in-memory state behind, is logged once, makes
  the next writes refused with "disk_full" without trying, and writing resumes by itself once
  a retry succeeds: every second, and at once when the file system has room again.
* A damaged file found while serving (LMDB raises MDB_CORRUPTED): the file is quarantined
  and the replicator goes on, empty, instead of dying.
"""
from __future__ import annotations

import glob
import logging
import os

import lmdb

from mq import wire
from mq.record import encode


def frame(first, n, epoch=1):
    return encode([(s, s, 1, s, epoch, 16, b"r") for s in range(first, first + n)])


def append(stream, first, n, ident=b"peer"):
    return [ident, wire.APPEND, wire.pack({"stream": stream, "epoch": 1}), frame(first, n)]


def answers(rep):
    out = [(m[1], wire.unpack(m[2])) for m in rep.sent]
    rep.sent.clear()
    return out


def answers_by_ident(rep):
    out = [(m[0], m[1], wire.unpack(m[2])) for m in rep.sent]
    rep.sent.clear()
    return out


def full_disk_on_commit(rep, monkeypatch) -> dict:
    """Make the replicator's commits fail as on a full disk while the returned {"on"} is
    True."""
    full = {"on": True}

    def persist(txn):
        if full["on"]:
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")
        txn.commit()
    monkeypatch.setattr(rep, "_persist", persist)
    return full


def test_a_full_disk_refuses_writes_and_resumes_by_itself(rep, caplog, monkeypatch):
    rep.handle([append("in.a", 1, 3)])
    assert answers(rep)[0][1]["ok"]
    full = full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    caplog.set_level(logging.ERROR, "seqex.replicator")
    rep.handle([append("in.a", 4, 2), append("in.new", 1, 1)])
    # nothing acknowledged: each write of the group is refused, so its master probes at once
    assert [(k, b["ok"], b["reason"], b["last"]) for k, b in answers(rep)] == [
        (wire.APPENDED, False, "disk_full", 3), (wire.APPENDED, False, "disk_full", 0)]
    assert rep.store.find("in.a").last == 3 and rep.store.find("in.new") is None
    rep.stats["disk_full_refusals"] = 0
    rep.handle([append("in.a", 4, 2)])                 # refused at once, not tried
    [(kind, body)] = answers(rep)
    assert (kind, body["ok"], body["reason"], body["last"]) == (wire.APPENDED, False,
                                                                "disk_full", 3)
    assert rep.stats["disk_full_refusals"] == 1
    rep.handle([append("in.a", 4, 2)])
    assert answers(rep)[0][1]["reason"] == "disk_full"
    assert sum("disk full at" in r.getMessage() for r in caplog.records) == 1
    full["on"] = False
    rep.write_retry_at = 0.0                           # the retry second has passed
    rep.handle([append("in.a", 4, 2)])
    [(kind, body)] = answers(rep)
    assert body["ok"] and body["last"] == 5
    assert rep.disk_full_since is None


def test_writing_resumes_as_soon_as_the_file_system_has_room_again(rep, monkeypatch):
    """Not only at the next retry second: a replicator that stays refusing for up to a second
    after an operator freed space holds back every master that needs its ack (under quorum,
    with one peer down, the whole stream)."""
    rep.handle([append("in.a", 1, 3)])
    answers(rep)
    full = full_disk_on_commit(rep, monkeypatch)
    free = {"bytes": 10 << 10}
    monkeypatch.setattr(rep, "_free_bytes", lambda: free["bytes"])
    rep.handle([append("in.a", 4, 2)])
    assert answers(rep)[0][1]["reason"] == "disk_full"
    full["on"] = False                                 # the write would go through now ...
    for more in (0, 512 << 10):                        # ... but is not tried: no more room,
        free["bytes"] += more                          # or less than ROOM_MARGIN_BYTES more
        rep.room_check_at = 0.0
        rep.handle([append("in.a", 4, 2)])
        assert answers(rep)[0][1]["reason"] == "disk_full"
    free["bytes"] = 2 << 30                            # room again, within the retry second
    rep.room_check_at = 0.0
    rep.handle([append("in.a", 4, 2)])
    [(_kind, body)] = answers(rep)
    assert body["ok"] and body["last"] == 5 and rep.disk_full_since is None


def test_a_write_of_the_peers_catch_up_ends_the_refusals(rep, monkeypatch):
    """Records fetched from a peer and stored show that the disk takes writes again: the
    master's next APPEND is tried, not refused for the rest of the retry second."""
    rep.handle([append("in.a", 1, 3)])
    answers(rep)
    full = full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    rep.handle([append("in.a", 4, 2)])
    assert answers(rep)[0][1]["reason"] == "disk_full"
    full["on"] = False
    rep.peers._append_fetched(0, "in.a", frame(4, 2), {"prev_epoch": 1, "commit": 5})
    assert rep.store.find("in.a").last == 5 and rep.disk_full_since is None
    rep.handle([append("in.a", 6, 1)])
    [(_kind, body)] = answers(rep)
    assert body["ok"] and body["last"] == 6


def test_every_write_of_a_failed_retry_group_is_answered(rep, monkeypatch):
    """A retry batch is tried whole, and when its commit fails every write of it is refused:
    a master that gets no answer waits a second before it probes again."""
    rep.handle([append("in.a", 1, 1, b"m1"), append("in.b", 1, 1, b"m2")])
    answers_by_ident(rep)
    full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    rep.handle([append("in.a", 2, 1, b"m1")])
    assert [b["reason"] for _i, _k, b in answers_by_ident(rep)] == ["disk_full"]
    rep.write_retry_at = 0.0                     # the once-a-second retry is due
    rep.handle([append("in.a", 2, 1, b"m1"), append("in.b", 2, 1, b"m2")])  # two probes
    got = sorted((i, b["reason"]) for i, _k, b in answers_by_ident(rep))
    assert got == [(b"m1", "disk_full"), (b"m2", "disk_full")], got


def test_a_failed_group_drops_no_error_answer_of_its_own_messages(rep, monkeypatch):
    """A failed group keeps its other answers: a malformed write in it is still answered
    ERROR."""
    rep.handle([append("in.a", 1, 1)])
    answers_by_ident(rep)
    full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    bad = [b"m2", wire.APPEND, wire.pack({"stream": "in.a", "epoch": 1}), b"\x00junk"]
    rep.handle([append("in.a", 2, 1, b"m1"), bad])
    kinds = [(i, k) for i, k, _b in answers_by_ident(rep)]
    assert (b"m2", wire.ERROR) in kinds, kinds


def test_a_write_failing_inside_the_group_refuses_the_whole_group(rep, monkeypatch):
    """A write that fails inside the group (not at the commit): every write of the group is
    refused, the earlier ones too, and the rest of the batch is refused without trying."""
    rep.handle([append("in.a", 1, 1, b"m1"), append("in.b", 1, 1, b"m2")])
    answers_by_ident(rep)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    real = rep._write
    calls = {"n": 0}

    def write(txn, kind, req):
        calls["n"] += 1
        if calls["n"] == 2:
            raise lmdb.DiskError("mdb_put: No space left on device")
        return real(txn, kind, req)
    monkeypatch.setattr(rep, "_write", write)
    rep.handle([append("in.a", 2, 1, b"m1"), append("in.b", 2, 1, b"m2"),
                append("in.a", 3, 1, b"m1")])
    got = [(i, b["ok"], b["reason"], b["last"]) for i, _k, b in answers_by_ident(rep)]
    assert got == [(b"m1", False, "disk_full", 1), (b"m2", False, "disk_full", 1),
                   (b"m1", False, "disk_full", 1)], got
    assert rep.store.find("in.a").last == 1 and rep.store.find("in.b").last == 1


def test_a_refused_catch_up_does_not_end_the_disk_full_state(rep, monkeypatch):
    """A catch-up chunk refused (nothing written: an empty LMDB commit succeeds on a full disk)
    does not end the disk-full state."""
    rep.handle([append("in.a", 1, 3)])
    answers_by_ident(rep)
    full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 0)
    rep.handle([append("in.a", 4, 1)])
    assert rep.disk_full_since is not None
    sent = []

    class Sock:
        def send_multipart(self, msg, flags=0):
            sent.append(msg)
    rep.peers.socks = [Sock()]
    rep.peers.addrs = ["tcp://peer"]
    # a peer's chunk 4..4 whose predecessor is of another epoch here: refused, nothing written
    rep.peers._append_fetched(0, "in.a", frame(4, 1), {"prev_epoch": 7, "commit": 4})
    assert rep.store.find("in.a").last == 3 and sent and sent[-1][0] == wire.STATE
    assert rep.disk_full_since is not None


def test_room_is_measured_against_the_free_space_at_the_failure(rep, monkeypatch):
    """A write that failed with plenty of room (an I/O error) is not retried every 10 ms."""
    rep.handle([append("in.a", 1, 1)])
    answers_by_ident(rep)
    full = full_disk_on_commit(rep, monkeypatch)
    monkeypatch.setattr(rep, "_free_bytes", lambda: 10 << 30)
    rep.handle([append("in.a", 2, 1)])
    answers_by_ident(rep)
    full["on"] = False
    rep.room_check_at = 0.0
    rep.handle([append("in.a", 2, 1)])
    [(_i, _k, body)] = answers_by_ident(rep)
    assert body["reason"] == "disk_full" and rep.disk_full_since is not None


def test_statvfs_at_most_every_room_check_interval(rep, monkeypatch):
    """While refusing, statvfs is asked at most once every ROOM_CHECK_S."""
    rep.handle([append("in.a", 1, 1)])
    answers_by_ident(rep)
    full_disk_on_commit(rep, monkeypatch)
    calls = {"n": 0}

    def free():
        calls["n"] += 1
        return 0
    monkeypatch.setattr(rep, "_free_bytes", free)
    rep.handle([append("in.a", 2, 1)])
    calls["n"] = 0
    rep.handle([append("in.a", 2, 1)] * 5)
    assert calls["n"] <= 1


def test_corruption_found_while_serving_quarantines_the_file(rep, caplog):
    rep.handle([append("in.a", 1, 3)])
    calls = {"n": 0}

    def turn():
        calls["n"] += 1
        if calls["n"] == 1:
            raise lmdb.CorruptedError("mdb_cursor_get: MDB_CORRUPTED")
        rep.running = False
    rep._turn = turn
    caplog.set_level(logging.ERROR, "seqex.replicator")
    rep.serve()
    assert rep.stats["quarantined"] == 1
    assert glob.glob(os.path.join(rep.data_dir, "data.mdb.corrupt-*"))
    assert any("LMDB file corrupt at" in r.getMessage() for r in caplog.records)


def test_the_integrity_check_tells_frame_damage_from_structural_damage(tmp_path):
    """Frame bytes changed: usable, the frames named (peers repair them). LMDB's own pages
    changed: not usable (quarantine). A missing file: usable (a new replicator)."""
    from replicator import integrity
    from replicator.store import Store
    assert integrity.check(str(tmp_path / "none")) == (True, "")
    path = str(tmp_path / "rep")
    store = Store(path, map_size=1 << 26)
    for i in range(200):
        store.append("in.a", 1, frame(1 + 5 * i, 5))
    log = store.stream("in.a")
    with store.env.begin(write=True) as txn:
        cur = txn.cursor(db=log.log_db)
        assert cur.first()
        value = bytearray(cur.value())
        value[-1] ^= 0xFF
        txn.put(cur.key(), bytes(value), db=log.log_db)
    store.close()
    usable, detail = integrity.check(path)
    assert usable and "in.a@1" in detail
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xa5" * (8 * 4096))   # the first pages after the two meta pages
    usable, detail = integrity.check(path)
    assert not usable and detail
    moved = integrity.quarantine(path)
    assert os.path.exists(moved) and not os.path.exists(os.path.join(path, "data.mdb"))
