# cython: language_level=3
"""Record and frame codec: the per-record work of the log, in one C loop per frame.

A *record* is a 46-byte little-endian header followed by its payload:

    off size field
     0  u64  seq         position in the stream, 1-based, gapless (0 before sequencing)
     8  u64  ts_ns       sequencer time, ns since the Unix epoch (0 before sequencing)
    16  u64  source_seq  contiguous per-source number chosen by the producer, 1-based
    24  u32  source      producer id (0 = the sequencer itself: Tick records)
    28  u32  epoch       master incarnation that stamped the record (0 before sequencing)
    32  u16  kind        record type, opaque to mq/ except KIND_TICK
    34  u32  length      payload bytes, at most MAX_PAYLOAD
    38  u64  route       routing bits an engine sets on its output records (0 from producers);
                         the sequencer and the mirror keep it, rebase() filters on it
    46  ...  payload

A *frame* is records laid end to end, nothing else: any run of whole records of a frame is a
frame again, so stored frames can be cut at any record for replay.

Contract: every function validates every length against the buffer before reading, raises
FrameError (never crashes, never reads out of bounds) on a malformed buffer, and allocates
one Python object per call, not one per record, except decode().
"""
from libc.string cimport memcpy
from libc.stdint cimport uint64_t, uint32_t, uint16_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from mq.bytesio cimport rd16, rd32, rd64, wr16, wr32, wr64

import sys

if sys.byteorder != "little":
    raise ImportError("mq._frame assumes a little-endian host")

cdef enum:
    HDR = 46
    K_TICK = 1
    # MAX_PAYLOAD (1 << 20) and MAX_FRAME (64 << 20) as C constants (scan_frame), written
    # out: with overflowcheck on (the checked build) Cython 3 crashes on a shift in an enum
    C_MAX_PAYLOAD = 1048576
    C_MAX_FRAME = 67108864

HEADER_SIZE = HDR
MAX_PAYLOAD = C_MAX_PAYLOAD    # 1 MiB: one record never needs more
MAX_FRAME = C_MAX_FRAME        # 64 MiB: bounds every allocation driven by the network
KIND_TICK = K_TICK             # the sequencer's idle time record; empty payload


class FrameError(ValueError):
    """A buffer that is not a well-formed frame (truncated, oversized, inconsistent)."""


cdef Py_ssize_t _next(const unsigned char* p, Py_ssize_t off, Py_ssize_t n) except -1:
    """Offset of the record after the one at `off`, after checking it fits in n bytes."""
    cdef uint32_t length
    if n - off < HDR:
        raise FrameError(f"truncated record header at offset {off}: {n - off} of {HDR} bytes")
    length = rd32(p + off + 34)
    if length > C_MAX_PAYLOAD:
        raise FrameError(f"record at offset {off} claims {length} payload bytes (max {MAX_PAYLOAD})")
    if n - off - HDR < <Py_ssize_t>length:
        raise FrameError(f"truncated payload at offset {off}: {n - off - HDR} of {length} bytes")
    return off + HDR + length


def scan(const unsigned char[::1] buf):
    """Validate a sequenced frame; return (count, seq_first, seq_last).

    Checks that every record fits and that seq numbers are contiguous and start above 0.
    """
    cdef Py_ssize_t n = buf.shape[0], count
    cdef uint64_t first = 0
    count = scan_frame(&buf[0] if n else NULL, n, &first)
    return count, first, first + <uint64_t>count - 1


cdef Py_ssize_t scan_frame(const unsigned char* p, Py_ssize_t n, uint64_t* first) except -1:
    """scan() without Python objects, for compiled callers (crossengine.engine cimports it, so
    the frame checks have one implementation): the number of records of the sequenced frame
    p[0:n], its first seq in first[0]; FrameError, saying what is wrong, when it is not one.
    The loop is a few compares a record; the messages are built only on a failure."""
    cdef Py_ssize_t off = 0, nxt, count = 0
    cdef uint64_t seq
    cdef uint32_t length
    if n == 0:
        raise FrameError("empty frame")
    if n > C_MAX_FRAME:
        raise FrameError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    _next(p, 0, n)                     # the first record fits (else FrameError) ...
    seq = rd64(p)
    if seq == 0:                       # ... and is sequenced
        raise FrameError("record seq 0 in a sequenced frame")
    first[0] = seq
    # A few compares a record: the record's end (its length is at most 2**32, so no overflow)
    # against n covers "payload cut short".
    while off < n:
        if n - off < HDR:
            _next(p, off, n)           # raises: a truncated header
        length = rd32(p + off + 34)
        nxt = off + HDR + <Py_ssize_t>length
        if nxt > n or length > C_MAX_PAYLOAD:
            _next(p, off, n)           # raises: the length is too big, or the payload cut short
        if rd64(p + off) != seq:
            raise FrameError(f"seq {rd64(p + off)} at record {count} breaks contiguity after "
                             f"{seq - 1}")
        off = nxt
        seq += 1
        count += 1
    return count


def scan_producer(const unsigned char[::1] buf):
    """Validate a producer batch; return (source, source_seq_first, count).

    A producer batch holds records of one source with contiguous source_seq from 1 up.
    """
    cdef Py_ssize_t n = buf.shape[0], off = 0, count = 0, nxt
    cdef const unsigned char* p
    cdef uint64_t ss_first = 0, ss
    cdef uint32_t source = 0, src
    if n == 0:
        raise FrameError("empty batch")
    if n > MAX_FRAME:
        raise FrameError(f"batch of {n} bytes exceeds {MAX_FRAME}")
    p = &buf[0]
    while off < n:
        nxt = _next(p, off, n)
        ss = rd64(p + off + 16)
        src = rd32(p + off + 24)
        if count == 0:
            if ss == 0:
                raise FrameError("source_seq 0 is not a valid producer number")
            if src == 0:
                raise FrameError("source 0 is reserved for the sequencer")
            ss_first = ss
            source = src
        elif src != source:
            raise FrameError(f"batch mixes sources {source} and {src}")
        elif ss != ss_first + <uint64_t>count:
            raise FrameError(f"source_seq {ss} at record {count} breaks contiguity")
        off = nxt
        count += 1
    return source, ss_first, count


def offset_of(const unsigned char[::1] buf, Py_ssize_t index):
    """Byte offset of record number `index` (0-based) of a validated frame; len(buf) past the end."""
    cdef Py_ssize_t n = buf.shape[0], off = 0, i = 0
    if index < 0:
        raise FrameError("negative record index")
    if n == 0:
        return 0
    while off < n and i < index:
        off = _next(&buf[0], off, n)
        i += 1
    return off


def stamp(const unsigned char[::1] buf, Py_ssize_t skip, uint64_t seq_first,
          uint64_t ts_ns, uint32_t epoch):
    """Return a copy of records[skip:] of a validated producer batch, stamped with
    seq = seq_first, seq_first + 1, ..., the time and the epoch. One allocation."""
    cdef Py_ssize_t n = buf.shape[0], start, off, nxt
    cdef uint64_t seq = seq_first
    cdef bytes out
    cdef unsigned char* q
    start = offset_of(buf, skip)
    out = PyBytes_FromStringAndSize(NULL, n - start)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    if n - start:
        memcpy(q, &buf[start], n - start)
    off = 0
    while off < n - start:
        nxt = _next(q, off, n - start)
        wr64(q + off, seq)
        wr64(q + off + 8, ts_ns)
        wr32(q + off + 28, epoch)
        seq += 1
        off = nxt
    return out


def source_runs(const unsigned char[::1] buf):
    """[(source, ss_first, ss_last, seq_first), ...]: maximal runs of one source with
    contiguous source_seq in a sequenced frame, in frame order."""
    cdef Py_ssize_t n = buf.shape[0], off = 0, nxt
    cdef const unsigned char* p
    cdef uint32_t src, run_src = 0
    cdef uint64_t ss, seq, run_first = 0, run_last = 0, run_seq = 0
    cdef bint open_run = False
    out = []
    if n == 0:
        return out
    p = &buf[0]
    while off < n:
        nxt = _next(p, off, n)
        seq = rd64(p + off)
        ss = rd64(p + off + 16)
        src = rd32(p + off + 24)
        if open_run and src == run_src and ss == run_last + 1:
            run_last = ss
        else:
            if open_run:
                out.append((run_src, run_first, run_last, run_seq))
            run_src, run_first, run_last, run_seq = src, ss, ss, seq
            open_run = True
        off = nxt
    out.append((run_src, run_first, run_last, run_seq))
    return out


def decode(const unsigned char[::1] buf):
    """List of (seq, ts_ns, source, source_seq, epoch, kind, payload, route) tuples."""
    cdef Py_ssize_t n = buf.shape[0], off = 0, nxt
    cdef const unsigned char* p
    out = []
    if n == 0:
        return out
    p = &buf[0]
    while off < n:
        nxt = _next(p, off, n)
        out.append((rd64(p + off), rd64(p + off + 8), rd32(p + off + 24), rd64(p + off + 16),
                    rd32(p + off + 28), rd16(p + off + 32),
                    PyBytes_FromStringAndSize(<const char*>(p + off + HDR), nxt - off - HDR),
                    rd64(p + off + 38)))
        off = nxt
    return out


def encode(records):
    """Frame from (seq, ts_ns, source, source_seq, epoch, kind, payload[, route]) tuples:
    a 7-tuple has route 0, so that callers that do not route stay simple."""
    cdef Py_ssize_t total = 0, off = 0, plen
    cdef unsigned char* q
    cdef bytes out
    cdef const unsigned char[::1] pv
    cdef uint64_t route
    recs = list(records)
    for r in recs:
        if len(r) != 7 and len(r) != 8:
            raise ValueError(f"a record is a 7- or 8-tuple, not {len(r)} items")
        plen = len(r[6])
        if plen > MAX_PAYLOAD:
            raise FrameError(f"payload of {plen} bytes exceeds {MAX_PAYLOAD}")
        total += HDR + plen
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    for r in recs:
        seq, ts_ns, source, source_seq, epoch, kind, payload = r[:7]
        route = r[7] if len(r) == 8 else 0
        plen = len(payload)
        wr64(q + off, seq)
        wr64(q + off + 8, ts_ns)
        wr64(q + off + 16, source_seq)
        wr32(q + off + 24, source)
        wr32(q + off + 28, epoch)
        wr16(q + off + 32, kind)
        wr32(q + off + 34, <uint32_t>plen)
        wr64(q + off + 38, route)
        if plen:
            pv = payload
            memcpy(q + off + HDR, &pv[0], plen)
        off += HDR + plen
    return out


def pack(uint32_t source, uint64_t source_seq_first, uint16_t kind, payloads):
    """A producer batch: payloads numbered source_seq_first, +1, ... (seq, ts, epoch, route 0)."""
    cdef Py_ssize_t total = 0, off = 0, plen
    cdef uint64_t ss = source_seq_first
    cdef unsigned char* q
    cdef bytes out
    cdef const unsigned char[::1] pv
    if source == 0:
        raise FrameError("source 0 is reserved for the sequencer")
    if source_seq_first == 0:
        raise FrameError("source_seq starts at 1")
    for payload in payloads:
        plen = len(payload)
        if plen > MAX_PAYLOAD:
            raise FrameError(f"payload of {plen} bytes exceeds {MAX_PAYLOAD}")
        total += HDR + plen
    if total > MAX_FRAME:
        raise FrameError(f"batch of {total} bytes exceeds {MAX_FRAME}")
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    for payload in payloads:
        plen = len(payload)
        wr64(q + off, 0)
        wr64(q + off + 8, 0)
        wr64(q + off + 16, ss)
        wr32(q + off + 24, source)
        wr32(q + off + 28, 0)
        wr16(q + off + 32, kind)
        wr32(q + off + 34, <uint32_t>plen)
        wr64(q + off + 38, 0)
        if plen:
            pv = payload
            memcpy(q + off + HDR, &pv[0], plen)
        off += HDR + plen
        ss += 1
    return out


def tick(uint64_t seq, uint64_t ts_ns, uint64_t source_seq, uint32_t epoch):
    """One sequenced Tick record (source 0, empty payload)."""
    return encode([(seq, ts_ns, 0, source_seq, epoch, KIND_TICK, b"")])


def epoch_runs(const unsigned char[::1] buf):
    """[(epoch, first_seq), ...]: where each run of one epoch starts in a sequenced frame."""
    cdef Py_ssize_t n = buf.shape[0], off = 0, nxt
    cdef const unsigned char* p
    cdef uint32_t epoch, cur = 0
    cdef bint started = False
    out = []
    if n == 0:
        return out
    p = &buf[0]
    while off < n:
        nxt = _next(p, off, n)
        epoch = rd32(p + off + 28)
        if not started or epoch != cur:
            out.append((epoch, rd64(p + off)))
            cur = epoch
            started = True
        off = nxt
    return out


cdef inline bint _takes(const unsigned char* rec, const unsigned char* kinds,
                        uint64_t route_mask) noexcept:
    """Whether rebase() takes the (validated) record at `rec`: not a Tick (kind 1 with an empty
    payload: an engine's output record of a Tick that carries events keeps kind 1 and is taken),
    its kind in the 8,192-byte bitmap `kinds` (NULL: every kind), its route matching the mask
    (0: any)."""
    cdef uint16_t kind = rd16(rec + 32)
    if kind == K_TICK and rd32(rec + 34) == 0:
        return False
    if route_mask and not (rd64(rec + 38) & route_mask):
        return False
    return kinds == NULL or (kinds[kind >> 3] >> (kind & 7)) & 1


def rebase(const unsigned char[::1] buf, uint32_t source, const unsigned char[::1] kinds,
           uint64_t route_mask=0):
    """Records of a sequenced frame from another stream, as a producer batch of `source`:
    source_seq = their seq in that stream (so the position there is the dedup state),
    seq/ts/epoch cleared, kind, route and payload kept. `kinds` is a bitmap of 8,192 bytes
    (bit k set: take kind k) or empty (take every kind except Ticks: kind 1 with no payload). `route_mask` 0 takes
    every route; otherwise a record is taken only if `route & route_mask != 0`."""
    cdef Py_ssize_t n = buf.shape[0], off = 0, nxt, total = 0, w = 0
    cdef const unsigned char* p
    cdef unsigned char* q
    cdef const unsigned char* bits = NULL
    cdef bytes out
    if source == 0:
        raise FrameError("source 0 is reserved for the sequencer")
    if kinds.shape[0] != 0 and kinds.shape[0] != 8192:
        raise ValueError("kinds must be empty or a bitmap of 8192 bytes")
    if kinds.shape[0]:
        bits = &kinds[0]
    if n == 0:
        return b""
    p = &buf[0]
    while off < n:  # first pass: validate and size
        nxt = _next(p, off, n)
        if _takes(p + off, bits, route_mask):
            total += nxt - off
        off = nxt
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    off = 0
    while off < n:
        nxt = _next(p, off, n)
        if _takes(p + off, bits, route_mask):
            memcpy(q + w, p + off, nxt - off)
            wr64(q + w + 16, rd64(p + off))  # source_seq = seq upstream
            wr64(q + w, 0)
            wr64(q + w + 8, 0)
            wr32(q + w + 24, source)
            wr32(q + w + 28, 0)
            w += nxt - off
        off = nxt
    return out


def kinds_bitmap(kinds):
    """The bitmap rebase() takes, from an iterable of kinds (empty: every kind)."""
    kinds = list(kinds)
    if not kinds:
        return b""
    bits = bytearray(8192)
    for k in kinds:
        if not 0 <= k < 65536:
            raise ValueError(f"kind {k} out of range")
        bits[k >> 3] |= 1 << (k & 7)
    return bytes(bits)
