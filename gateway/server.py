"""The order-entry gateway: PROTOCOL.md's session layer over TCP, in front of the TradingEngines.

Contract (docs/order-path.md §4, docs/gateway.md):
* The gateway keeps no state that matters. Every session decision (duplicates, SeqNos, binding,
  cancel-on-disconnect) is the TradingEngine's; the gateway authenticates, frames, throttles,
  sheds, and answers replays from an index of the engines' output streams (`out.te.N`), which
  are the session journals; a checkpoint of the index on disk (gateway/index.py) lets a start
  read only the records after it, once the log confirms the file.
* It talks to the engines through a `Core` (below): `MqCore` over mq/ streams in production,
  an in-process core in tests and in the one-process topology.
* Authentication comes first: nothing is sent to the core for a connection until its
  credentials pass (scrypt, in a thread, off the event loop). A password scrypt accepted
  before is recognised by a keyed fast hash without scrypt (accounts.VerifiedCache), so
  someone else's wrong passwords cannot lock a user out; the scrypt checks are bounded
  (in flight overall and per peer address, and a bounded FIFO queue before them).
* A session's replay `[NextExpectedSeqNo, H]` is written before any live message of that
  session, and a RetransmitRequest's batch is its Retransmission and exactly its messages:
  live messages that arrive meanwhile wait in the connection's queue. A Logout is the last
  frame written to a connection (a client's Logout during a replay is answered after it).
* Every malformed input closes its connection with Logout(2) or gets a reject; no input makes
  an exception escape, and every buffer is bounded (input per connection, output per
  connection, connections, authentications in flight, records queued for the core).
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import select
import socket
import struct
import sys
import termios
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway import index as gindex
from gateway import wire
from gateway.accounts import Accounts, User
from gateway.aio import stop_task
from gateway.auth import Authenticator, Check

log = logging.getLogger("seqex.gateway")

# -- the TradingEngine's session interface (docs/order-path.md §3) ---------------------------
KIND_SESSION_LOGON = 80
KIND_SESSION_END = 81
KIND_GATEWAY_START = 82
KIND_CLIENT_MESSAGE = 83
SESSION_LOGON_S = struct.Struct("<IQQIBHB")  # user, session_id, conn_id, default account,
#                                              COD mode, CodTimeoutMs, n; then n x <I accounts
ACCOUNT_S = struct.Struct("<I")
NEXT_EXPECTED_S = struct.Struct("<Q")        # last: the Logon's NextExpectedSeqNo
SESSION_END_S = struct.Struct("<IQQB")       # user, session_id, conn_id, reason
GATEWAY_START_S = struct.Struct("<I")        # gateway index
CLIENT_MESSAGE_S = struct.Struct("<IQBH")    # user, session_id, gateway flags, templateId
END_LOGOUT = 0
END_DISCONNECT = 1
# A client's Logout with one of these reasons ends a link it found broken: SessionEnd 1
BROKEN_LINK_LOGOUTS = frozenset({wire.LOGOUT_HEARTBEAT_TIMEOUT, wire.LOGOUT_PROTOCOL_ERROR,
                                 wire.LOGOUT_RETRANSMIT_VIOLATION, wire.LOGOUT_THROTTLE_ABUSE,
                                 wire.LOGOUT_SLOW_CONSUMER})
END_FINALIZE = 2
MAX_SEQ_JUMP = 0xFFFF_FFFF  # NotApplied.Count: the longest SeqNo gap the protocol can state
GW_FLAG_THROTTLED = 0x01
GW_FLAG_SHED = 0x02
ACCOUNTS_WATCH_S = 1.0      # how often the gateway looks for a new accounts file
ANSWER_WAIT_S = 1.0         # a Logout's answer waits at most this for its SessionEnd applied

EV_SESSION_STATE = 13
EV_SESSION_MESSAGE = 14
SESSION_STATE_S = struct.Struct("<BIQQQQB")  # type, user, session_id, conn_id, nextExpected,
#                                              NextSeqNo, status
SESSION_MESSAGE_S = struct.Struct("<BIQH")   # type, user, session_id, templateId; then block
STATUS_RESUMED = 0
STATUS_NEW = 1
STATUS_BOUND_ELSEWHERE = 2
STATUS_FINALIZED = 3
STATUS_BEYOND = 4
STATUS_LIMIT = 5          # a new session over the user's limit of open sessions
SESSION_MESSAGE_TEMPLATES = (10, 200, 201, 202, 203)

GATEWAY_SOURCE_BASE = 0x7200_0000  # source id of gateway g: 0x7200_0000 | g
CONN_ID_SHIFT = 48                 # conn_id = g << 48 | n

HEARTBEAT_MIN_MS = 100
HEARTBEAT_MAX_MS = 30_000


class Core(Protocol):
    """What the gateway needs of the engines. Records to one shard are applied in send order;
    the callback sees every out.te.N record of every shard, per shard in seq order."""

    n_shards: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, shard: int, kind: int, payload: bytes) -> None:
        """Put one record into in.te.<shard>."""

    def depth(self, shard: int) -> int:
        """Records this gateway sent to the shard that the shard has not yet applied."""

    def subscribe(self, callback: Callable[[int, int, int, bytes], None]) -> None:
        """callback(shard, out_seq, ts_ns, payload) for every out.te.N record from seq 1
        (or from resume_at's seq, below)."""

    async def fetch(self, shard: int, seqs: list[int]) -> dict[int, bytes]:
        """The payloads of these out.te.<shard> records (each one the callback saw), read back
        from the log: for the session messages the journal no longer holds in memory."""

    # For a gateway with an index file (Config.index_file) the core also has:
    #   async def stamp(shard, seq) -> int | None: the ts_ns of out.te.<shard> record seq,
    #       None if the log does not hold it (raises if the log does not answer);
    #   def resume_at(shard, next_seq): before start(), the callback's first record of the
    #       shard is next_seq instead of 1.


# -- reading the TradingEngine's output -------------------------------------------------------

def _event_sizes() -> tuple[dict[int, int], int]:
    from tradingengine import codec
    sizes = {t: s.size for t, s in codec.EVENT_STRUCTS.items()
             if t not in (EV_SESSION_STATE, EV_SESSION_MESSAGE)}
    return sizes, codec.CE_COMMAND


_SIZES, _CE_COMMAND = _event_sizes()
_BLOCK_SIZES = {t: wire.TEMPLATES[t].size for t in SESSION_MESSAGE_TEMPLATES}


def session_events(payload: bytes) -> list[tuple]:
    """The SessionState (13) and SessionMessage (14) events of one TradingEngine output payload:
    (13, user, session_id, conn_id, next_expected, next_seq, status) and
    (14, user, session_id, template_id, block). Raises ValueError on a payload it cannot walk."""
    payload = bytes(payload)
    if 13 not in payload and 14 not in payload:
        return []  # neither type byte occurs anywhere: no session event can be there
    out = []
    off, n = 0, len(payload)
    while off < n:
        t = payload[off]
        if t == EV_SESSION_STATE:
            if off + SESSION_STATE_S.size > n:
                raise ValueError(f"truncated SessionState at {off}")
            out.append(SESSION_STATE_S.unpack_from(payload, off))
            off += SESSION_STATE_S.size
        elif t == EV_SESSION_MESSAGE:
            if off + SESSION_MESSAGE_S.size > n:
                raise ValueError(f"truncated SessionMessage at {off}")
            _t, user, sid, tid = SESSION_MESSAGE_S.unpack_from(payload, off)
            size = _BLOCK_SIZES.get(tid)
            start = off + SESSION_MESSAGE_S.size
            if size is None or start + size > n:
                raise ValueError(f"SessionMessage of template {tid} at {off}")
            out.append((t, user, sid, tid, bytes(payload[start:start + size])))
            off = start + size
        else:
            size = _SIZES.get(t)
            if size is None or off + size > n:
                raise ValueError(f"event type {t} at {off}")
            if t == _CE_COMMAND:
                size += int.from_bytes(payload[off + 7:off + 9], "little")
            off += size
    return out


# -- configuration ------------------------------------------------------------------------------

@dataclass
class Config:
    index: int = 0                    # gateway g: source 0x7200_0000|g, conn_id g << 48 | n
    heartbeat_ms: int = 1000          # the server's own Heartbeat interval (LogonAck)
    max_depth: int = 20_000           # records unapplied per shard beyond which orders are shed
    max_connections: int = 1000
    logon_timeout_s: float = 5.0      # a connection must be logged on within this
    core_timeout_s: float = 10.0      # the SessionState must come back within this
    max_retransmit: int = 10_000      # RetransmitRequest.Count cap
    retransmit_batch: int = 1000      # messages per Retransmission batch
    journal_cache_bytes: int = 128 << 20  # the newest session messages kept in memory; the
    #                                   older ones are read back from out.te.N when replayed
    max_input_bytes: int = 256 * 1024  # unprocessed input per connection before reads pause
    max_output_bytes: int = 8 << 20   # unsent output per connection: beyond it, slow consumer
    max_auth_pending: int = 64        # scrypt checks in flight (given to the worker threads)
    max_auth_per_peer: int = 8        # ... of them from one peer address
    max_auth_queued: int = 256        # logons queued for an scrypt slot; more: LogonReject(6)
    max_auth_queued_per_peer: int = 64  # ... of them from one peer address
    auth_timeout_s: float = 30.0      # a Logon's check not done within this: LogonReject(6)
    max_conns_per_user: int = 100     # logged-on (or logging-on) connections of one user
    max_queued: int = 100_000         # records per shard queued for the core before reads pause
    throttle_abuse_s: int = 10        # seconds in a row over the rate → Logout(4)
    max_retransmit_rejects: int = 10  # rejected RetransmitRequests per connection → Logout(3)
    logout_grace_s: float = 2.0       # wait for the peer's Logout answer / close
    shutdown_grace_s: float = 0.5     # at shutdown: wait this long for the Logout(6) answers
    tick_s: float = 0.025             # timer resolution (heartbeats, timeouts)
    index_file: str = ""              # the journal index's checkpoint (gateway/index.py); ""
    #                                   none: a start reads every out.te.N from seq 1
    index_interval_s: float = 1.0     # what changed is appended to it this often

    def __post_init__(self):
        if not 0 <= self.index < 1 << 16:
            raise ValueError("index must be 0..65535")
        if not HEARTBEAT_MIN_MS <= self.heartbeat_ms <= HEARTBEAT_MAX_MS:
            raise ValueError("heartbeat_ms must be 100..30000")
        if not self.index_interval_s > 0:
            raise ValueError("index_interval_s must be positive")
        if self.journal_cache_bytes < 0:
            raise ValueError("journal_cache_bytes must be >= 0")
        if self.max_depth < 1 or self.max_connections < 1:
            raise ValueError("max_depth and max_connections must be positive")
        if min(self.max_auth_pending, self.max_auth_per_peer, self.max_auth_queued_per_peer) < 1 \
                or self.max_auth_queued < 0 or not self.auth_timeout_s > 0:
            raise ValueError("max_auth_pending, max_auth_per_peer, max_auth_queued_per_peer "
                             "and auth_timeout_s must be positive, max_auth_queued >= 0")


# -- connection states --------------------------------------------------------------------------
NEW = 0         # waiting for Logon
LOGGING_ON = 1  # Logon received: authenticating, then waiting for the SessionState
LIVE = 2        # logged on
CLOSING = 3     # Logout sent or received: input ignored, closing
CLOSED = 4


def _logout(reason: int, text: str) -> bytes:
    return wire.encode(wire.LOGOUT, reason, wire.char_field(text, 32))


def _credentials(lg) -> tuple[str, bytes] | None:
    """A Logon's (username, password), NUL padding off; None when a field is not its value
    and NUL padding (§1: a char[N] is NUL-padded; bytes after the first NUL are not)."""
    name, _, pad = lg.Username.partition(b"\0")
    password, _, pad2 = lg.Password.partition(b"\0")
    if pad.strip(b"\0") or pad2.strip(b"\0"):
        return None
    return name.decode("utf-8", "replace"), password


def _trading_date(ts_ns: int) -> int:
    t = time.gmtime(ts_ns // 1_000_000_000)
    return t.tm_year * 10000 + t.tm_mon * 100 + t.tm_mday


class Bucket:
    """A session's throttle (PROTOCOL.md §4.11: a token bucket *per session*, so logging on
    again does not refill it): `rate` tokens a second, a burst of one second's worth, and the
    abuse count of one-second windows in a row that went over the rate."""

    __slots__ = ("rate", "tokens", "refill_at", "window_at", "window_over", "over_streak")

    IDLE_S = 2.0   # a bucket unused this long is full and its streak is over: same as a new one

    def __init__(self, rate: int, now: float):
        self.rate = rate
        self.tokens = float(rate)
        self.refill_at = self.window_at = now
        self.window_over = False
        self.over_streak = 0

    def take(self, now: float) -> bool:
        rate = self.rate
        self.tokens = min(float(rate), self.tokens + (now - self.refill_at) * rate)
        self.refill_at = now
        if now - self.window_at >= 1.0:
            whole = int(now - self.window_at)
            self.over_streak = self.over_streak + 1 if (self.window_over and whole == 1) else 0
            self.window_at += whole
            self.window_over = False
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.window_over = True
        return False


class Connection(asyncio.Protocol):
    """One client TCP connection: its framing, session state machine and timers."""

    def __init__(self, gw: Gateway, conn_id: int):
        self.gw = gw
        self.cfg = gw.cfg
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = NEW
        now = gw.clock()
        self.accepted_at = now
        self.peer = ""             # the peer's address: the unit of the per-peer auth caps
        self.logon_at = 0.0        # when the Logon arrived
        self.auth_check: Check | None = None  # the scrypt check the Logon waits for
        self.last_recv = now
        self.last_sent = now
        self.reading = True
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.tasks: set[asyncio.Task] = set()
        # session (after authentication)
        self.user: User | None = None
        self.session_id = 0
        self.key: tuple[int, int] | None = None
        self.shard = 0
        self.logon = None
        self.logon_sent_at = 0.0
        self.bound = False         # the engine may have this session bound to conn_id
        self.end_reason = END_DISCONNECT
        self.client_hb_s = 1.0
        self.test_req_id = 0       # TestRequest outstanding (0: none)
        self.test_sent_at = 0.0
        self.replaying = False     # a replay is being written: live messages wait in `held`
        self.awaiting_log = False  # a replay waits for messages read back from the log
        self.held: deque[bytes] = deque()
        self.logout_held: bytes | None = None  # our answer to a Logout, after the replay
        # our answer to a Logout, once the shard applied the SessionEnd it caused (index of
        # that record in Gateway.enqueue's count), or at ANSWER_WAIT_S
        self.logout_answer: bytes | None = None
        self.answer_after = 0
        self.answer_wait_from = 0.0
        self.out_ended = False     # a Logout went out: it is the last frame we send (§4.9)
        self.retransmitting = False
        self.retransmit_rejects = 0
        self.client_next = 1       # next client SeqNo known applied (Heartbeat)
        self.client_sent = 1       # next client SeqNo once what was passed on is applied
        self.inflight: deque[tuple[int, int]] = deque()  # (core record index, client SeqNo)
        self.bucket = Bucket(0, now)  # the session's, from the LogonAck on (Gateway.buckets)
        self.closing_at = 0.0
        self.awaiting_logout = False  # we sent Logout and wait for the peer's (§4.9)
        self.refused = False
        self.out: list[bytes] = []  # frames of this turn of the loop, not yet written
        self.out_bytes = 0
        self.flush_soon = False
        self.lingering = False     # half-closed: our FIN sent, the peer's input dropped

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if self.refused:
            self.state = CLOSING
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)

    def connection_lost(self, exc):
        self.state = CLOSED
        if self.lingering:
            self.lingering = False
            self.gw.lingering.discard(self)
        self.can_write.set()
        for t in self.tasks:
            t.cancel()
        self.gw._forget(self)

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def data_received(self, data):
        if self.state >= CLOSING:
            if self.awaiting_logout and self.state == CLOSING:
                self.buf += data
                self._await_logout_answer()
            return
        self.last_recv = self.gw.clock()
        self.test_req_id = 0
        self.buf += data
        if self.state == LOGGING_ON:
            self._bound_input()
            return
        self._process()

    def eof_received(self):
        self.flush()  # what this turn answered (a Logout's answer) goes before our FIN
        return False  # close our side too

    # -- output ------------------------------------------------------------------------------------
    def write(self, frame: bytes) -> None:
        """Queue a frame; the frames of one turn of the loop go out in one transport write
        (one syscall instead of one per message)."""
        t = self.transport
        if t is None or self.state == CLOSED or t.is_closing() or self.out_ended:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        self.last_sent = self.gw.clock()
        if not self.flush_soon:
            self.flush_soon = True
            self.gw.loop.call_soon(self.flush)
        elif self.out_bytes >= 65536:
            self.flush()

    def flush(self) -> None:
        self.flush_soon = False
        out = self.out
        if not out:
            return
        t = self.transport
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_bytes = 0
        if t is None or self.state == CLOSED or t.is_closing():
            return
        t.write(data)
        if t.get_write_buffer_size() > self.cfg.max_output_bytes:
            log.warning("conn %x: slow consumer (%d bytes unsent): closing", self.conn_id,
                        t.get_write_buffer_size())
            self.slow_consumer()

    def slow_consumer(self) -> None:
        """Logout(7) behind what is queued, then close: a client that reads on sees why; one
        that does not is aborted by the grace timer (tick)."""
        if self.state >= CLOSING:
            return
        self.gw.stats["slow_consumers"] += 1
        self.gw.stats["logouts_sent"] += 1
        self.held.clear()
        self.state = CLOSING
        self.closing_at = self.gw.clock()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_logout(wire.LOGOUT_SLOW_CONSUMER, "slow consumer"))
            t.close()

    def _close_transport(self) -> None:
        """Close once what is queued is written, without a reset: a half-close (FIN behind the
        last frame), then the peer's input read and dropped until it closes too, for at most
        logout_grace_s. Closed with input unread, the socket made the kernel answer the
        peer's next bytes with a reset, which throws away what the peer had not read yet: a
        client that went on sending lost the Logout that said why. The connection stops
        counting at once (the connection cap, the user's, the session's binding); only its
        socket lingers, and no more than max_connections of them (past that: closed)."""
        self.flush()
        t = self.transport
        if t is None or t.is_closing() or self.state == CLOSED:
            return
        gw = self.gw
        if self.lingering:
            return
        if not t.can_write_eof() or len(gw.lingering) >= self.cfg.max_connections:
            t.close()
            return
        self.state = CLOSING
        self.lingering = True
        self.awaiting_logout = False
        gw.lingering.add(self)
        gw._forget(self)
        t.write_eof()
        gw.loop.call_later(self.cfg.logout_grace_s, self._cut_off)

    def _cut_off(self) -> None:
        """A peer that did not close within the grace period after our half-close."""
        if self.transport is not None and self.state != CLOSED:
            self.transport.abort()

    def deliver(self, frame: bytes) -> None:
        """A live server message of this session, or a Heartbeat answering a TestRequest:
        written after any running replay, so that nothing interleaves with it (§4.5)."""
        if self.replaying:
            self.held.append(frame)
            if len(self.held) > self.cfg.max_retransmit * 10:
                self.slow_consumer()
            return
        self.write(frame)

    def peer_gone(self) -> bool:
        """The peer reset the connection, or closed it with nothing left unread, though the
        loop has not read that yet (its reading paused, or the event later in the same turn):
        a poll of the socket for a hang-up or an error, without reading anything. A close
        behind input not read yet is not gone: that input (a Logout(5), an order) is read
        first, as the loop reads it."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None or self.state == CLOSED:
            return True
        try:
            p = select.poll()
            p.register(sock.fileno(), select.POLLRDHUP)
            events = p.poll(0)
            if not events:
                return False
            if events[0][1] & (select.POLLERR | select.POLLHUP):
                return True                 # reset: what it sent is not ours to read
            unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(unread, sys.byteorder) == 0
        except (OSError, ValueError):
            return True

    def abort(self) -> None:
        self.out.clear()
        if self.transport is not None and self.state != CLOSED:
            self.state = CLOSING
            self.transport.abort()

    def logout(self, reason: int, text: str, wait: bool = False) -> None:
        """Send Logout(reason); close now (the stream cannot be trusted, or the peer is gone)
        or, with wait, once the peer answers or the grace period ends."""
        if self.state >= CLOSING:
            return
        self.gw.stats["logouts_sent"] += 1
        self.write(_logout(reason, text))
        self.out_ended = True
        self.state = CLOSING
        self.closing_at = self.gw.clock()
        if wait:
            self.awaiting_logout = True
            self.buf.clear()
        else:
            self._close_transport()

    def _await_logout_answer(self) -> None:
        """After our Logout: the peer's Logout answer ends the connection (we initiated, we
        close, §4.9); anything else it sent meanwhile is ignored."""
        buf = self.buf
        pos = 0
        try:
            while True:
                frame, end = wire.read_frame(buf, pos)
                if frame is None:
                    break
                pos = end
                if frame.template_id == wire.LOGOUT:
                    # an answered Logout is an orderly end, not an unexpected disconnect
                    # (§4.10: cancel-on-disconnect mode 2 leaves the orders, mode 1 acts),
                    # unless the answer is the client's own end of a link it found broken
                    if self.end_reason == END_DISCONNECT and \
                            wire.decode(frame).Reason not in BROKEN_LINK_LOGOUTS:
                        self.end_reason = END_LOGOUT
                    del buf[:]
                    self._close_transport()
                    return
        except wire.FramingError:
            del buf[:]
            self._close_transport()
            return
        del buf[:pos]

    def logon_reject(self, reason: int, text: str) -> None:
        self.gw.stats["logon_rejects"] += 1
        sid = self.logon.SessionID if self.logon is not None else 0
        self.write(wire.encode(wire.LOGON_REJECT, sid, reason, wire.char_field(text, 32)))
        self.state = CLOSING
        self.closing_at = self.gw.clock()
        self._close_transport()

    def protocol_error(self, text: str) -> None:
        self.gw.stats["protocol_errors"] += 1
        self.logout(wire.LOGOUT_PROTOCOL_ERROR, text)

    # -- input -------------------------------------------------------------------------------------
    def _bound_input(self) -> None:
        """While input is not being consumed, stop reading once it passes the bound."""
        if self.reading and len(self.buf) > self.cfg.max_input_bytes and self.transport:
            self.reading = False
            self.transport.pause_reading()

    def _resume_input(self) -> None:
        if not self.reading and self.state < CLOSING and self.transport:
            self.reading = True
            self.transport.resume_reading()

    def _process(self) -> None:
        buf = self.buf
        pos = 0
        try:
            while self.state in (NEW, LIVE):
                if self.gw.queue_full(self.shard) and self.state == LIVE:
                    # The core is not keeping up: stop reading; the sender resumes us.
                    self.gw.paused.add(self)
                    if self.reading and self.transport:
                        self.reading = False
                        self.transport.pause_reading()
                    break
                frame, end = wire.read_frame(buf, pos)
                if frame is None:
                    break
                pos = end
                self._on_frame(frame)
        except wire.FramingError as exc:
            del buf[:]
            self.protocol_error(str(exc))
            return
        del buf[:pos]
        if self.state == LOGGING_ON or self in self.gw.paused:
            self._bound_input()

    def _on_frame(self, frame: wire.Frame) -> None:
        tid = frame.template_id
        if self.state == LIVE:
            if 100 <= tid < 200:
                self._client_message(frame)
            elif tid == wire.HEARTBEAT:
                wire.decode(frame)
            elif tid == wire.TEST_REQUEST:
                m = wire.decode(frame)
                if self._take_token():
                    self.deliver(self._heartbeat(m.TestReqID))   # after a running replay (§4.5)
                else:
                    # an answer per request would let a client make the gateway write without
                    # limit: over the rate, a TestRequest costs its token like any message and
                    # is not answered (it has no SeqNo to consume or reject); persistent abuse
                    # ends the session as for sequenced messages
                    self.gw.stats["throttled"] += 1
                    if self._abusing():
                        self.logout(wire.LOGOUT_THROTTLE_ABUSE, "throttle abuse")
            elif tid == wire.RETRANSMIT_REQUEST:
                self._retransmit_request(wire.decode(frame))
            elif tid == wire.LOGOUT:
                reason = wire.decode(frame).Reason
                if reason == wire.LOGOUT_END_OF_SESSION:
                    # §4.9 "Only reason 5 finalizes", from either side (FIXP's
                    # FinishedSending): the session ends for good; the answer says so.
                    self.end_reason = END_FINALIZE
                    answer = _logout(wire.LOGOUT_END_OF_SESSION, "session finalized")
                else:
                    # a client that ends a link it found broken (no heartbeat from us, a bad
                    # frame, ...), as §4.8 has it end one on a timeout, has not logged out in
                    # order: that is the disconnect cancel-on-disconnect mode 2 is for (§4.10)
                    self.end_reason = END_DISCONNECT if reason in BROKEN_LINK_LOGOUTS \
                        else END_LOGOUT
                    answer = _logout(wire.LOGOUT_NORMAL, "logout")
                self.state = CLOSING  # the initiator closes; the grace timer ends it otherwise
                self.closing_at = self.gw.clock()
                if self.replaying or self.retransmitting:
                    # after the replay and what it held (§4.5), or after the first batch of a
                    # RetransmitRequest it follows, even one whose task has not started yet
                    self.logout_held = answer
                else:
                    self._answer_logout(answer)
            elif tid == wire.LOGON:
                self.protocol_error("already logged on")
            elif tid in wire.MARKET_DATA_TEMPLATES:
                self.protocol_error("market data not on this port")
            else:
                self.protocol_error(f"unexpected template {tid}")
            return
        # NEW: only a Logon
        if tid == wire.LOGON:
            self.logon = wire.decode(frame)
            self.state = LOGGING_ON
            self.gw.start_logon(self, frame.version)
        elif tid in wire.MARKET_DATA_TEMPLATES:
            self.protocol_error("market data not on this port")
        elif tid == wire.HEARTBEAT:
            # a Heartbeat as a connection's first frame is the supervisor's liveness probe
            # (deploy/supervisor.py speaks_protocol): answered as any early frame, counted
            # apart, so that protocol_errors counts clients' mistakes only
            self.gw.stats["probes"] += 1
            self.logout(wire.LOGOUT_PROTOCOL_ERROR, "logon first")
        else:
            self.protocol_error("logon first")

    # -- client messages ---------------------------------------------------------------------------
    def _client_message(self, frame: wire.Frame) -> None:
        tid = frame.template_id
        t = wire.TEMPLATES.get(tid)
        size = t.size if t is not None else 8
        if frame.block_length < size:
            self.protocol_error(f"template {tid} block {frame.block_length} < {size}")
            return
        block = frame.data[wire.PREFIX_SIZE:wire.PREFIX_SIZE + size]
        seqno = int.from_bytes(block[:8], "little")
        if seqno >= self.client_sent:
            # A jump NotApplied.Count (a u32) cannot carry, or a SeqNo after which nothing
            # could be expected, is refused before it is applied: the session goes on after
            # the Logout from the NextExpectedSeqNo its LogonAck then gives.
            if seqno - self.client_sent > MAX_SEQ_JUMP or seqno == wire.U64_NULL:
                self.protocol_error("SeqNo 2^64-1" if seqno == wire.U64_NULL
                                    else "SeqNo jump over 2^32-1")
                return
            self.client_sent = seqno + 1
        flags = 0
        if not self._take_token():
            flags |= GW_FLAG_THROTTLED
            self.gw.stats["throttled"] += 1
            if self._abusing():
                self.logout(wire.LOGOUT_THROTTLE_ABUSE, "throttle abuse")
                return
        if tid in (wire.NEW_ORDER_SINGLE, wire.ORDER_CANCEL_REPLACE_REQUEST) and \
                self.gw.overloaded(self.shard):
            flags |= GW_FLAG_SHED
            self.gw.stats["shed"] += 1
        payload = CLIENT_MESSAGE_S.pack(self.user.user, self.session_id, flags, tid) + block
        index = self.gw.enqueue(self.shard, KIND_CLIENT_MESSAGE, payload)
        self.inflight.append((index, seqno))
        self.gw.stats["client_messages"] += 1

    def _take_token(self) -> bool:
        return self.bucket.take(self.gw.clock())

    def _abusing(self) -> bool:
        """Over the rate in each of the last throttle_abuse_s one-second windows."""
        return self.bucket.over_streak + 1 >= self.cfg.throttle_abuse_s

    # -- session layer -----------------------------------------------------------------------------
    def _heartbeat(self, test_req_id: int = 0) -> bytes:
        self._update_applied()
        return wire.encode(wire.HEARTBEAT, test_req_id, self.gw.next_server_seq(self.key),
                           self.client_next)

    def _answer_logout(self, answer: bytes) -> None:
        """Unbind the session (its SessionEnd goes to the shard), and answer once the shard
        has applied that: a client that logs on again at another gateway the moment it has
        the answer is then sequenced after the SessionEnd, and its session is free (it got
        LogonReject 2, "bound elsewhere", when the new Logon overtook the SessionEnd)."""
        self.out_ended = True     # the answer is the last frame; nothing else goes before it
        self.gw.unbind(self)
        self.logout_answer = answer
        self.answer_after = self.gw.enqueued[self.shard]
        self.answer_wait_from = self.gw.clock()
        self.gw.answers_waiting[self] = None
        self.answer_if_applied(self.answer_wait_from)

    def answer_if_applied(self, now: float) -> None:
        if self.logout_answer is None:
            self.gw.answers_waiting.pop(self, None)
            return
        if self.gw.applied_index(self.shard) < self.answer_after and \
                now - self.answer_wait_from < ANSWER_WAIT_S and self.state != CLOSED:
            return
        answer, self.logout_answer = self.logout_answer, None
        self.gw.answers_waiting.pop(self, None)
        self.out_ended = False
        self.write(answer)
        self.out_ended = True
        self.closing_at = now

    def _update_applied(self) -> None:
        if not self.inflight:
            return
        applied = self.gw.applied_index(self.shard)
        inflight = self.inflight
        while inflight and inflight[0][0] <= applied:
            seqno = inflight.popleft()[1]
            if seqno >= self.client_next:
                self.client_next = min(seqno + 1, wire.U64_NULL)

    def on_session_state(self, state: tuple, ts_ns: int) -> None:
        """The engine's answer to our SessionLogon."""
        _t, user, sid, _conn, next_expected, next_seq, status = state
        if self.state != LOGGING_ON:
            return
        if (user, sid) != self.key:  # an engine bug: refuse rather than bind a wrong session
            log.error("conn %x: SessionState for %s, expected %s", self.conn_id, (user, sid),
                      self.key)
            self.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "session state mismatch")
            return
        if status == STATUS_BOUND_ELSEWHERE:
            self.bound = False
            self.logon_reject(wire.LOGON_REJECT_SESSION_BOUND, "session bound elsewhere")
            return
        if status == STATUS_BEYOND:     # refused by the engine before it bound anything
            self.bound = False
            self.logon_reject(wire.LOGON_REJECT_SEQ_BEYOND, f"server NextSeqNo is {next_seq}")
            return
        if status == STATUS_FINALIZED:
            self.bound = False
            self.logon_reject(wire.LOGON_REJECT_SESSION_FINALIZED, "session finalized")
            return
        if status == STATUS_LIMIT:
            self.bound = False
            self.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "too many sessions: resume one")
            return
        if status not in (STATUS_RESUMED, STATUS_NEW):
            self.logon_reject(wire.LOGON_REJECT_NOT_OPEN, f"session status {status}")
            return
        last = next_seq - 1
        want = self.logon.NextExpectedSeqNo
        if want > next_seq:
            self.logon_reject(wire.LOGON_REJECT_SEQ_BEYOND, f"server NextSeqNo is {next_seq}")
            return
        lg = self.logon
        flags = wire.FLAG_NEW_SESSION if status == STATUS_NEW else 0
        self.client_next = self.client_sent = next_expected
        self.state = LIVE
        self.gw.stats["logons"] += 1
        self.gw.bind(self)
        self.write(wire.encode(wire.LOGON_ACK, lg.SessionID, next_expected, next_seq,
                               self.cfg.heartbeat_ms, self.user.max_msgs_per_sec,
                               lg.CodTimeoutMs, lg.CancelOnDisconnect, flags,
                               _trading_date(ts_ns)))
        self.bucket = self.gw.session_bucket(self.key, self.user.max_msgs_per_sec)
        if 1 <= want <= last:
            self.replaying = True
            self._spawn(self._replay(want, last))
        self._resume_input()
        self._process()  # whatever the client sent after its Logon

    async def _replay(self, first: int, last: int) -> None:
        """Logon replay: Retransmission(first, count), the messages with PossDup, then the
        live messages that arrived meanwhile; nothing of this session interleaves."""
        try:
            await self._write_journal(first, last, header=True)
            await self._write_held()
        finally:
            self.replaying = False

    async def _write_held(self) -> None:
        """After a replay: the live messages held meanwhile, then a held Logout answer (the
        last frame of the connection). `replaying` stays set until `held` is empty, so what
        arrives while these are written queues behind them."""
        while self.held and self.state != CLOSED:
            self.write(self.held.popleft())
            if not self.can_write.is_set():
                await self.can_write.wait()
        if self.logout_held is not None and self.state != CLOSED:
            answer, self.logout_held = self.logout_held, None
            self._answer_logout(answer)

    async def _write_journal(self, first: int, last: int, header: bool) -> None:
        """Messages first..last with PossDup; with ``header``, Retransmission(first, count)
        before them, written once the first of them are read, so that Heartbeats sent while
        that read waits on the log come before it. A read back from the log waits up to
        READ_BACK_TIMEOUT_S (replicators frozen or gone): meanwhile `awaiting_log` lets tick()
        send Heartbeats as §4.8 asks, or a client waiting for its replay would see a silent
        server and log out."""
        seq = first
        while seq <= last and self.state != CLOSED and not self.out_ended:
            stop = min(last, seq + 255)
            self.awaiting_log = True
            try:
                entries = await self.gw.journal_entries(self.key, seq, stop)
            finally:
                self.awaiting_log = False
            if entries is None:   # the log did not answer: the client asks again later
                self.logout(wire.LOGOUT_ADMIN, "replay unavailable: log silent")
                return
            if self.state == CLOSED or self.out_ended:
                return
            if header:
                self.write(wire.encode(wire.RETRANSMISSION, first, last - first + 1))
                header = False
            for entry in entries:
                if entry is not None:
                    self.write(wire.frame_from_block(entry[0], entry[1], wire.FLAG_POSS_DUP))
            seq = stop + 1
            if not self.can_write.is_set():
                await self.can_write.wait()
            else:
                await asyncio.sleep(0)

    def _retransmit_request(self, m) -> None:
        last = self.gw.next_server_seq(self.key) - 1
        if self.retransmitting:
            reason = wire.RETRANSMIT_REJECT_IN_PROGRESS
        elif not self._take_token():   # each request costs up to max_retransmit messages
            self.gw.stats["throttled"] += 1
            reason = wire.RETRANSMIT_REJECT_OVER_LIMIT
        elif m.Count > self.cfg.max_retransmit:
            reason = wire.RETRANSMIT_REJECT_OVER_LIMIT
        elif m.Count == 0 or m.FromSeqNo < 1 or m.FromSeqNo + m.Count - 1 > last:
            reason = wire.RETRANSMIT_REJECT_OUT_OF_RANGE
        else:
            self.retransmitting = True
            self._spawn(self._retransmit(m.FromSeqNo, m.FromSeqNo + m.Count - 1))
            return
        self.gw.stats["retransmit_rejects"] += 1
        self.retransmit_rejects += 1
        self.write(wire.encode(wire.RETRANSMIT_REJECT, m.FromSeqNo, m.Count, reason))
        if self.retransmit_rejects >= self.cfg.max_retransmit_rejects:
            self.logout(wire.LOGOUT_RETRANSMIT_VIOLATION, "too many bad retransmit requests")

    async def _retransmit(self, first: int, last: int) -> None:
        """Paced: batches, each introduced by Retransmission(from, count) and followed by
        exactly those `count` messages; live messages wait while a batch is written and go
        out between batches (§4.7, as FIXP's Retransmission frames its batch)."""
        mine = False
        try:
            while self.replaying and self.state != CLOSED:
                await asyncio.sleep(0.001)
            step = self.cfg.retransmit_batch
            for a in range(first, last + 1, step):
                if self.state == CLOSED or self.out_ended:
                    return
                b = min(last, a + step - 1)
                self.replaying = mine = True
                await self._write_journal(a, b, header=True)
                await self._write_held()
                self.replaying = mine = False
                await asyncio.sleep(0)
        finally:
            self.retransmitting = False
            if mine:
                self.replaying = False

    def _spawn(self, coro) -> None:
        task = self.gw.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("conn %x: %r", self.conn_id, task.exception())
            self.abort()

    # -- timers ------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        cfg = self.cfg
        if self.state == CLOSING:
            if self.logout_answer is not None:
                self.answer_if_applied(now)      # (the grace period starts with the answer)
                return
            if now - self.closing_at > cfg.logout_grace_s and self.transport:
                self.transport.abort()
            return
        if self.state in (NEW, LOGGING_ON):
            if self.state == LOGGING_ON and self.logon_sent_at:
                if now - self.logon_sent_at > cfg.core_timeout_s:
                    self.gw.stats["core_timeouts"] += 1
                    self.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "trading engine not answering")
            elif self.auth_check is not None:
                # The Logon arrived and waits for its credential check (queued or running):
                # not "no logon"; bounded by auth_timeout_s from its arrival instead.
                if now - self.logon_at > cfg.auth_timeout_s:
                    self.gw.stats["auth_timeouts"] += 1
                    self.gw.auth.abandon(self)
                    self.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "busy: try again")
            elif now - self.accepted_at > cfg.logon_timeout_s:
                self.gw.stats["logon_timeouts"] += 1
                self.logout(wire.LOGOUT_HEARTBEAT_TIMEOUT, "no logon")
            return
        if self.state != LIVE:
            return
        # What the shard applied is let go of here, not only when a Heartbeat is due: a
        # connection sent a report every second gets no Heartbeat, and `inflight` kept one
        # entry per client message for the connection's life.
        self._update_applied()
        if now - self.last_sent >= cfg.heartbeat_ms / 1000 and (
                self.awaiting_log or not self.replaying):
            self.write(self._heartbeat())
        if not self.reading:
            # not read by our choice (its shard's queue is full, or its input is bounded):
            # what it sends waits in the socket, so its silence is ours, not the client's;
            # it counts again from when reading resumes
            self.last_recv = now
            self.test_req_id = 0
        silent = now - self.last_recv
        if self.test_req_id:
            if now - self.test_sent_at > self.client_hb_s:
                self.gw.stats["heartbeat_timeouts"] += 1
                log.warning("conn %x (%s, session %s): nothing received for %.1f s, TestRequest "
                            "unanswered: Logout(1)", self.conn_id, self.peer, self.key,
                            now - self.last_recv)
                self.logout(wire.LOGOUT_HEARTBEAT_TIMEOUT, "heartbeat timeout")
        elif silent > 1.5 * self.client_hb_s:
            self.gw.test_req_ids += 1
            self.test_req_id = self.gw.test_req_ids
            self.test_sent_at = now
            self.write(wire.encode(wire.TEST_REQUEST, self.test_req_id))



HELD_OVERHEAD = 120   # bytes of Python objects around each message held in memory


class Journal:
    """One session's server messages: for each SeqNo the seq of the out.te.N record that
    carries it (0: none seen), and the newest messages themselves (Gateway._hold). The log is
    the journal; memory holds an index of it, 8 bytes a message, and a bounded cache."""

    __slots__ = ("shard", "locs", "blocks")

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.locs = array("q")
        self.blocks: dict[int, tuple[int, bytes]] = {}


class Gateway:
    """The server: accepts connections, authenticates, runs sessions against a Core."""

    def __init__(self, core: Core, accounts: Accounts, cfg: Config | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.core = core
        self.accounts = accounts
        self.cfg = cfg or Config()
        self.clock = clock
        self.n_shards = core.n_shards
        self.conns: set[Connection] = set()
        # connections that have sent no Logon yet, oldest first: at the connection limit the
        # oldest of them makes room for a new one (see _new_connection)
        self.silent: dict[Connection, None] = {}
        self.full_logged_at = -1e9
        self.pending: dict[int, Connection] = {}      # conn_id → connection waiting to log on
        self.live: dict[tuple[int, int], Connection] = {}  # (user, session_id) → connection
        self.journal: dict[tuple[int, int], Journal] = {}  # (user, session_id) → its messages
        self.cached: deque = deque()  # (key, SeqNo, bytes) of the messages held, oldest first
        self.cached_bytes = 0
        self.buckets: dict[tuple[int, int], Bucket] = {}  # (user, session_id) → its throttle
        self.queues = [deque() for _ in range(self.n_shards)]
        self.queued_event = [asyncio.Event() for _ in range(self.n_shards)]
        self.enqueued = [0] * self.n_shards   # records ever queued for the shard
        self.core_sent = [0] * self.n_shards  # records handed to core.send and returned
        self.paused: set[Connection] = set()
        self.next_conn = 0
        self.lingering: set[Connection] = set()  # half-closed, the peer not closed yet
        self.test_req_ids = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task] = []
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stats = {k: 0 for k in (
            "connections", "refused_connections", "evicted_connections", "logons",
            "logon_rejects", "auth_failures", "auth_cached", "auth_scrypt", "auth_joined", "auth_busy", "auth_timeouts",
            "logouts_sent", "protocol_errors", "client_messages", "throttled", "shed",
            "retransmit_rejects", "heartbeat_timeouts", "logon_timeouts", "core_timeouts",
            "slow_consumers", "session_messages", "bad_payloads", "journal_reads",
            "journal_read_failures", "probes", "index_writes", "index_write_failures")}
        # the journal index on disk (Config.index_file): the last out.te.N record applied to
        # the index per shard (seq, ts_ns), what changed since the last chunk written (each
        # session's first SeqNo not written; finalized sessions), the covered seqs written
        self.index: gindex.IndexFile | None = None
        self.covered: list[tuple[int, int]] = [(0, 0)] * self.n_shards
        self.index_dirty: dict[tuple[int, int], int] = {}
        self.index_drops: list[tuple[int, int]] = []
        self.index_written: list[tuple[int, int]] = list(self.covered)
        # connections whose Logout answer waits for their SessionEnd to be applied, looked at
        # once a turn of the loop in which out.te records came (answers_soon)
        self.answers_waiting: dict[Connection, None] = {}
        self.answers_soon = False
        cfg = self.cfg
        self.auth = Authenticator(lambda: self.accounts, self._auth_answer, self.stats,
                                  cfg.max_auth_pending, cfg.max_auth_per_peer,
                                  cfg.max_auth_queued, cfg.max_auth_queued_per_peer)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Subscribe, start the core, send GatewayStart(g) to every shard and wait until each
        applied it (so every earlier session event is indexed), then listen."""
        self.loop = loop = asyncio.get_running_loop()
        if self.cfg.index_file:
            await self._open_index()
        self.core.subscribe(self._on_record)
        await self.core.start()
        for shard in range(self.n_shards):
            self.tasks.append(loop.create_task(self._sender(shard)))
            self.enqueue(shard, KIND_GATEWAY_START, GATEWAY_START_S.pack(self.cfg.index))
        waited = 0.0
        while any(self.applied_index(s) < self.enqueued[s] for s in range(self.n_shards)):
            await asyncio.sleep(0.005)
            waited += 0.005
            if waited >= 5.0:
                log.info("gateway %d: waiting for the trading engines to apply GatewayStart",
                         self.cfg.index)
                waited = 0.0
        self.tasks.append(loop.create_task(self._ticker()))
        self.server = await loop.create_server(self._new_connection, host, port,
                                               reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        log.info("gateway %d listening on %s:%d", self.cfg.index, sock[0], sock[1])
        return sock[0], sock[1]

    async def close(self) -> None:
        """Logout(6) every connection, stop listening and the timers (the core stays open)."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            if c.state == LIVE:
                c.logout(wire.LOGOUT_ADMIN, "gateway shutting down", wait=True)
            else:
                c.abort()
        # the clients answer Logout (§4.9) and the queued SessionEnds reach the core
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.shutdown_grace_s
        while self.conns and loop.time() < end:
            await asyncio.sleep(0.005)
        for c in list(self.conns) + list(self.lingering):
            c.abort()
        for _ in range(200):
            if not any(self.queues) and not self.conns:
                break
            await asyncio.sleep(0.005)
        for t in self.tasks:
            await stop_task(t, "a gateway task")
        self.tasks.clear()
        self.auth.close()
        if self.index is not None:
            self._checkpoint()
            self.index.close()

    # -- the journal index on disk (gateway/index.py) ----------------------------------------------
    async def _open_index(self) -> None:
        """Take the index file's sessions if the log confirms it (each shard's covered seq
        holds the record stamped as the file says), and read each shard from the record
        after it; else start from seq 1 with an empty file."""
        path, n = self.cfg.index_file, self.n_shards
        loaded = gindex.load(path, n)
        if loaded.damaged:
            log.warning("gateway %d: index %s: stopped reading at %s; the log is read from "
                        "where the chunks before it end", self.cfg.index, path, loaded.damaged)
        usable = any(seq for seq, _ts in loaded.covered)
        for shard, (seq, ts) in enumerate(loaded.covered):
            if not usable or not seq:
                continue
            try:
                have = await self.core.stamp(shard, seq)
            except Exception as exc:   # (no replicator answered)
                log.warning("gateway %d: index %s not used: out.te.%d seq %d could not be "
                            "read (%s); reading every out.te.N from seq 1", self.cfg.index,
                            path, shard, seq, exc)
                usable = False
                continue
            if have != ts:
                log.warning("gateway %d: index %s not used: it covers out.te.%d to seq %d "
                            "stamped %d, the log %s; reading every out.te.N from seq 1",
                            self.cfg.index, path, shard, seq, ts,
                            "does not hold that seq" if have is None else f"stamps it {have}")
                usable = False
        f = gindex.IndexFile(path, n)
        try:
            self._take_index(f, loaded, usable)
        except OSError as exc:   # a full disk, a directory in its place, no permission, ...
            f.close()
            self.index = None
            log.error("gateway %d: index %s cannot be written (%s): running without it (a "
                      "restart reads more of the log)", self.cfg.index, path, exc)
            return
        self.index = f
        self.index_written = list(self.covered)

    def _take_index(self, f, loaded, usable: bool) -> None:
        path = self.cfg.index_file
        if usable:
            for key, (shard, locs) in loaded.sessions.items():
                j = self.journal[key] = Journal(shard)
                j.locs = locs
            self.covered = list(loaded.covered)
            for shard, (seq, _ts) in enumerate(self.covered):
                self.core.resume_at(shard, seq + 1)
            log.info("gateway %d: index %s: %d sessions, %d server messages; reading "
                     "out.te from %s", self.cfg.index, path, len(self.journal),
                     sum(len(j.locs) for j in self.journal.values()),
                     ", ".join(f"{n_}: seq {s + 1}" for n_, (s, _t) in enumerate(self.covered)))
            if loaded.valid_bytes > 2 * loaded.needed_bytes() + gindex.COMPACT_SLACK:
                f.rewrite(self.covered, {k: (j.shard, j.locs) for k, j in self.journal.items()})
            else:
                f.open_for_append(loaded.valid_bytes)
        else:
            f.rewrite(self.covered, {})

    def _checkpoint(self) -> None:
        """Append what changed in the index since the last chunk (nothing if nothing did)."""
        if self.covered == self.index_written and not self.index_dirty and \
                not self.index_drops:
            return
        journal = self.journal
        sets = [(k, journal[k].shard, journal[k].locs, first)
                for k, first in self.index_dirty.items() if k in journal]
        covered = list(self.covered)
        if self.index.append(gindex.chunk(self.n_shards, covered, self.index_drops, sets)):
            self.stats["index_writes"] += 1
            self.index_dirty.clear()
            self.index_drops.clear()
            self.index_written = covered
        else:
            self.stats["index_write_failures"] += 1

    def reload_accounts(self, accounts: Accounts) -> None:
        """Take a new accounts file: a logged-on user who is gone from it, or whose id or
        accounts changed, is logged out (Logout 6); the next Logon checks the new file (the
        verified passwords of users whose hash changed or who are gone are forgotten)."""
        self.accounts = accounts
        self.auth.retain(accounts)
        for c in list(self.conns):
            if c.user is None or c.state >= CLOSING:
                continue
            u = accounts.users.get(c.user.name)
            if u is None or u.user != c.user.user or u.accounts != c.user.accounts or \
                    u.default_account != c.user.default_account or u.scrypt != c.user.scrypt:
                if c.state == LIVE:
                    c.logout(wire.LOGOUT_ADMIN, "user changed: log on again")
                else:
                    c.abort()

    def status(self) -> dict:
        """Counters, live sessions and per-shard queue depths, for metrics (deploy/metrics.py).
        Only plain reads of ints and lengths: safe from another thread between two statements
        of the event loop."""
        return {"role": "gateway", "index": self.cfg.index, "open_connections": len(self.conns),
                "live_sessions": len(self.live), "pending_logons": len(self.pending),
                "journal_sessions": len(self.journal), "journal_held_bytes": self.cached_bytes,
                "index_bytes": self.index.size if self.index is not None else 0,
                "auth_queued": len(self.auth.queue), "auth_running": self.auth.running,
                "queue_depth": [len(q) for q in self.queues],
                "in_flight": [self.core.depth(s) for s in range(self.n_shards)],
                **dict(self.stats)}

    def _new_connection(self) -> Connection:
        self.next_conn += 1
        conn = Connection(self, self.cfg.index << CONN_ID_SHIFT | self.next_conn)
        if len(self.conns) >= self.cfg.max_connections and self.silent and not self.closing:
            # Full. The oldest connection that has not sent its Logon makes room: idle
            # connections opened faster than the logon timeout expires them would otherwise
            # hold every slot and lock every user out, known ones included. A client sends
            # its Logon as soon as it connects; a flood must now open connections faster
            # than the limit per Logon's round trip to keep one out.
            old = next(iter(self.silent))
            self.stats["evicted_connections"] += 1
            self._full("the oldest connection that has not logged on closed for a new one")
            self._forget(old)
            old.refused = True   # (not yet made: closed as soon as it is)
            old.abort()
        if len(self.conns) >= self.cfg.max_connections or self.closing:
            self.stats["refused_connections"] += 1
            if not self.closing:
                self._full("every connection is logged on: new ones refused")
            conn.refused = True  # closed as soon as it is made: no read, no allocation
            return conn
        self.stats["connections"] += 1
        self.conns.add(conn)
        self.silent[conn] = None
        return conn

    def _full(self, what: str) -> None:
        now = self.clock()
        if now - self.full_logged_at >= 10.0:     # one line per 10 s, however many
            self.full_logged_at = now
            log.warning("%d connections, the limit: %s (connections refused %d, closed for "
                        "new ones %d so far)", len(self.conns), what,
                        self.stats["refused_connections"], self.stats["evicted_connections"])

    def _forget(self, conn: Connection) -> None:
        self.auth.abandon(conn)
        self.conns.discard(conn)
        self.silent.pop(conn, None)
        self.paused.discard(conn)
        if self.pending.get(conn.conn_id) is conn:
            del self.pending[conn.conn_id]
        self.unbind(conn)

    def unbind(self, conn: Connection) -> None:
        """The session leaves the connection (§4.9: Logout unbinds the transport): it is no
        longer live here, and its shard learns it (SessionEnd) so that a Logon from another
        connection may resume it at once. At the connection's end, or as soon as we answered
        its Logout, whichever comes first."""
        if conn.key is not None and self.live.get(conn.key) is conn:
            del self.live[conn.key]
        if conn.bound:
            conn.bound = False
            reasons = [conn.end_reason]
            if conn.end_reason == END_FINALIZE:
                # a Logout first: cancel-on-disconnect mode 1 acts on it as on any logout
                reasons = [END_LOGOUT, END_FINALIZE]
            for reason in reasons:
                self.enqueue(conn.shard, KIND_SESSION_END,
                             SESSION_END_S.pack(conn.user.user, conn.session_id, conn.conn_id,
                                                reason))

    # -- logon -------------------------------------------------------------------------------------
    def start_logon(self, conn: Connection, version: int) -> None:
        """A Logon arrived. A password scrypt accepted before for this user (and the user's
        hash as it is now) is recognised by its keyed fast hash at once, without scrypt and
        without a slot; any other goes to scrypt: now if there is a slot, else into the
        bounded FIFO queue, else LogonReject(6). Nothing about the session is looked at
        before the credentials pass."""
        if version < wire.VERSION:
            conn.logon_reject(wire.LOGON_REJECT_UNSUPPORTED_VERSION, f"schema version {version}")
            return
        if self.closing:
            conn.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "gateway shutting down")
            return
        creds = _credentials(conn.logon)
        if creds is None:
            self.stats["auth_failures"] += 1
            conn.logon_reject(wire.LOGON_REJECT_BAD_CREDENTIALS,
                              "credentials not NUL-padded")
            return
        name, password = creds
        conn.logon_at = self.clock()
        self.silent.pop(conn, None)
        self.auth.start(conn, name, password)

    def _auth_answer(self, conn: Connection, user: User | None, failed: str) -> None:
        """The credential check's answer (gateway/auth.py)."""
        if conn.state != LOGGING_ON:
            return
        if failed:
            conn.logon_reject(wire.LOGON_REJECT_NOT_OPEN, failed)
        elif user is None:
            self.stats["auth_failures"] += 1
            conn.logon_reject(wire.LOGON_REJECT_BAD_CREDENTIALS, "bad credentials")
        else:
            self._authenticated(conn, user)

    def _authenticated(self, conn: Connection, user: User) -> None:
        lg = conn.logon
        # Authenticated: only now is anything about the session looked at or sent.
        if not HEARTBEAT_MIN_MS <= lg.HeartbeatIntervalMs <= HEARTBEAT_MAX_MS:
            conn.logon_reject(wire.LOGON_REJECT_HEARTBEAT_RANGE, "heartbeat 100..30000 ms")
            return
        if lg.CancelOnDisconnect > wire.COD_ON_DISCONNECT_ONLY:
            conn.protocol_error("CancelOnDisconnect must be 0..2")
            return
        if self.closing:
            conn.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "gateway shutting down")
            return
        if sum(1 for c in self.conns if c.user is not None and c.user.user == user.user
               and c.state < CLOSING) >= self.cfg.max_conns_per_user:
            conn.logon_reject(wire.LOGON_REJECT_NOT_OPEN, "too many connections of the user")
            return
        conn.user = user
        conn.session_id = lg.SessionID
        conn.key = (user.user, lg.SessionID)
        conn.shard = user.accounts[0] % self.n_shards
        conn.client_hb_s = lg.HeartbeatIntervalMs / 1000
        conn.logon_sent_at = self.clock()
        old = self.live.get(conn.key)
        if old is not None and old is not conn and old.peer_gone():
            # The client reconnected at once after a reset or a close of the connection that
            # holds the session, and we have not read that end yet: end it now, so that its
            # SessionEnd goes to the engine before this SessionLogon (else: "bound elsewhere")
            self.unbind(old)
            old.abort()
        conn.bound = True  # from here on the engine may bind it: SessionEnd on close
        self.pending[conn.conn_id] = conn
        payload = SESSION_LOGON_S.pack(user.user, lg.SessionID, conn.conn_id,
                                       user.default_account, lg.CancelOnDisconnect,
                                       lg.CodTimeoutMs, len(user.accounts))
        payload += b"".join(ACCOUNT_S.pack(a) for a in user.accounts)
        payload += NEXT_EXPECTED_S.pack(lg.NextExpectedSeqNo)  # the engine refuses beyond H + 1
        self.enqueue(conn.shard, KIND_SESSION_LOGON, payload)

    def bind(self, conn: Connection) -> None:
        old = self.live.get(conn.key)
        if old is not None and old is not conn:
            old.abort()  # the engine rebound the session: the old transport is stale
        self.live[conn.key] = conn

    # -- the engines' output -----------------------------------------------------------------------
    def _on_record(self, shard: int, out_seq: int, ts_ns: int, payload: bytes) -> None:
        self.covered[shard] = (out_seq, ts_ns)
        if self.answers_waiting and not self.answers_soon:
            self.answers_soon = True
            self.loop.call_soon(self._answer_waiting)
        try:
            events = session_events(payload)
        except ValueError as exc:
            self.stats["bad_payloads"] += 1
            log.error("out.te.%d seq %d: cannot walk the events: %s", shard, out_seq, exc)
            return
        for ev in events:
            if ev[0] == EV_SESSION_STATE:
                conn = self.pending.pop(ev[3], None)
                if conn is not None:
                    conn.on_session_state(ev, ts_ns)
                elif ev[6] == STATUS_FINALIZED:
                    self._finalized(ev)
            else:
                _t, user, sid, tid, block = ev
                key = (user, sid)
                journal = self.journal.get(key)
                if journal is None:
                    journal = self.journal[key] = Journal(shard)
                locs = journal.locs
                seq = int.from_bytes(block[:8], "little")
                if self.index is not None:
                    first = min(seq, len(locs) + 1)
                    if self.index_dirty.get(key, first) >= first:
                        self.index_dirty[key] = first
                if seq == len(locs) + 1:
                    locs.append(out_seq)
                elif seq > len(locs):
                    log.error("session %s: server SeqNo %d after %d", key, seq, len(locs))
                    locs.extend([0] * (seq - len(locs) - 1))
                    locs.append(out_seq)
                else:
                    log.error("session %s: server SeqNo %d again", key, seq)
                    locs[seq - 1] = out_seq
                self._hold(key, journal, seq, tid, block)
                self.stats["session_messages"] += 1
                conn = self.live.get(key)
                if conn is not None:
                    conn.deliver(wire.frame_from_block(tid, block))

    def _finalized(self, ev: tuple) -> None:
        """A SessionState(finalized) that answers no Logon of ours: the engine finalized the
        session (end of trading day). Its connection, if here, gets Logout(5); its journal
        index is dropped (a finalized session can never be resumed)."""
        _t, user, sid, conn_id, _ne, _ns, _st = ev
        key = (user, sid)
        conn = self.live.get(key)
        if conn is not None and conn.conn_id == conn_id:
            conn.bound = False  # nothing left to end
            conn.logout(wire.LOGOUT_END_OF_SESSION, "end of session", wait=True)
        if self.journal.pop(key, None) is not None and self.index is not None:
            self.index_dirty.pop(key, None)
            self.index_drops.append(key)

    def _answer_waiting(self) -> None:
        """The Logout answers whose SessionEnd the records of this turn showed applied."""
        self.answers_soon = False
        now = self.clock()
        for c in list(self.answers_waiting):
            c.answer_if_applied(now)

    def session_bucket(self, key: tuple[int, int], rate: int) -> Bucket:
        """The session's throttle as its last connection left it (a new one if it has none,
        has been idle long enough to be full again, or the user's rate changed)."""
        now = self.clock()
        b = self.buckets.get(key)
        if b is None or b.rate != rate or now - b.refill_at >= Bucket.IDLE_S:
            if len(self.buckets) >= 4 * self.cfg.max_connections:
                for k in [k for k, v in self.buckets.items()
                          if now - v.refill_at >= Bucket.IDLE_S and k not in self.live]:
                    del self.buckets[k]
            b = self.buckets[key] = Bucket(rate, now)
        return b

    def next_server_seq(self, key) -> int:
        j = self.journal.get(key)
        return 1 if j is None else len(j.locs) + 1

    def _hold(self, key: tuple[int, int], journal: Journal, seq: int, tid: int,
              block: bytes) -> None:
        """Keep a message in memory; beyond journal_cache_bytes the oldest held ones go (the
        log still has them)."""
        journal.blocks[seq] = (tid, block)
        size = len(block) + HELD_OVERHEAD
        self.cached.append((key, seq, size))
        self.cached_bytes += size
        budget = self.cfg.journal_cache_bytes
        while self.cached_bytes > budget and self.cached:
            k, s, n = self.cached.popleft()
            self.cached_bytes -= n
            j = self.journal.get(k)
            if j is not None:
                j.blocks.pop(s, None)

    async def journal_entries(self, key: tuple[int, int], first: int,
                              last: int) -> list | None:
        """(template, block) of the session's server messages first..last (None where the
        engine sent none), the ones no longer held read back from out.te.N; None if the log
        did not answer."""
        j = self.journal.get(key)
        if j is None:
            return [None] * (last - first + 1)
        blocks, locs = j.blocks, j.locs
        out = [blocks.get(s) for s in range(first, last + 1)]
        want = {locs[s - 1] for s in range(first, min(last, len(locs)) + 1)
                if out[s - first] is None and locs[s - 1]}
        if not want:
            return out
        self.stats["journal_reads"] += 1
        try:
            payloads = await self.core.fetch(j.shard, sorted(want))
        except Exception as exc:   # (every replicator down or silent)
            self.stats["journal_read_failures"] += 1
            log.error("session %s: messages %d..%d not read back from out.te.%d: %s", key,
                      first, last, j.shard, exc)
            return None
        for out_seq in sorted(want):
            payload = payloads.get(out_seq)
            if payload is None:
                self.stats["journal_read_failures"] += 1
                log.error("session %s: out.te.%d seq %d not read back", key, j.shard, out_seq)
                return None
            for ev in session_events(payload):
                if ev[0] != EV_SESSION_STATE and (ev[1], ev[2]) == key:
                    s = int.from_bytes(ev[4][:8], "little")
                    if first <= s <= last and out[s - first] is None:
                        out[s - first] = (ev[3], ev[4])
        return out

    # -- records to the core -----------------------------------------------------------------------
    def enqueue(self, shard: int, kind: int, payload: bytes) -> int:
        """Queue one record for in.te.<shard>; returns its index (1, 2, ... in send order)."""
        self.queues[shard].append((kind, payload))
        self.enqueued[shard] += 1
        self.queued_event[shard].set()
        return self.enqueued[shard]

    def applied_index(self, shard: int) -> int:
        """Every record of index <= this has been applied by the shard (an underestimate
        while a send is in flight)."""
        return self.core_sent[shard] - self.core.depth(shard)

    def overloaded(self, shard: int) -> bool:
        return self.core.depth(shard) + len(self.queues[shard]) > self.cfg.max_depth

    def queue_full(self, shard: int) -> bool:
        return len(self.queues[shard]) >= self.cfg.max_queued

    async def _sender(self, shard: int) -> None:
        q = self.queues[shard]
        ev = self.queued_event[shard]
        while True:
            await ev.wait()
            ev.clear()
            while q:
                kind, payload = q[0]
                try:
                    await self.core.send(shard, kind, payload)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # an operating error of the core: retry, in order
                    log.warning("in.te.%d: send failed (%s): retrying", shard, exc)
                    await asyncio.sleep(0.1)
                    continue
                q.popleft()
                self.core_sent[shard] += 1
                if self.paused and len(q) < self.cfg.max_queued // 2:
                    self._resume_paused(shard)

    def _resume_paused(self, shard: int) -> None:
        for c in [c for c in self.paused if c.shard == shard]:
            self.paused.discard(c)
            c._resume_input()
            c._process()

    async def _ticker(self) -> None:
        index_due = self.clock() + self.cfg.index_interval_s
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            now = self.clock()
            if self.index is not None and now >= index_due:
                index_due = now + self.cfg.index_interval_s
                try:
                    self._checkpoint()
                except Exception:  # a bug: the index stays in memory, the gateway goes on
                    log.exception("gateway %d: index checkpoint failed", self.cfg.index)
            for c in list(self.conns):
                try:
                    c.tick(now)
                except Exception:  # a bug: this connection ends, the others go on
                    log.exception("conn %x: timer failed", c.conn_id)
                    c.abort()


async def serve(core: Core, accounts: Accounts, cfg: Config, host: str, port: int,
                stop: asyncio.Event) -> None:
    """Run a gateway until `stop` is set; then Logout everyone and close the core."""
    gw = Gateway(core, accounts, cfg)
    try:
        await gw.start(host, port)
        await stop.wait()
    finally:
        await gw.close()
        await core.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed, else asyncio's own loop."""
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# -- the `seqex gateway` process ----------------------------------------------------------------

@dataclass
class Settings:
    """A gateway process's configuration file, validated."""

    cfg: Config
    host: str
    port: int
    accounts: str
    shards: list[dict]
    specs: list[dict]


_REQUIRED = ("index", "listen", "accounts", "shards")
_OPTIONAL = {"specs": list, "max_depth": int, "heartbeat_ms": int, "max_connections": int,
             "logon_timeout_s": (int, float), "core_timeout_s": (int, float),
             "max_retransmit": int, "max_conns_per_user": int,
             "max_output_bytes": int, "max_input_bytes": int,
             "max_auth_pending": int, "max_auth_per_peer": int, "max_auth_queued": int,
             "max_auth_queued_per_peer": int, "auth_timeout_s": (int, float),
             "journal_cache_bytes": int, "index_file": str,
             "index_interval_s": (int, float)}


def parse_settings(doc) -> Settings:
    """Validate a gateway configuration document; ValueError names the first problem."""
    from decimal import Decimal, InvalidOperation
    if not isinstance(doc, dict):
        raise ValueError("the gateway configuration must be a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"gateway configuration: missing {', '.join(missing)}")
    unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"gateway configuration: unknown key {unknown[0]!r}")
    for k, types in _OPTIONAL.items():
        if k in doc and (not isinstance(doc[k], types) or isinstance(doc[k], bool)):
            raise ValueError(f"gateway configuration: {k} has the wrong type")
    index = doc["index"]
    if type(index) is not int or not 0 <= index <= 0xFFFF:
        raise ValueError("gateway configuration: index must be 0..65535")
    listen = doc["listen"]
    host, sep, port_text = str(listen).rpartition(":")
    if not isinstance(listen, str) or not sep or not host or not port_text.isdigit() or \
            not 0 < int(port_text) < 65536:
        raise ValueError(f"gateway configuration: listen must be HOST:PORT, got {listen!r}")
    if not isinstance(doc["accounts"], str) or not doc["accounts"]:
        raise ValueError("gateway configuration: accounts must be the accounts file's path")
    shards = doc["shards"]
    if not isinstance(shards, list) or not 1 <= len(shards) <= 64:
        raise ValueError("gateway configuration: shards must be a list of 1..64 objects")
    for n, sh in enumerate(shards):
        if not isinstance(sh, dict) or set(sh) - {"in", "pub", "replicators", "out_stream"} or \
                not all(k in sh for k in ("in", "pub", "replicators")) or \
                not isinstance(sh.get("out_stream", "x"), str):
            raise ValueError(f"gateway configuration: shard {n} must be "
                             '{"in": ENDPOINT, "pub": ENDPOINT, "replicators": [ENDPOINT, ...]}')
        eps = [sh["in"], sh["pub"]] + (sh["replicators"] if isinstance(sh["replicators"], list)
                                       else [None])
        if not sh["replicators"] or not all(isinstance(e, str) and "://" in e for e in eps):
            raise ValueError(f"gateway configuration: shard {n}: endpoints must be like "
                             f"tcp://HOST:PORT, with at least one replicator")
    specs = doc.get("specs", [])
    ids = set()
    for sp in specs:
        if not isinstance(sp, dict) or set(sp) != {"symbol_id", "name", "tick", "lot"}:
            raise ValueError('gateway configuration: each spec must be {"symbol_id", "name", '
                             '"tick", "lot"}')
        if type(sp["symbol_id"]) is not int or not 0 < sp["symbol_id"] <= 0xFFFFFFFF or \
                sp["symbol_id"] in ids:
            raise ValueError(f"gateway configuration: spec symbol_id {sp['symbol_id']!r} "
                             f"must be a unique u32 > 0")
        ids.add(sp["symbol_id"])
        if not isinstance(sp["name"], str) or not 0 < len(sp["name"].encode()) <= 16:
            raise ValueError(f"gateway configuration: spec name {sp['name']!r} must be "
                             f"1..16 bytes")
        for k in ("tick", "lot"):
            try:
                v = Decimal(str(sp[k]))
            except InvalidOperation:
                v = Decimal(0)
            if isinstance(sp[k], bool) or not v.is_finite() or v <= 0:
                raise ValueError(f"gateway configuration: spec {sp['name']}: {k} must be a "
                                 f"positive decimal")
    try:
        cfg = Config(index=index,
                     **{k: doc[k] for k in _OPTIONAL if k != "specs" and k in doc})
    except ValueError as exc:
        raise ValueError(f"gateway configuration: {exc}") from None
    return Settings(cfg, host, int(port_text), doc["accounts"], shards, specs)


def read_settings(text: str) -> Settings:
    """--config: a JSON object, or the path of a file holding one."""
    from gateway.config import json_object
    return parse_settings(json_object(text, "gateway configuration"))


def main(settings: Settings, accounts: Accounts,
         on_start: Callable[[Gateway], None] | None = None) -> int:
    """Run the gateway process until SIGTERM/SIGINT: Logout(6) everyone, then exit 0.
    SIGHUP re-reads the accounts file (a bad file is logged and the old one kept).
    on_start(gateway) runs once it listens (the metrics exporter, deploy/metrics.py)."""
    import signal

    from gateway import accounts as accounts_mod
    from gateway.mq_core import MqCore
    from mq.producer import Refused
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    core = MqCore(settings.cfg.index, settings.shards)
    gw = Gateway(core, accounts, settings.cfg)

    watch = accounts_mod.FileWatch(settings.accounts)

    def reload_accounts():
        watch.changed()            # a SIGHUP's reload is the file as it is now
        try:
            gw.reload_accounts(accounts_mod.load(settings.accounts, core.n_shards))
            log.info("accounts reloaded: %d users", len(gw.accounts.users))
        except ValueError as exc:
            log.error("accounts not reloaded: %s", exc)

    async def watch_accounts():
        """A new accounts file is taken within ACCOUNTS_WATCH_S, without waiting for SIGHUP."""
        while True:
            await asyncio.sleep(ACCOUNTS_WATCH_S)
            if watch.changed():
                reload_accounts()

    starting: list[asyncio.Task] = []   # the run while it starts: a SIGTERM ends it there

    def on_stop():
        stop.set()
        while starting:          # once: a second signal must not cut the cleanup short
            starting.pop().cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, reload_accounts)

    async def run():
        try:
            await gw.start(settings.host, settings.port)
            starting.clear()
            print(f"gateway {settings.cfg.index} listening on {settings.host}:{settings.port}",
                  flush=True)
            if on_start is not None:
                on_start(gw)
            watcher = asyncio.ensure_future(watch_accounts())
            try:
                await stop.wait()
            finally:
                watcher.cancel()
        finally:
            await gw.close()
            await core.close()
    task = loop.create_task(run())
    starting.append(task)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:   # stopped before it listened (engines not answering?)
        log.info("gateway %d: stopped while starting", settings.cfg.index)
    except (Refused, TimeoutError) as exc:   # the log will not take this gateway's records
        hint = ("; the trust policy and the topology must give gateway "
                f"{settings.cfg.index} its source id" if isinstance(exc, Refused) else "")
        print(f"seqex gateway: {exc}{hint}", file=sys.stderr, flush=True)
        return 2
    finally:
        loop.close()
    return 0
