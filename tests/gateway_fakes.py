"""A small fake Core for the gateway's tests: it emulates the TradingEngine's sessions of
docs/order-path.md §3 just far enough to answer (SessionState for SessionLogon, the SeqNo
rules for ClientMessage, an ExecutionReport New per order, BusinessReject for throttled, shed
and unknown templates), and records every record the gateway sends."""
from __future__ import annotations

import asyncio
import struct
from collections import deque

from gateway import server as gs
from gateway import wire

ACCOUNT_EVENT = struct.Struct("<BIqqqq")  # an unrelated TradingEngine event (type 4), as noise


class FakeCore:
    def __init__(self, n_shards: int = 1):
        self.n_shards = n_shards
        self.sent: list[tuple[int, int, bytes]] = []   # (shard, kind, payload)
        self.callbacks = []
        self.pending = [deque() for _ in range(n_shards)]
        self.out_seq = [0] * n_shards
        self.out_log: list[list[bytes]] = [[] for _ in range(n_shards)]  # what emit() sent
        self.out_ts: list[list[int]] = [[] for _ in range(n_shards)]     # ... its stamps
        self.resumed = [1] * n_shards  # resume_at(): where a gateway's index file left off
        self.replay_history = False    # True: start() hands the callbacks out.te from resumed
        self.fetch_fails = False     # True: fetch() raises (every replicator down)
        self.fetch_delay_s = 0.0     # each fetch() waits this long (replicators frozen)
        self.sessions: dict[tuple[int, int], dict] = {}
        self.hold = False            # True: records wait (depth grows) until release()
        self.extra_depth = 0         # added to depth(): pretend the shard is behind
        self.ts_ns = 1_764_633_600_000_000_000  # 2025-12-02 00:00 UTC
        self.started = self.closed = False
        self.gate: asyncio.Event | None = None  # set: send() waits for it (a stalled log)

    # -- Core ---------------------------------------------------------------------------------
    async def start(self):
        self.started = True
        if self.replay_history:      # a restarted gateway reads the log from where it left off
            for shard in range(self.n_shards):
                for seq in range(self.resumed[shard], len(self.out_log[shard]) + 1):
                    for cb in self.callbacks:
                        cb(shard, seq, self.out_ts[shard][seq - 1],
                           self.out_log[shard][seq - 1])

    async def close(self):
        self.closed = True

    async def send(self, shard, kind, payload):
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append((shard, kind, bytes(payload)))
        self.pending[shard].append((kind, bytes(payload)))
        if not self.hold:
            asyncio.get_running_loop().call_soon(self._apply_pending, shard)

    def depth(self, shard):
        return len(self.pending[shard]) + self.extra_depth

    def subscribe(self, callback):
        self.callbacks.append(callback)

    async def fetch(self, shard, seqs):
        if self.fetch_delay_s:
            await asyncio.sleep(self.fetch_delay_s)
        if self.fetch_fails:
            raise TimeoutError("no replicator answered")
        log = self.out_log[shard]
        return {s: log[s - 1] for s in seqs if 1 <= s <= len(log)}

    async def stamp(self, shard, seq):
        if self.fetch_fails:
            raise TimeoutError("no replicator answered")
        ts = self.out_ts[shard]
        return ts[seq - 1] if 1 <= seq <= len(ts) else None

    def resume_at(self, shard, next_seq):
        self.resumed[shard] = next_seq

    # -- control ------------------------------------------------------------------------------
    def release(self):
        self.hold = False
        for s in range(self.n_shards):
            self._apply_pending(s)

    def kinds(self, kind=None):
        return [(k, p) for _s, k, p in self.sent if kind is None or k == kind]

    def emit(self, shard, payload):
        self.out_seq[shard] += 1
        self.out_log[shard].append(bytes(payload))
        self.ts_ns += 1000
        self.out_ts[shard].append(self.ts_ns)
        for cb in self.callbacks:
            cb(shard, self.out_seq[shard], self.ts_ns, payload)

    def _apply_pending(self, shard):
        q = self.pending[shard]
        while q and not self.hold:
            kind, payload = q.popleft()
            self.emit(shard, ACCOUNT_EVENT.pack(4, 1, 2, 3, 4, 5) + self._apply(kind, payload))

    # -- the engine's session rules -------------------------------------------------------------
    def _message(self, s, tid, *fields):
        s["next_seq"] += 1
        block = wire.TEMPLATES[tid].block.pack(s["next_seq"] - 1, *fields)
        return gs.SESSION_MESSAGE_S.pack(14, s["user"], s["sid"], tid) + block

    def push(self, user, sid, n):
        """Emit n ExecutionReports to a session, as fills of the engine would."""
        s = self.sessions[(user, sid)]
        out = b"".join(self._er(s, 10**6 + i) for i in range(n))
        self.emit(0, out)

    def _er(self, s, clordid, exec_type=b"0"):
        return self._message(s, 200, 0, clordid, wire.U64_NULL, clordid, clordid, 100, 5,
                             wire.PRICE_NULL, 0, 5, 0, 1, s["account"], exec_type, b"0", b"1",
                             b"2", b"1", 0, 0, 0)

    def _br(self, s, seqno, tid, reason, text=b""):
        return self._message(s, 203, 0, seqno, wire.U64_NULL, tid, reason, 0, text)

    def _apply(self, kind, payload) -> bytes:
        if kind == gs.KIND_GATEWAY_START:
            (g,) = gs.GATEWAY_START_S.unpack(payload)
            for s in self.sessions.values():
                if s["conn"] is not None and s["conn"] >> 48 == g:
                    s["conn"] = None
            return b""
        if kind == gs.KIND_SESSION_LOGON:
            user, sid, conn, default, cod, cod_ms, n = gs.SESSION_LOGON_S.unpack_from(payload)
            key = (user, sid)
            s = self.sessions.get(key)
            status = gs.STATUS_RESUMED
            if s is None:
                s = self.sessions[key] = {"user": user, "sid": sid, "conn": conn,
                                          "next_expected": 1, "next_seq": 1,
                                          "finalized": False, "account": default}
                status = gs.STATUS_NEW
            elif s["finalized"]:
                status = gs.STATUS_FINALIZED
            elif s["conn"] is not None and s["conn"] != conn:
                status = gs.STATUS_BOUND_ELSEWHERE
            else:
                s["conn"] = conn
            return gs.SESSION_STATE_S.pack(13, user, sid, conn, s["next_expected"],
                                           s["next_seq"], status)
        if kind == gs.KIND_SESSION_END:
            user, sid, conn, reason = gs.SESSION_END_S.unpack(payload)
            s = self.sessions.get((user, sid))
            if s is not None and s["conn"] == conn:
                s["conn"] = None
            if s is not None and reason == gs.END_FINALIZE:
                s["finalized"] = True
                bound, s["conn"] = s["conn"], None
                return gs.SESSION_STATE_S.pack(13, user, sid, bound or 0, s["next_expected"],
                                               s["next_seq"], gs.STATUS_FINALIZED)
            return b""
        if kind == gs.KIND_CLIENT_MESSAGE:
            user, sid, flags, tid = gs.CLIENT_MESSAGE_S.unpack_from(payload)
            block = payload[gs.CLIENT_MESSAGE_S.size:]
            s = self.sessions[(user, sid)]
            seqno = int.from_bytes(block[:8], "little")
            if seqno < s["next_expected"]:
                return b""
            out = b""
            if seqno > s["next_expected"]:
                out += self._message(s, 10, s["next_expected"],
                                     min(wire.U32_NULL, seqno - s["next_expected"]))
            s["next_expected"] = seqno + 1
            if flags & gs.GW_FLAG_THROTTLED:
                return out + self._br(s, seqno, tid, wire.BUSINESS_REJECT_THROTTLED)
            if flags & gs.GW_FLAG_SHED:
                return out + self._br(s, seqno, tid, wire.BUSINESS_REJECT_NOT_AVAILABLE,
                                      b"overloaded")
            if tid == 100:
                return out + self._er(s, struct.unpack_from("<Q", block, 16)[0])
            if tid == 101:
                return out + self._er(s, struct.unpack_from("<Q", block, 16)[0], b"4")
            if tid in (102, 103):
                return out + self._br(s, seqno, tid, wire.BUSINESS_REJECT_OTHER)
            return out + self._br(s, seqno, tid, wire.BUSINESS_REJECT_UNSUPPORTED_MESSAGE)
        raise AssertionError(f"unexpected kind {kind}")
