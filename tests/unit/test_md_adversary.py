"""Market data attacked from outside, over 127.0.0.1: a client written from PROTOCOL.md §6
alone, requests that never read their answers, malformed WebSocket requests and REST queries.
Each attack gets a reject, a Logout or a bounded cost, never a crash or a growing buffer."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

from websockets.asyncio.client import connect

from gateway import wire
from gateway.marketdata.publisher import Publisher
from tests.mdload import LocalEngine

T0 = 1_800_000_000 * 10 ** 9
CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}


async def _publisher_with_book(n: int = 400) -> Publisher:
    pub = Publisher(CONF)
    await pub.start(follow=False)
    e = LocalEngine(seed=3, keep_books=False)
    for i in range(n):
        pub.apply("BTCUSDT", *e.step(T0 + i * 10 ** 6))
    return pub


def test_snapshot_requests_that_are_never_read_do_not_grow_the_buffer_without_bound():
    """A client that sends snapshot-only requests ('0') and never reads: the publisher must
    not queue snapshot after snapshot (its memory would grow with the requests); past the
    high-water mark it is a slow consumer, Logout(7) and closed."""
    async def run():
        pub = await _publisher_with_book(3000)
        pub.binary.high_water, pub.binary.low_water = 64 << 10, 16 << 10
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", pub.feed_port))
            r, w = await asyncio.open_connection(sock=sock)
            w.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0, b"x", b"y"))
            await r.readexactly(52)              # LogonAck; nothing is read after it
            req = wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, b"0", 0, 3)
            peak = 0
            for _ in range(200):
                w.write(req * 20)
                await w.drain()
                await asyncio.sleep(0)
                conns = list(pub.binary.conns)
                if not conns:
                    break
                peak = max(peak, conns[0].transport.get_write_buffer_size())
            assert peak <= 8 * pub.binary.high_water, f"{peak} bytes queued"
            w.close()
        finally:
            await pub.close()
    asyncio.run(run())


async def _found_slow(pub: Publisher):
    """A feed client with a small receive buffer that asks for snapshots and reads nothing,
    until the feed finds it a slow consumer (it leaves the feed's connections)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", pub.feed_port))
    r, w = await asyncio.open_connection(sock=sock)
    w.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0, b"x", b"y"))
    await r.readexactly(52)
    req = wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, b"0", 0, 3)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while pub.binary.conns:
        assert loop.time() < deadline, "never found to be a slow consumer"
        w.write(req * 20)
        await w.drain()
        await asyncio.sleep(0.01)
    return r, w


def _ends_with_logout_7(data: bytes) -> list[bytes]:
    """The frames of what a slow consumer read to the end: whole, the last a Logout(7)."""
    frames, i = [], 0
    while i < len(data):
        assert len(data) - i >= 12, f"{len(data) - i} bytes of a frame header left"
        n = int.from_bytes(data[i:i + 2], "little")
        assert i + n <= len(data), f"a frame of {n} bytes cut at {len(data) - i}"
        frames.append(data[i:i + n])
        i += n
    assert int.from_bytes(frames[-1][6:8], "little") == wire.LOGOUT
    assert frames[-1][12] == wire.LOGOUT_SLOW_CONSUMER, frames[-1]
    return frames


def test_a_slow_consumer_that_reads_again_gets_whole_frames_then_logout_7():
    """PROTOCOL.md §6: a subscriber that stays behind gets Logout(7). It used to be aborted
    as soon as it was found out, which cut its stream inside a frame and dropped the Logout
    queued behind it: a client reading again saw half a snapshot and a close. The Logout
    now goes behind the whole frames queued, and the close waits for them to be written."""
    async def run():
        pub = await _publisher_with_book(3000)
        pub.binary.high_water, pub.binary.low_water = 64 << 10, 16 << 10
        pub.binary.slow_close_grace_s = 60.0
        try:
            r, w = await _found_slow(pub)
            assert pub.binary.stats["slow_logouts"] == 1
            data = await asyncio.wait_for(r.read(), 60)    # now it reads: to the end
            frames = _ends_with_logout_7(data)
            assert any(int.from_bytes(f[6:8], "little") == wire.MARKET_DATA_SNAPSHOT
                       for f in frames[:-1])
            w.close()
        finally:
            await pub.close()
    asyncio.run(run())


def test_a_slow_consumer_that_goes_on_sending_still_gets_whole_frames_then_logout_7():
    """As above, but the client goes on sending (heartbeats, as §4.8 asks) before it reads
    again. The feed closed the socket with those bytes unread: the kernel then sends a reset,
    which throws away what the client had not read yet (an independent client saw ECONNRESET
    after 240-300 frames, a frame cut, no Logout). The feed now half-closes behind the
    queued frames and reads (and drops) the client's input until the client closes."""
    async def run():
        pub = await _publisher_with_book(3000)
        pub.binary.high_water, pub.binary.low_water = 64 << 10, 16 << 10
        pub.binary.slow_close_grace_s = 60.0
        try:
            r, w = await _found_slow(pub)
            hb = wire.encode(wire.HEARTBEAT, 0, 0, 0)
            for _ in range(20):
                w.write(hb)
                await w.drain()
                await asyncio.sleep(0.02)
            data = await asyncio.wait_for(r.read(), 60)
            _ends_with_logout_7(data)
            w.close()
        finally:
            await pub.close()
    asyncio.run(run())


def test_idle_connections_at_the_limit_make_room_for_new_ones():
    """Idle connections held open (no Logon on the feed, no stream on the WebSocket) took
    every descriptor of the publisher: the REST API, the feed and the WebSocket all stopped
    answering. At the limit the oldest idle one is closed for a new one; only when every
    connection is in use is a new one refused."""
    from websockets.exceptions import InvalidStatus

    async def run():
        pub = await _publisher_with_book(50)
        pub.binary.max_connections = 3
        pub.ws.max_connections = 3
        loop = asyncio.get_running_loop()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", pub.feed_port)
                    for _ in range(3)]
            while len(pub.binary.conns) < 3:
                await asyncio.sleep(0.01)
            users = []
            for i in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
                w.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0, b"x", b"y"))
                head = await asyncio.wait_for(r.readexactly(12), 10)
                assert int.from_bytes(head[6:8], "little") == wire.LOGON_ACK
                assert await asyncio.wait_for(idle[i][0].read(), 10) == b""   # closed for it
                users.append((r, w))
            assert pub.binary.stats["evicted_connections"] == 3
            r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
            assert await asyncio.wait_for(r.read(), 10) == b""       # all in use: refused
            assert pub.binary.stats["refused_connections"] == 1
            for _r, uw in users:
                uw.close()

            url = f"ws://127.0.0.1:{pub.http_port}/ws"
            quiet = [await connect(url) for _ in range(3)]
            following = []
            for i in range(3):
                ws = await connect(url)
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["trades@BTCUSDT"],
                                          "id": 1}))
                await asyncio.wait_for(ws.recv(), 10)
                following.append(ws)
                await asyncio.wait_for(quiet[i].wait_closed(), 10)
            assert pub.ws.stats["evicted_connections"] == 3
            try:
                await connect(url)
                raise AssertionError("a connection past the limit was taken")
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
            deadline = loop.time() + 10
            while pub.ws.evicting:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            for ws in following:
                await ws.close()
        finally:
            await pub.close()
    asyncio.run(run())


def test_a_slow_consumer_that_reads_slowly_still_gets_the_logout():
    """The grace after a slow consumer's Logout(7) was a fixed deadline: a client that read
    again at once but slowly was cut inside a frame when it ran out. It is now renewed for as
    long as the queued bytes drain."""
    async def run():
        pub = await _publisher_with_book(3000)
        pub.binary.high_water, pub.binary.low_water = 64 << 10, 16 << 10
        pub.binary.slow_close_grace_s = 0.25
        try:
            r, w = await _found_slow(pub)
            loop = asyncio.get_running_loop()
            data = bytearray()
            started = loop.time()
            while True:                          # 64 KiB every 0.05 s: seconds, past the grace
                chunk = await asyncio.wait_for(r.read(64 << 10), 60)
                if not chunk:
                    break
                data += chunk
                await asyncio.sleep(0.05)
            assert loop.time() - started > 2 * pub.binary.slow_close_grace_s
            _ends_with_logout_7(bytes(data))
            w.close()
        finally:
            await pub.close()
    asyncio.run(run())


def test_one_user_or_one_address_cannot_hold_every_connection():
    """Past the connection limit only idle connections make room: one feed user's logged-on
    connections, or one host's WebSocket connections that each follow a stream, held every
    slot. The feed takes at most max_conns_per_user connections of one user (LogonReject 6
    beyond), the WebSocket at most max_per_address of one address (503 beyond)."""
    from websockets.exceptions import InvalidStatus

    async def logon(user: bytes):
        r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
        w.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0, user, b"y"))
        head = await asyncio.wait_for(r.readexactly(12), 10)
        body = await asyncio.wait_for(r.readexactly(int.from_bytes(head[0:2], "little") - 12),
                                      10)
        return int.from_bytes(head[6:8], "little"), body, w

    async def run():
        global pub
        pub = await _publisher_with_book(50)
        pub.binary.max_conns_per_user = 2
        pub.ws.max_per_address = 2
        try:
            held = [await logon(b"mallory") for _ in range(2)]
            assert [t for t, _b, _w in held] == [wire.LOGON_ACK] * 2
            t, body, _w = await logon(b"mallory")
            assert t == wire.LOGON_REJECT and body[8] == wire.LOGON_REJECT_NOT_OPEN
            t, _b, other = await logon(b"alice")           # another user gets in
            assert t == wire.LOGON_ACK
            held[0][2].close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while pub.binary.user_conns.get(b"mallory") != 1:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            t, _b, again = await logon(b"mallory")          # room again for that user
            assert t == wire.LOGON_ACK

            url = f"ws://127.0.0.1:{pub.http_port}/ws?streams=trades@BTCUSDT"
            mine = [await connect(url) for _ in range(2)]
            try:
                await connect(url)
                raise AssertionError("a third connection from one address was taken")
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
            await mine[0].close()
            deadline = loop.time() + 10
            while pub.ws.per_address.get("127.0.0.1") != 1:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            mine[0] = await connect(url)
            for ws in mine:
                await ws.close()
            for w in (held[1][2], other, again):
                w.close()
        finally:
            await pub.close()
    asyncio.run(run())


def _get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_limits_that_are_not_positive_counts_are_refused():
    async def run():
        pub = await _publisher_with_book()
        try:
            port = pub.http_port
            for what in ("depth", "trades", "klines"):
                code, body = await asyncio.to_thread(_get, port,
                                                     f"/api/v1/{what}?symbol=BTCUSDT&limit=-3")
                assert code == 400 and "limit" in body["msg"], (what, code, body)
            code, body = await asyncio.to_thread(_get, port,
                                                 "/api/v1/trades?symbol=BTCUSDT&limit=2")
            assert code == 200 and len(body) == 2
        finally:
            await pub.close()
    asyncio.run(run())


def test_malformed_websocket_requests_get_an_error_and_the_connection_goes_on():
    async def run():
        pub = await _publisher_with_book(50)
        try:
            ws = await connect(f"ws://127.0.0.1:{pub.http_port}/ws")
            for _i, req in enumerate([
                    {"method": "SUBSCRIBE", "params": 5, "id": 1},
                    {"method": "SUBSCRIBE", "params": [["depth@BTCUSDT"]], "id": 2},
                    {"method": "UNSUBSCRIBE", "params": [{"a": 1}], "id": 3},
                    {"method": "SUBSCRIBE", "params": "depth@BTCUSDT", "id": 4},
                    {"method": ["SUBSCRIBE"], "params": [], "id": 5},
                    [1, 2], "x", 7]):
                await ws.send(json.dumps(req))
                got = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert "error" in got, (req, got)
            await ws.send("[" * 100_000 + "]" * 100_000)   # deeper than the parser's stack
            got = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert got["error"]["msg"] == "Invalid JSON"
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 9}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"result": [], "id": 9}
            await ws.close()
        finally:
            await pub.close()
    asyncio.run(run())


def test_a_connection_that_never_logs_on_is_closed():
    """An idle socket (or a slowloris sending half a Logon) is logged out after the logon
    timeout; the feed goes on for the others."""
    import asyncio

    from gateway.marketdata.publisher import Publisher
    from tests.unit.test_md_feeds import CONF

    async def run():
        pub = Publisher(CONF)
        pub.binary.logon_timeout_s = 0.5
        await pub.start(follow=False)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
            w.write(b"\x50\x00\xeb")          # three bytes of a frame, then nothing
            data = await asyncio.wait_for(r.read(), 20)
            return data, pub.binary.stats["logon_timeouts"]
        finally:
            await pub.close()
    data, timeouts = asyncio.run(run())
    assert int.from_bytes(data[6:8], "little") == 4 and data[12] == 1   # Logout(1), as the gateway
    assert timeouts == 1
