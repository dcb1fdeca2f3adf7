"""The order path under faults, as real processes (`seqex up`, the default topology with a low
gateway max_depth), driven by tests/protoclient.py (a client written from PROTOCOL.md alone).

* PROTOCOL.md §4's reconnect walkthrough: NOS 1..5 sent, the connection dropped unread, Logon
  resumes: LogonAck's numbers, Retransmission + PossDup replay, resend of the unapplied ones.
* A seeded flow of crossing orders, cancels and amends from several sessions while gateway0, a
  hot TradingEngine replica or a hot CrossEngine replica is SIGKILLed; the clients resume as
  PROTOCOL.md §4-5 say. Afterwards: every request applied once (an answer for each, no
  duplicate-ClOrdID reject, at most one New per order), every server SeqNo of every session
  received exactly once (replays only with PossDup), the union 1..H equal byte for byte to the
  out.te.N journal, and the state hash of every live hot TradingEngine replica equal to a fresh
  rebuild from the log (the engine audits itself on every mark price and would have halted).
* Overload: a burst far beyond max_depth with cancels interleaved: no cancel is shed, every
  shed order gets BusinessReject 4 "overloaded", every client SeqNo is answered.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import time

import pytest

from deploy.procs import Group
from mq import wire as mqwire
from mq.control import call, ping, replay, stats, wait_until
from mq.record import decode
from tests.process.test_cli import seqex, wait_committed
from tests.process.test_cluster import pids_of
from tests.process.test_trade_on_it import free_block_below_ephemeral
from tests.protoclient import NULL_ID, ProtoClient, frame
from tests.seed import SEED

pytest.importorskip("gateway.server", reason="the gateway process")

from deploy.supervisor import read_state  # noqa: E402
from deploy.topology import DEFAULT  # noqa: E402
from gateway.server import session_events  # noqa: E402

FLAGS_OFF = {200: 111, 201: 47, 202: 35, 203: 35}   # the Flags byte of each sequenced block
# symbol id -> (price mantissa of one tick, mark in ticks)
SYMBOLS = {1: (50_000_000, 100_000), 2: (5_000_000, 60_000)}
MAX_DEPTH = 6


@contextlib.contextmanager
def default_cluster(tmp, topology: str | None = None, extra: tuple[str, ...] = ()):
    """`seqex up` of the default topology (or `topology`, a TOML text) in tmp, until the demo
    deposits are done: {"data", "topo", "up", "gw": (host, port), "users": {name: password}};
    `seqex down` afterwards, every process of it ended."""
    data = str(tmp / "data")
    args = ["up", "--data", data]
    if topology is not None:
        topo_file = tmp / "topology.toml"
        topo_file.write_text(topology)
        args += ["--topology", str(topo_file)]
    with Group(str(tmp / "logs")) as group:
        up = group.spawn("up", args + ["--base-port", str(free_block_below_ephemeral()),
                                       "--ready-timeout", "240", *extra])
        try:
            wait_until(lambda: up.log().count("done: balance") >= 4 or not up.alive, 400,
                       "seqex up and the demo deposits")
            assert up.alive, up.log()
            topo, _pid = read_state(data)
            with open(os.path.join(data, "demo-users.json")) as f:
                users = json.load(f)["passwords"]
            host, port = topo.trading["gateway"].rsplit(":", 1)
            yield {"data": data, "topo": topo, "up": up, "gw": (host, int(port)),
                   "users": users}
        finally:
            for pid in pids_of(data):      # nothing of ours stays stopped, whatever failed
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
            seqex("down", "--data", data, timeout=180)
            try:
                up.wait(120)
            except Exception:
                pass
    wait_until(lambda: pids_of(data) == [], 60, "every process of the cluster to end")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # journal_cache_bytes 0: every replay here (the walkthrough's, a restarted gateway's) reads
    # the session messages back from the replicators (docs/gateway.md, the journal's memory)
    text = DEFAULT.replace("[trading]\n", f"[trading]\nmax_depth = {MAX_DEPTH}\n"
                           "journal_cache_bytes = 0\n", 1)
    with default_cluster(tmp_path_factory.mktemp("faults"), text) as c:
        yield c


@pytest.fixture
def cl(cluster):
    """The cluster, with this process holding the operator's CURVE identity again (conftest
    drops it after every test)."""
    read_state(cluster["data"])
    return cluster


def password(cl, user):
    return cl["users"][user]


class Session:
    """One client session over ProtoClient: persists (in memory) what PROTOCOL.md §5 asks:
    its next SeqNo, its unacknowledged outbox and the last server SeqNo it processed."""

    def __init__(self, cl, user: str, sid: int, account: int):
        self.cl, self.user, self.sid, self.account = cl, user, sid, account
        self.pw = password(cl, user)
        self.next_seq = 1
        self.outbox: dict[int, tuple] = {}     # seq -> fields of the template (as sent)
        self.last_seen = 0
        self.got: dict[int, list[tuple[bool, bytes, int]]] = {}   # server seq -> (possdup, raw)
        self.requests: dict[int, tuple] = {}   # client seq -> (template, clordid)
        self.c: ProtoClient | None = None
        self.acks: list[tuple] = []
        self.reconnects = 0
        self.resends = 0
        self.attempts: list[tuple[int, tuple, float]] = []   # each Logon's answer, its time
        self.on_logon_sent = None     # called once, after the next Logon is sent

    # -- transport ------------------------------------------------------------------------
    def connect(self, deadline_s: float = 180, on_resend=None) -> tuple:
        end = time.monotonic() + deadline_s
        while True:
            t0 = time.monotonic()
            try:
                c = ProtoClient(*self.cl["gw"], timeout=60)
                c.send(1, self.sid, self.last_seen + 1, self.next_seq,
                       10_000, 0, 0, 0, self.user.encode(), self.pw.encode())
                hook, self.on_logon_sent = self.on_logon_sent, None
                if hook:
                    hook()
                m = c.recv(skip=(5, 6))
                self.attempts.append((m.template, m.fields, time.monotonic() - t0))
                if m.template == 2:
                    break
                c.close()
                assert m.template == 3 and m.fields[1] in (2, 6), m
            except (OSError, ConnectionError, TimeoutError) as exc:
                self.attempts.append((-1, (repr(exc),), time.monotonic() - t0))
            assert time.monotonic() < end, "no LogonAck"
            time.sleep(0.2)
        self.c = c
        self.acks.append(m.fields)
        next_expected, next_server = m.fields[1], m.fields[2]
        if self.last_seen + 1 < next_server:
            r = c.recv(skip=(5, 6))
            assert r.template == 8 and r.fields == (self.last_seen + 1,
                                                    next_server - 1 - self.last_seen), r
            for _ in range(r.fields[1]):
                self._take(c.recv(skip=(5, 6)), replayed=True)
        # PROTOCOL §4.6: resend what was not applied, unchanged but for the resend flag
        for seq in sorted(self.outbox):
            if seq < next_expected:
                del self.outbox[seq]
        for seq in sorted(self.outbox):
            t, fields = self.outbox[seq]
            fields = fields[:-1] + (fields[-1] | 1,)
            c.send(t, *fields)
            self.resends += 1
            if on_resend:
                on_resend((t, fields))
        return m.fields

    def reconnect(self) -> None:
        if self.c:
            self.c.close()
        self.c = None
        self.reconnects += 1
        self.connect()

    def _take(self, m, replayed: bool = False) -> None:
        assert m.template in (10, 200, 201, 202, 203), m
        seq = m.fields[0]
        flags = m.raw[12 + FLAGS_OFF[m.template]] if m.template in FLAGS_OFF else 0
        self.got.setdefault(seq, []).append((bool(flags & 1), m.raw, replayed))
        assert seq == self.last_seen + 1, (self.sid, seq, self.last_seen)
        self.last_seen = seq

    def drain(self, timeout: float = 0.02) -> bool:
        """Take what is there; False when the connection broke (then reconnected)."""
        try:
            while True:
                m = self.c.recv(skip=(5, 6), timeout=timeout)
                if m.template == 4:
                    raise ConnectionError(f"Logout {m.fields}")
                self._take(m)
        except TimeoutError:
            return True
        except (OSError, ConnectionError):
            self.reconnect()
            return False

    # -- requests ---------------------------------------------------------------------------
    def send(self, template: int, clordid: int, *rest) -> int:
        seq = self.next_seq
        self.next_seq += 1
        fields = (seq, time.time_ns(), clordid, *rest)
        self.outbox[seq] = (template, fields)
        self.requests[seq] = (template, clordid)
        try:
            self.c.send(template, *fields)
        except OSError:
            self.reconnect()
        return seq

    def nos(self, clordid, security, side, price, qty):
        return self.send(100, clordid, price, qty, security, self.account, side, b"2", b"1", 0)

    def cancel(self, clordid, orig, security, side):
        return self.send(101, clordid, orig, NULL_ID, security, side, 0)

    def amend(self, clordid, orig, security, side, price, qty):
        return self.send(102, clordid, orig, NULL_ID, price, qty, security, side, b"2", b"1", 0)

    # -- what came back -----------------------------------------------------------------------
    def messages(self):
        for seq in sorted(self.got):
            for _pd, raw, _r in self.got[seq]:
                yield seq, raw

    def answered(self) -> set[int]:
        """Client SeqNos with an answer: a message naming the request's ClOrdID or its SeqNo."""
        by_clordid = {c: s for s, (_t, c) in self.requests.items()}
        out = set()
        for _seq, raw in self.messages():
            t = int.from_bytes(raw[6:8], "little")
            if t == 203:
                out.add(int.from_bytes(raw[12 + 16:12 + 24], "little"))
            elif t in (200, 201):
                c = int.from_bytes(raw[12 + 16:12 + 24], "little")
                if c in by_clordid:
                    out.add(by_clordid[c])
        return out

    def close(self):
        if self.c:
            self.c.close()


def block_of(raw: bytes) -> bytes:
    t = int.from_bytes(raw[6:8], "little")
    b = bytearray(raw[12:])
    if t in FLAGS_OFF:
        b[FLAGS_OFF[t]] &= ~1 & 0xFF
    return bytes(b)


def journal(cl) -> dict[int, dict[int, tuple[int, bytes]]]:
    """session id -> server SeqNo -> (template, block), from every out.te.N on a replicator."""
    topo = cl["topo"]
    for rep in topo.replicator_addrs():   # the first that answers
        try:
            return _journal(topo, rep)
        except TimeoutError:
            cl.setdefault("replay_timeouts", []).append(rep)
    raise TimeoutError("no replicator answered REPLAY")


def _journal(topo, rep):
    out: dict[int, dict[int, tuple[int, bytes]]] = {}
    for sh in topo.trading["shards"]:
        for rec_frame in replay(rep, sh["out"], 1, timeout_s=20):
            for r in decode(rec_frame):
                for ev in session_events(r[6]):
                    if ev[0] == 14:
                        _t, _user, sid, tid, block = ev
                        seq = int.from_bytes(block[:8], "little")
                        assert seq not in out.setdefault(sid, {}), (sid, seq)
                        out[sid][seq] = (tid, block)
    return out


def check_sessions(cl, sessions: list[Session]) -> None:
    """Every request answered and applied once; every server SeqNo received exactly once, the
    replays with PossDup, equal byte for byte to the journal."""
    # wait for the answers of everything sent
    def all_answered():
        for s in sessions:
            s.drain(0.05)
        return all(set(s.requests) <= s.answered() for s in sessions)
    wait_until(all_answered, 180, "an answer to every request")

    def all_read():   # whatever the journal has beyond what was read (late fills)
        nonlocal jr
        jr = journal(cl)
        for s in sessions:
            s.drain(0.2)
        return all(s.last_seen == max(jr.get(s.sid, {0: 0})) for s in sessions)
    jr = {}
    wait_until(all_read, 120, "every journaled message read")
    for s in sessions:
        mine = jr.get(s.sid, {})
        h = max(mine) if mine else 0
        assert sorted(s.got) == list(range(1, h + 1)), (s.sid, h, sorted(s.got)[-5:])
        for seq, recs in s.got.items():
            assert len(recs) == 1, (s.sid, seq, "received more than once")
            possdup, raw, replayed = recs[0]
            assert possdup == replayed, (s.sid, seq, possdup, replayed)
            t = int.from_bytes(raw[6:8], "little")
            assert (t, block_of(raw)) == mine[seq], (s.sid, seq)
        by_clordid: dict[int, list] = {}
        br = {}
        for _seq, raw in s.messages():
            t = int.from_bytes(raw[6:8], "little")
            assert t != 10, (s.sid, "NotApplied: a SeqNo was skipped")
            if t == 200:
                c, et, reason = (int.from_bytes(raw[28:36], "little"), raw[12 + 104:12 + 105],
                                 raw[12 + 109])
                assert not (et == b"8" and reason == 6), (s.sid, c, "duplicate ClOrdID")
                by_clordid.setdefault(c, []).append(et)
            elif t == 201:
                assert raw[12 + 46] != 6, (s.sid, "duplicate ClOrdID on a cancel")
            elif t == 203:
                ref = int.from_bytes(raw[28:36], "little")
                assert ref not in br, (s.sid, ref, "two BusinessRejects for one SeqNo")
                br[ref] = raw[12 + 34]
        for c, ets in by_clordid.items():
            assert ets.count(b"0") + ets.count(b"8") <= 1, (s.sid, c, ets)


def check_hashes(cl) -> None:
    """The live hot replicas' state hashes (every TradingEngine shard, every CrossEngine)
    equal a rebuild from the log; the rebuilt TradingEngine's audit balances."""
    topo, data = cl["topo"], cl["data"]
    engines = [(sh["in"], sh["producers"], f"te{sh['shard']}") for sh in topo.trading["shards"]]
    engines += [(st["in"], st["producers"], f"ce.{sym}") for sym, st in topo.symbols.items()]
    for stream, producers, prefix in engines:
        last = stats(producers)["last"]
        for name in (f"{prefix}.hot0", f"{prefix}.hot1"):
            ctl = topo.by_name(name).control
            wait_until(lambda ctl=ctl, last=last: (ping(ctl) or {}).get("seq", 0) >= last,
                       180, f"{name} to catch up")
            _k, h, _ = call(ctl, mqwire.HASH, timeout_s=10)
            # (the replica may stand on a tick its replicators do not know committed yet: the
            # rebuild reads committed records only)
            wait_committed(data, stream, h["seq"])
            out = seqex("replay", stream, "--data", data, "--rebuild", "--json", "--to",
                        str(h["seq"]))
            assert out.returncode == 0, out.stderr
            rebuilt = json.loads(out.stdout.strip().splitlines()[-1])
            assert (rebuilt["seq"], rebuilt["state_hash"]) == (h["seq"], h["hash"]), name
            assert prefix.startswith("ce.") or rebuilt["audit"] == "balanced", rebuilt
    assert "Traceback" not in cl["up"].log()
    assert "halt" not in cl["up"].log().lower()


def kill_one(cl, what: str) -> None:
    data = cl["data"]
    if what == "gateway":
        pids = [p for p in pids_of(data) if "gateway --config" in
                open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()]
    else:
        pids = pids_of(data, what)
    assert len(pids) == 1, (what, pids)
    os.kill(pids[0], signal.SIGKILL)


_sids = iter(range(random.Random(SEED).randrange(1, 1 << 40) << 8, 1 << 62))
# ClOrdIDs unique across the module: an open order's ClOrdID is refused (reason 6) to any
# session of the same account (docs/order-path.md §3), and the tests share the demo accounts.
_clordids = iter(range(1000, 1 << 62))


def run_flow(cl, kill: str | None, steps: int, seed: int, n_sessions: int = 4) -> None:
    rng = random.Random(seed)
    sessions = []
    for i in range(n_sessions):
        user, account = (("alice", 2), ("bob", 3))[i % 2]
        s = Session(cl, user, next(_sids), account)
        s.connect()
        sessions.append(s)
    kills = kill.split("+") if kill else []     # "a+b": each at its own seeded step
    kill_at = dict(zip(sorted(rng.sample(range(steps // 4, 3 * steps // 4), len(kills))),
                       kills, strict=True))
    restarts = cl["up"].log().count("  restarting ")
    try:
        for step in range(steps):
            if step in kill_at:
                kill_one(cl, kill_at[step])
            s = rng.choice(sessions)
            clordid = next(_clordids)
            sec = rng.choice((1, 2))
            tick, mark = SYMBOLS[sec]
            side = rng.choice((b"1", b"2"))
            orders = [c for _sq, (t, c) in s.requests.items() if t == 100]
            r = rng.random()
            if r < 0.2 and orders:
                s.cancel(clordid, rng.choice(orders), sec, side)
            elif r < 0.3 and orders:
                s.amend(clordid, rng.choice(orders), sec, side,
                        (mark + rng.randint(-10, 10)) * tick, rng.randint(1, 5))
            else:
                s.nos(clordid, sec, side, (mark + rng.randint(-10, 10)) * tick, rng.randint(1, 5))
            for x in sessions:   # a moderate rate: at most a few requests unanswered
                x.drain(0.001 if x is not s else 0.01)
                if len(set(x.requests) - x.answered()) > 3:
                    wait_until(lambda x=x: x.drain(0.2) and len(set(x.requests) - x.answered())
                               <= 3, 240, "answers")
        if kills:
            wait_until(lambda: cl["up"].log().count("  restarting ") >= restarts + len(kills), 120,
                       f"the supervisor to restart {kill}")
        check_sessions(cl, sessions)
        if "gateway" in kills:
            assert all(s.reconnects >= 1 for s in sessions)
            # the restarted gateway took its index file and read out.te.N only after it
            # (gateway/index.py); the sessions' replays above came from that index
            with open(os.path.join(cl["data"], "logs", "gateway0.log")) as f:
                took = re.findall(r"index \S+: (\d+) sessions, \d+ server messages; reading "
                                  r"out.te from 0: seq (\d+), 1: seq (\d+)", f.read())
            assert took and int(took[-1][1]) > 1 and int(took[-1][2]) > 1, took
            print(f"the restarted gateway's index: {took[-1][0]} sessions, out.te.0 from seq "
                  f"{took[-1][1]}, out.te.1 from seq {took[-1][2]}")
        fills = sum(1 for s in sessions for _q, raw in s.messages()
                    if int.from_bytes(raw[6:8], "little") == 200 and raw[12 + 104] == ord("F"))
        assert fills > 0, "the flow never crossed"
        print(f"{kill}: {steps} requests, {fills} fills, "
              f"{sum(s.reconnects for s in sessions)} reconnects, "
              f"{sum(s.resends for s in sessions)} resent, "
              f"{sum(r[2] for s in sessions for recs in s.got.values() for r in recs)} "
              "replayed reports")
    finally:
        for s in sessions:
            s.close()
    check_hashes(cl)


@pytest.mark.timeout(900)
def test_reconnect_walkthrough(cl):
    """PROTOCOL.md §4: NOS 1..5 sent, two answers read, the connection dropped: LogonAck
    (NextExpectedSeqNo 6, NextSeqNo 6), Retransmission(3, 3) and three PossDup reports. Then
    NOS 6, 7 and half of 8 as the connection drops: the resume resends from LogonAck's
    NextExpectedSeqNo with the resend flag; a stale duplicate is dropped; each applied once."""
    s = Session(cl, "alice", next(_sids), 2)
    ack = s.connect()
    assert ack[1:3] == (1, 1) and ack[7] & 8, ack   # a new session: NewSession
    tick, mark = SYMBOLS[1]
    # 5 resting buys far below the mark: each answered by exactly one ER New
    for k in range(1, 6):
        s.nos(next(_clordids), 1, b"1", (mark - 1000 - k) * tick, 1)
    # read only the first two answers, then drop the connection
    while s.last_seen < 2:
        m = s.c.recv(skip=(5, 6))
        s._take(m)
    s.c.close()
    s.c = None
    # wait until the server applied all five (its journal says so), then resume
    wait_until(lambda: len(journal(cl).get(s.sid, {})) >= 5, 60, "the five acks")
    seen = s.last_seen
    ack = s.connect()
    assert ack[1] == 6 and ack[2] == 6 and not ack[7] & 8, ack   # nothing to resend
    assert s.outbox == {}
    assert [r[0][2] for q, r in sorted(s.got.items()) if q > seen] == [True] * 3
    # a second round: NOS 6 and 7 sent whole, NOS 8 cut mid-frame as the connection drops:
    # the server can never have applied 8, so the resume must resend it (resend flag set)
    for k in (6, 7):
        s.nos(next(_clordids), 1, b"1", (mark - 1000 - k) * tick, 1)
    real, s.c.send = s.c.send, lambda t, *f: s.c.send_raw(frame(t, *f)[:30])
    s.nos(next(_clordids), 1, b"1", (mark - 1008) * tick, 1)
    s.c.send = real
    s.c.close()
    s.c = None
    sent = []
    ack = s.connect(on_resend=sent.append)
    assert 6 <= ack[1] <= 8, ack
    assert [f[0] for _t, f in sent] == list(range(ack[1], 9)) and \
        all(f[-1] & 1 for _t, f in sent), sent
    # a duplicate from the past is dropped silently
    dup = dict(s.requests)[1]
    s.c.send(100, 1, time.time_ns(), dup[1], (mark - 1001) * tick, 1, 1, 2, b"1", b"2", b"1", 1)
    check_sessions(cl, [s])
    news = [raw for _q, raw in s.messages() if raw[12 + 104:12 + 105] == b"0"]
    assert len(news) == 8
    s.close()


LONG = int(os.environ.get("SEQEX_FAULT_STEPS", "400"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kill,steps", [
    pytest.param("gateway", 60, id="gateway-quick"),
    pytest.param("gateway", LONG, id="gateway", marks=pytest.mark.slow),
    pytest.param("te0.hot0", LONG, id="tradingengine", marks=pytest.mark.slow),
    pytest.param("te1.hot1", LONG, id="tradingengine-shard1", marks=pytest.mark.slow),
    pytest.param("ce.BTCUSDT.hot0", LONG, id="crossengine", marks=pytest.mark.slow),
    pytest.param("ce.ETHUSDT.hot1", LONG, id="crossengine-eth", marks=pytest.mark.slow),
    pytest.param("te1.hot0+gateway+ce.BTCUSDT.hot1", LONG, id="all-three",
                 marks=pytest.mark.slow)])
def test_kill_mid_stream(cl, kill, steps):
    run_flow(cl, kill, steps=steps, seed=SEED + sum(map(ord, kill)) + steps)


@pytest.mark.timeout(900)
def test_overload_burst_sheds_orders_never_cancels(cl):
    """A burst far beyond max_depth: orders shed with BusinessReject 4, cancels all admitted,
    every SeqNo answered exactly once."""
    sessions = [Session(cl, u, next(_sids), a) for u, a in
                (("alice", 2), ("bob", 3), ("alice", 2), ("bob", 3))]
    acks = [s.connect() for s in sessions]
    rate = min(a[4] for a in acks)       # MaxMsgsPerSec: stay under the throttle
    per = max(10, min(60, rate // 2))
    for s in sessions:
        tick, mark = SYMBOLS[1]
        for k in range(per):
            clordid = next(_clordids)
            if k % 3 == 2:
                s.cancel(clordid, clordid - 1, 1, b"1" if s.account == 2 else b"2")
            else:
                s.nos(clordid, 1, b"1" if s.account == 2 else b"2",
                      (mark + (-500 if s.account == 2 else 500)) * tick, 1)
    check_sessions(cl, sessions)
    shed = kept_cancels = 0
    for s in sessions:
        for _q, raw in s.messages():
            if int.from_bytes(raw[6:8], "little") == 203:
                ref = int.from_bytes(raw[28:36], "little")
                reason = raw[12 + 34]
                text = raw[12 + 36:12 + 68].rstrip(b"\0")
                assert s.requests[ref][0] == 100, ("a cancel was refused", reason, text)
                assert (reason, text) == (4, b"overloaded"), (reason, text)
                shed += 1
        kept_cancels += sum(1 for t, _c in s.requests.values() if t == 101)
        assert set(s.requests) <= s.answered()
    orders = sum(1 for s in sessions for t, _c in s.requests.values() if t == 100)
    assert orders >= 5 * MAX_DEPTH and shed > 0, (orders, shed)
    print(f"overload: {orders} orders and {kept_cancels} cancels in a burst, max_depth "
          f"{MAX_DEPTH}: {shed} orders shed, every cancel admitted")
    for s in sessions:
        s.close()


def test_cancel_on_disconnect_fired_by_a_tick_reaches_the_crossengine(cl):
    """Cancel-on-disconnect fires at the first record of in.te.N past its deadline, which on an
    idle shard is a sequencer Tick: the TradingEngine's output record for it keeps kind 1 and
    carries the CrossEngine cancels. in.ce.SYM must take it like any record with events (the
    upstream filter once dropped every kind-1 record as a Tick, and the resting orders of a
    disconnected client stayed in the book). Three sessions, so that at least one deadline
    falls on a Tick rather than on a mark price."""
    price_ticks = [96_400 + i for i in range(3)]       # levels nobody else uses
    tick_m = SYMBOLS[1][0]
    for ticks in price_ticks:
        c = ProtoClient(*cl["gw"], timeout=30)
        c.send(1, next(_sids), 1, 1, 10_000, 200, 1, 0, b"alice",
               password(cl, "alice").encode())               # CoD on disconnect, 200 ms
        assert c.recv(skip=(5, 6)).template == 2
        c.send(100, 1, time.time_ns(), next(_clordids), ticks * tick_m, 1, 1, 2, b"1", b"2",
               b"1", 0)
        m = c.recv(skip=(5, 6))
        assert m.template == 200 and m.raw[12 + 104] == ord("0"), m    # ExecType New
        c.close()                                                        # disconnect
    wait_until(lambda: alices_orders_cancelled(cl, price_ticks), 120,
               "the CrossEngine to cancel the disconnected client's orders")


def alices_orders_cancelled(cl, levels: list[int]) -> bool:
    """Whether out.ce.BTCUSDT holds an acceptance of an order of account 2 at each of
    `levels` (ticks, one order each) and a cancel of every one of them."""
    from crossengine import codec as ce
    out_ce = cl["topo"].symbols["BTCUSDT"]["out"]
    accepted, gone = {}, set()
    for rep in cl["topo"].replicator_addrs():
        try:
            frames = list(replay(rep, out_ce, 1, timeout_s=20))
        except TimeoutError:
            continue
        for f in frames:
            for r in decode(f):
                for ev in ce.decode_events(bytes(r[6])):
                    if ev[0] == ce.EV_ACCEPTED and ev[3] == 2 and ev[6] in levels:
                        accepted[ev[1]] = ev[6]
                    elif ev[0] == ce.EV_CANCELLED:
                        gone.add(ev[1])
        return len(accepted) == len(levels) and set(accepted) <= gone
    return False


def test_a_clients_heartbeat_timeout_logout_fires_cancel_on_disconnect_mode_2(cl):
    """Cancel-on-disconnect mode 2 ("unexpected disconnect only") and a gateway that goes
    silent (SIGSTOP): the client gives up on it as PROTOCOL.md §4.8 says, Logout(1)
    "heartbeat timeout" and close. The gateway, let go, read that Logout as an orderly one
    (SessionEnd 0) and the orders stayed on the book; it is the disconnect mode 2 is for.
    Another session streams orders before and after the freeze."""
    data = cl["data"]
    tick_m = SYMBOLS[1][0]
    levels = [96_300, 96_301]                         # levels nobody else uses
    c = ProtoClient(*cl["gw"], timeout=30)
    c.send(1, next(_sids), 1, 1, 10_000, 500, 2, 0, b"alice",
           password(cl, "alice").encode())            # CoD on unexpected disconnect, 500 ms
    assert c.recv(skip=(5, 6)).template == 2
    for seq, ticks in enumerate(levels, 1):
        c.send(100, seq, time.time_ns(), next(_clordids), ticks * tick_m, 1, 1, 2, b"1", b"2",
               b"1", 0)
        m = c.recv(skip=(5, 6))
        assert m.template == 200 and m.raw[12 + 104] == ord("0"), m    # ExecType New
    load = Session(cl, "bob", next(_sids), 3)
    load.connect()
    for k in range(20):                               # sells far above the book
        load.nos(next(_clordids), 1, b"2", (101_000 + k) * tick_m, 1)
    gw = [p for p in pids_of(data) if "gateway --config" in
          open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()]
    assert len(gw) == 1
    os.kill(gw[0], signal.SIGSTOP)
    try:
        c.send(4, 1, b"heartbeat timeout")             # the client's Logout(1), then close
        c.close()
    finally:
        os.kill(gw[0], signal.SIGCONT)
    for k in range(20):
        load.nos(next(_clordids), 1, b"2", (101_020 + k) * tick_m, 1)
    wait_until(lambda: alices_orders_cancelled(cl, levels), 120,
               "cancel-on-disconnect (mode 2) to cancel the orders of the client that logged "
               "out on a heartbeat timeout")
    wait_until(lambda: load.drain() and len(load.answered()) == 40, 120,
               "every order of the other session answered")
    load.close()


def test_a_cancel_by_a_clordid_another_session_uses_is_unknown_under_load(cl):
    """Two sessions of one user number their ClOrdIDs alike (the SDK starts each at 1). Session
    B, amid a burst of its own orders, cancels by a ClOrdID it never used, which session A's
    resting order goes by: the cancel names none of B's orders (OrderCancelReject reason 1) and
    A's order rests on. Before, the engine fell through to A's order and cancelled it."""
    a, b = (Session(cl, "alice", next(_sids), 2) for _ in range(2))
    a.connect()
    b.connect()
    tick, mark = SYMBOLS[1]
    x = next(_clordids)
    a.nos(x, 1, b"1", (mark - 800) * tick, 1)
    check_sessions(cl, [a])
    cancel_id = None
    for k in range(40):
        b.nos(next(_clordids), 1, b"1", (mark - 801) * tick, 1)
        if k == 20:
            cancel_id = next(_clordids)
            b.cancel(cancel_id, x, 1, b"1")
    check_sessions(cl, [a, b])
    (reject,) = [raw for _q, raw in b.messages() if int.from_bytes(raw[6:8], "little") == 201
                 and int.from_bytes(raw[12 + 16:12 + 24], "little") == cancel_id]
    assert reject[12 + 46] == 1, reject[12 + 46]          # unknown order
    assert not [raw for _q, raw in a.messages() if int.from_bytes(raw[6:8], "little") == 200
                and raw[12 + 104] == ord("4")], "session A's order was cancelled"
    a.send(103, next(_clordids), 0xFFFF_FFFF, b"7", b"0", 0)   # both sessions' orders go
    wait_until(lambda: a.drain(0.05) and any(int.from_bytes(raw[6:8], "little") == 202
                                             for _q, raw in a.messages()), 60,
               "the mass cancel's report")
    for s in (a, b):
        s.close()
