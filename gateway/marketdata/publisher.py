"""The market-data publisher process: `seqex marketdata --config JSON`.

It follows every out.ce.SYM from seq 1 (mq.subscriber: replay from the replicators, then the
live feed, exactly once and in order), folds each record into the symbol's state
(gateway/marketdata/state.py) and hands the record's update to both feeds in the same
event-loop step. It keeps nothing on disk: a restarted publisher replays the streams and holds
the same state, RptSeqs and update ids as before, so a client that reconnects finds its place.

Configuration (JSON, or a file holding it):
    {"feed": "127.0.0.1:7190",          # the binary feed (PROTOCOL.md §6)
     "http": "127.0.0.1:7191",          # WebSocket, HTTP snapshots, the page
     "replicators": ["tcp://..."],
     "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001",
                  "out": "out.ce.BTCUSDT", "pub": "tcp://..."}]}
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from decimal import Decimal

from gateway.aio import stop_task
from gateway.config import json_object
from gateway.marketdata.binary import BinaryFeed, Instrument, update_frames
from gateway.marketdata.state import SymbolState, Update
from gateway.marketdata.ws import Scale, Views, WsFeed

log = logging.getLogger("seqex.marketdata")

TIMER_S = 0.02       # nothing arrived for this long: run the subscribers' timers anyway
TICK_S = 0.1
MANTISSA = Decimal(10) ** 8


def read_config(text: str) -> dict:
    """The configuration, checked; ValueError names the first problem."""
    conf = json_object(text, "market-data configuration")
    for key in ("feed", "http"):
        addr = conf.get(key)
        if not isinstance(addr, str) or not addr.rpartition(":")[2].isdigit():
            raise ValueError(f"{key} must be HOST:PORT, got {addr!r}")
    syms = conf.get("symbols")
    if not isinstance(syms, list) or not syms:
        raise ValueError("symbols must be a non-empty list")
    for s in syms:
        if not isinstance(s, dict) or not {"symbol", "symbol_id", "tick", "lot"} <= set(s):
            raise ValueError("each symbol needs symbol, symbol_id, tick and lot")
        for k in ("tick", "lot"):
            d = Decimal(str(s[k]))
            if d <= 0 or (d * MANTISSA) != int(d * MANTISSA):
                raise ValueError(f"{s['symbol']}: {k} {s[k]} is not a positive multiple of 1e-8")
    if not isinstance(conf.get("replicators", []), list):
        raise ValueError("replicators must be a list")
    if conf.get("accounts") is not None and not isinstance(conf["accounts"], str):
        raise ValueError("accounts must be the path of the gateway's accounts file")
    return conf


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Publisher:
    """The states and the two feeds. `apply(symbol, seq, ts_ns, payload)` is the one way in
    (the process feeds it from the out streams; tests and the benchmark may feed it
    directly)."""

    def __init__(self, conf: dict):
        self.conf = conf
        self.states: dict[int, SymbolState] = {}
        self.instruments: dict[int, Instrument] = {}
        self.views: dict[str, Views] = {}
        self.ids: dict[str, int] = {}
        for s in conf["symbols"]:
            name, sid = s["symbol"], int(s["symbol_id"])
            st = SymbolState(name, sid)
            self.states[sid] = st
            self.ids[name] = sid
            self.instruments[sid] = Instrument(name, sid, int(Decimal(str(s["tick"])) * MANTISSA),
                                               int(Decimal(str(s["lot"])) * MANTISSA))
            self.views[name] = Views(name, st, Scale(str(s["tick"]), str(s["lot"])))
        self.binary = BinaryFeed(self.instruments, self.states, conf.get("accounts"))
        self.ws = WsFeed(self.views)
        self.subscribers: list = []
        self.tasks: list[asyncio.Task] = []
        self.caught_up = asyncio.Event()
        self.seen: dict[str, int] = {}      # symbol -> highest seq known in its out stream
        # the feeds listen from the start (the supervisor's probe is answered) but serve no
        # book before the replay is done: a Logon gets LogonReject(6), HTTP 503
        self.binary.ready = self.ws.ready = self.caught_up.is_set

    def apply(self, symbol: str, seq: int, ts_ns: int, payload: bytes) -> Update:
        sid = self.ids[symbol]
        up = self.states[sid].apply(seq, ts_ns, payload)
        if seq > self.seen.get(symbol, 0):
            self.seen[symbol] = seq
        if self.binary.by_symbol[sid]:
            self.binary.publish(sid, update_frames(self.instruments[sid], up))
        self.ws.publish(symbol, up)
        return up

    async def start(self, follow: bool = True) -> None:
        await self.binary.start(*_hostport(self.conf["feed"]))
        await self.ws.start(*_hostport(self.conf["http"]))
        loop = asyncio.get_running_loop()
        if follow:
            for s in self.conf["symbols"]:
                self.subscribers.append((s["symbol"], _Following(
                    s.get("out", f"out.ce.{s['symbol']}"), s["pub"],
                    list(self.conf["replicators"]), next_seq=1)))
            self.tasks.append(loop.create_task(self._follow()))
        else:
            self.caught_up.set()
        self.tasks.append(loop.create_task(self._ticks()))

    def status(self) -> dict:
        """Counters and positions, for metrics (deploy/metrics.py): plain reads of ints and
        lengths, safe from the exporter's thread between two statements of the event loop."""
        streams = {}
        following = {name: sub for name, sub in self.subscribers}
        for s in self.conf["symbols"]:
            name = s["symbol"]
            applied = self.states[self.ids[name]].seq
            sub = following.get(name)
            seen = max(self.seen.get(name, 0), sub.highest_seen() if sub is not None else 0)
            streams[s.get("out", f"out.ce.{name}")] = {
                "seq": applied, "seen": seen, "lag": max(0, seen - applied),
                "replaying": bool(sub is not None and sub.replaying)}
        b, w = self.binary.stats, self.ws.stats
        return {"role": "marketdata", "streams": streams,
                "caught_up": self.caught_up.is_set(),
                "clients": {"binary": sum(c.logged_on for c in list(self.binary.conns)),
                            "websocket": len(self.ws.conn_streams)},
                "sent": {"binary": b["frames"] + b.get("snapshot_frames", 0),
                         "websocket": w["messages"] + w.get("initial_messages", 0)},
                "slow_consumer_disconnects": {"binary": b["slow_logouts"],
                                              "websocket": w["slow_closes"]},
                "snapshot_requests": {"binary": b.get("snapshot_requests", 0),
                                      "http": w.get("snapshot_requests", 0)},
                "resnapshots": {"binary": b["resnapshots"], "websocket": w["resnapshots"]},
                "dropped_messages": {"websocket": w["dropped"]},
                "auth_failures": b["auth_failures"], "logon_timeouts": b["logon_timeouts"]}

    @property
    def feed_port(self) -> int:
        return self.binary.server.sockets[0].getsockname()[1]

    @property
    def http_port(self) -> int:
        return next(iter(self.ws.server.sockets)).getsockname()[1]

    async def close(self) -> None:
        for t in self.tasks:
            await stop_task(t, "a market-data publisher task")
        await self.binary.close()
        await self.ws.close()
        for _name, sub in self.subscribers:
            sub.close()

    async def _follow(self) -> None:
        from gateway.zwait import SocketWaiter
        from mq.record import decode
        waiter = SocketWaiter([sock for _name, f in self.subscribers
                               for sock in f.sub.sockets()])
        try:
            await self._follow_loop(waiter, decode)
        finally:
            waiter.close()

    async def _follow_loop(self, waiter, decode) -> None:
        while True:
            busy = False
            for name, sub in self.subscribers:
                for _first, _last, frame in sub.poll(0):
                    busy = True
                    for rec in decode(frame):
                        self.apply(name, rec[0], rec[1], rec[6])
            if not self.caught_up.is_set() and not any(s.replaying for _n, s in
                                                         self.subscribers):
                self.caught_up.set()
                log.info("caught up: %s", ", ".join(
                    f"{st.symbol} at seq {st.seq}" for st in self.states.values()))
            if busy:
                await asyncio.sleep(0)
            else:
                await waiter.wait(TIMER_S)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.binary.tick()
            self.ws.tick()


class _Following:
    """An out stream followed from seq 1 (mq.subscriber.Subscriber), which also remembers the
    highest seq it has seen on the live feed (a frame taken, or held for a gap fill): the
    publisher's lag is that minus what it has applied."""

    def __init__(self, *args, **kw):
        from mq.subscriber import Subscriber
        self.sub = Subscriber(*args, **kw)
        self.live_last = 0
        take = self.sub._take

        def _take(first: int, last: int, frame: bytes, out: list) -> None:
            if last > self.live_last:
                self.live_last = last
            take(first, last, frame, out)
        self.sub._take = _take

    @property
    def replaying(self) -> bool:
        return self.sub.replaying

    def highest_seen(self) -> int:
        target = self.sub.target or 0
        return max(self.live_last, target, self.sub.next_seq - 1)

    def poll(self, timeout_ms: int = 100):
        return self.sub.poll(timeout_ms)

    def close(self) -> None:
        self.sub.close()


async def _serve(conf: dict, on_start=None) -> None:
    pub = Publisher(conf)
    await pub.start()
    if on_start is not None:
        on_start(pub)
    log.info("market data: binary feed on %s, WebSocket and HTTP on %s", conf["feed"],
             conf["http"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await pub.close()


def main(conf: dict, on_start=None) -> int:
    """Runs the publisher until SIGTERM/SIGINT; on_start(publisher) once its ports are bound
    (`seqex marketdata` starts its metrics exporter there)."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if os.environ.get("SEQEX_MD_NO_UVLOOP"):
        runner = asyncio.run
    runner(_serve(conf, on_start))
    return 0
