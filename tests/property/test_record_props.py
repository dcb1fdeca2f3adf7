"""Properties of the record codec: encode/decode round trips for any records; any byte
string is either a valid frame or refused with FrameError (never another exception, never a
crash); cutting a frame at any record boundary gives valid frames."""
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mq.record import FrameError, decode, encode, offset_of, pack, scan, scan_producer, stamp

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=40)


@st.composite
def frames(draw):
    n = draw(st.integers(1, 30))
    first = draw(st.integers(1, 2**63))
    return [(first + i, draw(u64), draw(u32), draw(u64), draw(u32), draw(st.integers(0, 65535)),
             draw(st.binary(max_size=200))) for i in range(n)]


@given(frames())
def test_round_trip(recs):
    data = encode(recs)
    assert decode(data) == recs
    assert scan(data) == (len(recs), recs[0][0], recs[-1][0])


@given(frames(), st.data())
def test_any_record_boundary_cut_is_a_frame(recs, data):
    frame = encode(recs)
    i = data.draw(st.integers(0, len(recs) - 1))
    j = data.draw(st.integers(i + 1, len(recs)))
    piece = frame[offset_of(frame, i):offset_of(frame, j)]
    assert decode(piece) == recs[i:j]


@settings(max_examples=300)
@given(st.binary(max_size=400))
@example(struct.pack("<QQQIIHI", 1, 0, 0, 0, 0, 0, 2**31))
def test_garbage_is_refused_cleanly(blob):
    for fn in (scan, scan_producer, decode):
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
