"""Properties of the record codec: encode/decode round trips for any records, byte for byte
equal to an independent struct encoder; any byte string is either a valid frame or refused
with FrameError (never another exception, never a crash); cutting a frame at any record
boundary gives valid frames; rebase() takes exactly the records its kind and route filters
pass, numbered by their upstream seqs, and keeps their routes."""
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mq.record import (
    KIND_TICK,
    FrameError,
    decode,
    encode,
    kinds_bitmap,
    offset_of,
    pack,
    rebase,
    records,
    scan,
    scan_producer,
    source_runs,
    stamp,
)

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=40)


@st.composite
def frames(draw):
    n = draw(st.integers(1, 30))
    first = draw(st.integers(1, 2**63))
    return [(first + i, draw(u64), draw(u32), draw(u64), draw(u32), draw(st.integers(0, 65535)),
             draw(st.binary(max_size=200)), draw(u64)) for i in range(n)]


def mirror(recs):
    """Independent encoder of the 46-byte header: seq, ts, source_seq, source, epoch, kind,
    length, route; then the payload."""
    return b"".join(struct.pack("<QQQIIHIQ", seq, ts, ss, src, epoch, kind, len(p), route) + p
                    for seq, ts, src, ss, epoch, kind, p, route in recs)


@given(frames())
def test_round_trip(recs):
    data = encode(recs)
    assert data == mirror(recs)
    assert decode(data) == recs
    assert scan(data) == (len(recs), recs[0][0], recs[-1][0])


@given(frames())
def test_seven_tuples_encode_as_route_zero(recs):
    assert encode([r[:7] for r in recs]) == mirror([r[:7] + (0,) for r in recs])


@given(frames(), st.integers(1, 2**63), st.integers(1, 2**62), st.integers(0, 2**32 - 1))
def test_stamp_keeps_the_route(recs, seq_first, ts, epoch):
    batch = encode([(0, 0, 5, i + 1, 0, r[5], r[6], r[7]) for i, r in enumerate(recs)])
    stamped = stamp(batch, 0, seq_first, ts, epoch)
    assert [r[7] for r in decode(stamped)] == [r[7] for r in recs]


small_routes = st.integers(0, 15) | u64
some_kinds = st.sampled_from([KIND_TICK, 16, 32, 33, 76])


@st.composite
def upstream_frames(draw):
    """A sequenced upstream frame with few distinct kinds and routes, so filters bite."""
    n = draw(st.integers(1, 40))
    first = draw(st.integers(1, 2**40))
    return [(first + i, draw(st.integers(1, 2**62)), draw(st.integers(1, 9)), draw(u64),
             draw(st.integers(1, 5)), draw(some_kinds), draw(st.binary(max_size=20)),
             draw(small_routes)) for i in range(n)]


@settings(max_examples=300)
@given(upstream_frames(), st.lists(some_kinds, max_size=3), small_routes,
       st.integers(1, 2**32 - 1))
@example([(1, 1, 1, 1, 1, 16, b"a", 0), (2, 1, 1, 2, 1, 16, b"b", 2**63)], [], 2**63, 7)
@example([(1, 1, 0, 0, 1, KIND_TICK, b"", 0), (2, 1, 0, 0, 1, KIND_TICK, b"ev", 2**63)], [],
         2**63, 7)
def test_rebase_takes_exactly_the_records_whose_kind_and_route_pass(recs, kinds, mask, source):
    batch = rebase(encode(recs), source, kinds_bitmap(kinds), mask)
    want = [r for r in recs if (r[5] != KIND_TICK or r[6]) and (not kinds or r[5] in kinds)
            and (mask == 0 or r[7] & mask)]
    got = records(batch)
    # source_seq = the seq upstream; seq, ts and epoch cleared; kind, payload, route kept
    assert got == [(0, 0, source, r[0], 0, r[5], r[6], r[7]) for r in want]
    if got:
        assert sum(b - a + 1 for _s, a, b, _q in source_runs(batch)) == len(got)


@given(frames(), st.data())
def test_any_record_boundary_cut_is_a_frame(recs, data):
    frame = encode(recs)
    i = data.draw(st.integers(0, len(recs) - 1))
    j = data.draw(st.integers(i + 1, len(recs)))
    piece = frame[offset_of(frame, i):offset_of(frame, j)]
    assert decode(piece) == recs[i:j]


@settings(max_examples=300)
@given(st.binary(max_size=400))
@example(struct.pack("<QQQIIHIQ", 1, 0, 0, 0, 0, 0, 2**31, 0))
@example(struct.pack("<QQQIIHI", 1, 0, 0, 0, 0, 0, 0))   # a 38-byte header: the old layout
def test_garbage_is_refused_cleanly(blob):
    for fn in (scan, scan_producer, decode, lambda b: rebase(b, 1, b"", 3)):
        try:
            fn(blob)
        except FrameError:
            pass


@given(frames(), st.integers(0, 500))
def test_truncation_is_always_detected(recs, cut):
    frame = encode(recs)
    cut = min(cut, len(frame) - 1)
    truncated = frame[:len(frame) - 1 - cut]
    try:
        n, _first, _last = scan(truncated)
    except FrameError:
        return
    assert truncated == frame[:offset_of(frame, n)]  # only a whole-record prefix is valid


@given(st.integers(1, 2**32 - 1), st.integers(1, 2**40), payloads, st.data())
def test_pack_stamp_preserves_payloads(src, ss, pl, data):
    batch = pack(src, ss, 16, pl)
    assert scan_producer(batch) == (src, ss, len(pl))
    skip = data.draw(st.integers(0, len(pl)))
    stamped = stamp(batch, skip, 1000, 77, 5)
    assert [r[6] for r in decode(stamped)] == pl[skip:]
    assert [r[0] for r in decode(stamped)] == list(range(1000, 1000 + len(pl) - skip))
