"""gateway/wire.py against PROTOCOL.md: the worked example byte for byte, every block size equal
to §2's table, the Flags offsets of §3, and round trips checked by an independent decoder
written here by hand from §3's offsets (not from wire.py's formats)."""
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import wire

# PROTOCOL.md §2, copied by hand: id -> (block, wire size without groups)
TABLE = {1: (80, 92), 2: (40, 52), 3: (41, 53), 4: (33, 45), 5: (24, 36), 6: (8, 20),
         7: (12, 24), 8: (12, 24), 9: (13, 25), 10: (20, 32), 100: (52, 64), 101: (46, 58),
         102: (64, 76), 103: (31, 43), 200: (112, 124), 201: (48, 60), 202: (36, 48),
         203: (68, 80), 300: (15, 27), 301: (13, 25), 302: (37, 49), 303: (29, 41),
         304: (20, 32), 305: (45, 57)}

# PROTOCOL.md §3, by hand: (offset, field type) per field, in the order wire.py lists them.
# Types: Q u64, q i64, I u32, H u16, B u8, c char, sN char[N].
LAYOUT = {
    1: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "I"), (28, "H"), (30, "B"), (31, "B"), (32, "16s"), (48, "32s")],
    2: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "I"), (28, "I"), (32, "H"), (34, "B"), (35, "B"), (36, "I")],
    3: [(0, "Q"), (8, "B"), (9, "32s")],
    4: [(0, "B"), (1, "32s")],
    5: [(0, "Q"), (8, "Q"), (16, "Q")],
    6: [(0, "Q")],
    7: [(0, "Q"), (8, "I")],
    8: [(0, "Q"), (8, "I")],
    9: [(0, "Q"), (8, "I"), (12, "B")],
    10: [(0, "Q"), (8, "Q"), (16, "I")],
    100: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "q"), (32, "Q"), (40, "I"), (44, "I"), (48, "c"), (49, "c"), (50, "c"), (51, "B")],
    101: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"), (40, "I"), (44, "c"), (45, "B")],
    102: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"), (40, "q"), (48, "Q"), (56, "I"), (60, "c"), (61, "c"), (62, "c"), (63, "B")],
    103: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "I"), (28, "c"), (29, "c"), (30, "B")],
    200: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"), (40, "Q"), (48, "q"), (56, "Q"), (64, "q"), (72, "Q"), (80, "Q"), (88, "Q"), (96, "I"), (100, "I"),
          (104, "c"), (105, "c"), (106, "c"), (107, "c"), (108, "c"), (109, "B"), (110, "B"), (111, "B")],
    201: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "Q"), (40, "I"), (44, "c"), (45, "c"), (46, "B"), (47, "B")],
    202: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "I"), (28, "I"), (32, "c"), (33, "c"), (34, "B"), (35, "B")],
    203: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "Q"), (32, "H"), (34, "B"), (35, "B"), (36, "32s")],
    300: [(0, "Q"), (8, "I"), (12, "c"), (13, "B"), (14, "B")],
    301: [(0, "Q"), (8, "I"), (12, "B")],
    302: [(0, "q"), (8, "Q"), (16, "I"), (20, "16s"), (36, "B")],
    303: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "I"), (28, "B")],
    304: [(0, "Q"), (8, "Q"), (16, "I")],
    305: [(0, "Q"), (8, "Q"), (16, "Q"), (24, "q"), (32, "Q"), (40, "I"), (44, "c")],
}
ENTRY = {303: [(0, "q"), (8, "Q"), (16, "I"), (20, "c")],
         304: [(0, "q"), (8, "Q"), (16, "I"), (20, "c"), (21, "c")]}
FLAGS = {1: 31, 2: 35, 100: 51, 101: 45, 102: 63, 103: 30, 200: 111, 201: 47, 202: 35,
         203: 35, 303: 28}


def hand_decode(frame: bytes):
    """An independent decoder: one struct.unpack_from per field, at §3's offsets."""
    length, enc, block, tid, schema, version = (int.from_bytes(frame[i:i + 2], "little")
                                                for i in range(0, 12, 2))
    assert (length, enc, schema) == (len(frame), 0xEB50, 1)
    fields = tuple(struct.unpack_from("<" + t, frame, 12 + off)[0] for off, t in LAYOUT[tid])
    entries = []
    if tid in ENTRY:
        esize, n = struct.unpack_from("<HH", frame, 12 + block)
        for i in range(n):
            base = 12 + block + 4 + i * esize
            entries.append(tuple(struct.unpack_from("<" + t, frame, base + off)[0]
                                 for off, t in ENTRY[tid]))
    return tid, fields, entries


SCALARS = {"Q": st.integers(0, 2**64 - 1), "q": st.integers(-2**63, 2**63 - 1),
           "I": st.integers(0, 2**32 - 1), "H": st.integers(0, 2**16 - 1),
           "B": st.integers(0, 255), "c": st.binary(min_size=1, max_size=1)}


def _value(t):
    if t in SCALARS:
        return SCALARS[t]
    n = int(t[:-1])
    return st.binary(max_size=n).map(lambda b: b.ljust(n, b"\0"))


def test_worked_example_byte_for_byte():
    seq, ts, clordid, secid = 7, 1_700_000_000_000_000_000, 42, 3
    frame = wire.encode(100, seq, ts, clordid, wire.price_to_mantissa(Decimal("10.25")), 100,
                        secid, 0, b"1", b"2", b"0", 0)
    assert len(frame) == 64
    assert frame[:12] == bytes.fromhex("40 00 50 EB 34 00 64 00 01 00 01 00")
    assert frame[12:] == struct.pack("<QQQqQIIcccB", seq, ts, clordid, 1025000000, 100, secid,
                                     0, b"1", b"2", b"0", 0)


@pytest.mark.parametrize("tid", sorted(TABLE))
def test_each_template_size_is_the_table(tid):
    block, wire_size = TABLE[tid]
    t = wire.TEMPLATES[tid]
    assert t.block.size == block == t.size
    group = 4 if tid in ENTRY else 0  # "41+4+21n": an empty group still has its header
    assert len(wire.encode(tid, *t.block.unpack(bytes(block)))) == wire_size + group
    assert sum(struct.calcsize("<" + ty) for _o, ty in LAYOUT[tid]) == block
    assert t.flags_offset == FLAGS.get(tid)
    assert wire.FLAGS_OFFSET.get(tid) == FLAGS.get(tid)


def test_every_template_is_in_the_table():
    assert sorted(wire.TEMPLATES) == sorted(TABLE)
    assert wire.TEMPLATES[303].entry.size == 21 and wire.TEMPLATES[304].entry.size == 22


@st.composite
def messages(draw):
    tid = draw(st.sampled_from(sorted(LAYOUT)))
    fields = tuple(draw(_value(t)) for _o, t in LAYOUT[tid])
    entries = []
    if tid in ENTRY:
        entries = draw(st.lists(st.tuples(*[_value(t) for _o, t in ENTRY[tid]]), max_size=20))
    return tid, fields, entries


@given(messages())
@settings(max_examples=400, deadline=None)
def test_round_trip_against_the_hand_decoder(msg):
    tid, fields, entries = msg
    frame = wire.encode(tid, *fields, entries=entries)
    assert hand_decode(frame) == (tid, fields, entries)
    got, end = wire.read_frame(bytearray(frame) + b"\x01\x02", 0)
    assert end == len(frame) and got.template_id == tid and got.version == 1
    assert tuple(wire.decode(got)) == fields
    if tid in ENTRY:
        assert [tuple(e) for e in wire.decode_entries(got)] == entries


@given(messages(), st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_newer_versions_trailing_fields_are_ignored(msg, extra):
    """A v2 sender appends fields to the root block: blockLength grows, v1 fields still read."""
    tid, fields, entries = msg
    v1 = wire.encode(tid, *fields, entries=entries)
    block = wire.TEMPLATES[tid].size
    body = v1[12:12 + block] + extra + v1[12 + block:]
    frame = struct.pack("<HHHHHH", 12 + len(body), 0xEB50, block + len(extra), tid, 1, 2) + body
    got, end = wire.read_frame(frame, 0)
    assert end == len(frame) and got.version == 2
    assert tuple(wire.decode(got)) == fields
    if tid in ENTRY:
        assert [tuple(e) for e in wire.decode_entries(got)] == entries


def test_partial_frames_wait_for_more_bytes():
    frame = wire.encode(6, 99)
    for cut in range(len(frame)):
        assert wire.read_frame(frame[:cut], 0) == (None, 0)
    two = frame + wire.encode(5, 0, 1, 1)
    f1, end = wire.read_frame(two, 0)
    f2, end2 = wire.read_frame(two, end)
    assert (f1.template_id, f2.template_id, end2) == (6, 5, len(two))


@pytest.mark.parametrize("prefix, why", [
    ((20, 0xCAFE, 8, 6, 1, 1), "encodingType"),
    ((11, 0xEB50, 0, 6, 1, 1), "frameLength"),
    ((20, 0xEB50, 8, 6, 2, 1), "schemaId"),
    ((20, 0xEB50, 9, 6, 1, 1), "blockLength"),
])
def test_framing_errors(prefix, why):
    frame = struct.pack("<HHHHHH", *prefix) + bytes(8)
    with pytest.raises(wire.FramingError, match=why):
        wire.read_frame(frame, 0)


def test_a_wrong_encoding_is_refused_before_the_whole_prefix_arrives():
    with pytest.raises(wire.FramingError):
        wire.read_frame(b"GET ", 0)


def test_a_block_shorter_than_v1_is_a_protocol_error():
    frame = struct.pack("<HHHHHH", 20, 0xEB50, 8, 5, 1, 1) + bytes(8)  # Heartbeat needs 24
    got, _ = wire.read_frame(frame, 0)
    with pytest.raises(wire.FramingError):
        wire.decode(got)


def test_a_group_beyond_the_frame_is_a_protocol_error():
    frame = bytearray(wire.encode(304, 1, 2, 3, entries=[(1, 2, 3, b"0", b"0")]))
    struct.pack_into("<H", frame, 12 + 20 + 2, 5)  # numInGroup 5, one entry present
    got, _ = wire.read_frame(frame, 0)
    with pytest.raises(wire.FramingError):
        wire.decode_entries(got)


def test_setting_possdup_on_a_replayed_block():
    er = wire.encode(200, *wire.TEMPLATES[200].block.unpack(bytes(112)))
    frame = wire.frame_from_block(200, er[12:], wire.FLAG_POSS_DUP)
    assert frame[12 + 111] == 1 and frame[:12] == er[:12]
    na = wire.encode(10, 5, 3, 2)
    assert wire.frame_from_block(10, na[12:], wire.FLAG_POSS_DUP) == na  # no Flags field
    buf = bytearray(er)
    wire.set_flags(buf, wire.FLAG_POSS_DUP)
    assert bytes(buf) == frame


@pytest.mark.parametrize("price, mantissa", [
    ("1.25", 125000000), ("10.25", 1025000000), ("-0.00000001", -1), ("0", 0),
    (None, -2**63), ("92233720368.54775807", 2**63 - 1)])
def test_price_mantissa(price, mantissa):
    assert wire.price_to_mantissa(None if price is None else Decimal(price)) == mantissa
    back = wire.mantissa_to_price(mantissa)
    assert back == (None if price is None else Decimal(price))


@pytest.mark.parametrize("bad", ["0.000000001", "92233720368.54775808", "NaN", "Infinity", "x"])
def test_price_mantissa_refuses(bad):
    with pytest.raises(ValueError):
        wire.price_to_mantissa(bad)


@given(st.integers(-2**63 + 1, 2**63 - 1))
def test_price_mantissa_round_trip(m):
    assert wire.price_to_mantissa(wire.mantissa_to_price(m)) == m


def test_group_capacity():
    assert wire.max_entries(303) == (65535 - 45) // 21
    with pytest.raises(ValueError):
        wire.encode(304, 1, 2, 3, entries=[(0, 0, 0, b"0", b"0")] * (wire.max_entries(304) + 1))
