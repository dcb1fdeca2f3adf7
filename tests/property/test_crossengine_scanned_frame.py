"""apply_scanned_frame on any bytes: each input frame is placed at the very end of a readable
page followed by an inaccessible one, so a read past the frame's end crashes the test instead
of passing unnoticed. Frames that mq.record.scan accepts give the outputs and state of
apply_frame; any other frame raises FrameError (nothing else) after applying exactly the whole
records before the first bad one, as the reference applying them one by one.

SEQEX_SLOW=1 runs the long fuzz."""
from __future__ import annotations

import ctypes
import mmap
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.record import FrameError, encode, scan

SLOW = os.environ.get("SEQEX_SLOW") == "1"
HDR = 46
PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
CFG = dict(tick_size=5, min_qty=1, max_qty=40, max_price=1000, max_orders=60, max_fills=4,
           max_account_orders=8)


class Guarded:
    """A frame's bytes ending right where an inaccessible page starts."""

    def __init__(self, frame: bytes) -> None:
        pages = (len(frame) + PAGE - 1) // PAGE or 1
        self.map = mmap.mmap(-1, (pages + 1) * PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        if _libc.mprotect(base + pages * PAGE, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        self.base, self.pages = base, pages
        start = pages * PAGE - len(frame)
        self.map[start:start + len(frame)] = frame
        self.view = memoryview(self.map)[start:start + len(frame)]

    def close(self) -> None:
        self.view.release()
        _libc.mprotect(self.base + self.pages * PAGE, PAGE, 3)
        self.map.close()


def guarded_apply(eng, frame: bytes):
    g = Guarded(frame)
    try:
        return eng.apply_scanned_frame(g.view)
    finally:
        g.close()


def whole_records(frame: bytes):
    """The records apply_scanned_frame applies before it stops: whole headers whose payload
    fits in the frame, in order."""
    off, out = 0, []
    while len(frame) - off >= HDR:
        seq, ts, _ss, src, _ep, kind, length = struct.unpack_from("<QQQIIHI", frame, off)
        if length > len(frame) - off - HDR:
            break
        out.append((seq, ts, src, kind, frame[off + HDR:off + HDR + length]))
        off += HDR + length
    return out, off == len(frame)


def commands(rng: random.Random, n: int):
    recs = []
    for _ in range(n):
        k = rng.random()
        acct = rng.randint(1, 4)
        if k < 0.6:
            recs.append((c.NEW_ORDER, c.new_order(rng.randint(1, 25), rng.choice([c.BUY, c.SELL]),
                                                  rng.randint(18, 22) * 5, rng.randint(1, 12),
                                                  acct)))
        elif k < 0.85:
            recs.append((c.CANCEL, c.cancel(client_order_id=rng.randint(1, 25), account=acct)))
        elif k < 0.95:
            recs.append((c.AMEND, c.amend(client_order_id=rng.randint(1, 25), account=acct,
                                          price=rng.choice([0, 90, 100, 110]),
                                          qty=rng.randint(0, 20))))
        else:
            recs.append((c.CANCEL_ALL, c.cancel_all(acct, 0)))
    return recs


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    how = rng.randrange(7)
    if how == 0 and b:                                    # truncate anywhere
        return bytes(b[:rng.randrange(len(b))])
    if how == 1 and len(b) >= HDR:                        # a length at the edges
        off = rng.choice([0, rng.randrange(len(b) - HDR + 1)])   # a header, or any 4 bytes
        rest = len(b) - off - HDR
        struct.pack_into("<I", b, off + 34, rng.choice(
            [0, 1, rest, rest + 1, rest - 1 if rest else 0, 0xFFFFFFFF, 0x80000000,
             0x7FFFFFFF, rng.getrandbits(32)]))
        return bytes(b)
    if how == 2:                                          # junk appended
        return bytes(b) + rng.randbytes(rng.randrange(1, 60))
    if how == 3 and b:                                    # bytes flipped
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if how == 4:                                          # a short tail of a header
        return bytes(b) + bytes(rng.randrange(1, HDR))
    if how == 5:
        return rng.randbytes(rng.randrange(0, 200))
    return bytes(b)


def run_one(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    eng = CrossEngine(**CFG)
    twin = CrossEngine(**CFG)
    ref = ReferenceEngine(**CFG)
    seq = 1
    for _ in range(steps):
        recs = commands(rng, rng.randint(1, 6))
        frame = encode([(seq + j, 10**18 + seq + j, 5, seq + j, 1, k, p)
                        for j, (k, p) in enumerate(recs)])
        bad = mutate(rng, frame) if rng.random() < 0.6 else frame
        try:
            scan(bad)
            ok = True
        except FrameError:
            ok = False
        if ok:
            out = guarded_apply(eng, bad)
            assert out == twin.apply_frame(bad)
            for seq_, ts, src, kind, payload in whole_records(bad)[0]:
                ref.apply(seq_, ts, kind, payload, src)
        else:
            records, whole = whole_records(bad)
            with pytest.raises(FrameError) if not whole or not bad else _maybe():
                guarded_apply(eng, bad)
            for seq_, ts, src, kind, payload in records:
                twin.apply(seq_, ts, kind, payload, src)
                ref.apply(seq_, ts, kind, payload, src)
        eng.check_invariants()
        assert eng.state_hash() == twin.state_hash() == ref.state_hash()
        seq += len(recs)


class _maybe:
    """A frame of whole records that scan refuses (seq 0, a gap, a payload past MAX_PAYLOAD):
    apply_scanned_frame may apply it all; it must not raise anything but FrameError."""

    def __enter__(self):
        return self

    def __exit__(self, t, v, tb):
        return t is None or issubclass(t, FrameError)


def test_the_guard_page_catches_a_read_past_the_frame():
    """The harness bites: a read one byte past the frame faults (in a child process)."""
    import subprocess
    import sys
    code = ("from tests.property.test_crossengine_scanned_frame import Guarded\n"
            "g = Guarded(b'abc')\n"
            "import ctypes\n"
            "print(ctypes.string_at(ctypes.addressof(ctypes.c_char.from_buffer(g.map))"
            " + g.pages * mmap.PAGESIZE - 3, 4))\n").replace("mmap.PAGESIZE", str(PAGE))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode != 0


def test_empty_and_tiny_frames_raise_frame_error_and_change_nothing():
    eng = CrossEngine(**CFG)
    before = eng.state_hash()
    for n in range(0, HDR):
        with pytest.raises(FrameError):
            guarded_apply(eng, bytes(n))
    rec = encode([(1, 1, 5, 1, 1, c.NEW_ORDER, c.new_order(1, c.BUY, 100, 1, 1))])
    for cut in range(1, len(rec)):
        with pytest.raises(FrameError):
            guarded_apply(eng, rec[:cut])
    assert eng.state_hash() == before
    for length in (0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, len(rec) - HDR + 1):
        b = bytearray(rec)
        struct.pack_into("<I", b, 34, length)
        with pytest.raises(FrameError):
            guarded_apply(eng, bytes(b))
    assert eng.state_hash() == before


@pytest.mark.parametrize("seed", range(4 if not SLOW else 200))
def test_scanned_frames_fuzz_against_apply_frame_and_the_reference(seed):
    run_one(seed, 150 if not SLOW else 2000)


@settings(max_examples=300 if not SLOW else 5000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_read_past_the_frame(data):
    eng = CrossEngine(**CFG)
    try:
        guarded_apply(eng, data)
    except FrameError:
        pass
    eng.check_invariants()
