"""The record codec agrees byte for byte with an independent struct encoder, and every
malformed frame is refused with FrameError, naming what is wrong."""
import struct

import pytest

from mq.record import (
    HEADER_SIZE,
    KIND_TICK,
    RECORD_HEADER,
    FrameError,
    decode,
    encode,
    offset_of,
    pack,
    records,
    scan,
    scan_producer,
    source_runs,
    stamp,
    tick,
    trim,
)


def mirror(recs):
    """Independent encoder: seq, ts, source_seq, source, epoch, kind, length, route + payload
    (a 7-tuple has route 0)."""
    out = b""
    for seq, ts, src, ss, epoch, kind, payload, *route in recs:
        out += struct.pack("<QQQIIHIQ", seq, ts, ss, src, epoch, kind, len(payload),
                           route[0] if route else 0) + payload
    return out


RECS = [(5, 1_700_000_000_000_000_000, 3, 9, 2, 16, b"hello", 0),
        (6, 1_700_000_000_000_000_001, 0, 1, 2, KIND_TICK, b"", 0),
        (7, 1_700_000_000_000_000_002, 4, 1, 2, 17, bytes(range(256)), (1 << 64) - 1),
        (8, 1_700_000_000_000_000_003, 4, 2, 2, 17, b"r", 0x5)]


def test_header_layout_is_46_bytes_with_the_route_at_38():
    assert HEADER_SIZE == RECORD_HEADER.size == 46
    frame = encode([(1, 2, 3, 4, 5, 6, b"p", 0x0102030405060708)])
    assert frame[38:46] == (0x0102030405060708).to_bytes(8, "little")
    assert frame[46:] == b"p"


def test_encode_matches_struct_mirror():
    assert encode(RECS) == mirror(RECS)
    assert decode(mirror(RECS)) == RECS
    assert records(mirror(RECS))[2].route == (1 << 64) - 1


def test_encode_takes_seven_tuples_as_route_zero():
    seven = [r[:7] for r in RECS]
    assert encode(seven) == mirror(seven)
    assert [r[7] for r in decode(encode(seven))] == [0] * len(RECS)


@pytest.mark.parametrize("bad", [(1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, b"", 0, 0)])
def test_encode_refuses_a_tuple_of_another_length(bad):
    with pytest.raises(ValueError, match="7- or 8-tuple"):
        encode([bad])


def test_scan_reports_count_and_range():
    assert scan(encode(RECS)) == (4, 5, 8)


def test_pack_then_stamp_assigns_contiguous_seqs_time_and_epoch():
    batch = pack(7, 10, 16, [b"a", b"bb", b"ccc"])
    assert scan_producer(batch) == (7, 10, 3)
    stamped = stamp(batch, 1, 100, 555, 3)
    assert records(stamped) == [(100, 555, 7, 11, 3, 16, b"bb", 0), (101, 555, 7, 12, 3, 16, b"ccc", 0)]
    assert stamp(batch, 3, 100, 555, 3) == b""


def test_source_runs_split_on_source_change():
    frame = encode([(1, 0, 7, 1, 1, 16, b""), (2, 0, 7, 2, 1, 16, b""), (3, 0, 8, 5, 1, 16, b""),
                    (4, 0, 7, 3, 1, 16, b"")])
    assert source_runs(frame) == [(7, 1, 2, 1), (8, 5, 5, 3), (7, 3, 3, 4)]


def test_trim_and_offset_of():
    frame = encode(RECS)
    assert scan(trim(frame, 5, 6)) == (3, 6, 8)
    assert scan(trim(frame, 5, 6, 6)) == (1, 6, 6)
    assert offset_of(frame, 0) == 0
    assert offset_of(frame, 4) == len(frame)


def test_tick_is_source_zero_with_empty_payload():
    assert records(tick(9, 10, 4, 2)) == [(9, 10, 0, 4, 2, KIND_TICK, b"", 0)]


@pytest.mark.parametrize("bad, message", [
    (b"", "empty"),
    (b"\x01" * 10, "truncated record header"),
    (mirror(RECS)[:-1], "truncated payload"),
    (mirror([(1, 0, 1, 1, 0, 1, b"")]) + b"\x00", "truncated record header"),
    (mirror([(0, 0, 1, 1, 0, 1, b"")]), "seq 0"),
    (mirror([(1, 0, 1, 1, 0, 1, b""), (3, 0, 1, 2, 0, 1, b"")]), "contiguity"),
    (struct.pack("<QQQIIHIQ", 1, 0, 1, 1, 0, 1, 0xFFFFFFFF, 0), "claims"),
])
def test_scan_refuses_malformed_frames(bad, message):
    with pytest.raises(FrameError, match=message):
        scan(bad)


@pytest.mark.parametrize("bad, message", [
    (mirror([(0, 0, 0, 1, 0, 1, b"")]), "source 0"),
    (mirror([(0, 0, 1, 0, 0, 1, b"")]), "source_seq 0"),
    (mirror([(0, 0, 1, 1, 0, 1, b""), (0, 0, 2, 3, 0, 1, b"")]), "mixes sources"),
    (mirror([(0, 0, 1, 1, 0, 1, b""), (0, 0, 1, 3, 0, 1, b"")]), "contiguity"),
])
def test_scan_producer_refuses_bad_batches(bad, message):
    with pytest.raises(FrameError, match=message):
        scan_producer(bad)


def test_pack_refuses_reserved_source_and_zero_seq():
    with pytest.raises(FrameError):
        pack(0, 1, 1, [b""])
    with pytest.raises(FrameError):
        pack(1, 0, 1, [b""])


def test_a_mixed_kind_producer_batch_is_valid():
    from mq.record import scan_producer
    batch = encode([(0, 0, 5, 7 + i, 0, 32 + i % 3, b"p%d" % i) for i in range(6)])
    assert scan_producer(batch) == (5, 7, 6)
