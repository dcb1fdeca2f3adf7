"""The binary market-data feed of PROTOCOL.md §6: encoding, and the TCP server.

One connection: Logon (SessionID 0; with an accounts file configured, the Username and Password
are checked as the gateway checks them, by the same gateway/auth.py: a password verified
before passes without scrypt, the scrypt checks are bounded overall and per peer address, and
LogonReject 1 "bad credentials" answers a mismatch; without one, market data is public and any
credentials pass) →
LogonAck → one
SecurityDefinition per instrument → the client's MarketDataRequests. A subscription ('1') is
answered, inside the same event-loop step that registers it, by MarketDataSnapshot fragments
with LastRptSeq = K (the last flagged LastFragment), after which the connection gets RptSeq
K+1, K+2, ... of that instrument: MarketDataIncremental and Trade messages, in RptSeq order.
A subscription to one of the two (Streams 1 book, 2 trades) gets, for each message of the
other, a MarketDataIncremental without entries at its RptSeq (`gap_filler`), so that its
RptSeq has no gaps either.

Slow consumers: the transport's write buffer has a high-water mark (`HIGH_WATER`). A
subscriber above it is marked stale and its increments are not queued; when the buffer has
drained below the low-water mark it gets a fresh snapshot of every instrument it follows
(conflation by re-snapshot: the jump in RptSeq is announced by the snapshot, never silent).
A connection that stays above the mark for `STALE_LIMIT_S`, or asks for snapshots past
`QUEUE_LIMIT` times the mark, is sent Logout(7) behind the whole frames already queued, and
closed once they are written: a consumer that reads again within `SLOW_CLOSE_GRACE_S` gets
every frame whole, then the Logout, however slowly it reads; one that reads nothing for
that long is cut off then (its buffer is not kept for ever). One user holds at most
`MAX_CONNS_PER_USER` logged-on connections.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import termios
import time
from collections.abc import Callable

from gateway import wire
from gateway.auth import Authenticator
from gateway.marketdata.state import ASK, BID, DELETE, LEVELS_PER_MESSAGE, SymbolState, Update

log = logging.getLogger("seqex.marketdata")

HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
STALE_LIMIT_S = 5.0
SLOW_CLOSE_GRACE_S = 10.0         # after a slow consumer's Logout(7): time to read it
LINGER_S = 10.0                   # after our Logout or LogonReject: time for the peer to close
MAX_CONNECTIONS = 4096            # at the limit the oldest not logged on makes room, or refused
MAX_CONNS_PER_USER = 100          # logged-on connections of one user (LogonReject 6 beyond)
HEARTBEAT_MS = 1000
HEARTBEAT_MIN_MS, HEARTBEAT_MAX_MS = 100, 30_000   # PROTOCOL.md §4.8: the Logon's interval
LOGON_TIMEOUT_S = 10.0            # a connection must be logged on within this
LOGOUT_GRACE_S = 2.0              # after answering a client's Logout: its close, or ours
SHUTDOWN_GRACE_S = 0.5            # at shutdown: how long Logout(6) waits for the answers
MAX_PENDING = 64                  # frames a client may send behind its Logon before the answer
QUEUE_LIMIT = 4                   # × the high-water mark: a request past it is a slow consumer
SNAPSHOT_PER_FRAME = wire.max_entries(wire.MARKET_DATA_SNAPSHOT)
STREAM_BOOK, STREAM_TRADES = 1, 2
_SIDE = {BID: wire.MD_ENTRY_BID, ASK: wire.MD_ENTRY_OFFER}
_AGGRESSOR = {BID: wire.SIDE_BUY, ASK: wire.SIDE_SELL}
if LEVELS_PER_MESSAGE != wire.max_entries(wire.MARKET_DATA_INCREMENTAL):
    raise ImportError("marketdata: LEVELS_PER_MESSAGE disagrees with the wire layout")


class Instrument:
    """A symbol's scaling: engine ticks and lots to PROTOCOL.md's mantissa (1e-8) and lots."""

    def __init__(self, symbol: str, symbol_id: int, tick_mantissa: int, lot_mantissa: int):
        self.symbol = symbol
        self.symbol_id = symbol_id
        self.tick_mantissa = tick_mantissa
        self.lot_mantissa = lot_mantissa

    def definition(self, status: int) -> bytes:
        return wire.encode(wire.SECURITY_DEFINITION, self.tick_mantissa, self.lot_mantissa,
                           self.symbol_id, wire.char_field(self.symbol, 16), status)


def snapshot_frames(inst: Instrument, st: SymbolState, md_req_id: int,
                    book: bool = True) -> list[bytes]:
    """The book as MarketDataSnapshot fragments (bids best first, then offers best first);
    an empty book is one fragment with no entries, and so is the snapshot of a subscription
    to trades alone (``book`` False: its LastRptSeq is all it needs)."""
    tm = inst.tick_mantissa
    entries = [(p * tm, q, n, wire.MD_ENTRY_BID) for p, (q, n) in
               sorted(st.bids.items(), reverse=True)] if book else []
    if book:
        entries += [(p * tm, q, n, wire.MD_ENTRY_OFFER) for p, (q, n) in sorted(st.asks.items())]
    chunks = [entries[i:i + SNAPSHOT_PER_FRAME]
              for i in range(0, len(entries), SNAPSHOT_PER_FRAME)] or [[]]
    out = []
    ts = st.now
    for i, chunk in enumerate(chunks):
        flags = wire.FLAG_LAST_FRAGMENT if i == len(chunks) - 1 else 0
        out.append(wire.encode(wire.MARKET_DATA_SNAPSHOT, ts, st.rpt_seq, md_req_id,
                               inst.symbol_id, flags, entries=chunk))
    return out


def update_frames(inst: Instrument, up: Update) -> list[tuple[int, bytes]]:
    """[(stream bit, frame)] of one record's Update, in RptSeq order (up.first_rpt ...)."""
    out = []
    rpt = up.first_rpt
    tm, sid, ts = inst.tick_mantissa, inst.symbol_id, up.ts_ns
    for kind, x in up.items:
        if kind == "trade":
            out.append((STREAM_TRADES, wire.encode(wire.TRADE, ts, rpt, x.trade_id, x.price * tm,
                                                   x.qty, sid, _AGGRESSOR[x.aggressor])))
            rpt += 1
            continue
        for i in range(0, len(x), LEVELS_PER_MESSAGE):
            entries = [(p * tm, 0 if a == DELETE else q, 0 if a == DELETE else n, _SIDE[s], a)
                       for s, p, q, n, a in x[i:i + LEVELS_PER_MESSAGE]]
            out.append((STREAM_BOOK, wire.encode(wire.MARKET_DATA_INCREMENTAL, ts, rpt, sid,
                                                 entries=entries)))
            rpt += 1
    if rpt != up.last_rpt + 1:
        raise AssertionError(f"RptSeq {rpt - 1} != {up.last_rpt} at seq {up.seq}")
    return out


_TS_RPT = struct.Struct("<QQ")   # TransactTime, RptSeq: the first fields of 304 and 305 alike


def gap_filler(sid: int, frame: bytes) -> bytes:
    """What a subscription to one stream (Streams 1 or 2) gets for a message of the other: a
    MarketDataIncremental without entries at that message's RptSeq. Its RptSeq stays gapless,
    as §6's client rule (apply only last + 1, re-snapshot on a gap) needs, and it carries
    nothing of the stream it left out."""
    ts, rpt = _TS_RPT.unpack_from(frame, wire.PREFIX.size)
    return wire.encode(wire.MARKET_DATA_INCREMENTAL, ts, rpt, sid, entries=[])


class Sub:
    __slots__ = ("md_req_id", "streams", "stale")

    def __init__(self, md_req_id: int, streams: int):
        self.md_req_id = md_req_id
        self.streams = streams
        self.stale = False


class FeedConnection(asyncio.Protocol):
    def __init__(self, server: BinaryFeed):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.logged_on = False
        self.logging_on = False
        self.pending: list = []            # frames that came while the Logon was checked
        self.subs: dict[int, Sub] = {}     # symbol_id -> subscription
        self.paused = False
        self.stale_since = 0.0
        self.last_sent = time.monotonic()
        self.last_recv = self.last_sent
        self.peer_hb_s = 1.0               # the client's HeartbeatIntervalMs (its Logon)
        self.test_req_id = 0               # TestRequest outstanding (0: none)
        self.test_sent_at = 0.0
        self.closed = False
        self.lost = False                  # the transport is gone (connection_lost)
        self.user_key = None               # the Username it logged on as (the per-user cap)
        self.unsent = 0                    # after a slow consumer's Logout: bytes left
        self.awaiting_answer = False       # we sent Logout(6) and wait for the client's
        self.peer = ""                     # the client's address (the scrypt slots per peer)
        self.logon = None                  # the Logon whose credentials are being checked
        self.auth_check = None             # the check it waits for (gateway/auth.py)

    # -- transport -------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        transport.set_write_buffer_limits(high=self.server.high_water,
                                           low=self.server.low_water)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if not self.server.admit(self):
            self.closed = True
            transport.abort()
            return
        self.server.conns.add(self)
        self.server.silent[self] = None
        # a connection that does not log on in time is closed (idle sockets are not free)
        asyncio.get_running_loop().call_later(self.server.logon_timeout_s, self.logon_deadline)

    def logon_deadline(self) -> None:
        if self.closed or self.logged_on:
            return
        self.server.stats["logon_timeouts"] += 1
        if self.auth_check is not None:   # the Logon came and waits for a credential check
            self.server.auth.abandon(self)
            self.reject(self.logon.SessionID, wire.LOGON_REJECT_NOT_OPEN, "busy: try again")
        else:                             # as the gateway: Logout(1), no logon
            self.logout(wire.LOGOUT_HEARTBEAT_TIMEOUT, "no logon", abort=True)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.lost = True
        self.server.drop(self)

    def pause_writing(self) -> None:
        self.paused = True
        if not self.stale_since:          # past the mark for the stale limit: Logout(7)
            self.stale_since = time.monotonic()

    def resume_writing(self) -> None:
        self.paused = False
        self.server.resnapshot(self)

    def write(self, frame: bytes) -> None:
        if not self.closed:
            self.transport.write(frame)
            self.last_sent = time.monotonic()

    def logout(self, reason: int, text: str, abort: bool = False,
               linger_s: float | None = LINGER_S) -> None:
        if self.closed:
            return
        self.transport.write(wire.encode(wire.LOGOUT, reason, wire.char_field(text, 32)))
        self.closed = True
        self.server.drop(self)
        if abort:    # a consumer that does not read would hold the close forever
            self.transport.abort()
        else:
            self._close_after_writes(linger_s)

    def _close_after_writes(self, linger_s: float | None) -> None:
        """Close once what is queued is written, without a reset: a half-close (FIN behind
        the frames), then the peer's input read and dropped until it closes too (or
        ``linger_s`` passes). Closed with input unread, the socket made the kernel send a
        reset, which throws away whatever the peer had not read yet: an independent client
        that went on heartbeating lost hundreds of frames, one cut in two, and the Logout."""
        t = self.transport
        if not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        if linger_s is not None:
            asyncio.get_running_loop().call_later(linger_s, self._cut_off)

    def eof_received(self):
        return None                       # the peer closed: so do we (after our writes)

    def slow_logout(self) -> None:
        """§6: a consumer that stays behind gets Logout(7). It goes behind what is queued
        (whole frames: an abort would cut the stream inside one and drop the Logout with the
        rest), then the transport closes once it has written it all; a consumer that still
        does not read is cut off after SLOW_CLOSE_GRACE_S."""
        if self.closed:
            return
        self.server.stats["slow_logouts"] += 1
        self.logout(wire.LOGOUT_SLOW_CONSUMER, "slow consumer", linger_s=None)
        self.unsent = self._unsent()
        asyncio.get_running_loop().call_later(self.server.slow_close_grace_s, self._abort)

    def _abort(self) -> None:
        """Cut off a slow consumer that read nothing in the last grace period; one that is
        still draining (slowly) gets another."""
        if self.lost:
            return
        left = self._unsent()
        if left < self.unsent:
            self.unsent = left
            asyncio.get_running_loop().call_later(self.server.slow_close_grace_s, self._abort)
            return
        self.transport.abort()

    def _unsent(self) -> int:
        """Bytes not yet taken by the peer: the transport's buffer and the kernel's send
        queue (which the event loop refills only once much of it is free, so the transport's
        alone does not move for seconds while a slow reader drains)."""
        n = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                    b"\0\0\0\0"))[0]
            except (OSError, ValueError):
                pass
        return n

    def answer_logout(self) -> None:
        """PROTOCOL.md §4.9: the client's Logout is answered, and the client, the initiator,
        closes (we do if it has not within LOGOUT_GRACE_S). Nothing is sent after the answer
        and input is ignored."""
        if self.closed:
            return
        self.transport.write(wire.encode(wire.LOGOUT, wire.LOGOUT_NORMAL, b"bye"))
        self.closed = True
        self.server.drop(self)
        asyncio.get_running_loop().call_later(LOGOUT_GRACE_S, self._cut_off)

    def _cut_off(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def logout_and_wait(self, reason: int, text: str) -> None:
        """§4.9: our Logout, then the client's answer, then we (the initiator) close; the
        caller cuts off a client that does not answer."""
        if self.closed:
            return
        self.transport.write(wire.encode(wire.LOGOUT, reason, wire.char_field(text, 32)))
        self.closed = self.awaiting_answer = True
        self.server.drop(self)
        self.buf.clear()

    def _await_answer(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while True:
                frame, end = wire.read_frame(self.buf, pos)
                if frame is None:
                    break
                pos = end
                if frame.template_id == wire.LOGOUT:
                    self.awaiting_answer = False
                    self.buf.clear()
                    self.transport.close()
                    return
        except wire.FramingError:
            self.awaiting_answer = False
            self.buf.clear()
            self.transport.close()
            return
        del self.buf[:pos]

    def data_received(self, data: bytes) -> None:
        if self.closed:
            if self.awaiting_answer:
                self._await_answer(data)
            return
        self.last_recv = time.monotonic()  # any byte counts as liveness (§4.8)
        self.test_req_id = 0
        self.buf += data
        pos = 0
        try:
            while not self.closed:
                frame, end = wire.read_frame(self.buf, pos)
                if frame is None:
                    break
                pos = end
                self.on_frame(frame)
        except wire.FramingError as exc:
            self.logout(wire.LOGOUT_PROTOCOL_ERROR, str(exc))
        del self.buf[:pos]

    # -- messages --------------------------------------------------------------------------
    def reject(self, session_id: int, reason: int, text: str) -> None:
        self.write(wire.encode(wire.LOGON_REJECT, session_id, reason, wire.char_field(text, 32)))
        self.closed = True
        self.server.drop(self)
        self._close_after_writes(LINGER_S)

    def logon_ok(self, logon) -> None:
        """The Logon passed: its heartbeat interval is checked (§4.8, LogonReject 4), then
        LogonAck (echoing its SessionID), the SecurityDefinitions, and what came behind it."""
        if not HEARTBEAT_MIN_MS <= logon.HeartbeatIntervalMs <= HEARTBEAT_MAX_MS:
            return self.reject(logon.SessionID, wire.LOGON_REJECT_HEARTBEAT_RANGE,
                               "heartbeat 100..30000 ms")
        if not self.server.ready():
            # a publisher just started replays its streams first: its books and RptSeqs are
            # not yet where they were, and a snapshot now would go back in time
            return self.reject(logon.SessionID, wire.LOGON_REJECT_NOT_OPEN,
                               "catching up: try again")
        name = logon.Username.split(b"\0", 1)[0]
        if self.server.user_conns.get(name, 0) >= self.server.max_conns_per_user:
            # one user's connections would otherwise hold every slot of the feed
            return self.reject(logon.SessionID, wire.LOGON_REJECT_NOT_OPEN,
                               "too many connections of the user")
        self.user_key = name
        self.server.user_conns[name] = self.server.user_conns.get(name, 0) + 1
        self.logged_on = True
        self.server.silent.pop(self, None)
        self.peer_hb_s = logon.HeartbeatIntervalMs / 1000
        self.last_recv = time.monotonic()
        now = time.time_ns()
        self.write(wire.encode(wire.LOGON_ACK, logon.SessionID, 0, 0, HEARTBEAT_MS, 0, 0, 0, 0,
                               int(time.strftime("%Y%m%d", time.gmtime(now // 10**9)))))
        for inst in self.server.instruments.values():
            self.write(inst.definition(self.server.states[inst.symbol_id].status))
        pending, self.pending = self.pending, []
        for frame in pending:             # what the client sent behind its Logon, in order
            if self.closed:
                return
            self.on_frame(frame)

    def auth_answer(self, user, failed: str) -> None:
        """The credential check's answer (gateway/auth.py)."""
        if self.closed or self.logged_on:
            return
        if failed:
            self.reject(self.logon.SessionID, wire.LOGON_REJECT_NOT_OPEN, failed)
        elif user is None:
            self.server.stats["auth_failures"] += 1
            self.reject(self.logon.SessionID, wire.LOGON_REJECT_BAD_CREDENTIALS,
                        "bad credentials")
        else:
            self.logon_ok(self.logon)

    def on_frame(self, frame: wire.Frame) -> None:
        tid = frame.template_id
        m = wire.decode(frame)
        if self.logging_on and not self.logged_on and tid != wire.LOGON:
            if len(self.pending) >= MAX_PENDING:
                return self.logout(wire.LOGOUT_PROTOCOL_ERROR, "too much before LogonAck")
            self.pending.append(frame)
            return
        if tid == wire.LOGON:
            if self.logged_on:
                return self.logout(wire.LOGOUT_PROTOCOL_ERROR, "logon twice")
            if frame.version < wire.VERSION:   # a newer sender's Logon is read by its v1 fields
                return self.reject(m.SessionID, wire.LOGON_REJECT_UNSUPPORTED_VERSION,
                                   f"schema version {frame.version}")
            if self.server.accounts_path is None:
                return self.logon_ok(m)
            if self.logging_on:
                return self.logout(wire.LOGOUT_PROTOCOL_ERROR, "logon twice")
            self.logging_on = True
            self.logon = m
            name = m.Username.split(b"\0", 1)[0].decode("utf-8", "replace")
            password = m.Password.split(b"\0", 1)[0]
            self.server.auth.start(self, name, password)
            return
        if not self.logged_on:
            return self.logout(wire.LOGOUT_PROTOCOL_ERROR, "logon first")
        if tid == wire.MARKET_DATA_REQUEST:
            self.server.request(self, m)
        elif tid == wire.LOGOUT:
            self.answer_logout()
        elif tid == wire.TEST_REQUEST:
            self.write(wire.encode(wire.HEARTBEAT, m.TestReqID, 0, 0))
        elif tid == wire.HEARTBEAT:
            pass
        else:
            self.logout(wire.LOGOUT_PROTOCOL_ERROR, f"template {tid} not on this port")


class BinaryFeed:
    """The connections of the binary feed and their fan-out."""

    def __init__(self, instruments: dict[int, Instrument], states: dict[int, SymbolState],
                 accounts_path: str | None = None):
        self.instruments = instruments
        self.states = states
        self.accounts_path = accounts_path      # None: public, any credentials log on
        self._accounts = None
        self._accounts_mtime = None
        self.conns: set[FeedConnection] = set()
        self.silent: dict[FeedConnection, None] = {}   # not logged on yet, oldest first
        self.user_conns: dict[bytes, int] = {}         # Username -> logged-on connections
        self.max_conns_per_user = MAX_CONNS_PER_USER
        self.max_connections = MAX_CONNECTIONS
        self.full_logged_at = -1e9
        self.shutdown_grace_s = SHUTDOWN_GRACE_S
        self.by_symbol: dict[int, set[FeedConnection]] = {sid: set() for sid in instruments}
        self.server: asyncio.base_events.Server | None = None
        self.high_water, self.low_water = HIGH_WATER, LOW_WATER
        self.stale_limit_s = STALE_LIMIT_S
        self.ready: Callable[[], bool] = lambda: True   # the publisher: caught up with its streams
        self.slow_close_grace_s = SLOW_CLOSE_GRACE_S
        self.logon_timeout_s = LOGON_TIMEOUT_S
        self.test_req_ids = 0
        self.stats = {"frames": 0, "resnapshots": 0, "slow_logouts": 0, "stale_skips": 0,
                      "refused_connections": 0, "evicted_connections": 0,
                      "auth_failures": 0, "logon_timeouts": 0, "snapshot_requests": 0,
                      "snapshot_frames": 0, "heartbeat_timeouts": 0}
        self.auth = Authenticator(self.current_accounts,
                                  lambda conn, user, failed: conn.auth_answer(user, failed),
                                  self.stats, thread_name_prefix="md-auth")

    def current_accounts(self):
        """The accounts file, re-read when it changed (users added while the feed runs can log
        on); None when it cannot be read (every logon is then refused)."""
        from gateway import accounts
        try:
            mtime = os.stat(self.accounts_path).st_mtime_ns
            if mtime != self._accounts_mtime:
                self._accounts = accounts.load(self.accounts_path)
                self._accounts_mtime = mtime
                self.auth.retain(self._accounts)
        except (OSError, ValueError) as exc:
            log.warning("market data: the accounts file %s: %s", self.accounts_path, exc)
            return None
        return self._accounts

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FeedConnection(self), host, port,
                                              backlog=1024)

    async def close(self) -> None:
        """Logout(6) to every connection; a logged-on client answers it (§4.9) and is then
        closed, one that does not within shutdown_grace_s is cut off."""
        if self.server is not None:
            self.server.close()
        waiting = []
        for conn in list(self.conns):
            if conn.logged_on:
                conn.logout_and_wait(wire.LOGOUT_ADMIN, "shutting down")
                waiting.append(conn)
            else:
                conn.logout(wire.LOGOUT_ADMIN, "shutting down")
        loop = asyncio.get_running_loop()
        end = loop.time() + self.shutdown_grace_s
        while any(c.awaiting_answer and not c.transport.is_closing() for c in waiting) and \
                loop.time() < end:
            await asyncio.sleep(0.005)
        for c in waiting:
            if not c.transport.is_closing():
                c.transport.abort()
        self.auth.close()

    def admit(self, conn: FeedConnection) -> bool:
        """At the connection limit, the oldest connection not logged on yet is closed to make
        room (idle sockets opened faster than the logon timeout expires them would otherwise
        hold every descriptor); with none, the new connection is refused."""
        if len(self.conns) < self.max_connections:
            return True
        now = time.monotonic()
        if now - self.full_logged_at >= 10.0:
            self.full_logged_at = now
            log.warning("%d connections, the limit: %s", len(self.conns),
                        "the oldest not logged on closes for a new one" if self.silent
                        else "every connection is logged on: new ones refused")
        if not self.silent:
            self.stats["refused_connections"] += 1
            return False
        old = next(iter(self.silent))
        self.stats["evicted_connections"] += 1
        old.closed = True
        self.drop(old)
        old.transport.abort()
        return True

    def drop(self, conn: FeedConnection) -> None:
        self.auth.abandon(conn)
        self.conns.discard(conn)
        self.silent.pop(conn, None)
        if conn.user_key is not None:
            n = self.user_conns.get(conn.user_key, 0) - 1
            if n > 0:
                self.user_conns[conn.user_key] = n
            else:
                self.user_conns.pop(conn.user_key, None)
            conn.user_key = None
        for sid in conn.subs:
            self.by_symbol[sid].discard(conn)
        conn.subs.clear()

    def request(self, conn: FeedConnection, m) -> None:
        sids = list(self.instruments) if m.SecurityID == wire.U32_NULL else [m.SecurityID]
        reject = None
        if any(s not in self.instruments for s in sids):
            reject = wire.MD_REJECT_UNKNOWN_SYMBOL
        elif m.MarketDepth != 0:
            reject = wire.MD_REJECT_UNSUPPORTED_DEPTH
        elif m.SubscriptionRequestType not in (wire.SUBSCRIPTION_SNAPSHOT,
                                               wire.SUBSCRIPTION_SNAPSHOT_UPDATES,
                                               wire.SUBSCRIPTION_UNSUBSCRIBE) \
                or m.Streams & ~(STREAM_BOOK | STREAM_TRADES):
            # a Streams bit the page does not define is not read as "both" (FIX 281 has no
            # closer reason than 4)
            reject = wire.MD_REJECT_UNSUPPORTED_SUBSCRIPTION
        elif m.SubscriptionRequestType != wire.SUBSCRIPTION_UNSUBSCRIBE and any(
                sub.md_req_id == m.MDReqID and sid not in sids
                for sid, sub in conn.subs.items()):
            # The MDReqID names a live subscription of other instruments (asking again for
            # the same ones with the same id is a re-snapshot, not a duplicate).
            reject = wire.MD_REJECT_DUPLICATE_ID
        if reject is not None:
            conn.write(wire.encode(wire.MARKET_DATA_REQUEST_REJECT, m.MDReqID, m.SecurityID,
                                   reject))
            return
        if m.SubscriptionRequestType != wire.SUBSCRIPTION_UNSUBSCRIBE and \
                conn.transport.get_write_buffer_size() > QUEUE_LIMIT * self.high_water:
            # snapshots asked for and never read: queueing more would grow without bound
            conn.slow_logout()
            return
        streams = m.Streams & 3 or 3
        if m.SubscriptionRequestType != wire.SUBSCRIPTION_UNSUBSCRIBE:
            self.stats["snapshot_requests"] += 1
        for sid in sids:
            if m.SubscriptionRequestType == wire.SUBSCRIPTION_UNSUBSCRIBE:
                sub = conn.subs.get(sid)
                if sub is not None and sub.md_req_id == m.MDReqID:   # that request's only
                    del conn.subs[sid]
                    self.by_symbol[sid].discard(conn)
                continue
            frames = snapshot_frames(self.instruments[sid], self.states[sid], m.MDReqID,
                                     book=bool(streams & STREAM_BOOK))
            self.stats["snapshot_frames"] += len(frames)
            for f in frames:
                conn.write(f)
            if m.SubscriptionRequestType == wire.SUBSCRIPTION_SNAPSHOT_UPDATES:
                conn.subs[sid] = Sub(m.MDReqID, streams)
                self.by_symbol[sid].add(conn)

    def publish(self, sid: int, frames: list[tuple[int, bytes]]) -> None:
        """One record's frames to every subscriber of the symbol (skipping the stale ones)."""
        conns = self.by_symbol[sid]
        if not conns or not frames:
            return
        now = time.monotonic()
        fillers = None
        for conn in list(conns):
            sub = conn.subs[sid]
            if sub.stale:
                self.stats["stale_skips"] += 1
                continue
            if conn.paused:
                sub.stale = True
                if not conn.stale_since:
                    conn.stale_since = now
                continue
            streams = sub.streams
            write = conn.transport.write
            conn.last_sent = now          # §4.8: no Heartbeat while the stream flows
            if streams == STREAM_BOOK | STREAM_TRADES:
                for _bit, f in frames:
                    write(f)
                self.stats["frames"] += len(frames)
                continue
            if fillers is None:
                fillers = [gap_filler(sid, f) for _bit, f in frames]
            for (bit, f), filler in zip(frames, fillers, strict=True):
                write(f if streams & bit else filler)
            self.stats["frames"] += len(frames)

    def resnapshot(self, conn: FeedConnection) -> None:
        """The buffer drained: a stale subscription gets a fresh snapshot and goes on."""
        conn.stale_since = 0.0
        for sid, sub in conn.subs.items():
            if sub.stale:
                sub.stale = False
                self.stats["resnapshots"] += 1
                frames = snapshot_frames(self.instruments[sid], self.states[sid],
                                         sub.md_req_id, book=bool(sub.streams & STREAM_BOOK))
                self.stats["snapshot_frames"] += len(frames)
                for f in frames:
                    conn.write(f)

    def tick(self) -> None:
        """Heartbeats on idle connections; Logout(7) for one stale too long; §4.8's liveness
        check: after 1.5 x the client's interval without input a TestRequest, after another
        interval Logout(1)."""
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.stale_since and now - conn.stale_since > self.stale_limit_s:
                conn.slow_logout()
                continue
            if not conn.logged_on or conn.closed:
                continue
            if conn.test_req_id:
                if now - conn.test_sent_at > conn.peer_hb_s:
                    self.stats["heartbeat_timeouts"] += 1
                    conn.logout(wire.LOGOUT_HEARTBEAT_TIMEOUT, "heartbeat timeout",
                                abort=conn.transport.get_write_buffer_size() > 0)
                    continue
            elif now - conn.last_recv > 1.5 * conn.peer_hb_s:
                self.test_req_ids += 1
                conn.test_req_id = self.test_req_ids
                conn.test_sent_at = now
                conn.write(wire.encode(wire.TEST_REQUEST, conn.test_req_id))
            if not conn.paused and now - conn.last_sent >= HEARTBEAT_MS / 1000:
                conn.write(wire.encode(wire.HEARTBEAT, 0, 0, 0))
