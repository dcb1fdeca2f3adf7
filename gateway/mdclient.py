"""The SDK's market-data side: a local book from the binary feed (PROTOCOL.md §6).

    async with MarketDataClient("127.0.0.1", 7190) as md:
        await md.subscribe(1)                        # SecurityID; None: every instrument
        while True:
            ev = await md.next_event()               # ("book", book) / ("trade", m) / ...
            print(md.books[1].best())

Contract (PROTOCOL.md §6, the client rules):

* `LocalBook` applies a MarketDataSnapshot (its fragments up to LastFragment) and then only the
  message with RptSeq = last + 1. A message at or below the last RptSeq is stale and ignored;
  one beyond last + 1 is a gap: the book is marked out of sync and `MarketDataClient` asks
  for a new snapshot (MarketDataRequest '1'), applying nothing until it arrives. A Trade
  advances RptSeq like an Incremental (trades and book changes are totally ordered).
* A snapshot that arrives while the book is in sync (the server re-snapshots a consumer that
  fell behind) replaces the book: that is how a slow consumer is told it missed updates.
* After a disconnect the client reconnects, logs on, resubscribes and starts from a new
  snapshot: market data is recovered by state, not replayed.
* Prices are PROTOCOL.md mantissas (i64, exponent -8), sizes are lots; `SecurityDefinition`s
  (tick, lot, symbol) are kept in `definitions`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque

from gateway import wire
from gateway.aio import stop_task, wait_set
from gateway.marketdata.state import book_levels

RETRY_MAX_S = 10.0     # the longest wait before a reconnect after a LogonReject(6)

log = logging.getLogger("seqex.mdclient")

OK, STALE, GAP, UNSYNCED = "ok", "stale", "gap", "unsynced"


class LocalBook:
    """One instrument's book as the feed describes it, verified against RptSeq."""

    def __init__(self, security_id: int):
        self.security_id = security_id
        self.bids: dict[int, tuple[int, int]] = {}     # price mantissa -> (lots, orders)
        self.asks: dict[int, tuple[int, int]] = {}
        self.rpt_seq = 0
        self.synced = False
        self.transact_time = 0
        self._pending: list | None = None               # snapshot fragments so far
        self.stats = {"snapshots": 0, "gaps": 0, "stale": 0, "applied": 0}

    # -- messages ----------------------------------------------------------------------------
    def on_snapshot(self, m, entries) -> bool:
        """One fragment; True when the last one completed a new book."""
        if self._pending is None:
            self._pending = []
        self._pending.extend(entries)
        if not m.Flags & wire.FLAG_LAST_FRAGMENT:
            return False
        bids, asks = {}, {}
        for e in self._pending:
            (bids if e.MDEntryType == wire.MD_ENTRY_BID else asks)[e.Price] = \
                (e.Size, e.NumOrders)
        self._pending = None
        self.bids, self.asks = bids, asks
        self.rpt_seq = m.LastRptSeq
        self.transact_time = m.TransactTime
        self.synced = True
        self.stats["snapshots"] += 1
        return True

    def _check(self, rpt_seq: int) -> str:
        if not self.synced:
            return UNSYNCED
        if rpt_seq <= self.rpt_seq:
            self.stats["stale"] += 1
            return STALE
        if rpt_seq != self.rpt_seq + 1:
            self.stats["gaps"] += 1
            self.synced = False
            return GAP
        self.rpt_seq = rpt_seq
        self.stats["applied"] += 1
        return OK

    def on_incremental(self, m, entries) -> str:
        verdict = self._check(m.RptSeq)
        if verdict != OK:
            return verdict
        self.transact_time = m.TransactTime
        for e in entries:
            book = self.bids if e.MDEntryType == wire.MD_ENTRY_BID else self.asks
            if e.MDUpdateAction == b"2" or e.Size == 0:
                book.pop(e.Price, None)
            else:
                book[e.Price] = (e.Size, e.NumOrders)
        return OK

    def on_trade(self, m) -> str:
        verdict = self._check(m.RptSeq)
        if verdict == OK:
            self.transact_time = m.TransactTime
        return verdict

    # -- views -------------------------------------------------------------------------------
    def levels(self, depth: int = 0) -> dict[str, list[tuple[int, int, int]]]:
        """{'bids': [(price mantissa, lots, orders)], 'asks': [...]}, best first."""
        return book_levels(self.bids, self.asks, depth)

    def best(self) -> tuple[int | None, int | None]:
        return (max(self.bids) if self.bids else None, min(self.asks) if self.asks else None)


class MarketDataClient:
    """An asyncio client of the binary feed that keeps a LocalBook per subscribed instrument.

    `next_event()` returns, in feed order: ("book", LocalBook) after a snapshot completed or an
    increment applied, ("trade", Trade message, LocalBook), ("resync", LocalBook) when a gap
    was found and a new snapshot requested, ("reject", m), ("definition", m),
    ("disconnected", reason text). Reconnects by itself (unless `reconnect=False`)."""

    def __init__(self, host: str, port: int, reconnect: bool = True, user: str = "md",
                 password: str = ""):
        self.host, self.port = host, port
        self.reconnect = reconnect
        self.retry_after_s = 0.05      # the wait before a reconnect
        self.refusals = 0              # LogonReject(6) in a row
        self.user = user
        self.password = password           # the feed checks them when it has accounts
        self.books: dict[int, LocalBook] = {}
        self.definitions: dict[int, object] = {}
        self.wanted: dict[int | None, int] = {}          # SecurityID (None: all) -> MDReqID
        self.events: deque = deque()
        self._ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self.closed = False
        self.stats = {"connects": 0, "resyncs": 0, "logouts": 0}

    async def connect(self, timeout_s: float = 10.0) -> MarketDataClient:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self

    async def __aenter__(self) -> MarketDataClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(wire.encode(wire.LOGOUT, 0, wire.char_field("bye", 32)))
                self._writer.close()
        await stop_task(self._task, "the market-data client's connection loop")

    async def subscribe(self, security_id: int | None) -> None:
        self.wanted[security_id] = next(self._ids)
        self._request(security_id)

    def _request(self, security_id: int | None) -> None:
        if self._writer is None:
            return
        sid = wire.U32_NULL if security_id is None else security_id
        md_req_id = self.wanted.setdefault(security_id, next(self._ids))
        self._writer.write(wire.encode(wire.MARKET_DATA_REQUEST, md_req_id, sid,
                                       wire.SUBSCRIPTION_SNAPSHOT_UPDATES, 0, 3))

    def _resync(self, book: LocalBook) -> None:
        """A gap: a new MarketDataRequest for this instrument (a new MDReqID)."""
        self.stats["resyncs"] += 1
        self.wanted.pop(book.security_id, None)
        self._request(book.security_id)
        self._push(("resync", book))

    def _push(self, ev) -> None:
        self.events.append(ev)
        self._ready.set()

    async def next_event(self, timeout_s: float | None = None):
        """The next event; TimeoutError after timeout_s without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.events:
            self._ready.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no market data event")
            await wait_set(self._ready, left)
        return self.events.popleft()

    def drain(self) -> list:
        out = list(self.events)
        self.events.clear()
        return out

    async def _run(self) -> None:
        backoff = 0.1
        while not self.closed:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            self._writer = writer
            self.stats["connects"] += 1
            for b in self.books.values():
                b.synced = False
            writer.write(wire.encode(wire.LOGON, 0, 0, 0, 1000, 0, 0, 0,
                                     wire.char_field(self.user, 16),
                                     wire.char_field(self.password, 32)))
            for sid in list(self.wanted):
                self._request(sid)
            self._connected.set()
            why = "connection closed"
            try:
                await self._read(reader)
            except (OSError, asyncio.IncompleteReadError):
                pass
            except wire.FramingError as exc:
                why = f"framing error: {exc}"
            self._writer = None
            with contextlib.suppress(Exception):
                writer.close()
            self._push(("disconnected", why))
            if not self.reconnect:
                return
            await asyncio.sleep(self.retry_after_s)
            self.retry_after_s = 0.05

    async def _read(self, reader: asyncio.StreamReader) -> None:
        async for frame in wire.frames(reader):
            self._on_frame(frame)

    def _book(self, sid: int) -> LocalBook:
        b = self.books.get(sid)
        if b is None:
            b = self.books[sid] = LocalBook(sid)
        return b

    def _on_frame(self, frame: wire.Frame) -> None:
        tid = frame.template_id
        if tid == wire.MARKET_DATA_INCREMENTAL:
            m = wire.decode(frame)
            b = self._book(m.SecurityID)
            v = b.on_incremental(m, wire.decode_entries(frame))
            if v == OK:
                self._push(("book", b))
            elif v == GAP:
                self._resync(b)
        elif tid == wire.TRADE:
            m = wire.decode(frame)
            b = self._book(m.SecurityID)
            v = b.on_trade(m)
            if v == OK:
                self._push(("trade", m, b))
            elif v == GAP:
                self._resync(b)
        elif tid == wire.MARKET_DATA_SNAPSHOT:
            m = wire.decode(frame)
            b = self._book(m.SecurityID)
            if b.on_snapshot(m, wire.decode_entries(frame)):
                self._push(("book", b))
        elif tid == wire.SECURITY_DEFINITION:
            m = wire.decode(frame)
            self.definitions[m.SecurityID] = m
            self._push(("definition", m))
        elif tid == wire.MARKET_DATA_REQUEST_REJECT:
            self._push(("reject", wire.decode(frame)))
        elif tid == wire.LOGON_ACK:
            self.refusals = 0
        elif tid == wire.LOGON_REJECT:
            m = wire.decode(frame)
            self.stats["logon_rejects"] = self.stats.get("logon_rejects", 0) + 1
            if m.Reason != wire.LOGON_REJECT_NOT_OPEN:
                # final (bad credentials): no reconnect loop against a refusal
                self.reconnect = False
                self.closed = True
            else:
                # not now (a publisher catching up, the feed or the user's connections full):
                # the reconnect waits, twice as long after each refusal in a row (at most
                # RETRY_MAX_S), with jitter, so that many clients do not come back together
                self.refusals += 1
                self.retry_after_s = min(RETRY_MAX_S, 0.25 * 2 ** self.refusals) * \
                    random.uniform(0.5, 1.0)
            self._push(("logon_reject", m))
        elif tid == wire.LOGOUT:
            self.stats["logouts"] += 1
            self._push(("logout", wire.decode(frame)))
            if not self.closed and self._writer is not None:
                # the feed initiated: answer, and let it close (PROTOCOL.md §4.9)
                self._writer.write(wire.encode(wire.LOGOUT, 0, wire.char_field("", 32)))
        elif tid == wire.TEST_REQUEST and self._writer is not None:
            self._writer.write(wire.encode(wire.HEARTBEAT, wire.decode(frame).TestReqID, 0, 0))
