"""The gateway's journal index on disk: a checkpoint, so that a starting gateway reads only
the `out.te.N` records after it instead of every record from seq 1 (docs/gateway.md, "The
index on disk").

The index is what the gateway derives from `out.te.N`: for each session `(user, session_id)`
its shard and, for each server SeqNo, the seq of the out.te record that carries it. The file
is an append-only series of chunks. Each chunk holds what changed since the chunk before and
says how far each shard's stream it covers (`covered`: the seq of the last record applied
and that record's ts_ns, which names the log as well as the place: a log built again from
scratch has other stamps):

    chunk := MAGIC u32 body_length u32 crc32(body) body
    body  := msgpack [VERSION, n_shards, [[seq, ts_ns] per shard],
                      [[user, session_id] dropped ...],
                      [[user, session_id, shard, first, locs (int64 little-endian)] ...]]

A chunk's drops apply before its sets; a set replaces the session's locations from SeqNo
`first` on. Applying the chunks in order gives the index exactly as it was at the last one's
`covered`. Reading stops at the first chunk that is torn, fails its CRC or does not parse
(a crash mid-write, a disk that lost the tail): the chunks before it are a consistent, older
checkpoint, and the records after it are read from the log. The file is never trusted
beyond what the log confirms: the gateway compares each shard's `covered` stamp with the
record the replicators hold at that seq before it uses the file (Gateway.start).

Nothing here is fsynced: the file only saves reading time, and a lost tail costs reading
more of the log, never a wrong index. A file that has grown to more than twice what its
sessions need (finalized sessions' locations, rewritten tails) is rewritten whole at start.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
import zlib
from array import array

import msgpack

log = logging.getLogger("seqex.gateway.index")

MAGIC = b"SXGI"
VERSION = 1
HEAD = struct.Struct("<4sII")        # magic, body length, crc32 of the body
COMPACT_SLACK = 16 << 20             # rewritten at start when over 2 x needed + this

Key = tuple[int, int]


def _is_int(v) -> bool:
    return type(v) is int and -(1 << 64) < v < 1 << 64


def _locs_bytes(locs: array, first: int) -> bytes:
    part = locs[first - 1:]
    if sys.byteorder != "little":
        part.byteswap()
    return part.tobytes()


def _locs_from(data: bytes) -> array:
    a = array("q")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


class Loaded:
    """What a file held: covered[n] = (seq, ts_ns) of shard n's last record applied (0, 0:
    none), sessions[key] = (shard, locations), and the bytes of its valid chunks."""

    def __init__(self, n_shards: int) -> None:
        self.covered: list[tuple[int, int]] = [(0, 0)] * n_shards
        self.sessions: dict[Key, tuple[int, array]] = {}
        self.valid_bytes = 0
        self.chunks = 0
        self.damaged = ""        # why reading stopped before the end ("" if it did not)

    def needed_bytes(self) -> int:
        """About what a file holding these sessions whole takes."""
        return sum(8 * len(locs) + 32 for _s, locs in self.sessions.values()) + 64


def load(path: str, n_shards: int) -> Loaded:
    """The index the file holds (empty if there is none). Chunks after a damaged one are
    not read; a file of another shard count is ignored whole (damaged says why)."""
    out = Loaded(n_shards)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return out
    except OSError as exc:               # a directory in its place, no permission, ...
        out.damaged = f"a file that cannot be read ({exc})"
        return out
    try:
        with f:
            _read_chunks(f, os.fstat(f.fileno()).st_size, n_shards, out)
    except OSError as exc:               # an I/O error part way
        out.damaged = f"a read error ({exc})"
    return out


def _read_chunks(f, size: int, n_shards: int, out: Loaded) -> None:
    pos = 0
    while True:
        head = f.read(HEAD.size)          # a chunk at a time: the file is never held whole
        if not head:
            break
        if len(head) < HEAD.size:
            out.damaged = f"a torn chunk header at byte {pos}"
            break
        magic, length, crc = HEAD.unpack(head)
        if magic != MAGIC or length > size - pos - HEAD.size:
            out.damaged = f"a torn or foreign chunk at byte {pos}"
            break
        body = f.read(length)
        if len(body) != length:
            out.damaged = f"a torn chunk at byte {pos}"
            break
        if zlib.crc32(body) != crc:
            out.damaged = f"a chunk failing its CRC at byte {pos}"
            break
        try:
            version, shards, covered, drops, sets = msgpack.unpackb(body, use_list=True)
            if not _is_int(version) or version != VERSION:
                out.damaged = f"version {version!r} (this gateway reads {VERSION})"
                break
            if not _is_int(shards) or shards != n_shards:
                out.damaged = f"written for {shards!r} shards, not {n_shards}"
                out.covered = [(0, 0)] * n_shards
                out.sessions.clear()
                out.valid_bytes = out.chunks = 0
                return
            cov = [(s, t) for s, t in covered]
            if len(cov) != n_shards or not all(_is_int(s) and _is_int(t) and 0 <= s < 1 << 63
                                               for s, t in cov):
                raise ValueError("covered does not name every shard")
            drops = [(u, s) for u, s in drops]
            if not all(_is_int(u) and _is_int(s) for u, s in drops):
                raise ValueError("a dropped session that is not (user, session_id)")
            sessions = out.sessions
            gone = set(drops)
            named: set = set()
            parsed = []                 # (key, shard, first, locations), each checked
            for user, sid, shard, first, raw in sets:
                if not (_is_int(user) and _is_int(sid) and _is_int(shard) and _is_int(first)
                        and 0 <= shard < n_shards and isinstance(raw, bytes)
                        and len(raw) % 8 == 0):
                    raise ValueError("a session entry out of range")
                # a chunk replaces a session's locations from the first SeqNo it did not write
                # before: never beyond the end of what the chunks before it hold
                have = None if (user, sid) in gone else sessions.get((user, sid))
                held = len(have[1]) if have is not None and have[0] == shard else 0
                if not 1 <= first <= held + 1:
                    raise ValueError(f"a session entry from SeqNo {first} after {held}")
                if (user, sid) in named:
                    raise ValueError("a session named twice")
                named.add((user, sid))
                # every location is an out.te seq the chunk covers (0: none seen)
                locs = _locs_from(raw)
                if locs and (min(locs) < 0 or max(locs) > cov[shard][0]):
                    raise ValueError(f"a location outside out.te.{shard} 0..{cov[shard][0]}")
                parsed.append(((user, sid), shard, first, locs))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            out.damaged = f"a chunk that does not parse at byte {pos} ({exc})"
            break
        # the whole chunk checked: applied in place (a copy per chunk would be quadratic)
        for key in drops:
            sessions.pop(key, None)
        for key, shard, first, new in parsed:
            if first == 1:              # (checked: a new session, or one moved, starts at 1)
                sessions[key] = (shard, new)
                continue
            locs = sessions[key][1]
            del locs[first - 1:]
            locs.extend(new)
        out.covered = cov
        pos += HEAD.size + length
        out.valid_bytes = pos
        out.chunks += 1


def chunk(n_shards: int, covered: list[tuple[int, int]], drops: list[Key],
          sets: list[tuple[Key, int, array, int]]) -> bytes:
    """One chunk: sets are (key, shard, locations, first SeqNo written)."""
    body = msgpack.packb([VERSION, n_shards, [list(c) for c in covered],
                          [list(k) for k in drops],
                          [[k[0], k[1], shard, first, _locs_bytes(locs, first)]
                           for k, shard, locs, first in sets]], use_bin_type=True)
    return HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


class IndexFile:
    """The gateway's end of the file: append a chunk of changes, or write it whole."""

    def __init__(self, path: str, n_shards: int) -> None:
        self.path = path
        self.n_shards = n_shards
        self.fd = -1
        self.size = 0
        self.failures = 0

    def open_for_append(self, valid_bytes: int) -> None:
        """Append after the file's valid chunks (a damaged tail is cut off)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, valid_bytes)
        self.size = valid_bytes

    def rewrite(self, covered: list[tuple[int, int]], sessions: dict) -> None:
        """The whole index as one chunk, in a new file put in place by a rename (sessions:
        key -> (shard, locations))."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        data = chunk(self.n_shards, covered, [],
                     [(k, shard, locs, 1) for k, (shard, locs) in sorted(sessions.items())])
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)     # (a full disk: nothing half-written stays behind)
            except OSError:
                pass
            raise
        self.close()
        self.open_for_append(len(data))

    def append(self, data: bytes) -> bool:
        """Write a chunk at the end; False (and the file as it was) if the disk refused it."""
        try:
            _write_all(self.fd, data, self.size)
        except OSError as exc:
            self.failures += 1
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            if self.failures == 1 or self.failures % 100 == 0:
                log.error("index %s: a checkpoint not written (%s); the index stays in "
                          "memory, a restart reads more of the log", self.path, exc)
            return False
        self.size += len(data)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    at = offset
    while view:
        n = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
        if n <= 0:
            raise OSError("write returned nothing")
        view = view[n:]
        if at is not None:
            at += n


__all__ = ["IndexFile", "Loaded", "chunk", "load"]
