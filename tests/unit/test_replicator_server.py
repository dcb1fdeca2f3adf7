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


def append(stream, first, n):
    return [b"peer", wire.APPEND, wire.pack({"stream": stream, "epoch": 1}), frame(first, n)]


def answers(rep):
    out = [(m[1], wire.unpack(m[2])) for m in rep.sent]
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
    rep.handle([append("in.a", 4, 2)])
    assert answers(rep)[0][1]["reason"] == "disk_full"  # ... but is not tried: no more room
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
