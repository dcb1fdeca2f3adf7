"""The replicator process: persists frames of any number of streams and serves replay.

One ROUTER socket answers:

* APPEND {stream, epoch, first, last, commit, prev_epoch?} + frame -> APPENDED {stream, ok,
  last, epoch, reason, seq}. All APPENDs waiting on the socket are committed in one LMDB
  transaction (group commit) and acknowledged after the commit, cumulatively: ``last`` is the
  highest contiguous seq held. Refusals: "fenced" (epoch below one already seen), "gap" (the
  frame does not extend the log; the master resends from ``last`` + 1), "conflict" (different
  bytes at a seq already held, or a previous record of another epoch; never overwritten),
  "disk_full" (nothing was written; the master resends).
* STATE {stream, retention_ns?, max_sources?, keep?} -> the log's state (last, epoch, commit,
  epoch history, the sources a master keeps and the floor of those it forgets; see
  StreamLog.state); CLAIM {stream, epoch, claimant, ...} -> the same with ``claimant`` (whom
  the epoch is granted to), after persisting the epoch: a new master fences the old one. An
  epoch is granted to one claimant only (StreamLog.claim): ``ok`` is false for a lower epoch,
  and for the epoch another master claimed first.
* TRUNCATE {stream, epoch, after}: drop a divergent uncommitted tail (never below commit).
* COMMIT {stream, epoch, commit}: the master's commit point moved (no answer).
* REPLAY {stream, from, to, max_bytes, req, uncommitted} -> RECORDS {stream, from, last,
  commit, epoch, prev_epoch, req} + frame: pull-based, one bounded chunk per request, so a slow
  reader costs no server memory. ``prev_epoch`` is the epoch of the record before ``from``:
  what a peer's catch-up checks, as a master's APPEND is checked.
* DIGEST {stream, from, to} -> a digest of a committed range (peers compare logs with it).
* PING -> PONG with statistics; STOP -> PONG, then a clean exit.

With --peer addresses it also catches up from, compares with, and repairs from its peers
(replicator/peers.py).

Bad input: every field of every message is checked (type, range, size) before anything is
used; a malformed message gets ERROR {error} with the reason and changes nothing (an APPEND
makes every check before its first write; a CLAIM or a TRUNCATE runs in a nested transaction of
the group commit, discarded on failure; a write failing after it began drops the whole group
unacknowledged). Epochs are u32, seqs
u64, stream names 1..200 printable ASCII characters. Reads (REPLAY, STATE, DIGEST) and COMMIT
never create a stream; a store holds at most --max-streams streams and refuses more.

Operating faults: a full disk (a failed commit) is logged once ("disk full at PATH: N bytes
free"), writes are refused with "disk_full" and nothing is acknowledged, a write is retried
every second, and writing resumes by itself once one succeeds. A damaged LMDB file is
quarantined and rebuilt from peers (replicator/integrity.py).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import lmdb
import msgpack
import zmq

from mq import auth, sockets, wire
from mq.record import MAX_FRAME, FrameError, first_epoch, scan
from mq.replication import epoch_at
from replicator import integrity
from replicator.peers import Peers
from replicator.store import (
    STATE_MAX_SOURCES,
    U32_MAX,
    U64_MAX,
    CorruptFrame,
    PartialWrite,
    Store,
    StreamLog,
    check_stream_name,
    is_write_failure,
)

log = logging.getLogger("seqex.replicator")

MAX_BATCH = 256               # messages handled per group commit
MAX_REPLAY_BYTES = 16 << 20   # cap of one RECORDS chunk
MAX_DIGEST_RECORDS = 1_000_000
MAX_DIGEST_BYTES = 64 << 20
MAX_REQ_CHARS = 64            # a REPLAY's `req` tag is echoed back; it stays small
MAX_KEEP_SOURCES = 4096       # sources a STATE may ask to be named whatever their age
MAX_ERROR_CHARS = 1000
DISK_RETRY_S = 1.0
ROOM_CHECK_S = 0.01           # while refusing writes, statvfs this often: room back -> retry
ROOM_MARGIN_BYTES = 1 << 20   # ... more room than when the write failed by this much
FULL_BELOW_BYTES = 64 << 20   # a failed write with less room than this is reported as "disk full"
WRITES = (wire.APPEND, wire.CLAIM, wire.TRUNCATE, wire.COMMIT)
READS = (wire.REPLAY, wire.DIGEST, wire.STATE, wire.PING, wire.STOP)
MAX_GOOD_NAMES = 4096         # stream names remembered as checked (a bound against floods)
_GOOD_NAMES: set[str] = set()  # names check_stream_name passed (_stream asks it once a name)
_ACK = msgpack.Packer(use_bin_type=True)  # wire.pack's bytes, without a Packer per ack


# -- checking requests -------------------------------------------------------------------------
def _uint(body: dict, name: str, top: int = U64_MAX, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise wire.WireError(f"field {name!r} missing")
        return None
    if type(value) is not int:
        raise wire.WireError(f"field {name!r} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= top:
        raise wire.WireError(f"field {name!r} = {value} is outside 0..{top}")
    return value


def _stream(body: dict) -> str:
    name = body.get("stream")
    if type(name) is str and name in _GOOD_NAMES:   # checked before: every APPEND names one
        return name
    try:
        name = check_stream_name(name)
    except ValueError as exc:
        raise wire.WireError(f"field 'stream': {exc}") from None
    if len(_GOOD_NAMES) < MAX_GOOD_NAMES:
        _GOOD_NAMES.add(name)
    return name


def parse(kind: bytes, parts: list[bytes]) -> dict[str, Any]:
    """The checked fields of one request (parts: body and, for APPEND, the frame). Raises
    WireError (or FrameError) for anything out of type, range or size; uses nothing."""
    if kind not in WRITES and kind not in READS:
        raise wire.WireError(f"unknown message kind {kind[:32]!r}")
    if len(parts) > (2 if kind == wire.APPEND else 1):
        raise wire.WireError(f"{kind.decode()} with {len(parts)} parts")
    body = wire.unpack(parts[0])
    if kind in (wire.PING, wire.STOP):
        return {}
    req: dict[str, Any] = {"stream": _stream(body)}
    if kind in WRITES:
        req["epoch"] = _uint(body, "epoch", U32_MAX)
    if kind == wire.CLAIM:
        req["claimant"] = _uint(body, "claimant", required=False) or 0
    if kind == wire.APPEND:
        if len(parts) != 2 or not parts[1]:
            raise wire.WireError("APPEND without a frame")
        if len(parts[1]) > MAX_FRAME:
            raise wire.WireError(f"APPEND frame of {len(parts[1])} bytes exceeds {MAX_FRAME}")
        _count, first, last = scan(parts[1])
        for name, value in (("first", first), ("last", last)):
            said = _uint(body, name, required=False)
            if said is not None and said != value:
                raise wire.WireError(f"field {name!r} = {said} but the frame's is {value}")
        fanout = body.get("fanout", False)
        if type(fanout) is not bool:
            raise wire.WireError("field 'fanout' must be a boolean")
        req.update(frame=parts[1], first=first, last=last, count=_count,
                   commit=_uint(body, "commit", required=False),
                   prev_epoch=_uint(body, "prev_epoch", U32_MAX, required=False),
                   fanout=fanout)
    elif kind == wire.COMMIT:
        req["commit"] = _uint(body, "commit")
    elif kind == wire.TRUNCATE:
        req["after"] = _uint(body, "after")
    elif kind == wire.REPLAY:
        req["from"] = _uint(body, "from")
        req["to"] = _uint(body, "to", required=False)
        max_bytes = _uint(body, "max_bytes", (1 << 63) - 1, required=False)
        req["max_bytes"] = min(max_bytes or MAX_REPLAY_BYTES, MAX_REPLAY_BYTES)
        uncommitted = body.get("uncommitted")
        if uncommitted is not None and type(uncommitted) is not bool:
            raise wire.WireError("field 'uncommitted' must be a boolean")
        req["uncommitted"] = uncommitted is True
        tag = body.get("req")
        if tag is not None and not (type(tag) is int and -(1 << 63) <= tag <= U64_MAX) \
                and not (type(tag) is str and len(tag) <= MAX_REQ_CHARS):
            raise wire.WireError(f"field 'req' must be an integer or a string of at most "
                                 f"{MAX_REQ_CHARS} characters")
        req["req"] = tag
    elif kind == wire.DIGEST:
        req["from"], req["to"] = _uint(body, "from"), _uint(body, "to")
    if kind in (wire.STATE, wire.CLAIM):
        # How the master forgets idle sources (mq/sequencer.py): all optional.
        req["retention_ns"] = _uint(body, "retention_ns", (1 << 63) - 1, required=False) or 0
        most = _uint(body, "max_sources", STATE_MAX_SOURCES, required=False)
        req["max_sources"] = STATE_MAX_SOURCES if most is None else most
        keep = body.get("keep", [])
        if not isinstance(keep, list) or len(keep) > MAX_KEEP_SOURCES or any(
                type(k) is not int or not 0 <= k <= U32_MAX for k in keep):
            raise wire.WireError(f"field 'keep' must be a list of at most {MAX_KEEP_SOURCES} "
                                 "source ids")
        req["keep"] = frozenset(keep)
    return req


class Replicator:
    def __init__(self, data_dir: str, bind: str, durability: str = "os",
                 map_size: int = 64 << 30, peers: list[str] | None = None,
                 max_streams: int = 500, check: bool = True, pub: str | None = None):
        self.data_dir = data_dir
        self.durability = durability
        self.map_size = map_size
        self.max_streams = max_streams
        self.stats = {"appended_records": 0, "commits": 0, "replayed_bytes": 0,
                      "refused": 0, "errors": 0, "caught_up_records": 0, "compared_records": 0,
                      "divergent_ranges": 0, "repaired_records": 0, "damaged_reads": 0,
                      "truncated_records": 0, "disk_full_refusals": 0, "quarantined": 0,
                      "unauthorized": 0, "published_frames": 0, "duplicate_records": 0}
        self.disk_full_since: float | None = None  # monotonic time writing began to fail
        self.write_retry_at = 0.0
        self.full_free = 0          # bytes free when the last write failed
        self.room_check_at = 0.0
        self.store = self._open_store(check)
        self.sock = sockets.router(bind)
        self.bind = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.running = True
        self.peers = Peers(self.store, peers or [], self.stats)
        self.peers.on_disk_full = self._disk_full
        self.peers.on_wrote = self._wrote
        # Fan-out (docs/log.md, "Fan-out from the replicators"): the frames a master's APPEND
        # lets this replicator publish, held until the group's transaction is committed. Each
        # transaction starts with none, so a group that was aborted publishes nothing.
        self.pub: zmq.Socket | None = None
        self.pub_endpoint = ""
        self.fresh: list[list[bytes]] = []
        if pub:
            self.pub = sockets.publisher(pub)
            self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller = zmq.Poller()
        self.spin = sockets.Spin()   # --spin-us (mq/sockets.py); off by default
        self.poller.register(self.sock, zmq.POLLIN)
        self.peers.register(self.poller)

    # -- the file ---------------------------------------------------------------------------
    def _open_store(self, check: bool) -> Store:
        """Open the LMDB file; a damaged one (found by the integrity check in a child
        process, or by LMDB on opening) is quarantined, and the store starts empty."""
        if check:
            size = _file_size(os.path.join(self.data_dir, "data.mdb"))
            if size:
                log.info("checking the integrity of %s (%d MB) before serving", self.data_dir,
                         size >> 20)
            began = time.monotonic()
            usable, detail = integrity.check(self.data_dir)
            if size:
                log.info("integrity check of %s done in %.1f s", self.data_dir,
                         time.monotonic() - began)
            if not usable:
                self._quarantine(detail)
            elif detail:
                log.error("damaged frames in %s: %s; each is repaired from the peers",
                          self.data_dir, detail)
        try:
            return Store(self.data_dir, self.durability, map_size=self.map_size,
                         max_streams=self.max_streams)
        except integrity.CORRUPTION_ERRORS as exc:
            self._quarantine(f"{type(exc).__name__}: {exc}")
            return Store(self.data_dir, self.durability, map_size=self.map_size,
                         max_streams=self.max_streams)

    def _quarantine(self, why: str) -> None:
        moved = integrity.quarantine(self.data_dir)
        self.stats["quarantined"] += 1
        log.error("LMDB file corrupt at %s (%s): moved to %s; serving nothing from it, "
                  "starting empty and rebuilding every stream from the peers", self.data_dir,
                  why, moved)

    def _quarantine_now(self, exc: Exception) -> None:
        """LMDB reported damage while serving: close, quarantine, reopen empty."""
        try:
            self.store.close()
        except lmdb.Error:
            pass
        self._quarantine(f"{type(exc).__name__}: {exc}")
        self.store = Store(self.data_dir, self.durability, map_size=self.map_size,
                           max_streams=self.max_streams)
        self.peers.reset(self.store)

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return -1
        return st.f_bavail * st.f_frsize

    def _disk_full(self, exc: Exception) -> None:
        """A write failed for lack of room: nothing of it was persisted or acknowledged."""
        now = time.monotonic()
        self.full_free = free = self._free_bytes()
        if self.disk_full_since is None:
            self.disk_full_since = now
            what = "disk full" if free < FULL_BELOW_BYTES or isinstance(exc, lmdb.DiskError) \
                else "write failed"
            log.error("%s at %s: %d bytes free; writes are refused and not acknowledged (the "
                      "masters hold back), retried every %.0f s, resumed when one succeeds "
                      "(%s: %s)", what, self.data_dir, free, DISK_RETRY_S,
                      type(exc).__name__, exc)
        self.write_retry_at = now + DISK_RETRY_S

    def _refusing_writes(self) -> bool:
        """While the disk is full, refuse writes without trying, but let one batch try
        every DISK_RETRY_S, and at once when the file system has room again (statvfs, every
        ROOM_CHECK_S at most): a master probes a full replicator every 50 ms, so writing
        resumes within about that of the room coming back."""
        if self.disk_full_since is None:
            return False
        now = time.monotonic()
        if now >= self.room_check_at:
            self.room_check_at = now + ROOM_CHECK_S
            if self._free_bytes() > self.full_free + ROOM_MARGIN_BYTES:
                self.write_retry_at = now
        if now >= self.write_retry_at:
            self.write_retry_at = now + DISK_RETRY_S
            return False
        return True

    def _wrote(self) -> None:
        if self.disk_full_since is not None:
            free = self._free_bytes()
            # a write may go through with the file system still full (LMDB reuses the pages
            # its file already holds): say so, rather than that there is room
            room = ("has room again" if free > self.full_free + ROOM_MARGIN_BYTES else
                    "took a write again, with no more room than when writes failed")
            log.warning("disk at %s %s (%d bytes free): writing resumed after %.1f s",
                        self.data_dir, room, free, time.monotonic() - self.disk_full_since)
            self.disk_full_since = None

    # -- the loop -----------------------------------------------------------------------
    def serve(self) -> None:
        log.info("replicator listening on %s (durability %s)", self.bind, self.store.durability)
        while self.running:
            try:
                self._turn()
            except integrity.CORRUPTION_ERRORS as exc:
                self._quarantine_now(exc)
        self.peers.close()
        self.sock.close(0)
        if self.pub is not None:
            self.pub.close(0)
        self.store.close()

    def _turn(self) -> None:
        events = dict(self.poller.poll(self.spin.timeout_ms(200)))
        self.spin.polled(events)
        if self.sock in events:
            batch, peers = [], []
            while len(batch) < MAX_BATCH and (not batch or sockets.readable(self.sock)):
                try:
                    peer, msg = auth.recv_multipart(self.sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch.append(msg)
                peers.append(peer)
            self.handle(batch, peers)
        self.peers.on_events(events)
        self.peers.tick()

    def handle(self, batch: list[list[bytes]], peers: list[str | None] | None = None) -> None:
        """Consecutive writes of the batch share one transaction (group commit); their acks go
        out after the commit. A read or control message first commits what came before it, so
        it sees everything acknowledged and replies keep their order. peers: the
        authenticated key of each message's sender (mq.auth), checked against its role
        before anything is written."""
        replies: list[list[bytes]] = []
        # the writes of the open transaction: (ident, kind, request, index of its reply)
        group: list[tuple[bytes, bytes, dict, int]] = []
        txn = None
        try:
            for i, msg in enumerate(batch):
                if len(msg) < 3:
                    continue  # no identity and kind: nothing to answer
                ident, kind = msg[0], msg[1]
                write = kind in WRITES
                if txn is not None and not write:
                    self._commit(txn, replies, group)
                    txn, replies = None, []
                try:
                    req = parse(kind, msg[2:])
                    if peers is not None and (refusal := self._refusal(peers[i], kind, req)):
                        replies.append([ident, wire.ERROR, wire.pack(refusal)])
                        continue
                    if not write:
                        replies.append([ident, *self._read(kind, req)])
                        continue
                    # (a group once begun is tried whole: its failure answers every write)
                    if txn is None and self.disk_full_since is not None \
                            and self._refusing_writes():
                        reply = self._refuse_full(kind, req, txn)
                        if reply:
                            replies.append([ident, *reply])
                        continue
                    if txn is None:
                        if replies:
                            self._send(replies)  # the answers to reads so far stand alone
                            replies = []
                        txn = self.store.write()
                        self.fresh = []   # what this transaction may publish once committed
                        group = []
                    try:
                        reply = self._write(txn, kind, req)
                        group.append((ident, kind, req, len(replies) if reply else -1))
                    except lmdb.Error as exc:
                        if not is_write_failure(exc):
                            raise
                        txn.abort()
                        txn = None   # nothing of this transaction is acknowledged
                        self.store.forget()
                        self._disk_full(exc)
                        replies = self._refuse_group(replies, group)
                        reply = self._refuse_full(kind, req)
                    except PartialWrite as exc:
                        # A write that failed halfway (never seen: StreamLog.append checks
                        # all it can first): the group's transaction holds part of it, so
                        # the whole group is dropped, unacknowledged; the masters resend.
                        txn.abort()
                        txn, replies = None, []
                        self.store.forget()
                        self.stats["errors"] += 1
                        log.error("%s; the group of writes with it is dropped", exc)
                        reply = [wire.ERROR, wire.pack({"error": str(exc)[:MAX_ERROR_CHARS]})]
                    if reply:
                        replies.append([ident, *reply])
                except CorruptFrame as exc:
                    self.stats["damaged_reads"] += 1
                    log.error("%s", exc)
                    replies.append([ident, wire.ERROR, wire.pack({"error": str(exc)})])
                except (wire.WireError, FrameError, ValueError) as exc:
                    self.stats["errors"] += 1
                    replies.append([ident, wire.ERROR,
                                    wire.pack({"error": str(exc)[:MAX_ERROR_CHARS]})])
            if txn is not None:
                self._commit(txn, replies, group)
                txn = None
            else:
                self._send(replies)
        finally:
            if txn is not None:  # an error that ends the turn (a damaged file): write nothing
                txn.abort()

    def _refusal(self, peer: str | None, kind: bytes, req: dict) -> dict | None:
        """The ERROR body for a message its sender's role does not allow, else None."""
        if auth.insecure():
            return None
        stream = req.get("stream")
        reason = auth.replicator_refusal(peer, kind, stream)
        if reason is None:
            return None
        self.stats["unauthorized"] += 1
        what = f"{kind[:16].decode('ascii', 'replace')} {stream or ''}".strip()
        auth.note_refusal(peer, reason, what)
        return auth.refused_body(reason, what)

    def _commit(self, txn: Any, replies: list[list[bytes]],
                group: list[tuple[bytes, bytes, dict, int]]) -> None:
        try:
            self._persist(txn)
        except lmdb.Error as exc:
            txn.abort()  # LMDB has ended it already; this makes sure
            if not is_write_failure(exc):
                raise
            # Nothing was persisted: no write of the group is acknowledged; each is refused
            # as on a full disk, so that its master resends (probing) at once.
            self.store.forget()
            self._disk_full(exc)
            self._send(self._refuse_group(replies, group))
            return
        self.stats["commits"] += 1
        if self.disk_full_since is not None:
            self._wrote()
        self._send(replies)
        if self.fresh:
            self._fan_out()

    def _unpublish(self, stream: str, last: int) -> None:
        """A TRUNCATE in the group dropped records above `last`: a frame of the group that
        reaches past it is no longer stored as it came, and is not published (a subscriber
        fills the seqs it held, if they stay, by replay)."""
        topic = stream.encode() + b"\0"
        self.fresh = [msg for msg in self.fresh
                      if msg[0] != topic or scan(msg[1])[2] <= last]

    def _fan_out(self) -> None:
        """Publish the frames of the group just committed, in the order they were stored."""
        for msg in self.fresh:
            try:
                sockets.send_parts(self.pub, msg, sockets.NOBLOCK)
            except zmq.Again:
                pass  # a PUB drops for a slow subscriber; the subscriber replays the gap
        self.stats["published_frames"] += len(self.fresh)
        self.fresh = []

    @staticmethod
    def _persist(txn: Any) -> None:
        """Commit a group (one place, so that tests can make the disk fail)."""
        txn.commit()

    def _send(self, replies: list[list[bytes]]) -> None:
        for reply in replies:
            try:
                sockets.send_parts(self.sock, reply, sockets.NOBLOCK)
            except zmq.Again:
                pass  # the peer is gone or slow; it resends, and acks are cumulative

    # -- writes -------------------------------------------------------------------------
    def _write(self, txn: Any, kind: bytes, req: dict) -> list[bytes] | None:
        """One write; if it fails, nothing of it stays, on disk or in memory. An APPEND runs in
        the group's transaction itself: StreamLog.append checks everything before its first
        write, and a failure after it (PartialWrite, or a failed write of LMDB) ends the whole
        group unacknowledged (handle). A CLAIM or a TRUNCATE runs in a transaction nested in
        the group commit, so that the rest of the group is unaffected by its failure."""
        if kind == wire.APPEND:
            return self._append(txn, self.store.stream(req["stream"], txn), req)
        if kind == wire.COMMIT:
            log_ = self.store.find(req["stream"], txn)
            if log_ is not None and req["epoch"] >= log_.epoch:
                log_.set_commit(txn, req["commit"])
            return None
        log_ = self.store.stream(req["stream"], txn)
        child = self.store.env.begin(write=True, parent=txn)
        try:
            if kind == wire.CLAIM:
                reply = self._claim(child, log_, req)
            else:
                reply = self._truncate(child, log_, req)
            child.commit()
            if kind == wire.TRUNCATE and self.fresh:
                self._unpublish(req["stream"], log_.last)
        except BaseException:
            child.abort()
            log_._load(txn)
            raise
        return reply

    def _refuse_group(self, replies: list[list[bytes]],
                      group: list[tuple[bytes, bytes, dict, int]]) -> list[list[bytes]]:
        """The answers of a group whose transaction failed (after forget()), in order: each
        write's answer replaced by its refusal, every other answer (an ERROR) kept."""
        out = list(replies)
        for ident, kind, req, at in group:
            if at >= 0:
                out[at] = [ident, *self._refuse_full(kind, req)]
        return out

    def _refuse_full(self, kind: bytes, req: dict, txn: Any = None) -> list[bytes] | None:
        self.stats["disk_full_refusals"] += 1
        if kind == wire.COMMIT:
            return None
        if kind == wire.CLAIM:
            return [wire.ERROR, wire.pack({"error": f"disk full at {self.data_dir}: the claim "
                                                    f"is not persisted"})]
        log_ = self.store.find(req["stream"], txn)
        return [wire.APPENDED, wire.pack({
            "stream": req["stream"], "ok": False, "last": log_.last if log_ else 0,
            "epoch": log_.epoch if log_ else 0, "reason": "disk_full", "seq": 0})]

    def _append(self, txn: Any, log_: StreamLog, req: dict) -> list[bytes]:
        stream = req["stream"]
        before = log_.last
        result = log_.append(txn, req["epoch"], req["frame"], req["prev_epoch"],
                             (req["count"], req["first"], req["last"]))
        if result.ok:
            # Published after the commit, if the master said one copy commits it (policy
            # `first`), the frame lengthened this log and its records carry the master's own
            # epoch (not a former master's records that it re-sends, which commit later).
            if self.pub is not None and req["fanout"] and result.last > before \
                    and first_epoch(req["frame"]) == req["epoch"]:
                self.fresh.append([stream.encode() + b"\0", req["frame"]])
            if req["commit"] is not None:
                log_.set_commit(txn, req["commit"])
            # records it already held: a master's resends (what the log's metrics show of
            # a backlog sent twice)
            self.stats["duplicate_records"] += max(0, min(req["last"], before) - req["first"] + 1)
        else:
            self.stats["refused"] += 1
            if result.reason == "conflict":
                log.error("%s: refused different bytes at seq %d", stream, result.seq)
            elif result.reason == "gap":
                self.peers.behind(stream, req["first"] - 1)
        self.stats["appended_records"] += result.last - before
        return [wire.APPENDED, _ACK.pack({"stream": stream, "ok": result.ok,
                                          "last": result.last, "epoch": result.epoch,
                                          "reason": result.reason, "seq": result.seq})]

    def _claim(self, txn: Any, log_: StreamLog, req: dict) -> list[bytes]:
        ok = log_.claim(txn, req["epoch"], req["claimant"])
        if not ok:
            self.stats["refused"] += 1
            if req["epoch"] == log_.epoch:
                log.warning("%s: epoch %d is claimed by another master; refused", req["stream"],
                            req["epoch"])
        # `claimant` tells the claimant that this answer is its CLAIM's (a STATE's answer
        # names none) and whether it was granted the epoch.
        return [wire.STATE, wire.pack({**log_.state(txn, req["retention_ns"], req["max_sources"],
                                                     req["keep"]), "ok": ok,
                                       "claimant": log_.claimant})]

    def _truncate(self, txn: Any, log_: StreamLog, req: dict) -> list[bytes]:
        stream, epoch = req["stream"], req["epoch"]
        result = log_.truncate(txn, epoch, req["after"])
        if result.ok:
            log.info("%s: truncated after seq %d for epoch %d", stream, log_.last, epoch)
        else:
            self.stats["refused"] += 1
            log.error("%s: refused to truncate after %d: %s", stream, req["after"],
                      result.reason)
        return [wire.APPENDED, wire.pack({"stream": stream, "ok": result.ok, "last": result.last,
                                          "epoch": result.epoch, "reason": result.reason,
                                          "seq": result.seq})]

    # -- reads (never create anything) --------------------------------------------------------
    def _read(self, kind: bytes, req: dict) -> list[bytes]:
        if kind == wire.PING:
            streams = {n: {"last": s.last, "epoch": s.epoch, "commit": s.commit}
                       for n, s in sorted(self.store.streams.items()) if not s.damaged}
            damaged = sorted(n for n, s in self.store.streams.items() if s.damaged)
            return [wire.PONG, wire.pack({"role": "replicator", "streams": streams,
                                          "damaged_streams": damaged,
                                          "refusals": auth.refusal_stats(),
                                          "disk_full": self.disk_full_since is not None,
                                          **self.stats})]
        if kind == wire.STOP:
            self.running = False
            return [wire.PONG, wire.pack({"role": "replicator", "stopping": True})]
        stream = req["stream"]
        log_ = self.store.find(stream)
        if kind == wire.STATE:
            state = log_.state(None, req["retention_ns"], req["max_sources"], req["keep"]) \
                if log_ else StreamLog.empty_state(stream)
            return [wire.STATE, wire.pack({**state, "ok": True})]
        if kind == wire.REPLAY:
            seq_from, frame = req["from"], b""
            answer = {"stream": stream, "from": seq_from, "last": 0, "commit": 0, "epoch": 0,
                      "prev_epoch": 0, "req": req["req"]}
            if log_ is not None:
                top = log_.last if req["uncommitted"] else log_.commit
                seq_to = top if req["to"] is None else min(req["to"], top)
                frame = log_.read(seq_from, seq_to, req["max_bytes"])
                answer.update(last=log_.last, commit=log_.commit, epoch=log_.epoch,
                              prev_epoch=epoch_at(log_.history, max(seq_from, 1) - 1))
            self.stats["replayed_bytes"] += len(frame)
            return [wire.RECORDS, wire.pack(answer), frame]
        # DIGEST
        seq_from, seq_to = req["from"], req["to"]
        answer = {"stream": stream, "from": seq_from, "to": seq_to, "digest": ""}
        if log_ is not None and 1 <= seq_from <= seq_to <= log_.commit \
                and seq_to - seq_from < MAX_DIGEST_RECORDS:
            value, reached = log_.digest(seq_from, seq_to, MAX_DIGEST_BYTES)
            if reached == seq_to:  # a range too large to digest gets none
                answer["digest"] = value
        return [wire.DIGEST, wire.pack(answer)]


def main(data_dir: str, bind: str, durability: str = "os", peers: list[str] | None = None,
         max_streams: int = 500, pub: str | None = None, spin_us: int = 0) -> None:
    noted = False
    while True:
        try:
            server = Replicator(data_dir, bind, durability, peers=peers,
                                max_streams=max_streams, pub=pub)
            server.spin = sockets.Spin(spin_us)
            break
        except lmdb.Error as exc:
            if not is_write_failure(exc):
                raise
            # Not even the lock file fits: wait for room rather than crash-loop.
            if not noted:
                st = os.statvfs(data_dir) if os.path.isdir(data_dir) else None
                log.error("disk full at %s: %s bytes free; cannot open the store, retrying "
                          "every %.0f s (%s)", data_dir,
                          st.f_bavail * st.f_frsize if st else "?", DISK_RETRY_S, exc)
                noted = True
            time.sleep(DISK_RETRY_S)

    def stop(_sig: int, _frame: Any) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"replicator ready {server.bind}"
          + (f" publishing on {server.pub_endpoint}" if server.pub else ""), flush=True)
    started = time.monotonic()
    server.serve()
    log.info("replicator stopped after %.1f s", time.monotonic() - started)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
