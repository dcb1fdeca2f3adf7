"""The WebSocket JSON feed and the HTTP endpoints (snapshots, the page), on one port.

Library: `websockets` (the asyncio implementation, websockets.asyncio.server): RFC 6455
complete, maintained for a decade, no dependencies, and its `broadcast` writes a frame to
many connections synchronously, in one event-loop step, which is what a fan-out needs.

Conventions are those of the large venues' public streams (Binance's in particular):

* Connect to `/stream?streams=depth@BTCUSDT/trades@BTCUSDT` (or `/ws`, then send
  `{"method": "SUBSCRIBE", "params": ["depth@BTCUSDT"], "id": 1}`); every message is
  `{"stream": NAME, "data": {...}}`.
* Update ids are the seqs of out.ce.SYMBOL. A `depthUpdate` holds the levels changed by the
  records `U` .. `u` (`[price, qty]` pairs, qty "0": the level is gone), and the next one's `U`
  is this one's `u` + 1. On subscribing, the stream starts with a `depthSnapshot`
  (`lastUpdateId`), taken in the same event-loop step as the registration; REST resync:
  `GET /api/v1/depth?symbol=S`, then drop every update with `u <= lastUpdateId`; the first
  applied has `U <= lastUpdateId + 1 <= u`.
* `trades@S` (`trade` events, after a `recentTrades` list), `ticker@S` (`24hrTicker`),
  `kline_1m@S` (also 5m, 1h, 1d: `kline` events, after a `klines` list).
* Prices and quantities are decimal strings in the contract's units.
* A client that does not read: past `HIGH_WATER` bytes queued its messages are dropped, and
  once it has drained it gets a fresh snapshot of each of its streams (a depthSnapshot whose
  `lastUpdateId` jumps, so the gap is visible); still behind after `STALE_LIMIT_S`, it is
  closed with 1008 "slow consumer".

HTTP: `/` the page; `/api/v1/depth?symbol=&limit=`, `/api/v1/trades?symbol=&limit=`,
`/api/v1/ticker/24hr?symbol=`, `/api/v1/klines?symbol=&interval=&limit=`,
`/api/v1/exchangeInfo`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from decimal import Decimal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from gateway.marketdata.state import ASK, BID, DELETE, INTERVALS, SymbolState, Update

log = logging.getLogger("seqex.marketdata.ws")
# the library logs every connection's open, response and close at INFO: unauthenticated
# requests would grow the publisher's log without bound; its warnings and errors still show
_conn_log = logging.getLogger("seqex.marketdata.ws.connections")
_conn_log.setLevel(logging.WARNING)

HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
STALE_LIMIT_S = 5.0
MAX_STREAMS = 64
MAX_CONNECTIONS = 4096            # WebSocket connections; at the limit see WsFeed._http
MAX_PER_ADDRESS = 1024            # of one peer address (the feed is public: no user to count)
OPEN_TIMEOUT_S = 5.0              # a connection must finish its HTTP request in this
PAGE = os.path.join(os.path.dirname(__file__), "page.html")
ENDPOINTS = ("depth", "trades", "ticker/24hr", "klines")     # under /api/v1/, with a symbol
CHANNELS = ("depth", "trades", "ticker", *(f"kline_{i}" for i in INTERVALS))


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Scale:
    """Ticks and lots as decimal strings of the contract's units."""

    def __init__(self, tick: str, lot: str):
        self.tick = Decimal(tick)
        self.lot = Decimal(lot)

    def p(self, ticks: int) -> str:
        return str(self.tick * ticks)

    def q(self, lots: int) -> str:
        return str(self.lot * lots)

    def quote(self, tick_lots: int) -> str:
        return str(self.tick * self.lot * tick_lots)


class Views:
    """JSON views of one symbol's state (the snapshot messages and the REST answers)."""

    def __init__(self, symbol: str, st: SymbolState, scale: Scale):
        self.symbol, self.st, self.s = symbol, st, scale
        self.last_depth_u = 0        # the u of the last depthUpdate (U of the next is this + 1)

    def depth(self, limit: int = 0) -> dict:
        b = self.st.book(limit)
        p, q = self.s.p, self.s.q
        return {"lastUpdateId": self.st.seq,
                "bids": [[p(x), q(y)] for x, y, _n in b["bids"]],
                "asks": [[p(x), q(y)] for x, y, _n in b["asks"]]}

    def trade(self, t) -> dict:
        return {"e": "trade", "E": t.ts_ns // 10**6, "s": self.symbol, "t": t.trade_id,
                "p": self.s.p(t.price), "q": self.s.q(t.qty), "T": t.ts_ns // 10**6,
                "m": t.aggressor == ASK, "u": t.seq}

    def trades(self, limit: int = 0) -> list:
        ts = list(self.st.trades)
        return [self.trade(t) for t in (ts[-limit:] if limit else ts)]

    def ticker(self) -> dict:
        t = self.st.ticker()
        p = self.s.p
        none = t.last is None
        return {"e": "24hrTicker", "E": self.st.now // 10**6, "s": self.symbol,
                "o": None if none else p(t.open), "c": None if none else p(t.last),
                "h": None if none else p(t.high), "l": None if none else p(t.low),
                "v": self.s.q(t.volume), "q": self.s.quote(t.quote),
                "p": p(t.change), "P": None if none else
                f"{(Decimal(t.change) * 100 / Decimal(t.open)).quantize(Decimal('0.001'))}",
                "n": t.count, "O": t.window_start_ns // 10**6, "C": self.st.now // 10**6,
                "halted": self.st.status == 2, "u": self.st.seq}

    def kline(self, interval: str, k) -> dict:
        p = self.s.p
        width = INTERVALS[interval]
        return {"t": k.start_ns // 10**6, "T": (k.start_ns + width) // 10**6 - 1,
                "i": interval, "o": p(k.open), "c": p(k.close), "h": p(k.high),
                "l": p(k.low), "v": self.s.q(k.volume), "q": self.s.quote(k.quote),
                "n": k.count, "f": k.first_trade, "L": k.last_trade,
                "x": self.st.now >= k.start_ns + width}

    def klines(self, interval: str, limit: int = 0) -> list:
        ks = list(self.st.klines[interval])
        return [self.kline(interval, k) for k in (ks[-limit:] if limit else ks)]

    def initial(self, channel: str) -> dict:
        """The first message of a stream: the state it continues from."""
        if channel == "depth":
            return {"e": "depthSnapshot", "s": self.symbol, **self.depth()}
        if channel == "trades":
            return {"e": "recentTrades", "s": self.symbol, "lastUpdateId": self.st.seq,
                    "trades": self.trades()}
        if channel == "ticker":
            return self.ticker()
        interval = channel[len("kline_"):]
        return {"e": "klines", "s": self.symbol, "i": interval, "lastUpdateId": self.st.seq,
                "klines": self.klines(interval)}

    def updates(self, up: Update, want=CHANNELS) -> list[tuple[str, dict]]:
        """[(channel, data)] of one record, for the channels in `want` (the depth ids go on
        whether or not depth is wanted)."""
        out = []
        if up.book_changed and "depth" not in want:
            self.last_depth_u = up.seq
        elif up.book_changed:
            bids: dict[int, int] = {}
            asks: dict[int, int] = {}
            for kind, run in up.items:
                if kind == "levels":
                    for side, price, lots, _n, action in run:
                        (bids if side == BID else asks)[price] = 0 if action == DELETE else lots
            p, q = self.s.p, self.s.q
            out.append(("depth", {"e": "depthUpdate", "E": up.ts_ns // 10**6, "ts": up.ts_ns,
                                  "s": self.symbol, "U": self.last_depth_u + 1, "u": up.seq,
                                  "b": [[p(x), q(y)] for x, y in bids.items()],
                                  "a": [[p(x), q(y)] for x, y in asks.items()]}))
            self.last_depth_u = up.seq
        trades = up.trades
        if trades:
            if "trades" in want:
                for t in trades:
                    out.append(("trades", self.trade(t)))
            if "ticker" in want:
                out.append(("ticker", self.ticker()))
            for interval in INTERVALS:
                if f"kline_{interval}" in want:
                    out.append((f"kline_{interval}", {
                        "e": "kline", "E": up.ts_ns // 10**6, "s": self.symbol, "u": up.seq,
                        "k": self.kline(interval, self.st.klines[interval][-1])}))
        elif up.status_changed and "ticker" in want:
            out.append(("ticker", self.ticker()))
        return out


def _address(connection) -> str:
    peer = connection.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class WsFeed:
    def __init__(self, views: dict[str, Views]):
        self.views = views
        self.subs: dict[str, set] = {f"{c}@{s}": set() for s in views for c in CHANNELS}
        self.conn_streams: dict = {}        # connection -> set of stream names
        self.stale: dict = {}               # connection -> monotonic time it fell behind
        self.server = None
        self.max_connections = MAX_CONNECTIONS
        self.evicting: set = set()          # closed to make room, their handlers not yet done
        self.per_address: dict[str, int] = {}
        self.max_per_address = MAX_PER_ADDRESS
        self.full_logged_at = -1e9
        self.ready: Callable[[], bool] = lambda: True   # the publisher: caught up with its streams
        self.stats = {"messages": 0, "dropped": 0, "resnapshots": 0, "slow_closes": 0,
                      "refused_connections": 0, "evicted_connections": 0,
                      "snapshot_requests": 0, "http_requests": 0, "initial_messages": 0}
        with open(PAGE, encoding="utf-8") as f:
            self.page = f.read().encode()

    async def start(self, host: str, port: int) -> None:
        self.server = await serve(self._handler, host, port, process_request=self._http,
                                  compression=None, max_queue=64, ping_interval=20, backlog=1024,
                                  write_limit=HIGH_WATER, logger=_conn_log,
                                  open_timeout=OPEN_TIMEOUT_S)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # -- HTTP ------------------------------------------------------------------------------
    def _json(self, status: int, obj, extra: list[tuple[str, str]] = ()) -> Response:
        body = _dumps(obj).encode()
        return Response(status, HTTPStatus(status).phrase, Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store"), ("Access-Control-Allow-Origin", "*"), *extra]), body)

    def _http(self, connection, request):
        url = urlsplit(request.path)
        if not self.ready() and url.path not in ("/", "/index.html"):
            # a publisher just started replays its streams first: an empty or an old book
            # (its update ids gone back) would be served until it is caught up
            return self._json(503, {"code": -1003, "msg": "catching up: try again"})
        if url.path in ("/ws", "/stream"):
            if self.per_address.get(_address(connection), 0) >= self.max_per_address:
                # one host would otherwise hold every connection, following a stream each
                self.stats["refused_connections"] += 1
                return self._json(503, {"code": -1003, "msg": "too many connections from "
                                                               "this address"})
            if len(self.conn_streams) - len(self.evicting) >= self.max_connections:
                return self._full()
            return None            # the WebSocket handshake
        self.stats["http_requests"] += 1
        method = getattr(request, "method", "GET")
        if method == "OPTIONS":     # a browser's CORS preflight: what a page elsewhere may ask
            return Response(204, "No Content", Headers(
                [("Access-Control-Allow-Origin", "*"),
                 ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
                 ("Access-Control-Allow-Headers", "*"), ("Access-Control-Max-Age", "600"),
                 ("Content-Length", "0")]), b"")
        if method not in ("GET", "HEAD"):
            # read-only: a POST or a DELETE is not a GET under another name
            return self._json(405, {"code": -1, "msg": f"{method} is not allowed: GET only"},
                              [("Allow", "GET, HEAD, OPTIONS")])
        response = self._get(url)
        if method == "HEAD":        # the GET's headers (its Content-Length too), no body
            return Response(response.status_code, response.reason_phrase, response.headers,
                            b"")
        return response

    def _get(self, url) -> Response:
        params = parse_qs(url.query)      # (a blank value is as if not given)
        if any(len(v) > 1 for v in params.values()):
            return self._json(400, {"code": -1101, "msg": "Duplicate values for a parameter "
                                                          "detected."})
        q = {k: v[0] for k, v in params.items()}
        if url.path in ("/", "/index.html"):
            return Response(200, "OK", Headers(
                [("Content-Type", "text/html; charset=utf-8"),
                 ("Content-Length", str(len(self.page))), ("Cache-Control", "no-store")]),
                self.page)
        if url.path == "/api/v1/exchangeInfo":
            return self._json(200, {"symbols": [
                {"symbol": s, "tickSize": str(v.s.tick), "lotSize": str(v.s.lot)}
                for s, v in self.views.items()]})
        what = url.path[len("/api/v1/"):]
        if not url.path.startswith("/api/v1/") or what not in ENDPOINTS:
            return self._json(404, {"code": -1, "msg": f"no such path {url.path}"})
        v = self.views.get(q.get("symbol", ""))
        if v is None:
            return self._json(400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            limit = int(q.get("limit", "0"))
        except ValueError:
            return self._json(400, {"code": -1100, "msg": "limit must be an integer"})
        if limit < 0:
            return self._json(400, {"code": -1100, "msg": "limit must not be negative"})
        if what == "depth":
            self.stats["snapshot_requests"] += 1
            return self._json(200, v.depth(limit))
        if what == "trades":
            return self._json(200, v.trades(limit))
        if what == "ticker/24hr":
            return self._json(200, v.ticker())
        if what == "klines":
            interval = q.get("interval", "1m")
            if interval not in INTERVALS:
                return self._json(400, {"code": -1120, "msg": "Invalid interval."})
            return self._json(200, v.klines(interval, limit))
        raise AssertionError(what)   # ENDPOINTS names every branch above

    def _full(self):
        """At the connection limit (descriptors are finite: idle connections held open would
        take every one, and the REST API and the binary feed with them), the oldest
        connection that follows no stream is closed to make room; with none, 503."""
        now = time.monotonic()
        idle = next((c for c, names in self.conn_streams.items()
                     if not names and c not in self.evicting), None)
        if now - self.full_logged_at >= 10.0:
            self.full_logged_at = now
            log.warning("%d WebSocket connections, the limit: %s", len(self.conn_streams),
                        "the oldest following no stream closes for a new one" if idle
                        else "every one follows a stream: new ones refused (503)")
        if idle is None:
            self.stats["refused_connections"] += 1
            return self._json(503, {"code": -1003, "msg": "too many connections"})
        self.stats["evicted_connections"] += 1
        self.evicting.add(idle)           # until its handler's cleanup
        idle.transport.abort()
        return None

    # -- WebSocket -------------------------------------------------------------------------
    async def _handler(self, conn) -> None:
        self.conn_streams[conn] = set()
        address = _address(conn)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        try:
            url = urlsplit(conn.request.path)
            names = parse_qs(url.query).get("streams", [""])[-1]
            bad = self._subscribe(conn, [n for n in names.split("/") if n])
            if bad:
                await conn.close(1008, f"unknown stream {bad}"[:120])
                return
            async for msg in conn:
                try:
                    req = json.loads(msg)
                    method, params, rid = req["method"], req.get("params", []), req.get("id")
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                    # (RecursionError: nesting deeper than the parser's stack, "[[[[...")
                    await conn.send(_dumps({"error": {"code": 2, "msg": "Invalid JSON"}}))
                    continue
                if not isinstance(method, str) or not isinstance(params, list) or \
                        not all(isinstance(n, str) for n in params):
                    await conn.send(_dumps({"error": {
                        "code": 2, "msg": "method must be a string, params a list of names"},
                        "id": rid if isinstance(rid, (int, str)) or rid is None else None}))
                    continue
                if method == "SUBSCRIBE":
                    bad = self._subscribe(conn, list(params))
                elif method == "UNSUBSCRIBE":
                    bad = None
                    for n in params:
                        self.subs.get(n, set()).discard(conn)
                        self.conn_streams[conn].discard(n)
                elif method == "LIST_SUBSCRIPTIONS":
                    await conn.send(_dumps({"result": sorted(self.conn_streams[conn]),
                                            "id": rid}))
                    continue
                else:
                    bad = method
                if bad:
                    await conn.send(_dumps({"error": {"code": 2, "msg": f"unknown {bad}"},
                                            "id": rid}))
                else:
                    await conn.send(_dumps({"result": None, "id": rid}))
        except ConnectionClosed:
            pass            # the client went away: nothing to tell anybody
        finally:
            for n in self.conn_streams.pop(conn, ()):
                self.subs[n].discard(conn)
            self.evicting.discard(conn)
            n = self.per_address.get(address, 0) - 1
            if n > 0:
                self.per_address[address] = n
            else:
                self.per_address.pop(address, None)
            self.stale.pop(conn, None)

    def _subscribe(self, conn, names: list) -> str | None:
        """Registers the streams and sends each one's initial message, in this step."""
        for n in names:
            if n not in self.subs:
                return str(n)
        if len(self.conn_streams[conn]) + len(names) > MAX_STREAMS:
            return "stream count"
        for n in names:
            if n in self.conn_streams[conn]:
                continue
            self._initial(conn, n)
            self.subs[n].add(conn)
            self.conn_streams[conn].add(n)
        return None

    def _initial(self, conn, name: str) -> None:
        channel, _, symbol = name.partition("@")
        self.stats["initial_messages"] += 1
        broadcast([conn], _dumps({"stream": name, "data": self.views[symbol].initial(channel)}))

    def publish(self, symbol: str, up: Update) -> None:
        v = self.views[symbol]
        want = [c for c in CHANNELS if self.subs[f"{c}@{symbol}"]]
        if not want:
            if up.book_changed:
                v.last_depth_u = up.seq     # the ids go on with nobody listening
            return
        for channel, data in v.updates(up, want):
            name = f"{channel}@{symbol}"
            conns = self.subs[name]
            if not conns:
                continue
            msg = _dumps({"stream": name, "data": data})
            live = []
            for c in conns:
                if c in self.stale:
                    self.stats["dropped"] += 1
                elif c.transport.get_write_buffer_size() > HIGH_WATER:
                    self.stale[c] = time.monotonic()
                    self.stats["dropped"] += 1
                else:
                    live.append(c)
            broadcast(live, msg)
            self.stats["messages"] += len(live)

    def tick(self) -> None:
        """Stale connections: a fresh snapshot once drained; closed if behind too long."""
        now = time.monotonic()
        for c, since in list(self.stale.items()):
            if c.transport.get_write_buffer_size() <= LOW_WATER:
                del self.stale[c]
                self.stats["resnapshots"] += 1
                for n in sorted(self.conn_streams.get(c, ())):
                    self._initial(c, n)
            elif now - since > STALE_LIMIT_S:
                del self.stale[c]
                self.stats["slow_closes"] += 1
                for n in self.conn_streams.get(c, ()):
                    self.subs[n].discard(c)
                c.transport.abort()
