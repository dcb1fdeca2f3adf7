"""The client SDK: an asyncio order-entry client of the gateway (PROTOCOL.md §4-§5).

    specs = {"BTCUSDT": (1, "0.5", "0.001")}         # symbol -> (SecurityID, tick, lot)
    async with Client("127.0.0.1", 7130, "alice", "secret", "alice.session.json", specs) as c:
        cl_ord_id = await c.new_order("BTCUSDT", "buy", "0.010", "50000")
        async for report in c.reports():              # typed, Decimal prices and quantities
            print(report)

Contract (PROTOCOL.md §5, the client's obligations):

* **Persistence.** The session state (SessionID, the next own SeqNo, the unacknowledged outbox,
  the last processed server SeqNo, the next ClOrdID) lives in a JSON snapshot (written
  atomically: temporary file, fsync, rename) and an append-only log beside it (`<file>.log`),
  one line and one fsync per change, the message's line *before* it is sent (SessionState). A
  new Client object on the same file (a restarted process) resumes the session: it logs on
  with those values.
* **Logon = resume.** Logon(SessionID, NextExpectedSeqNo = last processed + 1, NextSeqNo).
  LogonAck.NextExpectedSeqNo says which own messages were applied: the outbox drops them and
  resends the rest unchanged, same SeqNo and ClOrdID, with the PossResend flag (Flags bit0).
  Messages the caller sent while disconnected wait in the outbox and go out the same way.
* **Exactly once to the caller.** Every sequenced server message (10, 200-203) is keyed by its
  server SeqNo: one at or below the highest already received is a duplicate (a replay, PossDup)
  and is dropped. A report counts as processed when the caller asks for the next one (or
  calls ``processed()``); only processed numbers are persisted, so a crash of the caller
  between receiving and handling a report gets it again on the next Logon.
* **Liveness.** A Heartbeat goes out when nothing was sent for the client's interval; after
  1.5 x the server's interval without input a TestRequest goes out, after one more interval
  the connection is closed and the client reconnects with exponential backoff (0.1 s doubling
  up to 5 s). LogonReject 1 (credentials), 3 (finalized), 5 (corrupt state) and 7 are final:
  ``reports()`` raises SessionError. A Logout from the server is reported as a ``Logout``
  object (and answered); reason 5 (end of session) is final too. ``close()`` sends Logout
  and closes once the server answered it (PROTOCOL.md §4.9), or after LOGOUT_ANSWER_S.
* **Units.** Prices and quantities are Decimals in the contract's units; a price is sent as
  PROTOCOL.md's 1e-8 mantissa and must be a whole number of the instrument's ticks, a quantity
  a whole number of lots (ValueError otherwise, before anything is sent). Instrument specs come
  from the caller (SecurityDefinition is market data, not order entry).
* **ClOrdIDs** are 1, 2, 3 ... within a session (persisted, never reused).
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from gateway import wire
from gateway.aio import stop_task, wait_set

log = logging.getLogger("seqex.client")

FINAL_REJECTS = {wire.LOGON_REJECT_BAD_CREDENTIALS: "bad credentials",
                 wire.LOGON_REJECT_SESSION_FINALIZED: "the session is finalized",
                 wire.LOGON_REJECT_SEQ_BEYOND: "the client's session state is ahead of the "
                                               "server's (corrupt state file?)",
                 wire.LOGON_REJECT_UNSUPPORTED_VERSION: "unsupported schema version",
                 wire.LOGON_REJECT_HEARTBEAT_RANGE: "heartbeat interval out of range"}
RETRY_REJECTS = {wire.LOGON_REJECT_SESSION_BOUND: "the session is bound to another connection",
                 wire.LOGON_REJECT_NOT_OPEN: "the gateway is not open"}
SIDES = {"buy": wire.SIDE_BUY, "sell": wire.SIDE_SELL}
SIDE_NAMES = {wire.SIDE_BUY: "buy", wire.SIDE_SELL: "sell", wire.SIDE_BOTH: "both"}
TIFS = {"gtc": wire.TIF_GTC, "ioc": wire.TIF_IOC, "fok": wire.TIF_FOK, "day": wire.TIF_DAY}
TIF_NAMES = {v: k for k, v in TIFS.items()}
EXEC_TYPES = {wire.EXEC_TYPE_NEW: "new", wire.EXEC_TYPE_CANCELED: "canceled",
              wire.EXEC_TYPE_REPLACED: "replaced", wire.EXEC_TYPE_REJECTED: "rejected",
              wire.EXEC_TYPE_EXPIRED: "expired", wire.EXEC_TYPE_TRADE: "trade",
              wire.EXEC_TYPE_STATUS: "status"}
ORD_STATUSES = {wire.ORD_STATUS_NEW: "new", wire.ORD_STATUS_PARTIALLY_FILLED: "partially filled",
                wire.ORD_STATUS_FILLED: "filled", wire.ORD_STATUS_CANCELED: "canceled",
                wire.ORD_STATUS_REJECTED: "rejected", wire.ORD_STATUS_EXPIRED: "expired"}
SEQUENCED = (wire.NOT_APPLIED, wire.EXECUTION_REPORT, wire.ORDER_CANCEL_REJECT,
             wire.ORDER_MASS_CANCEL_REPORT, wire.BUSINESS_REJECT)
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.1, 5.0
LOGOUT_ANSWER_S = 2.0    # close(): how long to wait for the server's answer to our Logout


class SessionError(Exception):
    """The session cannot go on (a final LogonReject or Logout); the message says why."""


# -- instruments ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instrument:
    symbol: str
    security_id: int
    tick: Decimal      # price step, in the quote currency
    lot: Decimal       # quantity step, in the base asset

    @classmethod
    def of(cls, symbol: str, spec: tuple) -> Instrument:
        sid, tick, lot = spec
        return cls(symbol, int(sid), Decimal(str(tick)), Decimal(str(lot)))

    def price_mantissa(self, price: object) -> int:
        """A price in the quote currency as the wire's 1e-8 mantissa; it must be on the tick."""
        d = _decimal("price", price)
        if d <= 0 or _off_grid(d, self.tick):
            raise ValueError(f"{self.symbol}: price {price} is not a positive multiple of the "
                             f"tick {self.tick}")
        if d.scaleb(8) > wire.PRICE_MAX:
            raise ValueError(f"{self.symbol}: price {price} is beyond the largest price the "
                             f"wire carries ({Decimal(wire.PRICE_MAX).scaleb(-8)})")
        return wire.price_to_mantissa(d)

    def lots(self, qty: object) -> int:
        d = _decimal("quantity", qty)
        if d <= 0 or _off_grid(d, self.lot):
            raise ValueError(f"{self.symbol}: quantity {qty} is not a positive multiple of the "
                             f"lot {self.lot}")
        n = int(d / self.lot)
        if n >= 1 << 63:
            raise ValueError(f"{self.symbol}: quantity {qty} is too large")
        return n

    def qty(self, lots: int) -> Decimal:
        return lots * self.lot

    def price(self, mantissa: int) -> Decimal | None:
        p = wire.mantissa_to_price(mantissa)
        return None if p is None else p.quantize(self.tick) if p % self.tick == 0 else p


def _off_grid(d: Decimal, step: Decimal) -> bool:
    """d is not a whole multiple of step (a number too large to divide counts as off)."""
    try:
        return bool(d % step)
    except InvalidOperation:
        return True


_PLAIN_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def plain_decimal(text: str) -> bool:
    """Whether text is a number written in ASCII digits (Decimal() also takes other scripts'
    digits, full-width ones, and underscores: not what a person means by an amount)."""
    return _PLAIN_DECIMAL.fullmatch(text.strip()) is not None


def _decimal(name: str, v: object) -> Decimal:
    if isinstance(v, float) or isinstance(v, bool):
        raise ValueError(f"{name} {v!r}: give an int, str or Decimal, not a float")
    if isinstance(v, str) and not plain_decimal(v):
        raise ValueError(f"{name} {v!r} is not a number")
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"{name} {v!r} is not a number") from None
    if not d.is_finite():
        raise ValueError(f"{name} {v!r} is not a number")
    return d


# -- reports ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutionReport:
    seq: int
    transact_time_ns: int
    cl_ord_id: int
    orig_cl_ord_id: int | None
    order_id: int | None
    exec_id: int
    symbol: str
    security_id: int
    account: int
    exec_type: str            # new canceled replaced rejected expired trade status
    ord_status: str           # new, partially filled, filled, canceled, rejected, expired
    side: str                 # buy / sell
    ord_type: str             # limit / market
    tif: str
    price: Decimal | None     # the order's limit (None: market)
    qty: Decimal              # the order's quantity
    last_px: Decimal | None   # this fill's price (trade only)
    last_qty: Decimal
    leaves_qty: Decimal
    cum_qty: Decimal
    reason: int               # OrdRejReason for rejected, project cancel code for canceled
    liquidity: str | None     # maker / taker (trade only)
    poss_dup: bool


@dataclass(frozen=True)
class CancelReject:
    seq: int
    transact_time_ns: int
    cl_ord_id: int
    orig_cl_ord_id: int | None
    order_id: int | None
    symbol: str
    ord_status: str
    response_to: str          # cancel / replace
    reason: int               # CxlRejReason (FIX 102)
    poss_dup: bool


@dataclass(frozen=True)
class MassCancelReport:
    seq: int
    transact_time_ns: int
    cl_ord_id: int
    affected: int
    symbol: str | None
    rejected: bool
    reject_reason: int
    poss_dup: bool


@dataclass(frozen=True)
class BusinessReject:
    seq: int
    transact_time_ns: int
    ref_seq: int              # the client SeqNo rejected
    ref_id: int | None        # its ClOrdID, if known
    ref_template: int
    reason: int               # FIX 380
    text: str
    poss_dup: bool


@dataclass(frozen=True)
class NotApplied:
    seq: int
    from_seq: int             # own SeqNos from_seq .. from_seq + count - 1 were never applied
    count: int
    poss_dup: bool = False


@dataclass(frozen=True)
class Logout:
    reason: int
    text: str


Report = ExecutionReport | CancelReject | MassCancelReport | BusinessReject | NotApplied | Logout


def _id(v: int) -> int | None:
    return None if v == wire.U64_NULL else v


# -- persisted session state ------------------------------------------------------------------

class SessionState:
    """What PROTOCOL.md §5 says a client persists: a JSON snapshot written atomically
    (temporary file, fsync, rename) and, beside it, an append-only log (``<path>.log``, one
    JSON array a line) of what changed since: a message put in the outbox, the outbox applied
    below a SeqNo, a server SeqNo processed. Each change is one short line and one fsync, not a
    rewrite of the whole outbox (which made every send cost the outbox's size: a client that
    fell behind slowed down further). The log is folded into a new snapshot once it is
    COMPACT_LINES long and four times the outbox. Reading applies the log to the snapshot; each
    line is idempotent, so a crash between a new snapshot and the log's truncation changes
    nothing, and a torn last line (a crash mid-write) is ignored."""

    COMPACT_LINES = 4096

    def __init__(self, path: str, user: str | None = None):
        self.path = path
        self.user = user            # the user the session belongs to (None: not known)
        self.session_id = 0
        self.next_seq = 1           # the next own SeqNo
        self.last_seen = 0          # the last server SeqNo processed by the caller
        self.next_cl_ord_id = 1
        self.outbox: list[tuple[int, int, bytes]] = []   # (SeqNo, templateId, root block)
        self.created = False
        self.sync = True            # fsync each change (False: the page cache is trusted)
        self.log_path = path + ".log"
        self._log_fd: int | None = None
        self._log_lines = 0
        self._saved = False         # the snapshot is on disk (the log applies to it)

    @classmethod
    def load(cls, path: str, user: str | None = None) -> SessionState:
        st = cls(path, user)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            # (a log left beside a file moved away belongs to that old session: the new
            # session's first snapshot empties it)
            st.session_id = secrets.randbits(63) | 1
            st.created = True
            return st
        except (OSError, ValueError) as exc:
            raise SessionError(f"session file {path} cannot be read: {exc}") from None
        try:
            if not isinstance(d, dict):
                raise ValueError("not an object")
            owner = d.get("user")
            if user is not None and owner is not None and owner != user:
                raise SessionError(f"session file {path} belongs to user {owner!r}, not "
                                   f"{user!r}; use a session file of your own")
            st.session_id = _field(d, "session_id", 1)
            st.next_seq = _field(d, "next_seq", 1)
            st.last_seen = _field(d, "last_seen", 0, wire.U64_NULL - 1)
            st.next_cl_ord_id = _field(d, "next_cl_ord_id", 1)
            st.outbox = [_outbox_entry(e, st.next_seq) for e in d["outbox"]]
            st._saved = True
            st._read_log()
        except KeyError as exc:
            raise SessionError(f"session file {path} is damaged (no {exc.args[0]}); move it "
                               f"away to start a new session") from None
        except (TypeError, ValueError) as exc:
            raise SessionError(f"session file {path} is damaged ({exc}); move it away to "
                               f"start a new session") from None
        return st

    def _read_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ValueError(f"its log {self.log_path} cannot be read: {exc}") from None
        lines = data.split(b"\n")
        good = 0          # bytes of whole lines read
        for i, line in enumerate(lines):
            last = i == len(lines) - 1      # (after the final newline: b"" if whole)
            if not line:
                good += 0 if last else 1
                continue
            try:
                if last:
                    raise ValueError("no newline")
                e = json.loads(line)
                self._apply(e)
            except (ValueError, TypeError, IndexError, KeyError):
                if last:     # torn by a crash or a full disk mid-write: never acted on
                    break
                raise ValueError(f"line {i + 1} of {self.log_path} is damaged") from None
            self._log_lines += 1
            good += len(line) + 1
        if good < len(data):
            # cut the torn tail off now: a line appended after it would merge with it
            with open(self.log_path, "r+b") as f:
                f.truncate(good)

    def _apply(self, e: list) -> None:
        op = e[0]
        if op == "o":      # [o, SeqNo, templateId, block hex, next ClOrdID]
            seq = _int(e[1], 1)
            if seq >= self.next_seq:
                self.outbox.append(_outbox_entry(e[1:4], seq + 1))
                self.next_seq = seq + 1
                self.next_cl_ord_id = max(self.next_cl_ord_id, _int(e[4], 1))
        elif op == "a":    # [a, NextExpectedSeqNo]: the outbox applied below it
            self.applied_below(_int(e[1], 0))
        elif op == "s":    # [s, server SeqNo processed]
            self.last_seen = max(self.last_seen, _int(e[1], 0, wire.U64_NULL - 1))
        else:
            raise ValueError(f"unknown entry {op!r}")

    def save(self) -> None:
        """A new snapshot of everything, then the log emptied."""
        d = {"user": self.user, "session_id": self.session_id, "next_seq": self.next_seq,
             "last_seen": self.last_seen, "next_cl_ord_id": self.next_cl_ord_id,
             "outbox": [[s, t, b.hex()] for s, t, b in self.outbox]}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        data = json.dumps(d).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_whole(fd, data, tmp, self.sync)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise             # (the snapshot before it stays whole)
        os.close(fd)
        os.replace(tmp, self.path)
        self._saved = True
        if self._log_fd is not None or self._log_lines or os.path.exists(self.log_path):
            os.ftruncate(self._log(), 0)
            self._log_lines = 0

    def _log(self) -> int:
        if self._log_fd is None:
            self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                   0o600)
        return self._log_fd

    def _note(self, entry: list) -> None:
        if not self._saved:
            self.save()   # the first change of a new session: its snapshot first
            return
        fd = self._log()
        data = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        size = os.fstat(fd).st_size
        try:
            _write_whole(fd, data, self.log_path, self.sync)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)    # no torn line stays behind
            raise
        self._log_lines += 1
        if self._log_lines >= self.COMPACT_LINES and \
                self._log_lines >= 4 * len(self.outbox):
            self.save()

    def note_sent(self) -> None:
        """The last message appended to the outbox (persist before it leaves, §5)."""
        seq, tid, block = self.outbox[-1]
        self._note(["o", seq, tid, block.hex(), self.next_cl_ord_id])

    def note_applied(self, next_expected: int) -> None:
        self._note(["a", next_expected])

    def note_seen(self) -> None:
        self._note(["s", self.last_seen])

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def applied_below(self, next_expected: int) -> bool:
        """Drop the outbox's messages the server applied (SeqNo < next_expected); the outbox
        is in SeqNo order."""
        box = self.outbox
        i = 0
        while i < len(box) and box[i][0] < next_expected:
            i += 1
        if i:
            del box[:i]
        return i > 0


def _int(v, low: int, high: int = wire.U64_NULL) -> int:
    if type(v) is not int or not low <= v <= high:
        raise ValueError(f"{v!r} is not an integer in {low}..{high}")
    return v


def _write_whole(fd: int, data: bytes, name: str, sync: bool) -> None:
    """All of data at fd, then fsync (with sync); OSError if the disk took only part of it."""
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, f"{name}: short write (disk full?)")
    if sync:
        os.fsync(fd)


def lock_session(path: str) -> int:
    """An exclusive lock on the session (``<path>.lock``, a POSIX lock: held by this process
    until the returned fd is closed, or the process ends). Two processes on one session file
    both sent under the same SeqNos and ClOrdIDs and appended to one log."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SessionError(f"session file {path} is in use by another process (one process "
                           f"per session: two would send under the same numbers)") from None
    return fd


def _outbox_cl(entry: tuple[int, int, bytes]) -> int:
    return int.from_bytes(entry[2][16:24], "little")


def _field(d: dict, name: str, low: int, high: int = wire.U64_NULL) -> int:
    v = d[name]
    if type(v) is not int or not low <= v <= high:
        raise ValueError(f"{name} {v!r} is not an integer in {low}..{high}")
    return v


def _outbox_entry(e, next_seq: int) -> tuple[int, int, bytes]:
    seq, tid, hexblock = e
    t = wire.TEMPLATES.get(tid) if type(tid) is int and 100 <= tid <= 199 else None
    block = bytes.fromhex(hexblock)
    if t is None or len(block) != t.size:
        raise ValueError(f"outbox entry of template {tid!r} and {len(block)} bytes")
    if type(seq) is not int or not 1 <= seq < next_seq or \
            int.from_bytes(block[:8], "little") != seq:
        raise ValueError(f"outbox SeqNo {seq!r}")
    return seq, tid, block


# -- the client -------------------------------------------------------------------------------

class Client:
    def __init__(self, host: str, port: int, username: str, password: str, state_path: str,
                 instruments: dict[str, tuple], heartbeat_ms: int = 1000,
                 cancel_on_disconnect: int = wire.COD_OFF, cod_timeout_ms: int = 0,
                 reconnect: bool = True, connect_timeout_s: float = 5.0):
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.instruments = {s: Instrument.of(s, spec) for s, spec in instruments.items()}
        self.by_id = {i.security_id: i for i in self.instruments.values()}
        self.heartbeat_ms = heartbeat_ms
        self.cod, self.cod_timeout_ms = cancel_on_disconnect, cod_timeout_ms
        self.reconnect = reconnect
        self.connect_timeout_s = connect_timeout_s
        self._lock_fd: int | None = lock_session(state_path)
        try:
            self.state = SessionState.load(state_path, username)
        except BaseException:
            self._unlock()
            raise
        self.state.user = username
        self.received_upto = self.state.last_seen   # highest server SeqNo received
        self.queue: deque[Report] = deque()
        self.pending_seq: int | None = None          # the report handed out, not yet processed
        self.wakeup = asyncio.Event()
        self.logged_on = asyncio.Event()
        self.error: SessionError | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server_hb_ms = 1000
        self.last_sent = self.last_recv = 0.0
        self.logon_ack = None
        self.new_session: bool | None = None
        self.stats = {"logons": 0, "resent": 0, "duplicates": 0, "dropped_from_outbox": 0}
        self._task: asyncio.Task | None = None
        self._closing = False
        self._logout_seen = asyncio.Event()   # a Logout came in, or the connection ended

    # -- life -------------------------------------------------------------------------------
    async def connect(self) -> Client:
        """Log on (resuming the persisted session); returns once LogonAck arrived. Raises
        SessionError on a final LogonReject, ConnectionError if the gateway cannot be reached
        within connect_timeout_s."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        deadline = time.monotonic() + self.connect_timeout_s
        while not self.logged_on.is_set():
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise ConnectionError(f"no logon at {self.host}:{self.port} within "
                                      f"{self.connect_timeout_s:g} s")
            await asyncio.sleep(0.01)
        return self

    async def close(self, logout: bool = True) -> None:
        """Logout (the session stays resumable), persist, stop. PROTOCOL.md §4.9: the
        server answers the Logout and we, the initiator, close: what comes before the answer
        is read (and queued) as usual; no answer within LOGOUT_ANSWER_S, we close anyway."""
        self._closing = True
        self.processed()
        if logout and self.writer is not None and self.logged_on.is_set():
            self._logout_seen.clear()
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                self._write(wire.encode(wire.LOGOUT, wire.LOGOUT_NORMAL, b"bye"))
                await asyncio.wait_for(self.writer.drain(), 1.0)
                await asyncio.wait_for(self._logout_seen.wait(), LOGOUT_ANSWER_S)
        await stop_task(self._task, "the client's connection loop")
        self._drop_connection()
        self.state.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session_id(self) -> int:
        return self.state.session_id

    # -- sending ----------------------------------------------------------------------------
    def _instrument(self, symbol: str) -> Instrument:
        inst = self.instruments.get(symbol)
        if inst is None:
            raise ValueError(f"unknown symbol {symbol!r} (known: "
                             f"{', '.join(sorted(self.instruments))})")
        return inst

    @staticmethod
    def _side(side: str) -> bytes:
        s = SIDES.get(str(side).lower())
        if s is None:
            raise ValueError(f"side {side!r}: buy or sell")
        return s

    def _send_sequenced(self, template: int, build) -> int:
        """Assign the next SeqNo and ClOrdID, persist the message in the outbox, then send
        it if connected (else it goes out after the next LogonAck)."""
        seq, cl = self.state.next_seq, self.state.next_cl_ord_id
        frame = build(seq, cl)
        block = frame[wire.PREFIX_SIZE:]
        self.state.next_seq += 1
        self.state.next_cl_ord_id += 1
        self.state.outbox.append((seq, template, bytes(block)))
        try:
            self.state.note_sent()   # persisted before it leaves (PROTOCOL.md §5)
        except OSError:
            # not persisted, so not sent either: as if never asked (the caller sees the error)
            self.state.outbox.pop()
            self.state.next_seq -= 1
            self.state.next_cl_ord_id -= 1
            raise
        if self.logged_on.is_set() and self.writer is not None:
            self._write(frame)
        return cl

    async def new_order(self, symbol: str, side: str, qty: object, price: object = None,
                        tif: str = "gtc", account: int = 0, post_only: bool = False) -> int:
        """A NewOrderSingle (price None: market); returns its ClOrdID."""
        inst = self._instrument(symbol)
        if type(account) is not int or not 0 <= account <= wire.U32_NULL:
            raise ValueError(f"account {account!r} is not a u32 (0: the default account)")
        s, lots = self._side(side), inst.lots(qty)
        px = wire.PRICE_NULL if price is None else inst.price_mantissa(price)
        t = TIFS.get(str(tif).lower())
        if t is None:
            raise ValueError(f"time in force {tif!r}: gtc, ioc, fok or day")
        ot = wire.ORD_TYPE_MARKET if price is None else wire.ORD_TYPE_LIMIT
        flags = wire.FLAG_POST_ONLY if post_only else 0
        return self._send_sequenced(wire.NEW_ORDER_SINGLE, lambda seq, cl: wire.encode(
            wire.NEW_ORDER_SINGLE, seq, time.time_ns(), cl, px, lots, inst.security_id,
            account, s, ot, t, flags))

    async def amend(self, symbol: str, orig_cl_ord_id: int, side: str, qty: object,
                    price: object, tif: str = "gtc", order_id: int | None = None) -> int:
        """An OrderCancelReplaceRequest: new total quantity and price; returns its ClOrdID.
        ``tif`` is the order's own time in force: a replace cannot change it (the engine
        refuses another, OrderCancelReject 99)."""
        inst = self._instrument(symbol)
        s, lots, px = self._side(side), inst.lots(qty), inst.price_mantissa(price)
        t = TIFS.get(str(tif).lower())
        if t is None:
            raise ValueError(f"time in force {tif!r}: gtc, ioc, fok or day")
        oid = wire.U64_NULL if order_id is None else order_id
        return self._send_sequenced(wire.ORDER_CANCEL_REPLACE_REQUEST, lambda seq, cl: wire.encode(
            wire.ORDER_CANCEL_REPLACE_REQUEST, seq, time.time_ns(), cl, orig_cl_ord_id, oid, px,
            lots, inst.security_id, s, wire.ORD_TYPE_LIMIT, t, 0))

    async def cancel(self, symbol: str, orig_cl_ord_id: int | None, side: str,
                     order_id: int | None = None) -> int:
        inst = self._instrument(symbol)
        s = self._side(side)
        if orig_cl_ord_id is None and order_id is None:
            raise ValueError("cancel needs the order's ClOrdID or its OrderID")
        orig = wire.U64_NULL if orig_cl_ord_id is None else orig_cl_ord_id
        oid = wire.U64_NULL if order_id is None else order_id
        return self._send_sequenced(wire.ORDER_CANCEL_REQUEST, lambda seq, cl: wire.encode(
            wire.ORDER_CANCEL_REQUEST, seq, time.time_ns(), cl, orig, oid, inst.security_id, s,
            0))

    async def mass_cancel(self, symbol: str | None = None, side: str | None = None) -> int:
        """Cancel every open order of the session's user (of one symbol, or all)."""
        sid = wire.U32_NULL if symbol is None else self._instrument(symbol).security_id
        kind = wire.MASS_CANCEL_ALL if symbol is None else wire.MASS_CANCEL_ONE_SECURITY
        s = wire.SIDE_BOTH if side is None else self._side(side)
        return self._send_sequenced(wire.ORDER_MASS_CANCEL_REQUEST, lambda seq, cl: wire.encode(
            wire.ORDER_MASS_CANCEL_REQUEST, seq, time.time_ns(), cl, sid, kind, s, 0))

    # -- receiving --------------------------------------------------------------------------
    def processed(self) -> None:
        """The report last handed out is handled: persist its server SeqNo."""
        if self.pending_seq is not None and self.pending_seq > self.state.last_seen:
            self.state.last_seen = self.pending_seq
            self.state.note_seen()
        self.pending_seq = None

    async def next_report(self, timeout_s: float | None = None) -> Report:
        """The next report (marks the previous one processed). Raises SessionError when the
        session ended for good, TimeoutError after timeout_s without a report."""
        self.processed()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.queue:
            if self.error is not None:
                raise self.error
            self.wakeup.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no report")
            await wait_set(self.wakeup, left)
        r = self.queue.popleft()
        if not isinstance(r, Logout):
            self.pending_seq = r.seq
        return r

    async def reports(self) -> AsyncIterator[Report]:
        while True:
            yield await self.next_report()

    # -- the connection loop ----------------------------------------------------------------
    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._closing:
            try:
                async with asyncio.timeout(self.connect_timeout_s):  # keeps a cancel (aio.py)
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, asyncio.TimeoutError) as exc:
                log.info("connect %s:%d: %s; again in %.1f s", self.host, self.port, exc, backoff)
                if not self.reconnect:
                    self._fail(f"cannot reach the gateway at {self.host}:{self.port}: {exc}")
                    return
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_CAP_S, backoff * 2)
                continue
            self.writer = writer
            with contextlib.suppress(OSError):
                import socket
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                           socket.TCP_NODELAY, 1)
            try:
                final = await self._session(reader)
            except (OSError, asyncio.IncompleteReadError, wire.FramingError) as exc:
                log.info("connection lost: %s", exc)
                final = False
            finally:
                self._drop_connection()
            if final or not self.reconnect:
                if self.error is None and not self._closing:
                    self._fail("the connection closed")
                return
            if self.logon_ack is not None:
                backoff = BACKOFF_FIRST_S      # it worked once: reconnect quickly
            self.logon_ack = None
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_CAP_S, backoff * 2)

    def _drop_connection(self) -> None:
        self.logged_on.clear()
        self._logout_seen.set()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None

    def _fail(self, why: str) -> None:
        self.error = SessionError(why)
        self.wakeup.set()

    def _write(self, frame: bytes) -> None:
        self.writer.write(frame)
        self.last_sent = time.monotonic()

    def _received(self) -> None:
        self.last_recv = time.monotonic()

    async def _session(self, reader: asyncio.StreamReader) -> bool:
        """One connection: Logon, then frames until it ends. True when the session is over."""
        st = self.state
        self._write(wire.encode(
            wire.LOGON, st.session_id, self.received_upto + 1, st.next_seq, self.heartbeat_ms,
            self.cod_timeout_ms, self.cod, 0, wire.char_field(self.username, 16),
            wire.char_field(self.password, 32)))
        self.last_recv = time.monotonic()
        beat = asyncio.get_running_loop().create_task(self._heartbeats())
        try:
            async for frame in wire.frames(reader, self._received):
                result = self._on_frame(frame)
                if result is not None:
                    return result
            return False
        finally:
            beat.cancel()

    async def _heartbeats(self) -> None:
        tested = False
        while True:
            await asyncio.sleep(min(self.heartbeat_ms, self.server_hb_ms) / 4000)
            now = time.monotonic()
            if self.logged_on.is_set() and now - self.last_sent >= self.heartbeat_ms / 1000:
                self._write(wire.encode(wire.HEARTBEAT, 0, self.state.next_seq,
                                        self.received_upto + 1))
            silent = now - self.last_recv
            if not self.logged_on.is_set():
                # Before LogonAck the server's interval is unknown and the logon goes
                # through the log: wait for it as long as a connect may take.
                if silent >= self.connect_timeout_s:
                    log.info("no answer to the logon in %.1f s: closing", silent)
                    self.writer.close()
                    return
                continue
            if silent >= 2.5 * self.server_hb_ms / 1000:
                log.info("no input for %.1f s: closing", silent)
                with contextlib.suppress(Exception):
                    self._write(wire.encode(wire.LOGOUT, wire.LOGOUT_HEARTBEAT_TIMEOUT,
                                            b"heartbeat timeout"))
                self.writer.close()
                return
            if silent >= 1.5 * self.server_hb_ms / 1000 and not tested:
                self._write(wire.encode(wire.TEST_REQUEST, int(now * 1000)))
                tested = True
            elif silent < self.server_hb_ms / 1000:
                tested = False

    def _on_frame(self, frame: wire.Frame) -> bool | None:
        tid = frame.template_id
        if tid not in wire.TEMPLATES:
            log.warning("unknown template %d ignored", tid)
            return None
        m = wire.decode(frame)
        if tid == wire.LOGON_ACK:
            return self._on_logon_ack(m)
        elif tid == wire.LOGON_REJECT:
            text = wire.text(m.Text)
            if m.Reason in RETRY_REJECTS and self.reconnect:
                log.info("logon refused: %s (%s); retrying", RETRY_REJECTS[m.Reason], text)
                return False
            why = FINAL_REJECTS.get(m.Reason) or RETRY_REJECTS.get(m.Reason) or \
                f"reason {m.Reason}"
            self._fail(f"logon refused: {why}{f' ({text})' if text and text != why else ''}")
            return True
        elif tid == wire.LOGOUT:
            self.queue.append(Logout(m.Reason, wire.text(m.Text)))
            self.wakeup.set()
            self._logout_seen.set()
            if not self._closing and self.writer is not None and \
                    not self.writer.is_closing():
                # the server initiated: answer, and let it close (PROTOCOL.md §4.9)
                self._write(wire.encode(wire.LOGOUT, wire.LOGOUT_NORMAL, b""))
            if m.Reason == wire.LOGOUT_END_OF_SESSION:
                self._fail("the server ended the session (end of trading day)")
                return True
            return False
        elif tid == wire.HEARTBEAT:
            if self.state.applied_below(m.NextExpectedSeqNo):
                self.state.note_applied(m.NextExpectedSeqNo)
        elif tid == wire.TEST_REQUEST:
            self._write(wire.encode(wire.HEARTBEAT, m.TestReqID, self.state.next_seq,
                                    self.received_upto + 1))
        elif tid == wire.RETRANSMISSION:
            log.info("replay of server messages %d .. %d", m.FromSeqNo,
                     m.FromSeqNo + m.Count - 1)
        elif tid == wire.RETRANSMIT_REJECT:
            log.warning("retransmit request refused (reason %d)", m.Reason)
        elif tid in SEQUENCED:
            self._on_sequenced(tid, m)
        return None

    def _on_logon_ack(self, m) -> bool | None:
        self.logon_ack = m
        self.stats["logons"] += 1
        self.server_hb_ms = max(100, m.HeartbeatIntervalMs)
        self.new_session = bool(m.Flags & wire.FLAG_NEW_SESSION)
        st = self.state
        if m.NextExpectedSeqNo > st.next_seq:
            # the server applied SeqNos this file never sent: it is an older copy (restored,
            # or lines lost); numbers from it would be dropped as duplicates or reuse ClOrdIDs
            self._fail(f"the session file {st.path} is behind the server (it has applied up "
                       f"to SeqNo {m.NextExpectedSeqNo - 1}, the file's next is "
                       f"{st.next_seq}): move it away to start a new session")
            return True
        before = len(st.outbox)
        st.applied_below(m.NextExpectedSeqNo)
        self.stats["dropped_from_outbox"] += before - len(st.outbox)
        st.save()
        # Resend what was not applied, unchanged but for the PossResend flag (PROTOCOL §4.6).
        for seq, tid, block in st.outbox:
            frame = bytearray(wire.frame_from_block(tid, block))
            wire.set_flags(frame, wire.FLAG_POSS_DUP)
            self._write(bytes(frame))
            self.stats["resent"] += 1
            log.info("resent SeqNo %d", seq)
        self.logged_on.set()
        self.wakeup.set()

    def _on_sequenced(self, tid: int, m) -> None:
        seq = m.SeqNo
        if seq <= self.received_upto:          # a replay of what we have: idempotent
            self.stats["duplicates"] += 1
            return
        if seq > self.received_upto + 1 and self.writer is not None:
            gap = seq - self.received_upto - 1
            log.warning("server SeqNo gap %d .. %d: asking for it", self.received_upto + 1,
                        seq - 1)
            self._write(wire.encode(wire.RETRANSMIT_REQUEST, self.received_upto + 1, gap))
        self.received_upto = seq
        report = self._report(tid, m)
        self._prune_outbox(report)
        self.queue.append(report)
        self.wakeup.set()

    def _prune_outbox(self, report: Report) -> None:
        """A report that names one of our messages says the server applied it (and, in order,
        everything before it)."""
        applied = None
        if isinstance(report, BusinessReject):
            applied = report.ref_seq
        else:
            cl = getattr(report, "cl_ord_id", None)
            box = self.state.outbox
            # ClOrdIDs go up with SeqNos in the outbox (both assigned at each send)
            i = bisect.bisect_left(box, cl, key=_outbox_cl) if cl is not None else len(box)
            applied = box[i][0] if i < len(box) and _outbox_cl(box[i]) == cl else None
        if applied is not None and self.state.applied_below(applied + 1):
            self.state.note_applied(applied + 1)

    def _report(self, tid: int, m) -> Report:
        dup = bool(getattr(m, "Flags", 0) & wire.FLAG_POSS_DUP)
        if tid == wire.NOT_APPLIED:
            return NotApplied(m.SeqNo, m.FromSeqNo, m.Count, False)
        if tid == wire.BUSINESS_REJECT:
            return BusinessReject(m.SeqNo, m.TransactTime, m.RefSeqNo,
                                  _id(m.BusinessRejectRefID), m.RefTemplateID,
                                  m.BusinessRejectReason, wire.text(m.Text), dup)
        if tid == wire.ORDER_MASS_CANCEL_REPORT:
            inst = self.by_id.get(m.SecurityID)
            return MassCancelReport(m.SeqNo, m.TransactTime, m.ClOrdID, m.TotalAffectedOrders,
                                    inst.symbol if inst else None,
                                    m.MassCancelResponse == wire.MASS_CANCEL_RESPONSE_REJECTED,
                                    m.MassCancelRejectReason, dup)
        inst = self.by_id.get(m.SecurityID) or Instrument(f"#{m.SecurityID}", m.SecurityID,
                                                          Decimal(1).scaleb(-8), Decimal(1))
        if tid == wire.ORDER_CANCEL_REJECT:
            return CancelReject(m.SeqNo, m.TransactTime, m.ClOrdID, _id(m.OrigClOrdID),
                                _id(m.OrderID), inst.symbol,
                                ORD_STATUSES.get(m.OrdStatus, m.OrdStatus.decode()),
                                "replace" if m.CxlRejResponseTo ==
                                wire.CXL_REJ_RESPONSE_TO_REPLACE else "cancel",
                                m.CxlRejReason, dup)
        liq = {wire.LIQUIDITY_ADDED: "maker", wire.LIQUIDITY_REMOVED: "taker"}
        return ExecutionReport(
            m.SeqNo, m.TransactTime, m.ClOrdID, _id(m.OrigClOrdID), _id(m.OrderID), m.ExecID,
            inst.symbol, m.SecurityID, m.Account,
            EXEC_TYPES.get(m.ExecType, m.ExecType.decode(errors="replace")),
            ORD_STATUSES.get(m.OrdStatus, m.OrdStatus.decode(errors="replace")),
            SIDE_NAMES.get(m.Side, "?"),
            "market" if m.OrdType == wire.ORD_TYPE_MARKET else "limit",
            TIF_NAMES.get(m.TimeInForce, "?"), inst.price(m.Price), inst.qty(m.OrderQty),
            inst.price(m.LastPx), inst.qty(m.LastQty), inst.qty(m.LeavesQty),
            inst.qty(m.CumQty), m.Reason, liq.get(m.LastLiquidityInd), dup)


# -- words for people -------------------------------------------------------------------------

def _num(d: Decimal | None, step: Decimal | None = None) -> str:
    if d is None:
        return "market"
    if step is not None:
        places = max(0, -step.normalize().as_tuple().exponent)
        places = max(places, 2) if step < 1 else places
        return f"{d:.{places}f}"
    return f"{d.normalize():f}"


def describe(user: str, r: Report, instruments: dict[str, Instrument] | None = None,
             resting: bool | None = None) -> str:
    """One line a person reads: "alice: BTCUSDT buy 10 @ 50000.00 filled 4 @ 49999.50
    (taker), 6 left". ``resting``: whether an accepted order rests, when the caller knows
    (no trade report followed it); None: a GTC or Day limit order with quantity left is
    said to rest, though a fill may follow at once."""
    inst = (instruments or {}).get(getattr(r, "symbol", None) or "")
    tick = inst.tick if inst else None
    # A replayed report (PossDup) reaches the caller only if it had not processed it: for a
    # person it is news like any other, so it is not marked.
    dup = ""
    if isinstance(r, ExecutionReport):
        # An amend's or a cancel's report carries the request's ClOrdID (FIX; the order goes
        # by it from then on) and the order's earlier one: say both.
        was = f", was {r.orig_cl_ord_id}" if r.orig_cl_ord_id not in (None, r.cl_ord_id) \
            else ""
        head = (f"{user}: {r.symbol} {r.side} {_num(r.qty)} @ {_num(r.price, tick)} "
                f"[order {r.cl_ord_id}{was}]")
        if r.exec_type == "trade":
            left = f"{_num(r.leaves_qty)} left" if r.leaves_qty else "done"
            body = (f"filled {_num(r.last_qty)} @ {_num(r.last_px, tick)} "
                    f"({r.liquidity or '?'}), {left}")
        elif r.exec_type == "new":
            # An IOC or FOK never rests: whatever does not fill at once is expired.
            rests = r.leaves_qty and r.ord_type == "limit" and r.tif in ("gtc", "day")
            body = "accepted, resting" if rests and resting is not False else "accepted"
        elif r.exec_type == "rejected":
            body = f"rejected ({REJECT_WORDS.get(r.reason, f'reason {r.reason}')})"
        elif r.exec_type in ("canceled", "expired"):
            body = (f"{r.exec_type} ({CANCEL_WORDS.get(r.reason, f'reason {r.reason}')}), "
                    f"{_num(r.cum_qty)} filled")
        elif r.exec_type == "replaced":
            body = f"amended, {_num(r.leaves_qty)} left"
        else:
            body = f"{r.exec_type}: {r.ord_status}"
        return f"{head} {body}{dup}"
    if isinstance(r, CancelReject):
        name = r.orig_cl_ord_id if r.orig_cl_ord_id is not None else f"id {r.order_id}"
        why = CXL_WORDS.get(r.reason, f"reason {r.reason}")
        if r.reason == 0 and r.ord_status in ("filled", "canceled", "expired"):
            why += f": it is {r.ord_status}"
        return f"{user}: {r.symbol} {r.response_to} of order {name} refused ({why}){dup}"
    if isinstance(r, MassCancelReport):
        what = r.symbol or "all symbols"
        if r.rejected:
            return f"{user}: mass cancel of {what} refused (reason {r.reject_reason}){dup}"
        return f"{user}: mass cancel of {what}: {r.affected} orders canceled{dup}"
    if isinstance(r, BusinessReject):
        text = f": {r.text}" if r.text else ""
        return (f"{user}: request {r.ref_seq} refused "
                f"({BUSINESS_WORDS.get(r.reason, f'reason {r.reason}')}{text}){dup}")
    if isinstance(r, NotApplied):
        return f"{user}: requests {r.from_seq} .. {r.from_seq + r.count - 1} were not applied"
    return f"{user}: logged out by the gateway (reason {r.reason}{': ' + r.text if r.text else ''})"


REJECT_WORDS = {0: "an order option refused it: post-only that would have traded at once, "
                   "reduce-only that would increase the position, or a stop that would fire "
                   "at once",
                1: "unknown symbol", 2: "exchange closed",
                # 3 stands for many engine codes (docs/gateway.md): the band, margin, risk
                # limits, a full book; the ExecutionReport carries no more, so say them all
                3: "exceeds a limit: price outside the band around the mark, margin, a risk "
                   "limit, or the book or account full; the reject does not say which",
                5: "unknown order",
                6: "duplicate order id", 11: "unsupported", 13: "incorrect quantity",
                18: "price not on the tick", 99: "other"}
CANCEL_WORDS = {0: "on request", 1: "mass cancel", 2: "cancel on disconnect",
                3: "IOC/FOK: not filled at once", 4: "self-trade prevention", 5: "by the operator",
                6: "end of day"}
CXL_WORDS = {0: "too late", 1: "unknown order", 3: "already pending", 6: "duplicate order id",
             99: "other"}
BUSINESS_WORDS = {0: "other", 1: "unknown id", 2: "unknown symbol", 3: "unsupported message",
                  4: "not available", 5: "a field is missing or out of range",
                  6: "not your account", 8: "throttled"}
