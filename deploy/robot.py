"""The demo robot: many accounts trading through the gateway (PROTOCOL.md over TCP).

It is a client like any other: it logs on with the users of the accounts file, sends
NewOrderSingle and OrderCancelRequest frames on a schedule (open loop, ``rate`` orders per
second in all) and reads what comes back. Its flow, seeded, per order:

* 55 % a resting limit order 1 .. 20 ticks behind the mid (a market maker's quote);
* 15 % an IOC that crosses the mid by 1 .. 3 ticks (a taker: it trades against the quotes);
* 30 % a cancel of one of its own live orders, uniformly chosen (none live: a quote instead).

The mid of each symbol follows the mark price (the oracle's status, read every second), so the
orders stay inside the TradingEngine's price band. Its sessions use cancel-on-disconnect, so a
stopped robot leaves no orders in the books.

What it measures, for the dashboard and the drills: orders sent, acknowledged (the first
ExecutionReport of each order, or its reject), trades (taker fills), rejects by reason, and
order -> acknowledgement latency (from the scheduled send, so queueing counts). ClOrdIDs start
at the wall clock in nanoseconds, so a restarted robot never reuses one.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from gateway import wire
from gateway.client import FINAL_REJECTS, RETRY_REJECTS

PREFIX = struct.Struct("<HHHH")       # length, encoding, block length, template
ER = wire.TEMPLATES[wire.EXECUTION_REPORT].block
BR = wire.TEMPLATES[wire.BUSINESS_REJECT].block
CXL_REJ = wire.TEMPLATES[wire.ORDER_CANCEL_REJECT].block
RETRY_REASONS = (wire.LOGON_REJECT_BAD_CREDENTIALS, wire.LOGON_REJECT_NOT_OPEN)
WINDOW_S = 10.0                       # the rolling window of the rates and percentiles


@dataclass
class Symbol:
    name: str
    security_id: int
    tick: int                         # price mantissa (x1e-8) of one tick
    mid_ticks: int                    # follows the mark


@dataclass
class Live:
    cl_ord_id: int
    security_id: int
    side: bytes
    account: int


@dataclass
class Stats:
    """Counters since the start, and the recent events for the rolling window."""
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    trades: int = 0
    cancels: int = 0
    relogons: int = 0          # sessions logged on again after the gateway went away
    reasons: dict[str, int] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=200_000))   # (t, kind, ns)
    trades_tape: deque = field(default_factory=lambda: deque(maxlen=50))    # (t, sym, side, px, qty)

    def note(self, kind: str, ns: int = 0) -> None:
        self.recent.append((time.monotonic(), kind, ns))

    def window(self, seconds: float = WINDOW_S) -> dict:
        """Rates per second and ack latency percentiles (ms) over the last ``seconds``."""
        now = time.monotonic()
        counts = {"sent": 0, "ack": 0, "trade": 0, "reject": 0}
        lat = []
        for t, kind, ns in reversed(self.recent):
            if now - t > seconds:
                break
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "ack":
                lat.append(ns)
        lat.sort()
        span = min(seconds, max(1e-3, now - self.started)) if hasattr(self, "started") \
            else seconds

        def pct(q: float) -> float | None:
            return lat[min(len(lat) - 1, int(len(lat) * q))] / 1e6 if lat else None
        return {"sent_s": counts["sent"] / span, "acked_s": counts["ack"] / span,
                "trades_s": counts["trade"] / span, "rejects_s": counts["reject"] / span,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999)}


class Session:
    def __init__(self, user: str, accounts: list[int], reader, writer):
        self.user, self.accounts = user, accounts
        self.r, self.w = reader, writer
        self.up = True                     # logged on (False while it logs on again)
        self.seq = 0
        self.live: dict[int, Live] = {}
        self.live_ids: list[int] = []


def new_session_id() -> int:
    """A SessionID no earlier run used: 63 random bits, odd (never 0)."""
    return secrets.randbits(63) | 1


class Robot:
    def __init__(self, host: str, port: int, users: list[tuple[str, str, list[int]]],
                 symbols: list[Symbol], rate: int, seed: int = 1,
                 max_live_per_session: int = 200, qty_lots: tuple[int, int] = (1, 20)):
        self.host, self.port = host, port
        self.users = users
        self.symbols = symbols
        self.rate = rate
        self.rng = random.Random(seed)
        self.max_live = max_live_per_session
        self.qty_lots = qty_lots
        self.stats = Stats()
        self.stats.started = time.monotonic()
        self.sessions: list[Session] = []
        self.sent_at: dict[int, int] = {}          # ClOrdID -> scheduled send (perf ns)
        self.next_id = time.time_ns()
        self.running = True
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task] = []

    # -- sessions -------------------------------------------------------------------------------
    # Each logon opens a new session (its id from the system's randomness, not the flow's
    # seed): a second run with the same --seed resumed the first run's sessions and sent
    # SeqNos from 1 again, which the gateway drops as already applied (PROTOCOL.md §4.3).
    async def connect(self, deadline_s: float = 30.0) -> None:
        """Log every robot user on. A refusal for bad credentials or a gateway not yet open is
        retried until ``deadline_s``: a user just added reaches the gateway when it re-reads
        its accounts file (on SIGHUP, or within a second of the file changing)."""
        for user, pw, accounts in self.users:
            end = time.monotonic() + deadline_s
            while True:
                got = await self._logon(user, pw)
                if isinstance(got, tuple):
                    break
                if got not in RETRY_REASONS or time.monotonic() > end:
                    why = {**FINAL_REJECTS, **RETRY_REJECTS}.get(got, "a Logout" if got < 0
                                                                  else f"reason {got}")
                    raise ConnectionError(f"robot user {user}: logon refused ({why})")
                await asyncio.sleep(0.5)
            r, w = got
            s = Session(user, accounts, r, w)
            self.sessions.append(s)
            self._tasks.append(asyncio.get_running_loop().create_task(self._read(s)))

    async def _log_on_again(self, s: Session) -> bool:
        """A new session for ``s``'s user, retried every half second while the robot runs."""
        s.up = False
        with contextlib.suppress(Exception):
            s.w.close()
        pw = next(p for user, p, _accounts in self.users if user == s.user)
        while self.running:
            try:
                got = await self._logon(s.user, pw)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                got = None
            if isinstance(got, tuple):
                s.r, s.w = got
                s.seq = 0
                s.live.clear()
                s.live_ids.clear()
                s.up = True
                self.stats.relogons += 1
                return True
            await asyncio.sleep(0.5)
        return False

    async def _logon(self, user: str, pw: str):
        """(reader, writer) when logged on, else the LogonReject's reason (-1: a Logout)."""
        async with asyncio.timeout(10):   # keeps a cancellation (gateway/aio.py)
            r, w = await asyncio.open_connection(self.host, self.port)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session_id = new_session_id()
        w.write(wire.encode(wire.LOGON, session_id, 0, 1, 30_000, 0,
                            wire.COD_ON_DISCONNECT_OR_LOGOUT, 0, user.encode(), pw.encode()))
        while True:
            async with asyncio.timeout(10):
                head = await r.readexactly(12)
            length, _e, _b, tid = PREFIX.unpack_from(head)
            body = await r.readexactly(length - 12)
            if tid == wire.LOGON_ACK:
                return r, w
            if tid in (wire.LOGON_REJECT, wire.LOGOUT):
                w.close()
                return body[8] if tid == wire.LOGON_REJECT and len(body) > 8 else -1

    async def close(self) -> None:
        self.running = False
        for s in self.sessions:
            try:
                s.w.write(wire.encode(wire.LOGOUT, wire.LOGOUT_NORMAL, b"robot stops"))
                await asyncio.wait_for(s.w.drain(), 1.0)
                s.w.close()
            except (OSError, asyncio.TimeoutError, RuntimeError):
                pass
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the flow -------------------------------------------------------------------------------
    def _order(self, s: Session, now: int) -> bytes:
        rng = self.rng
        if rng.random() < 0.30 and s.live_ids:
            i = rng.randrange(len(s.live_ids))
            cid = s.live_ids[i]
            s.live_ids[i] = s.live_ids[-1]
            s.live_ids.pop()
            o = s.live.pop(cid, None)
            if o is not None:
                s.seq += 1
                self.next_id += 1
                self.stats.cancels += 1
                self.sent_at[self.next_id] = now
                return wire.encode(wire.ORDER_CANCEL_REQUEST, s.seq, 0, self.next_id, cid, 0,
                                   o.security_id, o.side, 0)
        sym = self.symbols[rng.randrange(len(self.symbols))]
        buy = rng.random() < 0.5
        side = wire.SIDE_BUY if buy else wire.SIDE_SELL
        account = s.accounts[rng.randrange(len(s.accounts))]
        qty = rng.randint(*self.qty_lots)
        self.next_id += 1
        cid = self.next_id
        if rng.random() < 0.15 / 0.70 or len(s.live) >= self.max_live:
            ticks = sym.mid_ticks + (rng.randint(1, 3) if buy else -rng.randint(1, 3))
            tif = wire.TIF_IOC
        else:
            behind = rng.randint(1, 20)
            ticks = sym.mid_ticks - behind if buy else sym.mid_ticks + behind
            tif = wire.TIF_GTC
            s.live[cid] = Live(cid, sym.security_id, side, account)
            s.live_ids.append(cid)
        s.seq += 1
        self.sent_at[cid] = now
        return wire.encode(wire.NEW_ORDER_SINGLE, s.seq, 0, cid, max(1, ticks) * sym.tick, qty,
                           sym.security_id, account, side, wire.ORD_TYPE_LIMIT, tif, 0)

    async def run(self, seconds: float | None = None) -> None:
        """Send on schedule until stopped (or for ``seconds``)."""
        clock = time.perf_counter_ns
        start = clock()
        i = 0
        end = None if seconds is None else start + int(seconds * 1e9)
        while self.running and (end is None or clock() < end):
            now = clock()
            due = (now - start) * self.rate // 1_000_000_000 + 1
            if due <= i:
                await asyncio.sleep(max(0.0, (start + (i * 1_000_000_000) // self.rate - now)
                                        / 1e9))
                continue
            out: dict[Session, list[bytes]] = {}
            while i < due:
                s = self.sessions[i % len(self.sessions)]
                sched = start + i * 1_000_000_000 // self.rate
                if not s.up:               # logging on again: its turn goes unused
                    i += 1
                    continue
                out.setdefault(s, []).append(self._order(s, sched))
                self.stats.sent += 1
                self.stats.note("sent")
                i += 1
            for s, frames in out.items():
                try:
                    s.w.write(b"".join(frames))
                except (OSError, RuntimeError) as exc:
                    self.errors.append(f"{s.user}: {exc}")
            await asyncio.sleep(0)

    async def _read(self, s: Session) -> None:
        buf = b""
        clock = time.perf_counter_ns
        stats = self.stats
        by_id = {x.security_id: x for x in self.symbols}
        while True:
            try:
                chunk = await s.r.read(1 << 16)
            except (OSError, asyncio.IncompleteReadError):
                chunk = b""
            if not chunk:
                if not self.running:
                    return
                # the gateway went away (a restart, a failover drill): log on again, as a new
                # session (cancel-on-disconnect took the old one's orders); writing on into
                # the dead socket only filled the log with asyncio's warnings
                self.errors.append(f"{s.user}: the gateway closed the connection; "
                                   f"logging on again")
                if not await self._log_on_again(s):
                    return
                buf = b""
                continue
            now = clock()
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 12:
                length, _e, _b, tid = PREFIX.unpack_from(buf, pos)
                if length < 12:
                    self.errors.append(f"{s.user}: bad frame length {length}")
                    return
                if end - pos < length:
                    break
                body = pos + 12
                if tid == wire.EXECUTION_REPORT:
                    er = ER.unpack_from(buf, body)
                    cid, exec_type, leaves = er[2], er[14], er[10]
                    t0 = self.sent_at.pop(cid, None)
                    if exec_type == wire.EXEC_TYPE_REJECTED:
                        stats.rejected += 1
                        why = f"order reject {er[19]}"
                        stats.reasons[why] = stats.reasons.get(why, 0) + 1
                        stats.note("reject")
                        s.live.pop(cid, None)
                    elif t0 is not None:
                        stats.acked += 1
                        stats.note("ack", now - t0)
                    if exec_type == wire.EXEC_TYPE_TRADE:
                        if er[20] == wire.LIQUIDITY_REMOVED:
                            stats.trades += 1
                            stats.note("trade")
                            sym = by_id.get(er[12])
                            stats.trades_tape.append((time.time(), sym.name if sym else er[12],
                                                      "buy" if er[16] == wire.SIDE_BUY else
                                                      "sell", er[8], er[9]))
                        if leaves == 0:
                            s.live.pop(cid, None)
                    elif exec_type in (wire.EXEC_TYPE_CANCELED, wire.EXEC_TYPE_EXPIRED):
                        s.live.pop(er[3] or cid, None)
                        s.live.pop(cid, None)
                elif tid == wire.BUSINESS_REJECT:
                    br = BR.unpack_from(buf, body)
                    stats.rejected += 1
                    why = f"business reject {br[5]}"
                    stats.reasons[why] = stats.reasons.get(why, 0) + 1
                    stats.note("reject")
                    self.sent_at.pop(br[3], None)
                elif tid == wire.ORDER_CANCEL_REJECT:
                    # the order had filled or gone: the cancel is answered all the same
                    t0 = self.sent_at.pop(CXL_REJ.unpack_from(buf, body)[2], None)
                    if t0 is not None:
                        stats.acked += 1
                        stats.note("ack", now - t0)
                elif tid == wire.TEST_REQUEST:
                    s.w.write(wire.encode(wire.HEARTBEAT, struct.unpack_from("<Q", buf, body)[0],
                                          0, 0))
                elif tid == wire.LOGOUT:
                    self.errors.append(f"{s.user}: the gateway logged the session out")
                pos += length
            # ids whose live entry went away stay in live_ids until drawn: prune now and then
            if len(s.live_ids) > 2 * len(s.live) + 64:
                s.live_ids = [c for c in s.live_ids if c in s.live]
            buf = buf[pos:]
