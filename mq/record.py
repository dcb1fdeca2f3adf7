"""Records and frames: the public face of the compiled codec (mq._frame).

A record is ``(seq, ts_ns, source, source_seq, epoch, kind, payload, route)``; a frame is
records laid end to end. ``encode`` also takes 7-tuples (route 0). See mq/_frame.pyx for the byte layout; RECORD_HEADER mirrors it with
``struct`` so that tests can check the codec against an independent encoder.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

try:
    from mq._frame import (
        HEADER_SIZE,
        KIND_TICK,
        MAX_FRAME,
        MAX_PAYLOAD,
        FrameError,
        decode,
        encode,
        epoch_runs,
        kinds_bitmap,
        offset_of,
        pack,
        rebase,
        scan,
        scan_producer,
        source_runs,
        stamp,
        tick,
    )
except ImportError as exc:  # no runtime fallback: the compiled codec is the codec
    raise ImportError(f"{exc}: build the extensions with `pip install -e .`") from exc

# seq, ts_ns, source_seq, source, epoch, kind, length, route
RECORD_HEADER = struct.Struct("<QQQIIHIQ")
if RECORD_HEADER.size != HEADER_SIZE:
    raise ImportError("record header mirror disagrees with the compiled codec")


class Record(NamedTuple):
    seq: int
    ts_ns: int
    source: int
    source_seq: int
    epoch: int
    kind: int
    payload: bytes
    route: int = 0   # routing bits an engine set on an output record (0 from producers)


def records(frame: bytes | memoryview) -> list[Record]:
    return [Record(*r) for r in decode(frame)]


_EPOCH_AT = 28   # the epoch's offset in a record header (RECORD_HEADER: Q Q Q I, then I)


def first_epoch(frame: bytes) -> int:
    """The epoch of a validated frame's first record: a master's frame holds one epoch, and
    epochs never decrease along a log, so a frame that starts with the newest holds only it."""
    return int.from_bytes(frame[_EPOCH_AT:_EPOCH_AT + 4], "little")


def trim(frame: bytes, first: int, want_from: int, want_to: int | None = None) -> bytes:
    """The part of a validated frame starting at `first` that holds seqs want_from..want_to."""
    start = offset_of(frame, want_from - first) if want_from > first else 0
    if want_to is None:
        return frame[start:]
    return frame[start:offset_of(frame, want_to - first + 1)]


__all__ = ["HEADER_SIZE", "KIND_TICK", "MAX_FRAME", "MAX_PAYLOAD", "RECORD_HEADER", "FrameError",
           "Record", "decode", "encode", "epoch_runs", "first_epoch", "kinds_bitmap", "offset_of", "pack", "rebase", "records", "scan", "scan_producer",
           "source_runs", "stamp", "tick", "trim"]
