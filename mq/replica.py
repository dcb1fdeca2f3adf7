"""The replica host: runs one engine state machine on its input stream (DESIGN.md §1, §4).

* Input: a Subscriber on the engine's in stream (replay from the replicators, then live; each
  record exactly once, in order). Every frame goes through ``engine.apply_frame`` in one call.
* Role **hot**: each output frame (one output record per input record, at the input's seq) goes
  to the out stream's mirror master as ``[DATA, {replica}, frame]``.
  Role **warm**: publishes nothing, keeps recent outputs, and writes snapshots.
* Delivery to the mirror never relies on the socket: outputs stay in a window (bounded by
  bytes) and the host sends them in seq order from ``sent_upto``. A send that would block
  (mirror away, queue full) is simply tried again on the next turn, never dropped. The mirror
  answers every frame with the first seq it lacks (mq/mirror.py): told of a gap, or when its
  answers stall (backing off with jitter, RESEND_MIN_S .. RESEND_MAX_S), the host rewinds to
  that seq and resends. When the mirror has been silent for PROBE_S the host asks it where it
  stands (HELLO), so a mirror restarted without the last outputs learns of them at idle too.
* Snapshots: warm replicas write them, every ``snapshot_every`` records or ``snapshot_s``
  seconds. Hot replicas do not by default: a snapshot costs the engine's serialization on the
  apply loop, and both hot replicas would stall in the same frame (a hot replica restarts
  from the shared warm snapshots instead). With ``hot_snapshots`` a hot replica writes them
  too, at seqs offset by a fraction of ``snapshot_every`` taken from its name, so that two
  hot replicas never stall together. A promoted warm replica keeps writing them (it may be
  the only writer of the shared directory). In every role only the serialization runs on the
  loop; hashing, writing and fsync run on a background thread. A file is written atomically
  (temporary file, fsync, rename) as ``<stream>-<seq>.snap``: magic and version, seq, SHA-256
  of the state, length, then (version 2) the stream's name and a digest of the record at seq
  as the log holds it, then the state. The last ``keep`` are kept. A write that fails (disk full) is
  logged and counted (``snapshot_failures``, ``snapshot_error``) and the replica goes on;
  PING's ``snapshot_seq`` and ``snapshot_age_s`` name the newest snapshot on disk.
* Start-up: the newest snapshot that passes every check (magic, version, seq equal to the
  file name's, length equal to what the file holds, checksum, this stream's name, and a
  restore that succeeds), from its own directory or a shared one; a file that fails is moved
  aside (``.bad``) with one log line and the next older one is tried, then a full replay.
  Then the input from that seq (asked of the replicators before the restore begins, so that
  their first answer arrives while the engine is rebuilt): the record at seq itself must be
  the one the snapshot was taken after (its digest), or the snapshot is another log's (a file
  copied from another stream or venue, or restored from a backup of another cluster) and is
  moved aside like a damaged one, before anything is applied on top of it. Nothing is missed
  or repeated.
* Promotion: a warm replica becomes hot on PROMOTE, without a restart. It asks the mirror how
  far the out stream is committed, and sends its kept outputs from there on.
* A control ROUTER answers PING (role, seq, lag, rates), HASH (seq and state hash), PROMOTE
  and STOP. The process pins itself to its core (SEQEX_CPU).

The host is engine-agnostic and imports no engine. An engine is anything with
``apply_frame(frame) -> frame``, ``snapshot() -> bytes`` and ``state_hash() -> bytes``, plus a
``restore(bytes) -> engine`` function; deploy/engines.py names the ones the command line can
start. An engine that also has ``apply_scanned_frame(frame)`` is given each frame through it:
the subscriber has checked every frame it delivers (mq.record.scan), so the engine need not
walk it again for the same check.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import zmq

from mq import auth, sockets, wire
from mq.control import call
from mq.record import HEADER_SIZE, RECORD_HEADER, offset_of, trim
from mq.sequencer import Window
from mq.subscriber import Subscriber

log = logging.getLogger("seqex.replica")

SNAP_HEADER = struct.Struct("<8sQ32sQ")   # magic+version, seq, sha256(state), len(state)
SNAP_MAGIC = b"SQXSNAP"                   # then one version byte
SNAP_VERSION = b"2"
SNAP_VERSION_1 = b"1"                     # no identity: read, never restored from
# version 2, after the header: the stream's name (u16 length, bytes), then the digest of the
# record at seq (header and payload, as the log holds it): which log the state was taken from
SNAP_NAME = struct.Struct("<H")
RECORD_DIGEST_SIZE = 16
MAX_STREAM_NAME = 255


def record_digest(record: bytes | memoryview) -> bytes:
    """The digest a snapshot keeps of the record at its seq (its header and payload)."""
    return hashlib.blake2b(record, digest_size=RECORD_DIGEST_SIZE).digest()


def last_record(first: int, last: int, frame: bytes) -> bytes:
    """The bytes of record ``last`` of a validated frame that starts at ``first``."""
    start = offset_of(frame, last - first)
    length = RECORD_HEADER.unpack_from(frame, start)[6]
    return bytes(frame[start:start + HEADER_SIZE + length])

MAX_SEND_BYTES = 4 << 20   # outputs sent to the mirror per turn of the loop
MIRROR_SNDHWM = 1000       # output frames queued in the socket to the mirror, at most
RESEND_MIN_S = 0.5         # the mirror's answers stalled this long: rewind and resend ...
RESEND_MAX_S = 8.0         # ... backing off (doubling, with jitter) up to this
PROBE_S = 1.0              # the mirror silent this long: ask where it stands
REGENERATE_S = 5.0         # outputs the mirror lacks, kept by no one this long: compute again
MIRROR_ASK_S = 1.0         # a restarting hot replica asks the mirror how far it committed
LOG_END_ASK_S = 1.0        # a restarting replica asks each replicator where the log ends
NOTE_EVERY_S = 5.0         # a lasting condition is logged at most this often
MAX_QUERY_ACCOUNTS = 1000  # accounts in one QUERY (its answer stays a small message)


class SnapshotError(ValueError):
    """A snapshot file that must not be restored from; the message says which check failed."""


class ReplicaHost:
    def __init__(self, name: str, engine: Any, restore: Callable[[bytes], Any], stream: str,
                 pub: str, replicators: list[str], control_bind: str, role: str = "hot",
                 mirror: str | None = None, snapshot_dir: str | None = None,
                 shared_snapshot_dir: str | None = None, snapshot_every: int = 100_000,
                 snapshot_s: float = 30.0, keep: int = 3, output_window_bytes: int = 256 << 20,
                 hot_snapshots: bool = False):
        if role not in ("hot", "warm"):
            raise ValueError("role is hot or warm")
        if role == "hot" and not mirror:
            raise ValueError("a hot replica needs the mirror master's address")
        if snapshot_every < 1 or keep < 1:
            raise ValueError("snapshot_every and keep are at least 1")
        self.name, self.stream, self.role = name, stream, role
        self.engine, self._restore = engine, restore
        self.snapshot_dir, self.shared_dir = snapshot_dir, shared_snapshot_dir
        self.snapshot_every, self.snapshot_s, self.keep = snapshot_every, snapshot_s, keep
        # fixed at start: a promoted warm replica keeps writing them (it may be the only one
        # that writes the shared directory the hot replicas restart from)
        self.writes_snapshots = bool(snapshot_dir) and (role == "warm" or hot_snapshots)
        # hot replicas snapshot at staggered seqs: (seq + offset) crosses a multiple of every
        self.snap_offset = _stagger(name, snapshot_every) if role == "hot" else 0
        self._writer: threading.Thread | None = None
        self.mirror_addr = mirror
        self.mirror = _mirror_socket(mirror) if role == "hot" else None
        self.data_head = wire.pack({"replica": self.name})   # the same on every DATA
        self.control = sockets.router(control_bind)
        self.control_endpoint = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outputs = Window(output_window_bytes)
        self.seq = 0                 # last input seq applied
        self.snap_seq = 0            # the seq of the last snapshot taken (written or not)
        # the newest snapshot on disk (written or restored from) and when: what PING reports;
        # a write that failed (disk full) leaves them alone and sets snapshot_error
        self.written_seq, self.written_at = 0, time.monotonic()
        self.snapshot_error: str | None = None
        # the time trigger is staggered too: each hot replica starts at its own phase
        self.snap_at = time.monotonic() - snapshot_s * self.snap_offset / snapshot_every
        self.head = 0                # highest input seq seen on the feed (for lag)
        self.running = True
        self.stats = {"applied": 0, "frames": 0, "snapshots": 0, "published_frames": 0,
                      "restored_from": 0, "bad_snapshots": 0, "resends": 0, "gaps_told": 0,
                      "send_blocked": 0, "snapshot_failures": 0, "regenerated": 0,
                      "unverifiable_snapshots": 0}
        self.rate = 0.0
        self._pub, self._replicators = pub, replicators
        self.sub: Subscriber | None = None
        # (seq, digest, path) of the snapshot restored from, until the log's record at seq is
        # seen to match it; the record of the last seq applied, for the next snapshot
        self.verify: tuple[int, bytes, str] | None = None
        self.last_frame: tuple[int, int, bytes] | None = None
        # the engine's state before any input: what a replay from seq 1 starts from (a warm
        # replica may be promoted to hot)
        self._initial = engine.snapshot()
        paths = self._snapshot_paths()
        self._load_snapshot(paths, self._mirror_committed() if paths and role == "hot"
                            else None)
        # delivery to the mirror (hot): outputs up to sent_upto were handed to the socket; the
        # mirror holds every seq up to mirror_has (its latest answer)
        self.mirror_has = self.seq
        self.heard_at = self.probe_at = time.monotonic()
        self.rewound, self.rewound_at = -1, 0.0
        self.lost_note_at = 0.0
        self.regenerate_due = False
        self._deliver_from_seq()

    # -- snapshots --------------------------------------------------------------------------
    def _snapshot_paths(self) -> list[str]:
        """The snapshot files of both directories (and away with the temporary file of a write
        this process died in the middle of)."""
        paths = []
        for d in (self.snapshot_dir, self.shared_dir):
            if d:
                paths += _snap_files(d, self.stream)
        if self.snapshot_dir:
            for tmp in _snap_files(self.snapshot_dir, self.stream, ".snap.tmp"):
                _remove(tmp)
        return paths

    def _load_snapshot(self, paths: list[str], limit: int | None) -> None:
        """Restore from the newest usable snapshot of ``paths`` (at or below ``limit`` if it is
        given), and subscribe from after it. A hot replica must be able to send every output
        the out stream lacks, so it passes what the mirror committed as the limit. (Both hot
        replicas killed together, restarted from the warm replica's newest snapshot, which was
        newer than the out stream: no replica could send the outputs in between, ever.)"""
        end = self._log_end() if paths else None
        for path in sorted(set(paths), key=_snap_seq, reverse=True):
            if limit is not None and _snap_seq(path) > limit:
                continue
            try:
                seq, data, record = check_snapshot_record(path, self.stream)
                if end is not None and seq > end:
                    raise SnapshotError(f"seq {seq} is beyond the log's end ({end}): the state "
                                        "of another log")
            except FileNotFoundError:
                continue    # rotated away by its writer since the listing
            except Exception as exc:  # a damaged file
                self._unusable(path, exc)
                continue
            if record is None:
                # Nothing ties it to this log (a version 1 file, or no record digest): its
                # state would be applied on unchecked, and the next snapshot, taken after a
                # record of this log, would carry the foreign state as a verified one.
                self.stats["unverifiable_snapshots"] += 1
                log.warning("%s: snapshot %s names no record of the log (a version 1 file, or "
                            "no record digest): not restored from", self.name, path)
                continue
            # Ask for the records from it on before restoring: the replicator's first answer
            # comes in (zmq's I/O thread) while the engine is rebuilt. With the digest of the
            # record at seq, that record first: the log's own must match before anything is
            # applied on top of the state (serve), or the snapshot is another log's.
            self._drop_subscriber()
            self.sub = Subscriber(self.stream, self._pub, self._replicators, next_seq=seq)
            self.sub.request()
            try:
                engine = self._restore(data)
            except Exception as exc:  # one this engine cannot restore
                self._drop_subscriber()
                self._unusable(path, exc)
                continue
            self.engine = engine
            self.seq = self.snap_seq = self.written_seq = seq
            self.stats["restored_from"] = seq
            self.verify = (seq, record, path)
            log.info("%s: restored from %s (seq %d); the log's record at %d is checked before "
                     "the next is applied", self.name, path, seq, seq)
            return
        if paths:
            log.warning("%s: no usable snapshot; replaying %s from seq 1", self.name, self.stream)

    def _log_end(self) -> int | None:
        """The highest seq the replicators hold of the stream (STATE): a snapshot beyond it is
        another log's. None unless every replicator answers within LOG_END_ASK_S: one that
        lags (frozen, or catching up after a wipe) while the others are away would put the end
        below a good snapshot (which the check of its record at seq still covers)."""
        end = 0
        for addr in self._replicators:
            try:
                kind, body, _ = call(addr, wire.STATE, {"stream": self.stream},
                                     timeout_s=LOG_END_ASK_S, refused_ends=True)
            except (TimeoutError, ConnectionRefusedError, wire.WireError):
                return None
            last = body.get("last") if kind == wire.STATE else None
            if type(last) is not int:
                return None
            end = max(end, last)
        return end if self._replicators else None

    def _deliver_from_seq(self) -> None:
        """After a restore (or none): the input from seq + 1 if no subscriber asked for it yet,
        and outputs sent from there; nothing lost yet."""
        if self.sub is None:
            self.sub = Subscriber(self.stream, self._pub, self._replicators,
                                  next_seq=self.seq + 1)
        self.sent_upto = self.seq
        self.progress_at = time.monotonic()
        self.resend_after = RESEND_MIN_S
        self.lost_since = 0.0       # since when the mirror lacks outputs this host no longer keeps

    def _mirror_committed(self) -> int | None:
        """How far the out stream is committed (PING of the mirror), or None when the mirror
        does not say within MIRROR_ASK_S, or refuses the connection (down: nothing to wait
        for), and the newest snapshot is used, as a warm replica's would be."""
        if not self.mirror_addr:
            return None
        try:
            kind, status, _ = call(self.mirror_addr, wire.PING, timeout_s=MIRROR_ASK_S,
                                   refused_ends=True)
        except (TimeoutError, ConnectionRefusedError, wire.WireError):
            status, kind = {}, b""
        committed = status.get("committed") if isinstance(status, dict) else None
        if kind != wire.PONG or type(committed) is not int or committed < 0:
            log.warning("%s: the mirror at %s did not say how far the out stream is "
                        "committed; restoring from the newest snapshot", self.name,
                        self.mirror_addr)
            return None
        return committed

    def _unusable(self, path: str, exc: Exception) -> None:
        self.stats["bad_snapshots"] += 1
        aside = _move_aside(path)
        log.error("%s: snapshot %s is unusable (%s: %s); %s; trying an older one",
                  self.name, path, type(exc).__name__, exc,
                  f"moved to {aside}" if aside else "could not move it aside")

    def _verified(self, first: int, last: int, frame: bytes) -> bool:
        """Whether the first frame after a restore starts with the record the snapshot was
        taken after. If not, the snapshot is moved aside and the engine starts again from
        the next older one (or seq 0), before anything was applied on top of it."""
        seq, digest, path = self.verify
        if first == seq and record_digest(last_record(first, first, frame)) == digest:
            self.verify = None
            return True
        why = (f"the log's record at seq {seq} is not the one the snapshot was taken after: "
               "the state of another log (another stream's or another cluster's)"
               if first == seq else f"the log answered from seq {first}, not {seq}")
        self._unusable(path, SnapshotError(why))
        self.verify = None
        self.written_seq = self.stats["restored_from"] = 0
        self._rebuild(self._mirror_committed() if self.mirror is not None else None)
        self.mirror_has = min(self.mirror_has, self.seq)
        return False

    def _drop_subscriber(self) -> None:
        if self.sub is not None:
            self.sub.close()
            self.sub = None

    def _maybe_snapshot(self) -> None:
        if not self.writes_snapshots or self.seq <= self.snap_seq:
            return
        off, every = self.snap_offset, self.snapshot_every
        due = ((self.seq + off) // every > (self.snap_seq + off) // every
               or time.monotonic() - self.snap_at >= self.snapshot_s)
        if not due or (self._writer is not None and self._writer.is_alive()):
            return   # the previous snapshot is still being written: take this one later
        state = self.engine.snapshot()   # the only part that must run between two applies
        record = bytes(RECORD_DIGEST_SIZE)
        if self.last_frame is not None and self.last_frame[1] == self.seq:
            record = record_digest(last_record(*self.last_frame))
        self._writer = threading.Thread(target=self._write, args=(self.seq, state, record),
                                        name="snapshot-writer", daemon=True)
        self._writer.start()
        self.snap_seq, self.snap_at = self.seq, time.monotonic()

    def _write(self, seq: int, state: bytes, record: bytes) -> None:
        try:
            write_snapshot(self.snapshot_dir, self.stream, seq, state, self.keep, record)
            self.stats["snapshots"] += 1
            self.written_seq, self.written_at = seq, time.monotonic()
            if self.snapshot_error is not None:
                log.warning("%s: snapshots written again (seq %d in %s)", self.name, seq,
                            self.snapshot_dir)
            self.snapshot_error = None
        except OSError as exc:  # disk full, permissions: the log still holds everything
            self.stats["snapshot_failures"] += 1
            self.snapshot_error = f"seq {seq}: {exc}"
            log.error("%s: could not write the snapshot at seq %d in %s: %s", self.name, seq,
                      self.snapshot_dir, exc)

    def wait_snapshot(self, timeout_s: float = 60.0) -> None:
        if self._writer is not None:
            self._writer.join(timeout_s)

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        log.info("%s: %s replica of %s from seq %d", self.name, self.role, self.stream,
                 self.seq + 1)
        window_start, window_n = time.monotonic(), 0
        apply = None
        while self.running:
            if self.regenerate_due:
                self._regenerate()
                apply = None
            if apply is None:               # the engine restored, if at all, before serve
                apply = getattr(self.engine, "apply_scanned_frame", None) or \
                    self.engine.apply_frame
            frames = self.sub.poll(50)
            for first, last, frame in frames:
                if self.verify is not None:
                    if not self._verified(first, last, frame):
                        apply = None      # restarted from an older snapshot, or seq 0
                        break
                    if last == first:
                        continue
                    frame, first = trim(frame, first, first + 1), first + 1
                if first != self.seq + 1:
                    raise RuntimeError(f"{self.name}: input jumped from {self.seq} to {first}")
                out = apply(frame)
                self.last_frame = (first, last, frame)
                self.seq = last
                self.head = max(self.head, last)
                self.outputs.add(first, last, out)
                if self.mirror is not None:
                    self._pump()
                self.stats["applied"] += last - first + 1
                self.stats["frames"] += 1
                window_n += last - first + 1
            if self.mirror is not None:
                self._from_mirror()
                self._pump()
            now = time.monotonic()
            if now - window_start >= 1.0:
                self.rate, window_start, window_n = window_n / (now - window_start), now, 0
            self._maybe_snapshot()
            self._control()
        self.wait_snapshot()
        self.sub.close()
        self.control.close(0)
        if self.mirror is not None:
            self.mirror.close(0)

    # -- delivery to the mirror ---------------------------------------------------------------
    def _pump(self) -> None:
        """Send kept outputs after sent_upto, in seq order, up to MAX_SEND_BYTES a turn. A send
        that would block is tried again on a later turn: nothing is ever dropped here."""
        budget = MAX_SEND_BYTES
        while self.sent_upto < self.seq and budget > 0:
            piece = self.outputs.frame_from(self.sent_upto + 1)
            if piece is None:
                self._not_kept()
                continue
            _first, last, frame = piece
            try:
                self.mirror.send_multipart([wire.DATA, self.data_head, frame], zmq.NOBLOCK)
            except zmq.Again:
                self.stats["send_blocked"] += 1
                return   # the mirror is away or its queue is full
            if self.sent_upto <= self.mirror_has:
                self.progress_at = time.monotonic()   # the first output it lacks left now
            self.sent_upto = last
            budget -= len(frame)
            self.stats["published_frames"] += 1

    def _not_kept(self) -> None:
        """The mirror lacks outputs this host no longer keeps: skip to the oldest kept one (the
        other hot replica or a promoted warm one must supply the rest), and say so."""
        lowest = self.outputs.lowest()
        skip_to = (lowest - 1) if lowest > self.sent_upto + 1 else self.seq
        now = time.monotonic()
        if now >= self.lost_note_at:
            self.lost_note_at = now + NOTE_EVERY_S
            log.error("%s: the mirror lacks outputs from seq %d, which this replica no longer "
                      "keeps (it keeps %s); another hot replica, or a promoted warm one, must "
                      "send them", self.name, self.sent_upto + 1,
                      f"{lowest}..{self.seq}" if lowest else "none")
        self.sent_upto = skip_to
        if not self.lost_since:
            self.lost_since = now

    def _check_lost(self, now: float) -> None:
        """Outputs the mirror lacks and this host no longer keeps: once another replica has
        sent them (the mirror holds up to our oldest kept output), nothing is lost; if none
        has for REGENERATE_S, compute them again (between two polls of the loop). That is
        how a hot replica restored from a snapshot newer than the out stream (its mirror did
        not answer when it started, frozen) brings the stream on, rather than stalling it
        until an operator restarts or promotes a replica."""
        lowest = self.outputs.lowest()
        if self.mirror_has >= self.seq or lowest and self.mirror_has >= lowest - 1:
            self.lost_since = 0.0
        elif now - self.lost_since >= REGENERATE_S and now - self.heard_at <= 2 * PROBE_S:
            # only while the mirror answers: a frozen one says nothing of what it holds, and
            # computing the outputs again for it would repeat every REGENERATE_S
            self.regenerate_due = True

    def _regenerate(self) -> None:
        """Rebuild the engine from the newest snapshot at or below what the mirror holds (or
        from the state before any input), and apply the input again from there: the outputs
        the mirror lacks are computed once more (the engine is deterministic) and sent. The
        mirror takes each output once, whoever sends it. If no snapshot that old is left (the
        last ``keep`` are kept), that is a replay from seq 1."""
        self.regenerate_due = False
        self.wait_snapshot()      # a write in flight finishes before the directory is read
        limit = self.mirror_has
        log.error("%s: the mirror has lacked outputs from seq %d for %.0f s and no replica "
                  "sent them; rebuilding the engine from seq %d or below to compute them again",
                  self.name, limit + 1, REGENERATE_S, limit)
        self._rebuild(limit)
        self.stats["regenerated"] += 1

    def _rebuild(self, limit: int | None) -> None:
        """The engine again from the newest usable snapshot at or below ``limit`` (or from the
        state before any input), the outputs kept from there, the input asked for from it."""
        self._drop_subscriber()
        self.engine = self._restore(self._initial)
        self.seq = self.snap_seq = 0
        self._load_snapshot(self._snapshot_paths(), limit)
        self.outputs = Window(self.outputs.max_bytes)
        self._deliver_from_seq()

    def _from_mirror(self) -> None:
        """Take the mirror's answers: where the out stream stands, and whether it has a gap.
        Rewind to what it lacks when told of a gap, or when its answers stalled."""
        now = time.monotonic()
        gap_at = 0
        # A receive that fails raises, which costs several times a zero-timeout poll: ask
        # first (mq/sockets.py), on every turn of the loop of every hot replica.
        while sockets.readable(self.mirror):
            try:
                msg = self.mirror.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(msg) < 2 or msg[0] != wire.ACK:
                continue
            try:
                body = wire.unpack(msg[1])
                nxt = wire.field(body, "next", int)
            except wire.WireError:
                continue
            self.heard_at = now
            if nxt - 1 > self.mirror_has:
                self.progress_at = now
                self.resend_after = RESEND_MIN_S
            # the latest answer is the truth: a restarted mirror may hold less than the last one
            self.mirror_has = nxt - 1
            if body.get("gap"):
                gap_at = nxt
        if gap_at and gap_at - 1 < self.sent_upto:
            self.stats["gaps_told"] += 1
            # Frames already in flight past the gap are each answered with the same seq:
            # rewind once for them, not once each.
            if self.rewound != gap_at or now - self.rewound_at > self.resend_after:
                self._rewind(gap_at - 1, "the mirror reported a gap", now)
        elif self.mirror_has < self.sent_upto and now - self.progress_at > self.resend_after:
            self._rewind(self.mirror_has, "the mirror's answers stalled", now)
        if self.lost_since:
            self._check_lost(now)
        if now - self.heard_at > PROBE_S and now - self.probe_at > PROBE_S:
            self.probe_at = now
            try:
                self.mirror.send_multipart(
                    [wire.HELLO, wire.pack({"replica": self.name, "seq": self.seq})], zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _rewind(self, to: int, why: str, now: float) -> None:
        log.warning("%s: %s; resending outputs from seq %d (sent up to %d)", self.name, why,
                    to + 1, self.sent_upto)
        self.stats["resends"] += 1
        self.sent_upto = min(self.sent_upto, to)
        self.rewound, self.rewound_at = to + 1, now
        self.progress_at = now
        # back off with jitter, so that replicas of a stalled mirror do not resend in step
        self.resend_after = min(RESEND_MAX_S, self.resend_after * 2) * random.uniform(0.75, 1.25)

    def promote(self) -> dict:
        """Warm -> hot: send the kept outputs the mirror has not committed, then go live."""
        if self.role == "hot":
            return {"role": "hot", "resent_from": None}
        if not self.mirror_addr:
            raise RuntimeError(f"{self.name}: no mirror configured; start it with --mirror")
        try:
            kind, status, _ = call(self.mirror_addr, wire.PING, timeout_s=5)
        except wire.WireError as exc:
            raise RuntimeError(f"{self.name}: the mirror at {self.mirror_addr} answered "
                               f"PING with garbage: {exc}") from None
        committed = status.get("committed")
        if kind != wire.PONG or type(committed) is not int or committed < 0:
            raise RuntimeError(f"{self.name}: the mirror at {self.mirror_addr} did not say "
                               f"where the out stream stands ({kind[:16]!r} {status}"[:300]
                               + "); not promoted")
        start = committed + 1
        if start <= self.seq and self.outputs.frame_from(start) is None:
            raise RuntimeError(f"{self.name}: outputs from {start} are no longer kept")
        self.mirror = _mirror_socket(self.mirror_addr)
        self.sent_upto = self.mirror_has = start - 1
        self.progress_at = self.heard_at = time.monotonic()
        self.role = "hot"
        self._pump()
        log.warning("%s: promoted to hot; resending outputs %d..%d", self.name, start, self.seq)
        return {"role": "hot", "resent_from": start}

    def _control(self) -> None:
        while sockets.readable(self.control):
            try:
                peer, msg = auth.recv_multipart(self.control, zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 3:
                continue
            ident, kind = msg[0], msg[1]
            reason = (auth.operator_refusal(peer)
                      if kind in (wire.STOP, wire.PROMOTE, wire.QUERY) else None)
            if reason is not None:
                what = f"{self.name}: {kind.decode()}"
                auth.note_refusal(peer, reason, what)
                self.control.send_multipart([ident, wire.ERROR, wire.pack(
                    auth.refused_body(reason, what))])
                continue
            if kind == wire.PING:
                body = self.status()
            elif kind == wire.HASH:
                body = {"seq": self.seq, "hash": self.engine.state_hash().hex()}
            elif kind == wire.PROMOTE:
                try:
                    body = self.promote()
                except (TimeoutError, RuntimeError) as exc:
                    body = {"error": str(exc)}
            elif kind == wire.STOP:
                self.running = False
                body = {"stopping": True}
            elif kind == wire.QUERY:
                body = self._query(msg[2])
            else:
                body = {"error": f"unknown message kind {kind[:32]!r}"}
            self.control.send_multipart([ident, wire.PONG, wire.pack(body)])

    def _query(self, raw: bytes) -> dict:
        """An operator's question about the engine's live state (a TradingEngine's accounts),
        answered from this replica's state at self.seq."""
        view = getattr(self.engine, "view_accounts", None)
        if view is None:
            return {"error": f"{self.name}: its engine answers no account query"}
        try:
            ids = wire.field(wire.unpack(raw), "accounts", list)
            if len(ids) > MAX_QUERY_ACCOUNTS or not all(
                    type(i) is int and 0 <= i < 1 << 32 for i in ids):
                raise wire.WireError(f"accounts: a list of at most {MAX_QUERY_ACCOUNTS} "
                                     f"account numbers")
        except wire.WireError as exc:
            return {"error": f"{self.name}: {exc}"}
        # catching_up: the subscriber is still replaying the log (a replica restarted from an
        # older snapshot): its figures are those of seq, not the engine's latest
        return {"seq": self.seq, "catching_up": bool(self.sub is not None and self.sub.replaying),
                "accounts": view(ids)}

    def status(self) -> dict:
        return {"role": "replica", "name": self.name, "replica_role": self.role,
                "stream": self.stream, "seq": self.seq, "lag": max(0, self.head - self.seq),
                "rate": round(self.rate), "snapshot_seq": self.written_seq,
                "snapshot_age_s": round(time.monotonic() - self.written_at, 3),
                "snapshot_error": self.snapshot_error,
                # restored, waiting for the log's record at this seq to verify the snapshot
                "verifying": self.verify[0] if self.verify is not None else 0,
                "sent_upto": self.sent_upto, "mirror_has": self.mirror_has,
                "refusals": auth.refusal_stats(), **self.stats}


def _mirror_socket(addr: str) -> zmq.Socket:
    """To the mirror: sends fail while it is not connected (IMMEDIATE), and few frames queue
    for it (MIRROR_SNDHWM), since the outputs window, not the socket, keeps what is unsent.
    A frozen mirror then costs a bounded queue, not 100,000 copies of output frames."""
    return sockets.dealer(addr, immediate=True, sndhwm=MIRROR_SNDHWM)


def _stagger(name: str, every: int) -> int:
    """The seq offset of a hot replica's snapshots, in 0 .. every-1. Replicas numbered by
    their name's trailing digits (hot0, hot1, ...) get the multiples of the golden ratio
    (k + 1) * 0.618 of the interval, which stay at least 0.236 of it apart for the first
    three and never land on a warm replica's (offset 0); other names fall back to a hash."""
    digits = len(name) - len(name.rstrip("0123456789"))
    if digits:
        k = int(name[-digits:])
        return (k + 1) * every * 618_034 // 1_000_000 % every
    return zlib.crc32(name.encode()) % every


def _snap_files(directory: str, stream: str, suffix: str = ".snap") -> list[str]:
    """The snapshot files of exactly this stream: <stream>-<digits><suffix>. Not a glob: a
    stream name may hold glob characters, and another stream's name may start with this one
    and a dash (in.x and in.x-2 in one directory)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    head = f"{stream}-"
    return [os.path.join(directory, n) for n in names
            if n.startswith(head) and n.endswith(suffix)
            and n[len(head):len(n) - len(suffix)].isdigit()
            and n[len(head):len(n) - len(suffix)].isascii()]


def _snap_seq(path: str) -> int:
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1].split(".")[0])
    except (IndexError, ValueError):
        return -1


def write_snapshot(directory: str, stream: str, seq: int, state: bytes, keep: int,
                   record: bytes = bytes(RECORD_DIGEST_SIZE)) -> str:
    """Write atomically: a reader sees the old file set or the new one, never half a file.
    A failed write leaves no temporary file behind. ``record``: record_digest() of the record
    at seq (all zeros: not known, and then not verified at restore)."""
    name = stream.encode()
    if len(name) > MAX_STREAM_NAME or len(record) != RECORD_DIGEST_SIZE:
        raise ValueError("a stream name of at most 255 bytes and a 16-byte record digest")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{stream}-{seq:020d}.snap")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(SNAP_HEADER.pack(SNAP_MAGIC + SNAP_VERSION, seq,
                                     hashlib.sha256(state).digest(), len(state))
                    + SNAP_NAME.pack(len(name)) + name + record)
            f.write(state)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    kept = sorted(_snap_files(directory, stream), key=_snap_seq)
    for old in kept[:-keep]:
        _remove(old)
    return path


def check_snapshot(path: str, stream: str | None = None) -> tuple[int, bytes]:
    """(seq, state) of a whole, intact snapshot file (of ``stream``, if it is given). Every
    header field is checked before it is trusted (the length against the file's size before
    anything is allocated); raises SnapshotError naming the first check that fails, or OSError
    if the file cannot be read."""
    seq, state, _record = check_snapshot_record(path, stream)
    return seq, state


def check_snapshot_record(path: str, stream: str | None = None) -> tuple[int, bytes,
                                                                          bytes | None]:
    """check_snapshot, and the digest of the record at seq that the file names (None for a
    version 1 file or an unknown record: nothing to verify against the log)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(SNAP_HEADER.size)
        if len(head) != SNAP_HEADER.size:
            raise SnapshotError(f"{size} bytes: shorter than the {SNAP_HEADER.size}-byte header")
        magic, seq, digest, length = SNAP_HEADER.unpack(head)
        if magic[:7] != SNAP_MAGIC:
            raise SnapshotError(f"not a snapshot (magic {magic!r})")
        if magic[7:] not in (SNAP_VERSION, SNAP_VERSION_1):
            raise SnapshotError(f"snapshot format version {magic[7:]!r}, this host reads "
                                f"{SNAP_VERSION_1!r} and {SNAP_VERSION!r}")
        named = _snap_seq(path)
        if named >= 0 and seq != named:
            raise SnapshotError(f"header says seq {seq}, the file name {named}")
        record = None
        head_size = SNAP_HEADER.size
        if magic[7:] == SNAP_VERSION:
            n = f.read(SNAP_NAME.size)
            if len(n) != SNAP_NAME.size:
                raise SnapshotError(f"{size} bytes: shorter than its header")
            (name_len,) = SNAP_NAME.unpack(n)
            if name_len > MAX_STREAM_NAME:
                raise SnapshotError(f"a stream name of {name_len} bytes")
            ident = f.read(name_len + RECORD_DIGEST_SIZE)
            if len(ident) != name_len + RECORD_DIGEST_SIZE:
                raise SnapshotError(f"{size} bytes: shorter than its header")
            name = ident[:name_len].decode("utf-8", "replace")
            if stream is not None and name != stream:
                raise SnapshotError(f"a snapshot of {name!r}, not of {stream!r}")
            if ident[name_len:] != bytes(RECORD_DIGEST_SIZE):
                record = ident[name_len:]
            head_size += SNAP_NAME.size + name_len + RECORD_DIGEST_SIZE
        if length != size - head_size:
            raise SnapshotError(f"header says {length} bytes of state, the file holds "
                                f"{size - head_size}")
        # One read into the bytes object returned (a buffered file reads a large request
        # straight into its result): no zero-filled buffer, no copy of it, no helper thread.
        # Reading into a buffer while a thread hashed the chunks overlapped the two, but the
        # buffer's zero fill and the copy out of it cost more than the overlap saved (a 47 MB
        # state, runs alternated, load 4.9 on 2 cores: median 0.23 -> 0.10 s).
        state = f.read(length)
    if len(state) != length:
        raise SnapshotError(f"read {len(state)} of {length} bytes of state")
    if hashlib.sha256(state).digest() != digest:
        raise SnapshotError("checksum mismatch")
    return seq, state, record


def read_snapshot(path: str) -> tuple[int, bytes] | None:
    """(seq, state), or None for a file that is not a whole, intact snapshot."""
    try:
        return check_snapshot(path)
    except (OSError, SnapshotError):
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _move_aside(path: str) -> str | None:
    """Rename a damaged snapshot to <path>.bad (kept for a post-mortem, never read again)."""
    aside = path + ".bad"
    try:
        os.replace(path, aside)
        return aside
    except OSError:
        return None


def main(a: Any, made: tuple[Any, Callable[[bytes], Any]]) -> None:
    """Run a replica from the `seqex replica` arguments; ``made`` is (engine, restore), built
    by the caller (deploy/engines.py) from a.engine and a.engine_config."""
    engine, restore = made
    host = ReplicaHost(a.name, engine, restore, a.stream, a.pub, a.replicator, a.control,
                       a.role, a.mirror, a.snapshots, a.shared_snapshots, a.snapshot_every,
                       a.snapshot_s, a.keep,
                       hot_snapshots=bool(getattr(a, "hot_snapshots", False)))
    signal.signal(signal.SIGTERM, lambda *_: setattr(host, "running", False))
    signal.signal(signal.SIGINT, lambda *_: setattr(host, "running", False))
    print(f"replica ready {host.control_endpoint} {host.role} from {host.seq + 1}", flush=True)
    host.serve()


__all__ = ["ReplicaHost", "SnapshotError", "check_snapshot", "check_snapshot_record", "last_record",
           "read_snapshot", "record_digest", "write_snapshot"]
