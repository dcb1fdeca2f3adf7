"""Structure-aware fuzzing of the gateway's input path: valid frames, then mutated (prefix
fields set to edge values, bytes flipped, cut, spliced, garbage inserted), delivered in random
chunks. The decoder may only answer a frame, "need more bytes" or FramingError; the server,
driven in process on a logged-on connection, may forward, reject or Logout and close, but no
exception may escape and it never stops answering. A long run (slow marker) pushes a million
mutated inputs through the decoder and reports the time it took."""
from __future__ import annotations

import asyncio
import os
import random
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import server as gs
from gateway import wire
from gateway.accounts import Accounts, make_user
from tests.gateway_fakes import FakeCore


def seqno(r):
    return r.choice([r.getrandbits(64), 2**64 - 1, 0, 1, 2, 3, 2**63])


CLIENT_FRAMES = [
    lambda r: wire.encode(100, seqno(r), 0, r.getrandbits(64), r.choice([wire.PRICE_NULL, 10**9, -1]),
                          r.getrandbits(64), r.getrandbits(32), r.choice([0, 4, 99]),
                          r.choice([b"1", b"2", b"x"]), b"2", b"1", r.getrandbits(8)),
    lambda r: wire.encode(101, seqno(r), 0, 1, 2, wire.U64_NULL, 3, b"1", 0),
    lambda r: wire.encode(102, seqno(r), 0, 1, 2, 3, 4, 5, 6, b"1", b"2", b"1", 0),
    lambda r: wire.encode(103, seqno(r), 0, 3, wire.U32_NULL, b"7", b"0", 0),
    lambda r: wire.encode(5, 0, r.getrandbits(64), r.getrandbits(64)),
    lambda r: wire.encode(6, r.getrandbits(64)),
    lambda r: wire.encode(7, r.getrandbits(64), r.getrandbits(32)),
    lambda r: wire.encode(4, 0, b"bye"),
    lambda r: wire.encode(1, 1, 0, 1, 1000, 0, 0, 0, b"alice", b"pw"),
    lambda r: wire.encode(300, 1, 2, b"1", 0, 1),
    lambda r: wire.encode(304, 1, 2, 3, entries=[(1, 2, 3, b"0", b"1")] * r.randrange(3)),
    lambda r: wire.encode(303, 1, 2, 3, 4, 5, entries=[(1, 2, 3, b"0")] * r.randrange(3)),
]
EDGES = [0, 1, 11, 12, 13, 0xEB50, 0xCAFE, 0xFFFF, 0x7FFF, 100, 150, 199, 200, 300, 2, 65535]


def mutate(r: random.Random, data: bytearray) -> bytearray:
    """One structure-aware mutation of a stream of frames."""
    if not data:
        return bytearray(r.randbytes(r.randrange(1, 40)))
    op = r.randrange(7)
    if op == 0:  # a prefix field of some frame set to an edge value
        starts = _frame_starts(data)
        at = r.choice(starts) + 2 * r.randrange(6)
        if at + 2 <= len(data):
            struct.pack_into("<H", data, at, r.choice(EDGES))
    elif op == 1:  # flip bytes
        for _ in range(r.randrange(1, 4)):
            data[r.randrange(len(data))] ^= 1 << r.randrange(8)
    elif op == 2:  # cut
        del data[r.randrange(len(data)):]
    elif op == 3:  # insert garbage
        at = r.randrange(len(data) + 1)
        data[at:at] = r.randbytes(r.randrange(1, 16))
    elif op == 4:  # drop a slice
        a = r.randrange(len(data))
        del data[a:a + r.randrange(1, 16)]
    elif op == 5:  # blockLength grows or shrinks, frameLength follows (a newer/older sender)
        starts = _frame_starts(data)
        s = r.choice(starts)
        if s + 12 <= len(data):
            length, enc, block, tid, sch, ver = struct.unpack_from("<HHHHHH", data, s)
            delta = r.choice([-8, -1, 1, 8, 100])
            struct.pack_into("<HHHHHH", data, s, max(0, min(0xFFFF, length + delta)), enc,
                             max(0, min(0xFFFF, block + delta)), tid, sch, ver)
            if delta > 0:
                at = min(len(data), s + 12 + block)
                data[at:at] = bytes(delta)
    else:  # duplicate a slice
        a = r.randrange(len(data))
        data[a:a] = data[a:a + r.randrange(1, 64)]
    return data


def _frame_starts(data) -> list[int]:
    starts, pos = [0], 0
    while pos + 2 <= len(data):
        length = struct.unpack_from("<H", data, pos)[0]
        if length < 12:
            break
        pos += length
        if pos < len(data):
            starts.append(pos)
    return starts


def stream(r: random.Random, n_frames: int, n_mutations: int) -> bytes:
    data = bytearray(b"".join(r.choice(CLIENT_FRAMES)(r) for _ in range(n_frames)))
    for _ in range(n_mutations):
        data = mutate(r, data)
    return bytes(data)


def decode_all(data: bytes) -> int:
    """Run the decoder over a stream the way the server does; returns frames decoded.
    Only FramingError may come out."""
    pos = n = 0
    while True:
        frame, end = wire.read_frame(data, pos)
        if frame is None:
            return n
        pos = end
        n += 1
        t = wire.TEMPLATES.get(frame.template_id)
        if t is not None:
            wire.decode(frame)
            if t.entry is not None:
                wire.decode_entries(frame)


@given(st.integers(0, 2**64), st.integers(1, 6), st.integers(0, 6))
@settings(max_examples=500, deadline=None)
def test_decoder_only_raises_framing_errors(seed, n_frames, n_mutations):
    data = stream(random.Random(seed), n_frames, n_mutations)
    try:
        decode_all(data)
    except wire.FramingError:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decoder_on_raw_bytes(data):
    try:
        decode_all(data)
    except wire.FramingError:
        pass


@pytest.mark.slow
def test_a_million_mutated_inputs_through_the_decoder():
    seed = int(os.environ.get("SEQEX_SEED", "0") or 0) or int(time.time())
    r = random.Random(seed)
    n = 1_000_000
    frames = errors = 0
    t0 = time.perf_counter()
    for _ in range(n):
        data = stream(r, r.randrange(1, 4), r.randrange(0, 4))
        try:
            frames += decode_all(data)
        except wire.FramingError:
            errors += 1
    took = time.perf_counter() - t0
    print(f"\n{n} mutated inputs (seed {seed}): {frames} frames decoded, {errors} framing "
          f"errors, {took:.1f} s ({took / n * 1e6:.1f} us each)")
    assert took < 600
    assert frames and errors


# -- the server, in process ----------------------------------------------------------------------

class FakeTransport:
    def __init__(self, loop, protocol):
        self.loop, self.protocol = loop, protocol
        self.out = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data):
        self.out += data

    def is_closing(self):
        return self.closing

    def close(self):
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def can_write_eof(self):
        return True

    def write_eof(self):
        """The half-close after a Logout: this peer closes at once in answer."""
        self.eof = True
        self.close()

    def get_extra_info(self, name, default=None):
        return default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


class Harness:
    """A started gateway on its own loop, and logged-on in-process connections."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.errors = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.core = FakeCore()
        alice = make_user("alice", 7, "pw", [4], n=1024)
        self.gw = gs.Gateway(self.core, Accounts({"alice": alice}),
                             gs.Config(max_retransmit=100, logout_grace_s=0.01))
        self.loop.run_until_complete(self.gw.start())
        self.sessions = 0

    def settle(self, rounds=20):
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def feed(self, conn, data):
        """data_received on the loop, as a transport calls it; its exceptions land in errors."""
        self.loop.call_soon(conn.data_received, data)
        self.settle(2)

    def connection(self):
        self.sessions += 1
        self.gw.next_conn += 1
        conn = gs.Connection(self.gw, self.gw.next_conn)
        self.gw.conns.add(conn)
        t = FakeTransport(self.loop, conn)
        conn.connection_made(t)
        self.feed(conn, wire.encode(1, self.sessions, 0, 1, 1000, 0, 0, 0, b"alice", b"pw"))
        for _ in range(2000):
            if conn.state != gs.LOGGING_ON:
                break
            self.loop.run_until_complete(asyncio.sleep(0.001))
        assert conn.state == gs.LIVE, "logon did not complete"
        return conn, t

    def close(self):
        self.loop.run_until_complete(self.gw.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


def _frames(out: bytes) -> list[int]:
    tids, pos = [], 0
    while True:
        f, pos = wire.read_frame(out, pos)
        if f is None:
            return tids
        tids.append(f.template_id)


@given(st.integers(0, 2**64), st.integers(1, 8), st.integers(0, 5), st.integers(1, 64))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_answers_every_mutated_stream(harness, seed, n_frames, n_mutations, chunk):
    one_stream(harness, seed, n_frames, n_mutations, chunk)


@pytest.mark.slow
def test_server_long_fuzz(harness):
    """SEQEX_FUZZ_STREAMS (default 20,000) mutated streams through the server."""
    seed = int(os.environ.get("SEQEX_SEED", "0") or 0) or int(time.time())
    r = random.Random(seed)
    n = int(os.environ.get("SEQEX_FUZZ_STREAMS", "20000"))
    t0 = time.perf_counter()
    for _ in range(n):
        one_stream(harness, r.getrandbits(64), r.randrange(1, 9), r.randrange(0, 6),
                   r.randrange(1, 65))
    took = time.perf_counter() - t0
    print(f"\n{n} mutated streams through the server (seed {seed}): {took:.1f} s")


def one_stream(harness, seed, n_frames, n_mutations, chunk):
    r = random.Random(seed)
    data = stream(r, n_frames, n_mutations)
    conn, t = harness.connection()
    t.out.clear()
    pos = 0
    while pos < len(data) and conn.state < gs.CLOSING:
        harness.feed(conn, data[pos:pos + chunk])
        pos += chunk
    harness.settle()
    assert not harness.errors, harness.errors
    if conn.state == gs.LIVE:
        conn._update_applied()
        wire.read_frame(conn._heartbeat(), 0)  # what it learned still fits a Heartbeat
    out = bytes(t.out)
    tids = _frames(out)  # the server's own output is always well framed
    if conn.state >= gs.CLOSING:
        assert tids and tids[-1] in (wire.LOGOUT, wire.LOGON_REJECT) or \
            wire.LOGOUT in tids, tids
    else:
        # still open: it must still answer a TestRequest (it did not wedge)
        t.out.clear()
        conn.buf.clear()
        harness.feed(conn, wire.encode(6, 99))
        harness.settle()
        assert wire.HEARTBEAT in _frames(bytes(t.out)) or conn.state >= gs.CLOSING
    if conn.state < gs.CLOSING:
        t.close()
    harness.settle()
    assert not harness.errors, harness.errors
