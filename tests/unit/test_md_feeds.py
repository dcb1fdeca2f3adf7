"""Market data over real sockets (127.0.0.1), the publisher fed in process by a CrossEngine:
the SDK's local book (binary feed) and a WebSocket client's book (depth diffs) equal the
engine's book at sampled seqs while orders flow; HTTP snapshots; slow consumers."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import pytest
from websockets.asyncio.client import connect

from gateway import mdclient, wire
from gateway.marketdata.publisher import Publisher
from gateway.mdclient import MarketDataClient
from tests.mdload import LocalEngine

T0 = 1_800_000_000 * 10 ** 9
CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}
TICK_M = 50_000_000


def _as_wire(book: dict) -> dict:
    return {k: [(p * TICK_M, q, n) for p, q, n in v] for k, v in book.items()}


def _as_json(book: dict) -> dict:
    from decimal import Decimal
    return {k: {str(Decimal("0.5") * p): str(Decimal("0.001") * q) for p, q, _n in v}
            for k, v in book.items()}


def take_frames(buf: bytearray) -> list:
    """The whole frames at the head of buf, taken out of it."""
    out, pos = [], 0
    while True:
        f, end = wire.read_frame(buf, pos)
        if f is None:
            break
        out.append(f)
        pos = end
    del buf[:pos]
    return out


async def logged_on(pub, *requests: tuple[int, bytes, int]):
    """A binary-feed connection logged on (a 30 s heartbeat), with MarketDataRequests (MDReqID,
    SubscriptionRequestType, Streams) for BTCUSDT written behind the Logon."""
    r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
    w.write(wire.encode(wire.LOGON, 0, 0, 0, 30_000, 0, 0, 0, b"x", b""))
    for req, kind, streams in requests:
        w.write(wire.encode(wire.MARKET_DATA_REQUEST, req, 1, kind, 0, streams))
    return r, w


class WsBook:
    """A WebSocket client's book, kept by the Binance rules from depth@ diffs."""

    def __init__(self):
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.u = 0
        self.synced = False
        self.gaps = 0

    def on(self, data: dict) -> None:
        if data["e"] == "depthSnapshot":
            self.bids = dict(data["bids"])
            self.asks = dict(data["asks"])
            self.u, self.synced = data["lastUpdateId"], True
            return
        if not self.synced or data["u"] <= self.u:
            return
        if data["U"] > self.u + 1:
            self.gaps += 1
            self.synced = False
            return
        for book, levels in ((self.bids, data["b"]), (self.asks, data["a"])):
            for p, q in levels:
                if q == "0" or float(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = q
        self.u = data["u"]


async def _run(n_records: int, seed: int):
    e = LocalEngine(seed=seed)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    rpt_at: dict[int, int] = {}      # RptSeq after each seq
    seq_of_rpt: dict[int, int] = {0: 0}
    md = MarketDataClient("127.0.0.1", pub.feed_port)
    await md.connect()
    await md.subscribe(1)
    ws = await connect(f"ws://127.0.0.1:{pub.http_port}/stream?streams=depth@BTCUSDT")
    wb = WsBook()
    checked_bin = checked_ws = 0
    try:
        for i in range(n_records):
            seq, ts, out = e.step(T0 + i * 10 ** 6)
            up = pub.apply("BTCUSDT", seq, ts, out)
            rpt_at[seq] = up.last_rpt
            seq_of_rpt[up.last_rpt] = seq
            if i % 50 == 0:
                await asyncio.sleep(0)          # let the feeds flow while orders go on
            if i % 97 == 0:
                # sample: what each client holds now must be the engine's book at some seq
                for ev in md.drain():
                    if ev[0] == "book" and ev[1].synced and ev[1].rpt_seq in seq_of_rpt:
                        b = ev[1]
                        # the book is at rpt_seq: the last seq with that RptSeq
                        s = seq_of_rpt[b.rpt_seq]
                        if s:
                            assert b.levels() == _as_wire(e.books[s]), s
                            checked_bin += 1
                while True:
                    try:
                        msg = await asyncio.wait_for(ws.recv(), 0.001)
                    except TimeoutError:
                        break
                    wb.on(json.loads(msg)["data"])
                    if wb.synced and wb.u in e.books:
                        assert {"bids": wb.bids, "asks": wb.asks} == _as_json(e.books[wb.u])
                        checked_ws += 1
        # the end: both reach the last seq
        last = e.seq
        last_change = max(s for s in e.books if e.books[s] != e.books.get(s - 1))
        deadline = asyncio.get_running_loop().time() + 20
        while md.books[1].rpt_seq != rpt_at[last] or wb.u < last_change:
            assert asyncio.get_running_loop().time() < deadline, "the feeds stopped"
            md.drain()
            try:
                msg = await asyncio.wait_for(ws.recv(), 0.05)
                wb.on(json.loads(msg)["data"])
            except TimeoutError:
                pass
        assert md.books[1].levels() == _as_wire(e.books[last])
        assert {"bids": wb.bids, "asks": wb.asks} == _as_json(e.books[last])
        assert md.books[1].stats["gaps"] == 0 and wb.gaps == 0
        assert checked_bin > 3 and checked_ws > 3, (checked_bin, checked_ws)
        # REST snapshot at the same seq
        url = f"http://127.0.0.1:{pub.http_port}/api/v1/depth?symbol=BTCUSDT"
        snap = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(url, timeout=5)))
        assert snap["lastUpdateId"] == last
        assert {"bids": dict(snap["bids"]), "asks": dict(snap["asks"])} == \
            _as_json(e.books[last])
        assert {"bids": wb.bids, "asks": wb.asks} == _as_json(e.books[last])
        return pub, e
    finally:
        await ws.close()
        await md.close()
        await pub.close()


def test_binary_and_websocket_books_equal_the_engine_under_load():
    asyncio.run(_run(1500, seed=11))


async def _slow_binary():
    e = LocalEngine(seed=4, keep_books=False)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    pub.binary.high_water, pub.binary.low_water = 16 << 10, 4 << 10   # small, to be quick
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", pub.feed_port))
        s.sendall(wire.encode(wire.LOGON, 0, 0, 0, 30_000, 0, 0, 0, b"slow", b""))  # silent
        s.sendall(wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, b"1", 0, 3))
        while not pub.binary.by_symbol[1]:
            await asyncio.sleep(0.01)
        conn, = pub.binary.by_symbol[1]
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                           4096)
        i = 0
        while pub.binary.stats["stale_skips"] == 0:
            for _ in range(200):
                i += 1
                pub.apply("BTCUSDT", *e.step(T0 + i))
            await asyncio.sleep(0)
            assert i < 400_000, "the reader never fell behind"
        # it reads again: a fresh snapshot, then increments, never a silent gap
        s.setblocking(False)
        md_frames = []
        buf = bytearray()
        deadline = asyncio.get_running_loop().time() + 20
        while pub.binary.stats["resnapshots"] == 0 or not any(
                f.template_id == wire.MARKET_DATA_SNAPSHOT and i > 2 for i, f in
                enumerate(md_frames)):
            assert asyncio.get_running_loop().time() < deadline
            try:
                buf += s.recv(1 << 20)
            except BlockingIOError:
                pass
            md_frames += take_frames(buf)
            await asyncio.sleep(0.001)
        # every RptSeq continues from the last, except right after a snapshot
        last = None
        for f in md_frames:
            if f.template_id == wire.MARKET_DATA_SNAPSHOT:
                last = wire.decode(f).LastRptSeq
            elif f.template_id in (wire.MARKET_DATA_INCREMENTAL, wire.TRADE):
                r = wire.decode(f).RptSeq
                assert last is not None and r == last + 1, (r, last)
                last = r
        s.close()
    finally:
        await pub.close()


def test_a_slow_binary_consumer_is_resnapshotted():
    asyncio.run(_slow_binary())


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET to the publisher's HTTP port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _http_errors():
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        def get(path):
            return http_get(pub.http_port, path)
        code, body = await asyncio.to_thread(get, "/api/v1/depth?symbol=NOPE")
        assert code == 400 and b"Invalid symbol" in body
        code, body = await asyncio.to_thread(get, "/")
        assert code == 200 and b"<canvas" in body
        code, body = await asyncio.to_thread(get, "/api/v1/klines?symbol=BTCUSDT&interval=7m")
        assert code == 400
        # an unknown path is 404 whatever its symbol (it was 400 "Invalid symbol" without one)
        for path in ("/api/v1/nope?symbol=BTCUSDT", "/api/v1/nope", "/api/v2/depth"):
            code, body = await asyncio.to_thread(get, path)
            assert code == 404 and b"no such path" in body, (path, code, body)
        # a parameter given twice is refused, not read as its last value
        code, body = await asyncio.to_thread(get, "/api/v1/depth?symbol=BTCUSDT&symbol=NOPE")
        assert code == 400 and json.loads(body)["code"] == -1101, body
        # a blank value is as if not given (the default limit; the symbol given once)
        for path in ("/api/v1/depth?symbol=BTCUSDT&limit=", "/api/v1/depth?symbol=&symbol=BTCUSDT"):
            code, body = await asyncio.to_thread(get, path)
            assert code == 200 and json.loads(body)["lastUpdateId"] == 0, (path, body)

        def raw(method):
            with socket.create_connection(("127.0.0.1", pub.http_port), timeout=5) as c:
                c.sendall(f"{method} /api/v1/depth?symbol=BTCUSDT HTTP/1.1\r\nHost: x\r\n"
                          "Content-Length: 0\r\n\r\n".encode())
                answer = b""
                while chunk := c.recv(4096):      # the server closes after its answer
                    answer += chunk
                return answer
        # read-only: other methods are 405 (a POST was answered as a GET)
        for method in ("POST", "DELETE", "PUT"):
            head = await asyncio.to_thread(raw, method)
            assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD, OPTIONS" in head, head
        # HEAD: the GET's headers, no body; OPTIONS: a CORS preflight's answer
        head = await asyncio.to_thread(raw, "HEAD")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n") and \
            b"Content-Length: 38" in head, head
        pre = await asyncio.to_thread(raw, "OPTIONS")
        assert pre.startswith(b"HTTP/1.1 204 ") and \
            b"Access-Control-Allow-Methods: GET, HEAD, OPTIONS" in pre, pre
        ws = await connect(f"ws://127.0.0.1:{pub.http_port}/ws")
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["trades@BTCUSDT"],
                                  "id": 7}))
        first = json.loads(await ws.recv())
        assert first["stream"] == "trades@BTCUSDT" and first["data"]["e"] == "recentTrades"
        assert json.loads(await ws.recv()) == {"result": None, "id": 7}
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nope@X"], "id": 8}))
        assert json.loads(await ws.recv())["error"]["code"] == 2
        await ws.close()
    finally:
        await pub.close()


def test_http_and_websocket_requests():
    asyncio.run(_http_errors())


if __name__ == "__main__":
    pytest.main([__file__])


async def _slow_ws(monkeypatch):
    from gateway.marketdata import ws as wsmod
    monkeypatch.setattr(wsmod, "HIGH_WATER", 16 << 10)
    monkeypatch.setattr(wsmod, "LOW_WATER", 4 << 10)
    e = LocalEngine(seed=6, keep_books=False)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        # a client that stops reading: its library's queue fills, then the socket's buffers
        ws = await connect(f"ws://127.0.0.1:{pub.http_port}/stream?streams=depth@BTCUSDT",
                           max_queue=4)
        conn, = pub.ws.subs["depth@BTCUSDT"]
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                           4096)
        i = 0
        while pub.ws.stats["dropped"] == 0:
            for _ in range(100):
                i += 1
                pub.apply("BTCUSDT", *e.step(T0 + i))
            await asyncio.sleep(0)
            assert i < 300_000, "the reader never fell behind"
        # it reads again: a fresh depthSnapshot (its update id jumps), never a silent gap
        wb = WsBook()
        snapshots = 0
        deadline = asyncio.get_running_loop().time() + 30
        while snapshots < 2 or wb.u < pub.views["BTCUSDT"].last_depth_u:
            assert asyncio.get_running_loop().time() < deadline
            pub.ws.tick()
            try:
                data = json.loads(await asyncio.wait_for(ws.recv(), 0.05))["data"]
            except TimeoutError:
                i += 1
                pub.apply("BTCUSDT", *e.step(T0 + i))
                continue
            if data["e"] == "depthSnapshot":
                snapshots += 1
            wb.on(data)
            assert wb.gaps == 0, "a depthUpdate jumped without a snapshot"
        assert pub.ws.stats["resnapshots"] >= 1
        await ws.close()
    finally:
        await pub.close()


def test_a_slow_websocket_consumer_is_resnapshotted(monkeypatch):
    asyncio.run(_slow_ws(monkeypatch))


def test_the_binary_feeds_logon_checks_the_accounts_file_when_it_has_one(tmp_path):
    """PROTOCOL.md §6: the same Logon as the order entry. With the gateway's accounts file,
    good credentials get LogonAck (and the requests sent right behind the Logon are answered
    after it, in order); a wrong password gets LogonReject 1 and no data."""
    from gateway import accounts
    path = str(tmp_path / "accounts.json")
    accounts.add_user(path, "carol", "s3cret-pw", [2])

    async def logon(password: str) -> list[int]:
        pub = Publisher({**CONF, "accounts": path})
        await pub.start(follow=False)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
            w.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0, b"carol",
                                password.encode()))
            w.write(wire.encode(wire.MARKET_DATA_REQUEST, 7, 1, b"1", 0, 3))
            got: list[int] = []
            buf = b""
            while True:
                try:
                    chunk = await asyncio.wait_for(r.read(1 << 16), 20)
                except asyncio.TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 12:
                    n = int.from_bytes(buf[:2], "little")
                    if len(buf) < n:
                        break
                    got.append(int.from_bytes(buf[6:8], "little"))
                    buf = buf[n:]
                if wire.MARKET_DATA_SNAPSHOT in got or wire.LOGON_REJECT in got:
                    break
            w.close()
            return got
        finally:
            await pub.close()

    ok = asyncio.run(logon("s3cret-pw"))
    assert ok[0] == wire.LOGON_ACK and wire.SECURITY_DEFINITION in ok
    assert wire.MARKET_DATA_SNAPSHOT in ok            # the request behind the Logon answered
    bad = asyncio.run(logon("wrong"))
    assert bad == [wire.LOGON_REJECT]


async def _one_stream_subscribers(n_records: int):
    """Three binary subscribers (Streams 1 book, 2 trades, 3 both) while a CrossEngine flow
    goes on: each one's RptSeq runs K+1, K+2, ... without a gap; the book-only one gets no
    Trade, the trades-only one no book entry; where one left a message out it got an
    Incremental without entries at that RptSeq, and otherwise exactly what the full one got."""
    e = LocalEngine(seed=21, keep_books=False)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    conns = {}
    try:
        for i in range(200):                                     # a book and some trades first
            pub.apply("BTCUSDT", *e.step(T0 + i))
        for streams in (1, 2, 3):
            conns[streams] = await logged_on(pub, (streams, b"1", streams))
        while len(pub.binary.by_symbol[1]) < 3:
            await asyncio.sleep(0.01)
        for i in range(200, 200 + n_records):
            pub.apply("BTCUSDT", *e.step(T0 + i))
            if i % 50 == 0:
                await asyncio.sleep(0)
        last_rpt = pub.states[1].rpt_seq
        got: dict[int, dict[int, object]] = {}
        for streams, (r, w) in conns.items():
            buf, frames, first = bytearray(), {}, None
            while first is None or (frames and max(frames) < last_rpt) or \
                    (not frames and first < last_rpt):
                buf += await asyncio.wait_for(r.read(1 << 16), 20)
                for f in take_frames(buf):
                    m = wire.decode(f)
                    if f.template_id == wire.MARKET_DATA_SNAPSHOT:
                        first = m.LastRptSeq if first is None else first
                        # trades alone: the snapshot carries LastRptSeq and no book
                        assert bool(wire.decode_entries(f)) == (streams != 2), streams
                    elif f.template_id in (wire.MARKET_DATA_INCREMENTAL, wire.TRADE):
                        entries = wire.decode_entries(f) \
                            if f.template_id == wire.MARKET_DATA_INCREMENTAL else []
                        frames[m.RptSeq] = (f.template_id, m, tuple(entries))
            assert sorted(frames) == list(range(first + 1, last_rpt + 1)), \
                f"Streams {streams}: RptSeq not gapless"
            got[streams] = frames
            w.close()
        full = got[3]
        kinds = {t for t, _, _ in full.values()}
        assert kinds == {wire.MARKET_DATA_INCREMENTAL, wire.TRADE}, "the flow made no trades"
        first = min(set(got[1]) & set(got[2]))
        for rpt in range(first, last_rpt + 1):
            t, m, entries = full[rpt]
            for streams, wanted in ((1, wire.MARKET_DATA_INCREMENTAL), (2, wire.TRADE)):
                t2, m2, entries2 = got[streams][rpt]
                if t == wanted:
                    assert (t2, m2, entries2) == (t, m, entries)
                else:
                    assert t2 == wire.MARKET_DATA_INCREMENTAL and entries2 == ()
                    assert m2.TransactTime == m.TransactTime and m2.SecurityID == 1
    finally:
        await pub.close()


def test_a_subscription_to_one_stream_sees_every_rptseq():
    asyncio.run(_one_stream_subscribers(1500))


async def _unsubscribe_another_request():
    """MDReqID 7 and then 8 subscribe BTCUSDT on one connection (8 takes the subscription
    over: a fresh snapshot); an unsubscribe of 7 names no live subscription and changes
    nothing: 8's increments go on. It stopped them, silently."""
    e = LocalEngine(seed=5, keep_books=False)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        r, w = await logged_on(pub, (7, b"1", 3), (8, b"1", 3), (7, b"2", 3))
        buf, snaps, incs = bytearray(), [], 0
        i = 0
        deadline = asyncio.get_running_loop().time() + 20
        while incs < 20:
            assert asyncio.get_running_loop().time() < deadline, \
                f"no increments after the unsubscribe of another MDReqID ({incs}, {snaps})"
            if len(snaps) == 2:
                for _ in range(20):
                    i += 1
                    pub.apply("BTCUSDT", *e.step(T0 + i))
            try:
                buf += await asyncio.wait_for(r.read(1 << 16), 0.05)
            except TimeoutError:
                pass
            for f in take_frames(buf):
                if f.template_id == wire.MARKET_DATA_SNAPSHOT:
                    snaps.append(wire.decode(f).MDReqID)
                elif f.template_id in (wire.MARKET_DATA_INCREMENTAL, wire.TRADE):
                    incs += 1
        assert snaps == [7, 8]
        w.close()
    finally:
        await pub.close()


def test_unsubscribing_another_mdreqid_leaves_the_live_subscription():
    asyncio.run(_unsubscribe_another_request())


async def _no_heartbeat_while_streaming():
    """§4.8: a Heartbeat only after the interval with nothing sent. The publisher's increments
    count as sent: a connection idle for 2 s that has just been sent an increment gets no
    Heartbeat at the next tick (it got one every second while the stream flowed)."""
    e = LocalEngine(seed=6, keep_books=False)
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        r, w = await logged_on(pub, (1, b"1", 3))
        while not pub.binary.by_symbol[1]:
            await asyncio.sleep(0.01)
        conn, = pub.binary.by_symbol[1]
        beats = []
        write = conn.write
        conn.write = lambda f: (beats.append(f) if f[6:8] == b"\x05\x00" else None, write(f))
        pub.binary.tick()
        assert beats == []                           # it just sent the snapshot
        conn.last_sent -= 2.0                        # 2 s with nothing sent ...
        i = 0
        while not pub.binary.stats["frames"]:        # ... then an increment
            i += 1
            pub.apply("BTCUSDT", *e.step(T0 + i))
        pub.binary.tick()
        assert beats == [], "a Heartbeat right behind an increment"
        conn.last_sent -= 2.0
        pub.binary.tick()
        assert len(beats) == 1                       # idle: the Heartbeat comes
        w.close()
    finally:
        await pub.close()


def test_no_heartbeat_while_the_stream_flows():
    asyncio.run(_no_heartbeat_while_streaming())


async def _catching_up():
    pub = Publisher(CONF)
    await pub.start(follow=False)
    pub.caught_up.clear()          # as a publisher just restarted, replaying its streams
    try:
        def get(path):
            return http_get(pub.http_port, path)
        code, body = await asyncio.to_thread(get, "/api/v1/depth?symbol=BTCUSDT")
        assert code == 503 and json.loads(body) == {"code": -1003,
                                                    "msg": "catching up: try again"}
        with pytest.raises(Exception, match="503"):
            await connect(f"ws://127.0.0.1:{pub.http_port}/ws")
        r, w = await logged_on(pub, (1, b"1", 3))
        buf = bytearray()
        while not (frames := take_frames(buf)):
            buf += await asyncio.wait_for(r.read(4096), 5)
        m = wire.decode(frames[0])
        assert frames[0].template_id == wire.LOGON_REJECT and \
            m.Reason == wire.LOGON_REJECT_NOT_OPEN, m
        w.close()
        pub.caught_up.set()            # the replay is done: served as before
        code, body = await asyncio.to_thread(get, "/api/v1/depth?symbol=BTCUSDT")
        assert code == 200 and json.loads(body)["lastUpdateId"] == 0
        r, w = await logged_on(pub, (1, b"1", 3))
        buf = bytearray()
        while not (frames := take_frames(buf)):
            buf += await asyncio.wait_for(r.read(4096), 5)
        assert frames[0].template_id == wire.LOGON_ACK
        w.close()
        # the SDK's client takes LogonReject(6) as "not now" and logs on once caught up
        pub.caught_up.clear()
        md = MarketDataClient("127.0.0.1", pub.feed_port)
        await md.connect()
        await md.subscribe(1)
        ev = await md.next_event(5)
        while ev[0] != "logon_reject":
            ev = await md.next_event(5)
        assert ev[1].Reason == wire.LOGON_REJECT_NOT_OPEN and md.reconnect
        # refused again and again (a user's connections full): each wait longer, at most
        # RETRY_MAX_S, so that a client does not loop at a fixed short interval
        waits = []
        for _ in range(3):
            while (ev := await md.next_event(5))[0] != "logon_reject":
                pass
            waits.append(md.retry_after_s)
        assert md.refusals == 4 and 2.0 <= waits[-1] <= mdclient.RETRY_MAX_S, waits
        pub.caught_up.set()
        while ev[0] != "book":
            ev = await md.next_event(10)
        await md.close()
    finally:
        await pub.close()


def test_a_publisher_catching_up_serves_no_book():
    """A restarted publisher replays its out streams from seq 1 before its books are where
    they were; its listeners are open from the start (the supervisor's probe). An independent
    client got an empty book with its update id back at 0 over REST and the WebSocket, then
    the replayed history, for about a second after a SIGKILL. Until caught up: HTTP 503 and
    LogonReject(6)."""
    asyncio.run(_catching_up())


async def _status_says_catching_up():
    from types import SimpleNamespace

    from deploy.supervisor import probe
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        spec = SimpleNamespace(role="marketdata", control=f"tcp://127.0.0.1:{pub.feed_port}",
                               extra={"probe": "tcp", "http": f"tcp://127.0.0.1:{pub.http_port}"})
        st = await asyncio.to_thread(probe, spec, 5.0, None, True)
        assert st == {"state": "accepting clients"}, st
        pub.caught_up.clear()          # restarted, replaying its streams: refusing everyone
        st = await asyncio.to_thread(probe, spec, 5.0, None, True)
        assert st["state"].startswith("catching up"), st
        # the supervisor's heartbeats probe the feed port alone: no GET every second
        requests = pub.ws.stats["http_requests"]
        assert await asyncio.to_thread(probe, spec, 5.0) == {"state": "accepting clients"}
        assert pub.ws.stats["http_requests"] == requests
        spec.extra["http"] = "tcp://127.0.0.1:1"     # a web port that does not answer
        st = await asyncio.to_thread(probe, spec, 5.0, None, True)
        assert "web port does not answer" in st["state"], st
    finally:
        await pub.close()


def test_seqex_status_says_when_the_publisher_is_catching_up():
    """`seqex status` (deploy.supervisor.probe) showed "accepting clients" for a publisher
    that refused every client while it replayed its streams (its binary port answers the
    probe's Heartbeat either way); its web port says which."""
    asyncio.run(_status_says_catching_up())


async def _ping_a_feed(capsys, keys: list[str]):
    from deploy import cli
    pub = Publisher(CONF)
    await pub.start(follow=False)
    try:
        rc = await asyncio.to_thread(
            cli.main, [*keys, "ping", f"tcp://127.0.0.1:{pub.feed_port}", "--timeout", "1"])
        return rc, capsys.readouterr()
    finally:
        await pub.close()


def test_seqex_ping_of_a_protocol_port_says_what_answered(capsys, tmp_path):
    """`seqex ping` of the market-data feed's (or the gateway's) port: PROTOCOL.md, no PING.
    It said "did not answer PING" and exited 2, as if nothing ran there; with the cluster's
    keys, "no server of this topology is there" (the trust policy names no ZeroMQ server on
    such a port)."""
    from deploy import cli
    from mq import auth
    assert cli.main(["keys", "--dir", str(tmp_path / "keys")]) == 0
    try:
        for keys in (["--insecure"], ["--keys", str(tmp_path / "keys"), "--key", "operator"]):
            capsys.readouterr()
            rc, out = asyncio.run(_ping_a_feed(capsys, keys))
            assert rc == 0, (keys, out)
            assert "PROTOCOL.md port" in out.out and "answered a Heartbeat" in out.out, out
    finally:
        auth.reset()
