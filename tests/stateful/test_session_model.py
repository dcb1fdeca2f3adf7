"""Sessions over real TCP against a model of PROTOCOL.md §4.

A hypothesis state machine plays several clients of three users against the real gateway
(gateway/server.py) over 127.0.0.1, on a LocalCore with two TradingEngine shards and real
CrossEngines. The clients do what real clients get wrong: gaps, duplicates, resends, reused
ClOrdIDs, unknown templates, malformed frames, abrupt disconnects, logons with a wrong password,
on a bound session or beyond the server's NextSeqNo, RetransmitRequests in range, over the cap
and while another one runs, Logons with cancel-on-disconnect, an order pipelined right behind
the Logon, blocks of a newer schema version (longer, to be ignored past v1), and SeqNo jumps
up to and beyond what NotApplied.Count can say, and 2^64 - 1 (the gateway refuses the last two
with Logout(2), docs/gateway.md).

The model is written from PROTOCOL.md §4 (and docs/gateway.md's limits), not from the code:
per session (user, SessionID) it keeps nextExpected, the number H of server messages issued
and what each step must have issued (their kinds), the connection it is bound to, and the
orders each session has open. Orders never cross (buys below the mark, sells above), so every
order-entry message has exactly one predictable outcome.

Checked after every step, with every live connection drained up to a TestRequest barrier:

* on each connection, every sequenced server message has SeqNo = previous + 1, except that a
  replay (announced by Retransmission) covers exactly the requested range with PossDup set;
* across connections, a server SeqNo always carries the same bytes (apart from PossDup);
* what each step issued, per session, is what the model says (kinds, NotApplied ranges, reject
  reasons), and LogonAck reports the model's nextExpected and H + 1;
* Heartbeat (the barrier's answer) carries the model's H + 1 and nextExpected;
* the gateway's journal index holds H messages per session;
* no order is acknowledged twice (ExecutionReport New per ClOrdID at most once);
* every TradingEngine shard's check_invariants() (the audit) holds.

The harness waits for the gateway and the core to be idle between steps (it reads their
queues): that is synchronisation only, never the model.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway import accounts as acc
from gateway.local_core import LocalCore
from gateway.server import Config, Gateway
from tests.protoclient import ENCODING, NULL_ID, PREFIX, ProtoClient, frame
from tests.tradingvenue import two_specs
from tradingengine import codec as c

pytestmark = pytest.mark.timeout(600)

E8 = 10**8
TICK = 1_000_000                       # 0.01
DEADLINE = 10.0                        # every receive
USERS = {"alice": ("pw-a", [2, 4]), "bob": ("pw-b", [3, 5]), "carol": ("pw-c", [6, 8])}
NAMES = sorted(USERS)
MARK = {1: 100, 2: 500}                # whole units; orders stay within 4 units of it
SEQUENCED = (10, 200, 201, 202, 203)
FLAG_AT = {200: 111, 201: 47, 202: 35, 203: 35}   # Flags offset in the root block
MAX_RETRANSMIT = 10_000
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
MAX_RETRANSMIT_REJECTS = 10            # docs/gateway.md: then Logout(3)


# -- the model --------------------------------------------------------------------------------
@dataclasses.dataclass
class Order:
    clordid: int
    symbol: int
    side: bytes
    price: int      # whole units
    qty: int


@dataclasses.dataclass
class Session:
    user: str
    sid: int
    known: bool = False                # a Logon was accepted
    next_expected: int = 1             # next client SeqNo the server applies
    h: int = 0                         # last server SeqNo issued
    bound: object = None               # the Conn it is bound to
    cod: int = 0                       # CancelOnDisconnect of its last accepted Logon
    used: set = dataclasses.field(default_factory=set)        # ClOrdIDs applied
    open: dict = dataclasses.field(default_factory=dict)      # ClOrdID -> Order (this session's)
    chunks: list = dataclasses.field(default_factory=list)    # [lo, hi, Counter of kinds]
    seen: dict = dataclasses.field(default_factory=dict)      # server SeqNo -> bytes, PossDup off
    news: Counter = dataclasses.field(default_factory=Counter)  # ER New per ClOrdID

    def issue(self, kinds: list) -> None:
        """The server messages one step issues to this session (their order within the step is
        not the model's business: cancels of a mass cancel come back from the CrossEngine)."""
        if kinds:
            self.chunks.append([self.h + 1, self.h + len(kinds), Counter(kinds)])
            self.h += len(kinds)


def kind(template: int, block: bytes) -> tuple:
    if template == 10:
        _seq, frm, count = struct.unpack_from("<QQI", block)
        return ("NotApplied", frm, count)
    if template == 200:
        clordid = struct.unpack_from("<Q", block, 16)[0]
        et, reason = block[104:105], block[109]
        if et == b"0":
            return ("ER", "new", clordid)
        if et == b"4":
            return ("ER", "canceled", reason)
        if et == b"5":
            return ("ER", "replaced", clordid)
        if et == b"8":
            return ("ER", "rejected", reason)
        return ("ER", et)
    if template == 201:
        return ("CancelReject", block[46])
    if template == 202:
        total = struct.unpack_from("<I", block, 24)[0]
        return ("MassCancelReport", total, block[33:34])
    if template == 203:
        ref, _id, tid, reason = struct.unpack_from("<QQHB", block, 16)
        return ("BusinessReject", reason, ref, tid)
    return ("?", template)


# -- the system under test --------------------------------------------------------------------
class Cluster:
    def __init__(self, path):
        specs = [dataclasses.replace(s, tick=TICK) for s in two_specs()]
        self.core = LocalCore(specs, n_shards=2)
        for name, (pw, accounts) in USERS.items():
            acc.add_user(path, name, pw, accounts, n_shards=2, n=1024)
        self.users = acc.load(path, 2)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gw = Gateway(self.core, self.users, Config(heartbeat_ms=1000,
                                                         max_retransmit=MAX_RETRANSMIT))
        self.host, self.port = self.call(self.gw.start("127.0.0.1", 0))
        for _, accounts in USERS.values():
            for a in accounts:
                self.sync(self.core.operator, self.core.shard_of(a), c.DEPOSIT,
                          c.transfer(a, a, 10**13))
        for sym, units in MARK.items():
            self.sync(self.core.oracle, c.MARK_PRICE, c.mark_price(sym, units * E8 // TICK))

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn, *args):
        async def run():
            return fn(*args)
        return self.call(run())

    def idle(self, n_conns: int) -> bool:
        gw = self.gw
        return (all(not q for q in gw.queues) and gw.core_sent == gw.enqueued
                and not gw.pending and len(gw.conns) == n_conns
                and all(not x.tasks and not x.held and not x.out for x in gw.conns))

    def wait_idle(self, n_conns: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while not self.sync(self.idle, n_conns):
            assert time.monotonic() < deadline, (
                f"gateway not idle: {self.sync(lambda: len(self.gw.conns))} connections, "
                f"{n_conns} expected")
            time.sleep(0.002)
        self.sync(lambda: None)          # the flushes scheduled before we looked have run

    def close(self) -> None:
        try:
            self.call(self.gw.close())
            self.call(self.core.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Conn:
    """One client connection and what the model expects to see on it."""
    barrier_ids = iter(range(1, 1 << 62))

    def __init__(self, cluster: Cluster, user: str, sess: Session):
        self.pc = ProtoClient(cluster.host, cluster.port, timeout=DEADLINE)
        self.user = user
        self.sess = sess
        self.live_next = 0          # next live server SeqNo (after LogonAck)
        self.replay = None          # [next SeqNo of the replay, its last]
        self.unsequenced: list = []  # session messages other than Heartbeat seen this step
        self.rejects = 0

    def __repr__(self):
        return f"Conn({self.user}, {self.sess.sid})"

    def next(self):
        m = self.pc._next(time.monotonic() + DEADLINE)
        if m.template == 6:
            self.pc.send(5, m.fields[0], 0, 0)
        return m

    def take(self, m) -> None:
        """Check one message against the sequencing rules and record it."""
        t = m.template
        if t in (5, 6):
            return
        if t == 8:
            assert self.replay is None, "Retransmission inside a replay"
            frm, count = m.fields
            assert count >= 1
            self.replay = [frm, frm + count - 1]
            self.unsequenced.append((8, frm, count))
            return
        if t not in SEQUENCED:
            self.unsequenced.append((t,) + tuple(m.fields))
            return
        block = bytearray(m.raw[12:])
        seq = struct.unpack_from("<Q", block)[0]
        poss_dup = t in FLAG_AT and block[FLAG_AT[t]] & 1
        if self.replay is not None:
            assert seq == self.replay[0], f"replay: SeqNo {seq}, expected {self.replay[0]}"
            assert t == 10 or poss_dup, f"replayed SeqNo {seq} without PossDup"
            self.replay[0] += 1
            if self.replay[0] > self.replay[1]:
                self.replay = None
        else:
            assert seq == self.live_next, f"live SeqNo {seq}, expected {self.live_next}"
            assert not poss_dup, f"live SeqNo {seq} with PossDup"
            self.live_next += 1
        if t in FLAG_AT:
            block[FLAG_AT[t]] &= 0xFE
        raw = m.raw[:12] + bytes(block)
        s = self.sess
        old = s.seen.get(seq)
        if old is None:
            s.seen[seq] = raw
            k = kind(t, raw[12:])
            if k[:2] == ("ER", "new"):
                s.news[k[2]] += 1
        else:
            assert old == raw, f"server SeqNo {seq} changed: {old.hex()} / {raw.hex()}"

    def barrier(self) -> None:
        """Everything the gateway wrote before it read our TestRequest has been taken."""
        rid = next(Conn.barrier_ids)
        self.pc.send(6, rid)
        while True:
            m = self.next()
            if m.template == 5 and m.fields[0] == rid:
                # PROTOCOL.md §4.8: the sender's next SeqNo and the next it will apply
                assert m.fields[1:] == (self.sess.h + 1, min(self.sess.next_expected, U64_MAX)), \
                    (m.fields, self.sess.h, self.sess.next_expected)
                return
            self.take(m)

    def until_closed(self) -> list:
        """Messages up to the gateway's close (EOF), each checked."""
        got = []
        while True:
            try:
                m = self.next()
            except ConnectionError:
                return got
            got.append(m)
            self.take(m)

    def close(self) -> None:
        self.pc.close()


def price(symbol: int, side: bytes, d: int) -> int:
    units = MARK[symbol] - d if side == b"1" else MARK[symbol] + d
    return units * E8


# -- the state machine ------------------------------------------------------------------------
class SessionFlow(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        self.tmp = tempfile.TemporaryDirectory()
        self.cl = Cluster(os.path.join(self.tmp.name, "accounts.json"))
        self.sessions: dict[tuple[str, int], Session] = {}
        self.conns: list[Conn] = []
        self.clordid = 1000

    def teardown(self):
        for x in self.conns:
            x.close()
        self.cl.close()
        self.tmp.cleanup()

    # -- helpers
    def fresh_id(self) -> int:
        self.clordid += 1
        return self.clordid

    def session(self, user: str, sid: int) -> Session:
        key = (user, sid)
        if key not in self.sessions:
            self.sessions[key] = Session(user, sid)
        return self.sessions[key]

    def user_sessions(self, user: str):
        return [s for (u, _), s in self.sessions.items() if u == user]

    def settle(self, expect: dict | None = None) -> None:
        """Wait for the gateway to be idle, drain every connection to a barrier, then check
        each session against the model."""
        self.cl.wait_idle(len(self.conns))
        for x in self.conns:
            x.barrier()
        expect = expect or {}
        for x in self.conns:
            got = sorted(x.unsequenced)
            want = sorted(expect.get(id(x), []))
            assert got == want, f"{x.user}/{x.sess.sid}: session messages {got}, model {want}"
            x.unsequenced = []
            assert x.replay is None, f"replay unfinished: {x.replay}"
            assert x.live_next == x.sess.h + 1, \
                f"{x.user}/{x.sess.sid}: live up to {x.live_next - 1}, model H {x.sess.h}"
        for s in self.sessions.values():
            for chunk in s.chunks:
                lo, hi, kinds = chunk
                if kinds is not None and all(q in s.seen for q in range(lo, hi + 1)):
                    got = Counter(kind(s.seen[q][6] | s.seen[q][7] << 8, s.seen[q][12:])
                                  for q in range(lo, hi + 1))
                    assert got == kinds, f"{s.user}/{s.sid} {lo}..{hi}: {got}, model {kinds}"
                    chunk[2] = None

    def drop(self, x: Conn, logout: bool = False) -> None:
        """The connection ends; PROTOCOL.md §4.10: cancel-on-disconnect (CodTimeoutMs 0) of
        the session's open orders, mode 1 on disconnect or logout, 2 on disconnect only."""
        x.close()
        self.conns.remove(x)
        s = x.sess
        if s.bound is x:
            s.bound = None
            self.cl.wait_idle(len(self.conns))
            self.cl.sync(self.cl.core.tick)      # sequenced time passes the grace
            if s.cod == 1 or (s.cod == 2 and not logout):
                if s.open:
                    event(f"cancel on {'logout' if logout else 'disconnect'}")
                s.issue([("ER", "canceled", 2)] * len(s.open))
                s.open.clear()

    # -- rules: logon
    @rule(user=st.sampled_from(NAMES), sid=st.integers(1, 3), good=st.booleans(),
          want=st.sampled_from(["none", "replay", "live", "beyond"]), pipelined=st.booleans(),
          cod=st.sampled_from([0, 0, 1, 2]), data=st.data())
    def logon(self, user, sid, good, want, data, pipelined=False, cod=0):
        s = self.session(user, sid)
        pw = USERS[user][0] if good else "not-" + USERS[user][0]
        if want == "none":
            n = 0
        elif want == "replay":
            n = data.draw(st.integers(1, max(1, s.h)))
        elif want == "live":
            n = s.h + 1
        else:
            n = s.h + data.draw(st.integers(2, 5))
        x = Conn(self.cl, user, s)
        msg = frame(1, sid, n, min(s.next_expected, U64_MAX), 30_000, 0, cod, 0, user.encode(),
                    pw.encode())
        pipelined = pipelined and s.next_expected <= U64_MAX
        if pipelined:                # an order right behind the Logon, before its answer
            coid = self.fresh_id()
            msg += frame(100, s.next_expected, time.time_ns(), coid, price(1, b"1", 2), 1, 1,
                         0, b"1", b"2", b"1", 0)
        x.pc.send_raw(msg)
        m = x.next()
        while m.template in (5, 6):
            m = x.next()
        if not good:
            reason = 1
        elif s.bound is not None:
            reason = 2
        elif n > s.h + 1:
            reason = 5
        else:
            reason = None
        event(f"logon: {f'reject {reason}' if reason else 'ack'}")
        if reason is not None:
            assert m.template == 3 and m.fields[:2] == (sid, reason), (reason, m)
            assert x.until_closed() == []
            x.close()                    # a refused Logon changes nothing (§4.2, §4.5)
            self.cl.wait_idle(len(self.conns))
            self.settle()
            return
        assert m.template == 2, m
        a_sid, a_next, a_nextseq, _hb, _rate, _codms, _cod, flags, _date = m.fields
        # after SeqNo 2^64 - 1 nothing is left to expect: the u64 says 2^64 - 1, never 0
        assert (a_sid, a_next, a_nextseq) == (sid, min(s.next_expected, U64_MAX), s.h + 1), \
            (m.fields, s.next_expected, s.h)
        assert bool(flags & 8) == (not s.known), f"NewSession flag {flags}, known {s.known}"
        s.known = True
        s.bound = x
        s.cod = cod
        x.live_next = s.h + 1
        if pipelined:
            s.issue([("ER", "new", coid)])
            s.open[coid] = Order(coid, 1, b"1", MARK[1] - 2, 1)
            s.used.add(coid)
            s.next_expected += 1
            event("logon: pipelined order")
        self.conns.append(x)
        expect = []
        if 1 <= n <= a_nextseq - 1:
            expect.append((8, n, a_nextseq - n))
        self.settle({id(x): expect})

    # -- rules: order entry
    def conn(self, data) -> Conn:
        """A connection to act on; with none open, first a good logon of some session."""
        if not self.conns:
            self.logon(data.draw(st.sampled_from(NAMES)), data.draw(st.integers(1, 3)), True,
                       "none", data)
        return data.draw(st.sampled_from(self.conns))

    def seq_for(self, s: Session, mode: str, data) -> int:
        if s.next_expected > U64_MAX:            # SeqNo 2^64 - 1 was applied: all is old
            return data.draw(st.sampled_from([U64_MAX, U64_MAX - 1, 1]))
        if mode == "dup" and s.next_expected > 1:
            return data.draw(st.integers(1, s.next_expected - 1))
        if mode == "gap":
            return s.next_expected + data.draw(st.integers(1, 3))
        if mode == "jump":                       # beyond what NotApplied.Count can say
            return min(U64_MAX, s.next_expected + data.draw(st.sampled_from(
                [2**32 - 2, 2**32 - 1, 2**32, 2**40])))
        if mode == "last":
            return U64_MAX
        return s.next_expected

    @rule(what=st.sampled_from(["new", "new", "cancel", "replace", "mass", "unknown"]),
          mode=st.sampled_from(["next"] * 8 + ["dup", "dup", "gap", "gap", "jump", "last"]), resend=st.booleans(),
          reuse=st.integers(0, 4), extend=st.sampled_from([0, 0, 0, 8]), data=st.data())
    def order_entry(self, what, mode, resend, reuse, extend, data):
        x = self.conn(data)
        s = x.sess
        seq = self.seq_for(s, mode, data)
        flags = 1 if resend else 0
        reused = reuse == 0 and s.used and what in ("new", "cancel", "replace")
        coid = data.draw(st.sampled_from(sorted(s.used))) if reused else self.fresh_id()
        now = time.time_ns()
        issued: dict[int, list] = {}           # id(session) -> kinds
        mine: list = []

        if what == "new":
            sym = data.draw(st.sampled_from([1, 2]))
            side = data.draw(st.sampled_from([b"1", b"2"]))
            d = data.draw(st.integers(1, 4))
            qty = data.draw(st.integers(1, 5))
            msg = frame(100, seq, now, coid, price(sym, side, d), qty, sym, 0, side, b"2", b"1",
                        flags)
            if reused:
                mine.append(("ER", "rejected", 6))
            else:
                mine.append(("ER", "new", coid))
                order = Order(coid, sym, side, MARK[sym] - d if side == b"1" else MARK[sym] + d,
                              qty)
        elif what in ("cancel", "replace"):
            # an order of this session, of another session of the user, or none; by its
            # ClOrdID, which names only the session's own orders (PROTOCOL.md §4.3): another
            # session's order so named is unknown
            mine_open = [(t, coid_) for t in self.user_sessions(x.user)
                         for coid_ in sorted(t.open)]
            if mine_open and data.draw(st.integers(0, 3)):
                owner, target = data.draw(st.sampled_from(mine_open))
            else:
                owner, target = s, self.fresh_id() + 10**9                  # unknown order
            o = owner.open.get(target) if owner is s else None
            if owner is not s:
                event("order entry: another session's ClOrdID")
            sym = o.symbol if o else 1
            side = o.side if o else b"1"
            if what == "cancel":
                msg = frame(101, seq, now, coid, target, NULL_ID, sym, side, flags)
            else:
                d = data.draw(st.integers(1, 4))
                qty = data.draw(st.integers(1, 5))
                if o is not None and (o.price, o.qty) == (MARK[sym] - d if side == b"1" else
                                                          MARK[sym] + d, qty):
                    qty += 1   # a replace that changes nothing is refused (reason 99)
                msg = frame(102, seq, now, coid, target, NULL_ID, price(sym, side, d), qty, sym,
                            side, b"2", b"1", flags)
            if reused:
                mine.append(("CancelReject", 6))
            elif o is None:
                mine.append(("CancelReject", 1))
            else:
                mine.append(("ER", "canceled", 0) if what == "cancel" else
                            ("ER", "replaced", coid))
        elif what == "mass":
            msg = frame(103, seq, now, coid, 0xFFFF_FFFF, b"7", b"0", flags)
            total = 0
            for t in self.user_sessions(x.user):
                if t.open:
                    issued[id(t)] = [("ER", "canceled", 1)] * len(t.open)
                    total += len(t.open)
                    if t is not s:   # each cancelled order's report reaches the requester too
                        mine += [("ER", "canceled", 1)] * len(t.open)
            mine.append(("MassCancelReport", total, b"7"))
        else:
            block = struct.pack("<QQQ", seq, now, coid)
            msg = PREFIX.pack(12 + len(block), ENCODING, len(block), 150, 1, 1) + block
            mine.append(("BusinessReject", 3, seq, 150))

        if extend:    # PROTOCOL.md §1: a newer schema's trailing fields are ignored
            length, enc, block, tid, schema, _v = PREFIX.unpack_from(msg)
            msg = PREFIX.pack(length + extend, enc, block + extend, tid, schema, 2) + \
                msg[12:] + b"\xee" * extend
        x.pc.send_raw(msg)
        if seq >= s.next_expected and (seq == U64_MAX or seq - s.next_expected > U32_MAX):
            # docs/gateway.md: a jump NotApplied's Count cannot state, or 2^64 - 1: Logout(2)
            # before the engine sees it; nothing applied, nothing consumed
            event(f"order entry: {mode} -> Logout(2)")
            self.protocol_error(x)
            return
        event(f"order entry: {what} {mode}{' reused' if reused else ''} -> {mine[-1][:2]}")
        if seq < s.next_expected:              # a duplicate: dropped silently
            self.settle()
            return
        kinds = []
        if seq > s.next_expected:
            # order-path.md §4: a jump beyond a u32 reports 2^32 - 1
            kinds.append(("NotApplied", s.next_expected, min(seq - s.next_expected, U32_MAX)))
        s.next_expected = seq + 1
        kinds += mine
        s.issue(kinds)
        for t in self.user_sessions(x.user):
            if id(t) in issued:
                t.issue(issued[id(t)])
        # the model's state after the message
        if what == "new" and not reused:
            s.open[coid] = order
        elif what == "cancel" and not reused and o is not None:
            del owner.open[target]
        elif what == "replace" and not reused and o is not None:
            del owner.open[target]
            owner.open[coid] = Order(coid, sym, side, MARK[sym] - d if side == b"1" else
                                 MARK[sym] + d, qty)
        elif what == "mass":
            for t in self.user_sessions(x.user):
                t.open.clear()
        if what != "unknown":
            s.used.add(coid)
        self.settle()

    # -- rules: recovery
    @rule(mode=st.sampled_from(["range", "range", "over", "out", "double"]), data=st.data())
    def retransmit_request(self, mode, data):
        x = self.conn(data)
        s = x.sess
        if mode in ("range", "double") and s.h == 0:
            mode = "out"
        expect = []
        rejects = []
        if mode in ("range", "double"):
            frm = data.draw(st.integers(1, s.h))
            count = data.draw(st.integers(1, s.h - frm + 1))
            msg = frame(7, frm, count)
            expect.append((8, frm, count))
            if mode == "double":
                msg += frame(7, frm, count)
                rejects.append((9, frm, count, 2))
        elif mode == "over":
            frm, count = 1, MAX_RETRANSMIT + 1
            msg = frame(7, frm, count)
            rejects.append((9, frm, count, 1))
        else:
            frm, count = s.h + 1, data.draw(st.integers(1, 3))
            msg = frame(7, frm, count)
            rejects.append((9, frm, count, 0))
        x.pc.send_raw(msg)
        event(f"retransmit: {mode}")
        x.rejects += len(rejects)
        if rejects and x.rejects >= MAX_RETRANSMIT_REJECTS:
            event("retransmit: Logout(3)")
            got = x.until_closed()
            assert got and got[-1].template == 4 and got[-1].fields[0] == 3, got
            assert sorted(x.unsequenced) == sorted(rejects + [(4,) + tuple(got[-1].fields)])
            x.replay = None                # a replay cut short by the close
            self.drop(x)
            self.settle()
            return
        self.settle({id(x): expect + rejects})

    # -- rules: leaving
    @rule(data=st.data())
    def logout(self, data):
        x = self.conn(data)
        x.pc.send(4, 0, b"bye")
        m = x.next()
        while m.template != 4:
            x.take(m)
            m = x.next()
        assert m.fields[0] == 0, m
        self.drop(x, logout=True)
        self.settle()

    @rule(reset=st.booleans(), data=st.data())
    def disconnect(self, reset, data):
        x = self.conn(data)
        if reset:
            x.pc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.drop(x)
        self.settle()

    @rule(how=st.sampled_from(["encoding", "schema", "short", "block", "logon", "response",
                               "short block", "short test request"]), data=st.data())
    def malformed(self, how, data):
        """Framing errors (PROTOCOL.md §1) and what docs/gateway.md calls protocol errors: a
        second Logon, a server template, a block shorter than its v1 size: Logout(2), close."""
        x = self.conn(data)
        good = frame(6, 1)
        length, enc, block, tid, schema, ver = PREFIX.unpack_from(good)
        body = good[12:]
        if how == "encoding":
            enc = 0xCAFE
        elif how == "schema":
            schema = 2
        elif how == "short":
            length = 11
        elif how == "block":
            block = 9
        elif how == "short test request":
            length, block, body = 16, 4, body[:4]
        elif how == "logon":
            raw = frame(1, x.sess.sid, 0, 1, 30_000, 0, 0, 0, x.user.encode(),
                        USERS[x.user][0].encode())
            length, enc, block, tid, schema, ver = PREFIX.unpack_from(raw)
            body = raw[12:]
        elif how == "response":
            raw = frame(203, 1, 0, 1, 0, 100, 3, 0, b"")
            length, enc, block, tid, schema, ver = PREFIX.unpack_from(raw)
            body = raw[12:]
        else:    # a NewOrderSingle cut to 40 bytes: the SeqNo must not be consumed
            raw = frame(100, x.sess.next_expected if x.sess.next_expected <= U64_MAX else 1, 0,
                        self.fresh_id(), price(1, b"1", 1), 1, 1, 0, b"1", b"2", b"1", 0)
            length, enc, block, tid, schema, ver = PREFIX.unpack_from(raw)
            length, block, body = 52, 40, raw[12:52]
        event(f"malformed: {how}")
        x.pc.send_raw(PREFIX.pack(length, enc, block, tid, schema, ver) + body)
        self.protocol_error(x)

    def protocol_error(self, x: Conn) -> None:
        """The connection's answer is Logout(2) and nothing else, then its close."""
        got = x.until_closed()
        assert got and got[-1].template == 4 and got[-1].fields[0] == 2, got
        assert [m.template for m in got[:-1]] == [], got
        x.unsequenced = []
        self.drop(x)
        self.settle()

    # -- invariants
    @invariant()
    def no_order_acknowledged_twice(self):
        for s in self.sessions.values():
            assert all(n <= 1 for n in s.news.values()), (s.user, s.sid, s.news)

    @invariant()
    def server_numbers_match_the_model(self):
        def issued():
            out = {}
            for user, sid in self.sessions:
                key = (self.cl.users.users[user].user, sid)
                out[(user, sid)] = self.cl.gw.next_server_seq(key) - 1
            return out
        for key, h in self.cl.sync(issued).items():
            assert h == self.sessions[key].h, (key, h, self.sessions[key].h)

    @invariant()
    def audit_holds(self):
        def audit():
            for te in self.cl.core.shards:
                te.check_invariants()
        self.cl.sync(audit)


# SEQEX_EXAMPLES=1000 for a long run (the default of 60 takes about 25 s)
SessionFlow.TestCase.settings = settings(
    max_examples=int(os.environ.get("SEQEX_EXAMPLES", "60")), stateful_step_count=50,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_session_flow = SessionFlow.TestCase
