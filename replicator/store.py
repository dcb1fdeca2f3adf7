"""LMDB storage of streams: the durable half of the log.

One LMDB environment holds any number of streams. Per stream:

* ``log:<stream>``: key = first seq of a frame (u64 big-endian), value = CRC-32 of the frame
  (u32 little-endian) then the frame (records with contiguous seqs). Frames are appended; the
  frame that holds seq S is the one with the greatest key <= S, found with one cursor seek, so
  no separate index is needed. Every read checks the CRC: a damaged frame raises CorruptFrame
  instead of being served, and the replicator repairs it from a peer.
* ``meta:<stream>``: ``last`` (u64, highest contiguous seq held), ``epoch`` (highest master
  epoch seen or claimed; lower ones are refused), ``claimant`` (u64, the master incarnation
  that CLAIM granted ``epoch`` to; absent when the epoch came with an APPEND or a TRUNCATE),
  ``ts`` (ts_ns of the last record),
  ``commit`` (highest seq the master said is committed), one key per producer source,
  ``s`` + u32 big-endian -> (next expected source_seq, seq and ts_ns of the last record of
  that source), which is what lets a restarted master recognise duplicates, and the epoch
  history,
  ``h`` + u64 big-endian first seq -> u32 epoch: where each epoch's records begin in this log.

Everything a frame changes is written in one transaction, so a crash leaves either the whole
frame or none of it. Invariants: the log of a stream is gapless from 1 to ``last``; a seq is
never overwritten with different bytes; an epoch is granted by CLAIM to one master
incarnation only (two masters that claim one epoch at once: the second is refused), so that
at most one master, the one a majority granted it to, ever stamps records of an epoch.

Limits: a stream name is 1..200 printable ASCII characters without spaces; an epoch is a u32
(records hold u32 epochs), every seq a u64; a store holds at most ``max_streams`` streams, and
opening one more raises StreamLimit. Only writes create a stream: ``find`` opens an existing one
and never creates. A stream whose persisted meta data is out of range (an epoch above 2^32 - 1)
is refused with StreamDamaged, which names the command that repairs it, instead of being used.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass

import lmdb

from mq.record import (
    RECORD_HEADER,
    FrameError,
    decode,
    epoch_runs,
    offset_of,
    scan,
    source_runs,
)
from mq.replication import epoch_at

U64 = struct.Struct(">Q")
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
MAX_NAME = 200
U32 = struct.Struct(">I")
SRC = struct.Struct(">QQQ")     # next source_seq, seq and ts_ns of the source's last record
SRC_OLD = struct.Struct(">QQ")  # as written before sources had a ts (read as ts 0)
STATE_MAX_SOURCES = 20_000      # sources one STATE names at most (each about 30 bytes packed)
DURABILITIES = ("fsync", "os")


@dataclass
class AppendResult:
    ok: bool
    last: int
    epoch: int
    reason: str = ""       # "", "fenced", "gap", "conflict", "committed"
    seq: int = 0           # the first conflicting seq ("conflict"), the commit point ("committed")


def is_write_failure(exc: BaseException) -> bool:
    """A write the file system refused: full (ENOSPC, often reported by LMDB as a short write,
    EIO), over quota, or the map full. An operating error: refuse, retry, never crash."""
    return isinstance(exc, (lmdb.DiskError, lmdb.MapFullError)) or type(exc) is lmdb.Error


class StreamLimit(ValueError):
    """The store already holds as many streams as it may; a new one is refused."""


class StreamDamaged(ValueError):
    """A stream whose persisted meta data cannot be right (an epoch that fits no record)."""


def check_stream_name(name: object) -> str:
    """The name, if it is a valid stream name; ValueError otherwise."""
    # printable ASCII without the space: "!" .. "~"
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isascii() \
            or not name.isprintable() or " " in name:
        shown = repr(name)[:80]
        raise ValueError(f"bad stream name {shown}: 1..{MAX_NAME} printable ASCII characters")
    return name


def check_epoch(epoch: object, what: str = "epoch") -> int:
    """An epoch is a u32, as in every record header."""
    if type(epoch) is not int or not 0 <= epoch <= U32_MAX:
        raise ValueError(f"{what} {epoch!r} does not fit in 32 bits")
    return epoch


class StreamLog:
    """One stream inside a Store. Not thread-safe; one writer (the replicator loop)."""

    def __init__(self, store: Store, name: str, txn: lmdb.Transaction | None = None):
        """Open (creating if new) the stream; inside `txn` when a write is under way, since
        LMDB allows one write transaction at a time and opening a database needs one."""
        check_stream_name(name)
        self.store = store
        self.name = name
        env = store.env
        self.log_db = env.open_db(f"log:{name}".encode(), txn=txn)
        self.meta_db = env.open_db(f"meta:{name}".encode(), txn=txn)
        if txn is None:
            with env.begin() as own:
                self._load(own)
        else:
            self._load(txn)

    def _load(self, txn: lmdb.Transaction) -> None:
        self.last = self._meta_u64(txn, b"last")
        self.epoch = self._meta_u64(txn, b"epoch")
        self.claimant = self._meta_u64(txn, b"claimant")
        self.damaged = ""
        if self.epoch > U32_MAX:
            self.damaged = (
                f"stream {self.name}: the persisted epoch {self.epoch} does not fit in 32 bits "
                f"(a damaged store, or a request of an older version that stored it); the "
                f"stream is refused until repaired with: python -m replicator.store "
                f"--data {self.store.path} --reset-epoch {self.name}")
        self.ts_ns = self._meta_u64(txn, b"ts")
        self.commit = self._meta_u64(txn, b"commit")
        self.history: list[tuple[int, int]] = []  # [(epoch, first seq)], by seq
        cur = txn.cursor(db=self.meta_db)
        if cur.set_range(b"h"):
            for key, value in cur:
                if not key.startswith(b"h") or len(key) != 9:
                    break
                self.history.append((U32.unpack(value)[0], U64.unpack(key[1:])[0]))

    @property
    def last_epoch(self) -> int:
        """Epoch of the last record held (0 for an empty log)."""
        return self.history[-1][0] if self.history and self.last else 0

    @staticmethod
    def empty_state(name: str) -> dict:
        """The state of a stream this store does not hold (nothing is created for it)."""
        return {"stream": name, "last": 0, "epoch": 0, "ts": 0, "commit": 0, "last_epoch": 0,
                "history": [], "sources": [], "source_floor": 1}

    def state(self, txn: lmdb.Transaction | None = None, retention_ns: int = 0,
              max_sources: int = STATE_MAX_SOURCES, keep: frozenset[int] = frozenset()
              ) -> dict:
        """What a starting master needs to know of this log (inside `txn` when a write is
        under way). ``sources`` names [source, next source_seq, seq, ts_ns] of at most
        max_sources sources: those in ``keep`` (and source 0), then the most recently active,
        leaving out any whose last record is older than the log's last ts minus retention_ns
        (0: no expiry). ``source_floor`` is above every source_seq any left-out source used:
        a source the master does not know starts there (mq/sequencer.py, "expiry")."""
        named, floor = self.sources_within(txn, retention_ns, max_sources, keep)
        return {"stream": self.name, "last": self.last, "epoch": self.epoch, "ts": self.ts_ns,
                "commit": self.commit, "last_epoch": self.last_epoch,
                "history": [list(h) for h in self.history],
                "sources": [list(x) for x in named], "source_floor": floor}

    def sources_within(self, txn: lmdb.Transaction | None, retention_ns: int,
                       max_sources: int, keep: frozenset[int] = frozenset()
                       ) -> tuple[list[tuple[int, int, int, int]], int]:
        """The sources a master keeps (by source) and the floor of those it forgets, both a
        function of this log alone (sequenced time, never the clock)."""
        every = self.sources(txn)
        horizon = self.ts_ns - retention_ns if retention_ns else 0
        pinned = [x for x in every if x[0] == 0 or x[0] in keep]
        rest = [x for x in every if not (x[0] == 0 or x[0] in keep)]
        live = [x for x in rest if x[3] >= horizon]
        live.sort(key=lambda x: (-x[3], x[0]))   # the most recent first; ties by source
        room = max(0, max_sources - len(pinned))
        named = {x[0] for x in live[:room]}
        floor = max([x[1] for x in rest if x[0] not in named], default=1)
        return sorted(pinned + live[:room]), floor

    def claim(self, txn: lmdb.Transaction, epoch: int, claimant: int = 0) -> bool:
        """A new master (incarnation `claimant`, a nonzero u64) claims `epoch`: from now on
        lower epochs are refused. False if a higher epoch was already seen (the claimant is
        stale), or if this epoch was granted to another claimant: two masters that start
        together both pick the epoch after the one they saw, and only one of them may take
        it, or both stamp records of one epoch and log matching (the same epoch at the same
        seq, the same records) no longer holds. The claimant's own CLAIM sent again (its
        answer was lost, or it probes a replicator again) is granted again. An epoch that
        came with an APPEND or a TRUNCATE (no claimant recorded) is granted to the first
        CLAIM of it: the master that wrote it holds the claim on a majority, so another
        claimant cannot gather one. A CLAIM without a claimant (tools, older masters) is
        granted an epoch only above the one stored, or one that nobody claimed by name."""
        check_epoch(epoch)
        if type(claimant) is not int or not 0 <= claimant <= U64_MAX:
            raise ValueError(f"claimant {claimant!r} is not a u64")
        if epoch < self.epoch:
            return False
        if epoch == self.epoch and self.claimant not in (0, claimant):
            return False
        if epoch > self.epoch:
            txn.put(b"epoch", U64.pack(epoch), db=self.meta_db)
            self.epoch = epoch
        if claimant != self.claimant:
            txn.put(b"claimant", U64.pack(claimant), db=self.meta_db)
            self.claimant = claimant
        return True

    def _raise_epoch(self, txn: lmdb.Transaction, epoch: int) -> None:
        """A write of a higher epoch than any seen (APPEND, TRUNCATE): no claimant known."""
        txn.put(b"epoch", U64.pack(epoch), db=self.meta_db)
        self.epoch = epoch
        if self.claimant:
            txn.delete(b"claimant", db=self.meta_db)
            self.claimant = 0

    def set_commit(self, txn: lmdb.Transaction, commit: int) -> None:
        commit = min(commit, self.last)
        if commit > self.commit:
            txn.put(b"commit", U64.pack(commit), db=self.meta_db)
            self.commit = commit

    def truncate(self, txn: lmdb.Transaction, epoch: int, after: int) -> AppendResult:
        """Drop every record above `after`: the divergent, never committed tail that a new
        master found by comparing epoch histories. Refused for a stale master, and refused
        below the commit point: a committed record is never removed."""
        check_epoch(epoch)
        if type(after) is not int or not 0 <= after <= U64_MAX:
            raise ValueError(f"truncate after {after!r}: not a seq")
        if epoch < self.epoch:
            return AppendResult(False, self.last, self.epoch, "fenced")
        if after < self.commit:
            return AppendResult(False, self.last, self.epoch, "committed", self.commit)
        if after >= self.last:
            return AppendResult(True, self.last, self.epoch)
        dropped = self.read(after + 1, self.last, txn=txn)
        cur = txn.cursor(db=self.log_db)
        cur.set_range(U64.pack(after + 1))
        if not cur.key() or U64.unpack(cur.key())[0] != after + 1:
            cur.prev()  # the frame that holds after + 1 starts below it: keep its head
            first = U64.unpack(cur.key())[0]
            frame = self._frame(cur)
            keep = frame[:offset_of(frame, after + 1 - first)]
            txn.put(cur.key(), _sealed(keep), db=self.log_db)
            cur.next()
        while cur.key() and U64.unpack(cur.key())[0] > after:
            if not cur.delete():
                break
        ts = 0
        if after:
            ts = decode(self.read(after, after, txn=txn))[0][1]
        lowest: dict[int, int] = {}
        for src, ss_first, _ss_last, _seq in source_runs(dropped):
            lowest[src] = min(lowest.get(src, ss_first), ss_first)
        for src, ss in sorted(lowest.items()):
            # Its last record's ts is gone with the tail: the new last ts keeps the source
            # at least as long (keeping a source is always safe; forgetting needs the floor).
            txn.put(b"s" + U32.pack(src), SRC.pack(ss, 0, ts), db=self.meta_db)
        for _epoch, first in [h for h in self.history if h[1] > after]:
            txn.delete(b"h" + U64.pack(first), db=self.meta_db)
        self.history = [h for h in self.history if h[1] <= after]
        self.last = after
        txn.put(b"last", U64.pack(after), db=self.meta_db)
        txn.put(b"ts", U64.pack(ts), db=self.meta_db)
        self.ts_ns = ts
        if epoch > self.epoch:
            self._raise_epoch(txn, epoch)
        return AppendResult(True, self.last, self.epoch)

    def _meta_u64(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self.meta_db)
        return U64.unpack(raw)[0] if raw else 0

    # -- writing ------------------------------------------------------------------------
    def append(self, txn: lmdb.Transaction, epoch: int, frame: bytes,
               prev_epoch: int | None = None,
               scanned: tuple[int, int, int] | None = None) -> AppendResult:
        """Append a sequenced frame inside the caller's write transaction.

        A frame that overlaps what is held must match it byte for byte on the overlap (a
        master re-sending after a lost ack); only the new part is stored. A frame of a lower
        epoch than any seen is refused ("fenced"), one that leaves a gap is refused ("gap").
        With ``prev_epoch`` (the epoch of the record before the frame in the master's log), a
        frame whose predecessor here is of another epoch is refused ("conflict"): this log
        diverged there and must be truncated first (Raft's previous-entry check).
        ``scanned``: what scan(frame) returned, when the caller has checked the frame already.

        Every check comes before the first write, so a refusal or an exception of a check
        leaves the transaction and this object untouched; a failure after the first write
        raises PartialWrite (or LMDB's error), and the caller must abort the transaction.
        """
        if type(epoch) is not int or not 0 <= epoch <= U32_MAX:
            check_epoch(epoch)
        if prev_epoch is not None and (type(prev_epoch) is not int
                                       or not 0 <= prev_epoch <= U32_MAX):
            check_epoch(prev_epoch, "prev_epoch")
        if epoch < self.epoch:
            return AppendResult(False, self.last, self.epoch, "fenced")
        # scan raises FrameError on a malformed frame
        _count, first, last = scan(frame) if scanned is None else scanned
        held_last = self.last
        if first > held_last + 1:
            return AppendResult(False, held_last, max(self.epoch, epoch), "gap")
        if prev_epoch is not None and first > 1:
            history = self.history
            # the epoch of the record before the frame: the newest run's, nearly always
            before = history[-1][0] if history and history[-1][1] <= first - 1 \
                else epoch_at(history, first - 1)
            if before != prev_epoch:
                return AppendResult(False, held_last, self.epoch, "conflict", first - 1)
        if first <= held_last:
            overlap_to = min(last, held_last)
            held = self.read(first, overlap_to, txn=txn)
            cut = offset_of(frame, overlap_to - first + 1)
            if held != frame[:cut]:
                return AppendResult(False, held_last, self.epoch, "conflict",
                                    self._first_difference(first, held, frame[:cut]))
            frame = frame[cut:]
            first = overlap_to + 1
        try:
            if epoch > self.epoch:
                self._raise_epoch(txn, epoch)
            if frame:
                self._put_frame(txn, first, last, frame)
        except lmdb.Error:
            raise
        except Exception as exc:
            raise PartialWrite(f"{self.name}: the append of {first}..{last} failed after its "
                               f"first write ({type(exc).__name__}: {exc})") from exc
        return AppendResult(True, self.last, self.epoch)

    def _put_frame(self, txn: lmdb.Transaction, first: int, last: int, frame: bytes) -> None:
        if not txn.put(U64.pack(first), _sealed(frame), db=self.log_db, append=True):
            raise RuntimeError(f"{self.name}: frame at {first} not appended")
        meta = self.meta_db
        if first == last:  # one record, as nearly every frame at a low rate: its header alone
            _seq, ts, ss, src, epoch, _kind, _n, _route = RECORD_HEADER.unpack_from(frame)
            txn.put(b"s" + U32.pack(src), SRC.pack(ss + 1, last, ts), db=meta)
            history = self.history
            if not history or history[-1][0] != epoch:
                history.append((epoch, first))
                txn.put(b"h" + U64.pack(first), U32.pack(epoch), db=meta)
            txn.put(b"last", U64.pack(last), db=meta)
            txn.put(b"ts", U64.pack(ts), db=meta)
            self.last = last
            self.ts_ns = ts
            return
        # Each source's ts is that of its own last record in the frame: a frame may join
        # several turns of a master (a resend in runs, a peer's catch-up), so the table is the
        # same however the log was cut into frames.
        # One walk over the frame: each run's last record is found from the previous one's
        # (a frame of a peer's catch-up holds thousands of runs; walking from the start for
        # each was quadratic, and held the replicator's loop for minutes).
        view = memoryview(frame)
        table: dict[int, bytes] = {}
        at = index = 0   # byte offset and record index of the last run's last record
        for src, ss_first, ss_last, seq_first in source_runs(frame):
            seq_last = seq_first + (ss_last - ss_first)
            at += offset_of(view[at:], seq_last - first - index)
            index = seq_last - first
            table[src] = SRC.pack(ss_last + 1, seq_last,
                                  int.from_bytes(frame[at + 8:at + 16], "little"))
        for src, value in table.items():
            txn.put(b"s" + U32.pack(src), value, db=self.meta_db)
        at += offset_of(view[at:], last - first - index) + 8
        ts = int.from_bytes(frame[at:at + 8], "little")
        for epoch, seq in epoch_runs(frame):
            if not self.history or self.history[-1][0] != epoch:
                self.history.append((epoch, seq))
                txn.put(b"h" + U64.pack(seq), U32.pack(epoch), db=self.meta_db)
        txn.put(b"last", U64.pack(last), db=self.meta_db)
        txn.put(b"ts", U64.pack(ts), db=self.meta_db)
        self.last = last
        self.ts_ns = ts

    @staticmethod
    def _first_difference(first: int, a: bytes, b: bytes) -> int:
        # Both cover the same seqs, so they hold as many records.
        for ra, rb in zip(decode(a), decode(b), strict=False):
            if ra != rb:
                return ra[0]
        return first

    # -- reading ------------------------------------------------------------------------
    def read(self, seq_from: int, seq_to: int | None = None, max_bytes: int = 1 << 62,
             txn: lmdb.Transaction | None = None) -> bytes:
        """Records seq_from..seq_to (inclusive; None = to the end) as one frame, stopping
        after the first frame boundary past max_bytes. Empty when seq_from > last."""
        if seq_to is None or seq_to > self.last:
            seq_to = self.last
        if seq_from < 1:
            seq_from = 1
        if seq_from > seq_to:
            return b""
        own = txn is None
        if own:
            txn = self.store.env.begin(buffers=False)
        try:
            cur = txn.cursor(db=self.log_db)
            if not cur.set_range(U64.pack(seq_from)) or U64.unpack(cur.key())[0] != seq_from:
                if not cur.prev() and not cur.last():
                    return b""
            parts: list[bytes] = []
            size = 0
            while True:
                first = U64.unpack(cur.key())[0]
                frame = self._frame(cur)
                _count, _f, last = scan(frame)
                lo = offset_of(frame, seq_from - first) if seq_from > first else 0
                hi = offset_of(frame, seq_to - first + 1) if seq_to < last else len(frame)
                piece = frame[lo:hi]
                parts.append(piece)
                size += len(piece)
                if last >= seq_to or size >= max_bytes or not cur.next():
                    break
            return b"".join(parts)
        finally:
            if own:
                txn.abort()

    def digest(self, seq_from: int, seq_to: int | None = None, max_bytes: int = 1 << 62
               ) -> tuple[str, int]:
        """(range_digest(self.read(seq_from, seq_to, max_bytes)), the last seq that read
        would hold, 0 for none): the anti-entropy comparison's digest, hashed frame by frame
        as the cursor walks (no join). Every frame read() would read is CRC-checked, and no
        other. Where the range ends comes from the key of the frame after it (compared as
        bytes: big-endian keys sort as their seqs), so only the range's first and last frames
        are parsed, to cut them; the frames between cost a CRC and a hash update each."""
        if seq_to is None or seq_to > self.last:
            seq_to = self.last
        if seq_from < 1:
            seq_from = 1
        h = hashlib.sha256()
        if seq_from > seq_to:
            return h.hexdigest()[:32], 0
        crc32, update, from_bytes = zlib.crc32, h.update, int.from_bytes
        with self.store.env.begin() as txn:
            cur = txn.cursor(db=self.log_db)
            end = txn.cursor(db=self.log_db)
            end_key = end.key() if end.set_range(U64.pack(seq_to + 1)) else None
            if not cur.set_range(U64.pack(seq_from)) or U64.unpack(cur.key())[0] != seq_from:
                if not cur.prev() and not cur.last():
                    return h.hexdigest()[:32], 0
            size = 0
            pending = pending_key = None  # the frame read and not hashed yet, and its key
            for key, value in cur.iternext():
                if key == end_key:
                    break
                if pending is not None:  # not the range's last frame: hashed whole
                    update(pending)
                    size += len(pending)
                    if size >= max_bytes:
                        return h.hexdigest()[:32], from_bytes(key, "big") - 1
                frame = value[4:]
                if len(value) < 4 or crc32(frame) != from_bytes(value[:4], "little"):
                    raise CorruptFrame(self.name, from_bytes(key, "big"))
                if pending_key is None:  # the range's first frame: from seq_from
                    first = from_bytes(key, "big")
                    if seq_from > first:
                        frame = frame[offset_of(frame, seq_from - first):]
                pending, pending_key = frame, key
            if pending is None:
                return h.hexdigest()[:32], 0
            first = max(seq_from, from_bytes(pending_key, "big"))
            last = from_bytes(end_key, "big") - 1 if end_key is not None else scan(pending)[2]
            update(pending[:offset_of(pending, seq_to - first + 1)] if seq_to < last
                   else pending)
            return h.hexdigest()[:32], min(last, seq_to)

    def _frame(self, cur: lmdb.Cursor) -> bytes:
        value = cur.value()
        frame = value[4:]
        if len(value) < 4 or zlib.crc32(frame) != int.from_bytes(value[:4], "little"):
            raise CorruptFrame(self.name, U64.unpack(cur.key())[0])
        return frame

    def frame_extent(self, seq: int) -> tuple[int, int]:
        """The first and last seq of the stored frame that holds ``seq`` (in 1 .. last), from
        the keys around it alone, never from its bytes (they may be damaged)."""
        with self.store.env.begin() as txn:
            cur = txn.cursor(db=self.log_db)
            if cur.set_range(U64.pack(seq)) and U64.unpack(cur.key())[0] == seq:
                start = seq
            elif (cur.prev() if cur.key() else cur.last()) and cur.key():
                start = U64.unpack(cur.key())[0]
            else:
                return seq, seq   # no frame holds it
            end = U64.unpack(cur.key())[0] - 1 if cur.next() else self.last
        return start, end

    def scrub(self, seq_from: int, max_frames: int = 256) -> tuple[int, int | None]:
        """Check the CRC of up to max_frames frames from the one holding seq_from. Returns
        (the seq to continue from, 0 when the end was reached; the first seq of a damaged
        frame or None)."""
        with self.store.env.begin() as txn:
            cur = txn.cursor(db=self.log_db)
            if not cur.set_range(U64.pack(max(1, seq_from))):
                return 0, None
            for _ in range(max_frames):
                try:
                    frame = self._frame(cur)
                except CorruptFrame as exc:
                    return exc.seq, exc.seq
                _n, _first, last = scan(frame)
                if not cur.next():
                    return 0, None
            return U64.unpack(cur.key())[0], None

    def replace(self, txn: lmdb.Transaction, frame: bytes) -> None:
        """Overwrite the records a frame covers with its (verified good) bytes: the repair of
        a damaged or divergent committed range from peers. The seqs held do not change."""
        _n, first, last = scan(frame)
        if first < 1 or last > self.last:
            raise ValueError(f"{self.name}: repair {first}..{last} outside 1..{self.last}")
        cur = txn.cursor(db=self.log_db)
        if not cur.set_range(U64.pack(first)) or U64.unpack(cur.key())[0] != first:
            cur.prev()
        held = []  # (first seq, stored value) of every frame the repair touches
        while cur.key() and U64.unpack(cur.key())[0] <= last:
            held.append((U64.unpack(cur.key())[0], cur.value()))
            cur.next()
        after = U64.unpack(cur.key())[0] if cur.key() else self.last + 1
        pieces = []
        for k, (start, value) in enumerate(held):
            # Where a frame ends comes from the key of the next one (or the log's end), never
            # from its own bytes, which may be damaged; and a damaged frame's bytes are never
            # sealed again: a damaged frame must lie inside the repaired range.
            end = (held[k + 1][0] if k + 1 < len(held) else after) - 1
            stored = value[4:]
            if (start < first or end > last) and not _intact(value):
                raise ValueError(f"{self.name}: the damaged frame {start}..{end} reaches out of "
                                 f"the repaired range {first}..{last}; repair {start}..{end}")
            if start < first:
                pieces.append((start, stored[:offset_of(stored, first - start)]))
            if end > last:
                pieces.append((last + 1, stored[offset_of(stored, last + 1 - start):]))
            txn.delete(U64.pack(start), db=self.log_db)
        pieces.append((first, frame))
        for start, piece in sorted(pieces):
            txn.put(U64.pack(start), _sealed(piece), db=self.log_db)
        self._rebuild_history(txn, first, last, frame)

    def _rebuild_history(self, txn: lmdb.Transaction, first: int, last: int,
                         frame: bytes) -> None:
        """Recompute the epoch history over seqs first..last, whose bytes were replaced, and
        where the run of seq last + 1 starts: the history must describe the records held, or
        log matching reasons on a fiction. The record after the range is not read (its frame
        may be damaged too, and is repaired by a range of its own): its epoch is the one the
        history held for it, since its bytes did not change. ``frame``: the records written
        (first..last), not read back."""
        before = [h for h in self.history if h[1] < first]
        after = [h for h in self.history if h[1] > last + 1]
        prev = before[-1][0] if before else None
        middle = []
        for epoch, seq in epoch_runs(frame):
            if epoch != prev:
                middle.append((epoch, seq))
                prev = epoch
        if last < self.last:
            epoch = epoch_at(self.history, last + 1)
            if epoch != prev:
                middle.append((epoch, last + 1))
                prev = epoch
        if after and after[0][0] == prev:
            after = after[1:]
        new = before + middle + after
        for _epoch, seq in self.history:
            if (_epoch, seq) not in new:
                txn.delete(b"h" + U64.pack(seq), db=self.meta_db)
        for epoch, seq in new:
            txn.put(b"h" + U64.pack(seq), U32.pack(epoch), db=self.meta_db)
        self.history = new

    def sources(self, txn: lmdb.Transaction | None = None) -> list[tuple[int, int, int, int]]:
        """[(source, next expected source_seq, seq and ts_ns of its last record)], by
        source, every source the log ever held."""
        if txn is None:
            with self.store.env.begin() as own:
                return self.sources(own)
        out = []
        cur = txn.cursor(db=self.meta_db)
        if cur.set_range(b"s"):
            for key, value in cur:
                if not key.startswith(b"s") or len(key) != 5:
                    break
                nxt, seq, ts = SRC.unpack(value) if len(value) == SRC.size else \
                    (*SRC_OLD.unpack(value), 0)
                out.append((U32.unpack(key[1:])[0], nxt, seq, ts))
        return out


class PartialWrite(RuntimeError):
    """A write that failed after it had changed the transaction: abort the transaction."""


class CorruptFrame(RuntimeError):
    """A stored frame whose CRC does not match: damaged on disk."""

    def __init__(self, stream: str, seq: int):
        super().__init__(f"{stream}: the frame stored at seq {seq} is damaged")
        self.stream = stream
        self.seq = seq


def range_digest(data: bytes) -> str:
    """The digest of a range of records (their bytes, whatever frames held them) that peers
    compare (DIGEST)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _sealed(frame: bytes) -> bytes:
    return zlib.crc32(frame).to_bytes(4, "little") + frame


def _intact(value: bytes) -> bool:
    """A stored value (CRC-32, then the frame) whose CRC holds."""
    return len(value) >= 4 and zlib.crc32(value[4:]) == int.from_bytes(value[:4], "little")


class Store:
    """An LMDB environment holding streams. durability: "fsync" (survives power loss) or
    "os" (survives any process crash; the kernel writes the pages back). At most
    ``max_streams`` streams; the ones already on disk are opened at once, so that a damaged
    one is reported at start and not on its first request."""

    def __init__(self, path: str, durability: str = "os", map_size: int = 64 << 30,
                 max_streams: int = 500):
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
        if type(max_streams) is not int or max_streams < 1:
            raise ValueError(f"max_streams must be a positive integer, not {max_streams!r}")
        os.makedirs(path, exist_ok=True)
        sync = durability == "fsync"
        self.path = path
        self.durability = durability
        self.max_streams = max_streams
        self.env = lmdb.open(path, map_size=map_size, max_dbs=2 * max_streams + 2,
                             sync=sync, metasync=sync, writemap=False, map_async=False,
                             max_readers=256, lock=True)
        self.streams: dict[str, StreamLog] = {}
        self.known: set[str] = set()
        self.forget()
        self._drop_empty()

    def _drop_empty(self) -> None:
        """Remove streams that hold nothing and never had an epoch claimed: reads of unknown
        names created such streams in older versions, and they would count against the
        limit. Nothing is lost: an unknown stream answers exactly as an empty one."""
        empty = sorted(n for n, lg in self.streams.items()
                       if not lg.damaged and lg.last == 0 and lg.epoch == 0 and lg.commit == 0
                       and not lg.history and not lg.sources())
        if not empty:
            return
        with self.env.begin(write=True) as txn:
            for name in empty:
                txn.drop(self.streams[name].log_db, delete=True)
                txn.drop(self.streams[name].meta_db, delete=True)
        logging.getLogger("seqex.replicator").warning(
            "removed %d empty streams (nothing held, no epoch claimed): %s", len(empty),
            ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""))
        self.forget()

    def forget(self) -> None:
        """Drop every open stream and reload what is on disk: after a write transaction was
        aborted (or failed to commit), whose changes, and the streams it created, are gone."""
        self.streams = {}
        self.known = set(self.names())
        for name in sorted(self.known)[:self.max_streams]:
            try:
                self.stream(name)
            except StreamDamaged as exc:
                logging.getLogger("seqex.replicator").error("%s", exc)
            except ValueError:  # a database of another program; never a stream of ours
                self.known.discard(name)

    def stream(self, name: str, txn: lmdb.Transaction | None = None) -> StreamLog:
        """The stream, created if new (a write: inside `txn` when one is open). Raises
        StreamLimit past max_streams and StreamDamaged for a stream that cannot be used."""
        log = self.streams.get(name)
        if log is None:
            check_stream_name(name)
            if name not in self.known and len(self.known) >= self.max_streams:
                raise StreamLimit(f"this replicator holds {len(self.known)} streams, its limit; "
                                  f"stream {name} is refused")
            log = StreamLog(self, name, txn)
            self.streams[name] = log
            self.known.add(name)
        if log.damaged:
            raise StreamDamaged(log.damaged)
        return log

    def find(self, name: str, txn: lmdb.Transaction | None = None) -> StreamLog | None:
        """The stream if this store holds it, else None: reading never creates anything.
        Inside a write transaction, pass it (opening a database needs one)."""
        if name in self.streams or name in self.known:
            return self.stream(name, txn)
        check_stream_name(name)
        return None

    def write(self) -> lmdb.Transaction:
        return self.env.begin(write=True)

    def append(self, stream: str, epoch: int, frame: bytes) -> AppendResult:
        """Append in a transaction of its own (tests and tools; the server groups frames)."""
        return self.change(stream, lambda log, txn: log.append(txn, epoch, frame))

    def change(self, stream: str, fn) -> AppendResult:
        """Run fn(log, txn) in a transaction of its own; on an exception (including a commit
        that fails, as on a full disk) nothing changes, on disk or in memory."""
        txn = self.write()
        try:
            log = self.stream(stream, txn)
            result = fn(log, txn)
            txn.commit()
        except BaseException:
            txn.abort()
            self.forget()
            raise
        return result

    def names(self) -> list[str]:
        """Streams held in this environment, including ones not opened yet."""
        with self.env.begin() as txn:
            return sorted(k[4:].decode("ascii", "replace") for k, _ in txn.cursor()
                          if k.startswith(b"log:"))

    def close(self) -> None:
        self.env.close()


def reset_epoch(path: str, name: str) -> tuple[int, int]:
    """Set a stream's persisted epoch, when it does not fit in 32 bits, to the highest epoch
    its records hold: the operator's repair of StreamDamaged. Returns (old, new). No record
    can hold an epoch that does not fit, so no master ever legitimately used the old value."""
    store = Store(path)
    try:
        log = store.streams.get(name)
        if log is None:
            raise ValueError(f"{path} holds no stream {name}")
        new = max([e for e, _ in log.history], default=0)
        old = log.epoch
        with store.env.begin(write=True) as txn:
            txn.put(b"epoch", U64.pack(new), db=log.meta_db)
            txn.delete(b"claimant", db=log.meta_db)
        return old, new
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m replicator.store",
                                description="repairs of a replicator's store (stopped)")
    p.add_argument("--data", required=True, help="the replicator's LMDB directory")
    p.add_argument("--reset-epoch", metavar="STREAM", required=True,
                   help="reset an out-of-range persisted epoch to the highest epoch of the "
                        "stream's records")
    a = p.parse_args(argv)
    old, new = reset_epoch(a.data, a.reset_epoch)
    print(f"{a.reset_epoch}: epoch {old} -> {new}")
    return 0


__all__ = ["AppendResult", "CorruptFrame", "PartialWrite", "DURABILITIES", "FrameError", "Store", "StreamDamaged",
           "StreamLimit", "StreamLog", "check_epoch", "check_stream_name", "is_write_failure",
           "reset_epoch"]

if __name__ == "__main__":
    raise SystemExit(main())
