"""End-to-end benchmark of the order path: client -> gateway -> in.te -> TradingEngine ->
out.te -> in.ce -> CrossEngine -> out.ce -> in.te -> TradingEngine -> out.te -> gateway ->
client, on a whole `seqex up` topology (the default one unless --topology), all on this machine.

Method.
* `seqex up` in a temp data directory (with its CURVE keys, as a user runs it), two bench users
  written to its accounts file before the start (one per TradingEngine shard, no per-connection
  throttle that matters: 10**6 msgs/s), 10,000,000 USDT deposited on each.
* --conns client TCP connections (asyncio, the raw codec of gateway/wire.py, not the SDK),
  half of them sessions of the shard-0 user, half of the shard-1 user. Open loop: order i is
  scheduled at start + i/rate and timed from that scheduled instant, so queueing in the client
  counts. Orders come in crossing pairs: a GTC limit of one shard's user at 50,000.00 BTCUSDT,
  1 lot, then the opposite side from the other shard's user at the same price (sides and the
  shard that goes first alternate, so positions stay flat). Every buy meets a sell at the one
  price, so every order fills once all are in.
* order -> ack: to the first ExecutionReport of the order (New, or a Trade if it filled at
  once). order -> fill: to the first Trade of the second order of each pair (the taker, whose
  counterpart was sent 1/rate before). p50 / p99 / p99.9 of the orders after the first 10%.
* Achieved rate: acks received during the send window / window; backlog: orders sent but not
  acked at the end of the window, and the time it took to drain.
* Max sustained: rates in --ramp, each --ramp-s long; a rate is sustained when the acks keep up
  (>= 95% of the offered rate within the window) and the backlog at the end of it is under
  0.5 s of orders. The figure is the highest sustained rate before the first failure.
* CPU-us per order of each process kind: utime+stime of every process of the cluster from
  /proc/PID/stat before and after each run, summed by kind, divided by the orders acked.
* Baseline (same run, same client): the same 10 hops relayed by raw pyzmq PUSH/PULL processes
  doing no work (gateway->in.te seq->TE->out.te mirror->in.ce seq->CE->out.ce mirror->in.te
  seq->TE->out.te mirror->gateway), behind a raw asyncio TCP server that turns each client frame
  into one zmq message and writes back what comes out of the chain. Reported: the ratio of
  seqex's ack p99 to this floor's p99 at the first latency rate.
* --hops: where the first latency run's orders spent their time, from the sequencers' stamps
  (wall clock, ns) in the logs, read from the first replicator's LMDB once the cluster is down,
  and the client's wall clock at the scheduled send and at the ack. Per order: A client ->
  in.te.N stamp (TCP, gateway, producer); B in.te.N stamp -> in.ce.SYM stamp (in.te's
  replication, the TradingEngine, the out.te mirror and its replication); C in.ce stamp ->
  in.te.N stamp of the CrossEngine's answer (in.ce's replication, the CrossEngine, out.ce);
  D that stamp -> the ack at the client (in.te's replication, the TradingEngine, out.te, the
  gateway, TCP). Each of B, C, D crosses some eight processes in turn.
* Result hash: sha256 of the sorted (ClOrdID, lots filled) of every order of the first latency
  run (the overload runs are shed at the gateway by timing, so theirs is not reproducible).

Run: python bench/bench_e2e.py [--quick] [--rates 1000,10000] [--seconds 15] [--conns 8]
     [--ramp 2000,3000,...] [--accounts 64] [--insecure] [--topology FILE] [--json OUT]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.procs import Group, free_port, free_port_block  # noqa: E402
from gateway import wire  # noqa: E402

PRICE = 50_000 * wire.PRICE_SCALE
SECURITY = 1               # BTCUSDT
DEPOSIT = "10000000"
PREFIX = struct.Struct("<HHHH")      # length, encoding, block length, template
CLORDID = struct.Struct("<Q")
ER_TAIL = struct.Struct("<QQQ")      # at block offset 72: LastQty, LeavesQty, CumQty
CLK = os.sysconf("SC_CLK_TCK")
DROP = ("filled", "run")     # kept for the report, not written to --json
KINDS = ("replicator", "sequencer", "mirror", "tradingengine", "crossengine", "gateway",
         "oracle", "supervisor")


def pct(xs: list[int], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(len(xs) * q))] / 1000.0


# -- the client --------------------------------------------------------------------------------
class Run:
    """One open-loop run: the schedule, and what came back."""

    def __init__(self, rate: int, seconds: float, first_id: int):
        self.rate = rate
        self.n = max(2, int(rate * seconds) // 2 * 2)
        self.first_id = first_id
        self.start = 0
        self.ack: dict[int, int] = {}       # clordid -> ns after its scheduled send
        self.fill: dict[int, int] = {}      # taker clordid -> ns to its first Trade
        self.filled: dict[int, int] = {}    # clordid -> lots filled (CumQty seen)
        self.rejects = 0
        self.reasons: dict[int, int] = {}   # OrdRejReason -> count
        self.seen: set[int] = set()
        self.acked_in_window = 0
        self.window_end = 0

    def sched(self, cid: int) -> int:
        return self.start + (cid - self.first_id) * 1_000_000_000 // self.rate


class Conn:
    def __init__(self, reader, writer, shard: int, accounts: list[int]):
        self.r, self.w, self.shard, self.accounts = reader, writer, shard, accounts
        self.seq = 0


async def logon(port: int, user: str, pw: str, session: int, shard: int,
                accounts: list[int]) -> Conn:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    w.write(wire.encode(wire.LOGON, session, 0, 1, 30000, 0, 0, 0, user.encode(), pw.encode()))
    while True:
        head = await r.readexactly(12)
        length, _e, _b, tid = PREFIX.unpack_from(head)
        await r.readexactly(length - 12)
        if tid == wire.LOGON_ACK:
            return Conn(r, w, shard, accounts)
        if tid in (wire.LOGON_REJECT, wire.LOGOUT):
            raise RuntimeError(f"{user}: logon refused (template {tid})")


async def reader(conn: Conn, runs: dict[int, Run], echo: bool) -> None:
    """Every ExecutionReport (or, against the floor, the echoed order) of this connection."""
    r = conn.r
    buf = b""
    clock = time.perf_counter_ns
    while True:
        chunk = await r.read(1 << 16)
        if not chunk:
            return
        now = clock()
        buf += chunk
        pos = 0
        end = len(buf)
        while end - pos >= 12:
            length, _e, _b, tid = PREFIX.unpack_from(buf, pos)
            if end - pos < length:
                break
            if tid == wire.EXECUTION_REPORT or (echo and tid == wire.NEW_ORDER_SINGLE):
                cid = CLORDID.unpack_from(buf, pos + 28)[0]
                run = runs.get(cid >> 40)
                if run is not None:
                    t = now - run.sched(cid)
                    et = buf[pos + 12 + 104] if tid == wire.EXECUTION_REPORT else 0
                    if et == 0x38:                           # '8' Rejected
                        if cid not in run.seen:
                            run.seen.add(cid)
                            run.rejects += 1
                            why = buf[pos + 12 + 109]
                            run.reasons[why] = run.reasons.get(why, 0) + 1
                    elif cid not in run.ack:
                        run.ack[cid] = t
                        run.seen.add(cid)
                        if now <= run.window_end:
                            run.acked_in_window += 1
                    if et == 0x46:                           # 'F' Trade
                        run.filled[cid] = ER_TAIL.unpack_from(buf, pos + 12 + 72)[2]
                        if (cid - run.first_id) & 1 and cid not in run.fill:
                            run.fill[cid] = t
            elif tid == wire.BUSINESS_REJECT:   # e.g. 4: shed by the gateway (overloaded)
                cid = CLORDID.unpack_from(buf, pos + 12 + 24)[0]
                run = runs.get(cid >> 40)
                if run is not None and cid not in run.seen:
                    run.seen.add(cid)
                    run.rejects += 1
                    why = 1000 + buf[pos + 12 + 34]
                    run.reasons[why] = run.reasons.get(why, 0) + 1
            elif tid == wire.TEST_REQUEST:
                conn.w.write(wire.encode(wire.HEARTBEAT, CLORDID.unpack_from(buf, pos + 12)[0],
                                         0, 0))
            pos += length
        buf = buf[pos:]


async def drive(conns: list[Conn], run: Run) -> None:
    """Send run.n orders on schedule; returns at the end of the window."""
    by_shard = [[c for c in conns if c.shard == s] for s in (0, 1)]
    rr = [0, 0]
    clock = time.perf_counter_ns
    run.start = clock() + 20_000_000
    run.wall_off = time.time_ns() - clock()   # wall = perf + wall_off (--hops)
    run.window_end = run.start + run.n * 1_000_000_000 // run.rate
    i = 0
    enc = wire.encode
    while i < run.n:
        now = clock()
        due = min(run.n, (now - run.start) * run.rate // 1_000_000_000 + 1)
        if due <= i:
            await asyncio.sleep((run.sched(run.first_id + i) - now) / 1e9)
            continue
        out: dict[Conn, list[bytes]] = {}
        while i < due:
            pair = i >> 1
            first_shard = pair & 1
            shard = first_shard if i & 1 == 0 else 1 - first_shard
            maker_buys = (pair >> 1) & 1 == 0
            buy = maker_buys if i & 1 == 0 else not maker_buys
            lst = by_shard[shard]
            c = lst[rr[shard] % len(lst)]
            rr[shard] += 1
            c.seq += 1
            acct = c.accounts[(rr[shard] // len(lst)) % len(c.accounts)]
            out.setdefault(c, []).append(enc(100, c.seq, 0, run.first_id + i, PRICE, 1, SECURITY,
                                             acct, b"1" if buy else b"2", b"2", b"1", 0))
            i += 1
        for c, frames in out.items():
            c.w.write(b"".join(frames))
        await asyncio.sleep(0)
    await asyncio.sleep(max(0.0, (run.window_end - clock()) / 1e9))


async def settle(run: Run, timeout_s: float, floor: bool) -> float:
    """Wait until every order is acked and, on seqex, filled (both sides: the maker's Trade
    comes back through the other shard, after the taker's); seconds it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        filled = floor or (len(run.fill) >= run.n // 2 and len(run.filled) >= run.n)
        if len(run.seen) >= run.n and (filled or run.rejects):
            break
        await asyncio.sleep(0.01)
    return time.perf_counter() - t0


def summary(run: Run, label: str, floor: bool = False) -> dict:
    skip = run.first_id + run.n // 10
    acks = sorted(v for k, v in run.ack.items() if k >= skip)
    fills = sorted(v for k, v in run.fill.items() if k >= skip)
    window_s = run.n / run.rate
    d = {"label": label, "rate": run.rate, "orders": run.n, "acked": len(run.ack),
         "achieved": round(run.acked_in_window / window_s),
         "backlog": run.n - run.acked_in_window - run.rejects, "rejects": run.rejects,
         "reasons": dict(sorted(run.reasons.items())),
         "ack_p50": pct(acks, .5), "ack_p99": pct(acks, .99), "ack_p999": pct(acks, .999)}
    if not floor:
        d.update(fill_p50=pct(fills, .5), fill_p99=pct(fills, .99), fill_p999=pct(fills, .999),
                 fills=len(run.fill))
    return d


def line(d: dict) -> str:
    s = (f"  {d['label']:<7} {d['rate']:>6}/s offered, {d['achieved']:>6}/s acked in the window, "
         f"backlog {d['backlog']:>6} (drained in {d.get('drain_s', 0):.1f} s); "
         f"ack p50 {d['ack_p50']:.0f} p99 {d['ack_p99']:.0f} p99.9 {d['ack_p999']:.0f} us")
    if "fill_p50" in d:
        s += (f"; fill p50 {d['fill_p50']:.0f} p99 {d['fill_p99']:.0f} "
              f"p99.9 {d['fill_p999']:.0f} us")
    if d.get("rejects"):
        s += f"; {d['rejects']} REJECTED (reason, 1000+ BusinessReject: count {d['reasons']})"
    return s


# -- process CPU -------------------------------------------------------------------------------
def kind_of(cmd: list[str]) -> str | None:
    subs = {"replicator", "sequencer", "mirror", "replica", "gateway", "oracle", "up"}
    for i, a in enumerate(cmd):
        if a in subs and i > 0 and cmd[i - 1] not in ("--key", "--keys"):
            if a == "replica":
                stream = cmd[cmd.index("--stream") + 1]
                return "tradingengine" if stream.startswith("in.te") else "crossengine"
            return "supervisor" if a == "up" else a
    return None


def cluster_cpu(root: int) -> dict[int, tuple[str, int]]:
    """pid -> (kind, utime+stime ticks) of `root` (the `seqex up` process) and every process
    under it."""
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            procs[int(pid)] = (int(st[1]), int(st[11]) + int(st[12]))
        except OSError:
            continue
    out = {}
    for pid, (_ppid, ticks) in procs.items():
        p = pid
        while p not in (root, 0, 1) and p in procs:
            p = procs[p][0]
        if p != root:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                kind = kind_of(f.read().decode(errors="replace").split("\0"))
        except OSError:
            continue
        if kind:
            out[pid] = (kind, ticks)
    return out


def cpu_per_order(before: dict, after: dict, orders: int, client_s: float) -> dict[str, float]:
    per: dict[str, float] = {}
    for pid, (kind, ticks) in after.items():
        d = ticks - before.get(pid, (kind, 0))[1]
        per[kind] = per.get(kind, 0.0) + d / CLK * 1e6 / max(1, orders)
    per["client"] = client_s * 1e6 / max(1, orders)
    return per


def marginal(per: dict[str, float], idle: dict[str, float], rate: int) -> dict[str, float]:
    """CPU-us per order above the idle cost (idle: CPU-us per second by kind)."""
    return {k: v - idle.get(k, 0.0) / rate for k, v in per.items()}


def context_switches(pids) -> int:
    """Voluntary context switches so far of every thread of these processes: each is a
    thread going to sleep to be woken again, so their rate counts the wake-ups."""
    n = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            n += int(line.split()[1])
        except OSError:
            continue   # gone since the listing
    return n


async def idle_cpu(snap, seconds: float) -> tuple[dict[str, float], float]:
    """CPU-us per second of each kind with no orders flowing, and the cluster's wake-ups (its
    threads' voluntary context switches) per second."""
    before = snap()
    switches = context_switches(before)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    took = time.perf_counter() - t0
    after = snap()
    woke = (context_switches(after) - switches) / took
    return {k: v / took for k, v in cpu_per_order(before, after, 1, 0.0).items()
            if k != "client"}, woke


def n_of_kind(snap: dict) -> dict[str, int]:
    n: dict[str, int] = {}
    for kind, _t in snap.values():
        n[kind] = n.get(kind, 0) + 1
    return n


# -- seqex up ----------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


DEPOSITS = """
import sys
from deploy import trading
from deploy.supervisor import read_state
data, amount, accts = sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]
topo, _pid = read_state(data)
for a in accts:
    out = trading.transfer(data, topo, a, trading.minor_units(amount), transfer_id=1000 + a,
                           timeout_s=60)
    print(out.line(), flush=True)
"""


class Cluster:
    def __init__(self, root: str, topology_path: str | None, insecure: bool, per_user: int):
        from deploy import topology, trading
        from gateway import accounts as acc
        self.data = os.path.join(root, "data")
        self.port = free_port_block(60)
        self.topo = topology.load(topology_path, self.data, self.port)
        n = self.topo.trading["n_shards"]
        os.makedirs(self.data, exist_ok=True)
        self.users = []
        for s in range(2):
            name, pw = f"bench{s}", f"bench-pw-{s}"
            accts = [a for a in range(2, 10_000) if a % n == s % n][:per_user]
            acc.add_user(trading.accounts_path(self.topo), name, pw, accts,
                         max_msgs_per_sec=10**6, n_shards=n, n=1 << 10)
            self.users.append((name, pw, accts))
        self.group = Group(os.path.join(root, "logs"))
        args = ["up", "--data", self.data, "--base-port", str(self.port), "--ready-timeout",
                "300"]
        if topology_path:
            args += ["--topology", topology_path]
        if insecure:
            args.insert(0, "--insecure")   # a global option: `seqex --insecure up`
        self.up = self.group.spawn("up", args)
        from mq.control import wait_until
        wait_until(lambda: "seqex is up" in self.up.log() or not self.up.alive, 400,
                   "seqex up")
        if not self.up.alive:
            raise RuntimeError("seqex up failed:\n" + self.up.log()[-3000:])
        accts = [a for _n, _p, accts in self.users for a in accts]
        out = subprocess.run([sys.executable, "-c", DEPOSITS, self.data, DEPOSIT,
                              *map(str, accts)], capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or out.stdout.count("done") != len(accts):
            raise RuntimeError(f"deposits: {out.stdout}{out.stderr}")
        self.gateway_port = int(self.topo.trading["gateway"].rsplit(":", 1)[1])

    def stop(self) -> None:
        try:
            cli("down", "--data", self.data, timeout=120)
            self.up.wait(120)
        except Exception:   # noqa: BLE001 - the group kills what is left
            pass
        self.group.stop_all()


# -- the raw floor -----------------------------------------------------------------------------
RELAY = """
import sys, zmq
ctx = zmq.Context()
a, b = sys.argv[1], sys.argv[2]
pull = ctx.socket(zmq.PULL); pull.bind(a)
push = ctx.socket(zmq.PUSH); push.connect(b)
while True:
    push.send(pull.recv(copy=False), copy=False)
"""

ECHO = """
import asyncio, struct, sys, zmq, zmq.asyncio
first, last, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = zmq.asyncio.Context()
push = ctx.socket(zmq.PUSH); push.connect(first)
pull = ctx.socket(zmq.PULL); pull.bind(last)
conns = {}
async def back():
    while True:
        m = await pull.recv()
        w = conns.get(int.from_bytes(m[:4], "little"))
        if w is not None:
            w.write(m[4:])
async def serve(r, w):
    k = id(w) & 0xFFFFFFFF
    conns[k] = w
    tag = k.to_bytes(4, "little")
    buf = b""
    while True:
        chunk = await r.read(65536)
        if not chunk:
            return
        buf += chunk
        pos = 0
        while len(buf) - pos >= 12:
            n = struct.unpack_from("<H", buf, pos)[0]
            if len(buf) - pos < n:
                break
            tid = struct.unpack_from("<H", buf, pos + 6)[0]
            if tid == 1:   # Logon: answer LogonAck at once
                w.write(struct.pack("<HHHHHH", 52, 0xEB50, 40, 2, 1, 1) + bytes(40))
            else:
                push.send(tag + buf[pos:pos + n])
            pos += n
        buf = buf[pos:]
async def main():
    try:
        import uvloop; uvloop.install()
    except ImportError:
        pass
    asyncio.get_event_loop().create_task(back())
    srv = await asyncio.start_server(serve, "127.0.0.1", port)
    print("ready", flush=True)
    await srv.serve_forever()
try:
    import uvloop
    uvloop.run(main()) if hasattr(uvloop, "run") else asyncio.run(main())
except ImportError:
    asyncio.run(main())
"""

HOPS = ("gateway->in.te seq", "in.te seq->TE", "TE->out.te mirror", "out.te mirror->in.ce seq",
        "in.ce seq->CE", "CE->out.ce mirror", "out.ce mirror->in.te seq", "in.te seq->TE",
        "TE->out.te mirror", "out.te mirror->gateway")


class Floor:
    """A raw asyncio TCP front and len(HOPS) - 1 pyzmq relay processes between its PUSH and
    its PULL: len(HOPS) zmq hops."""

    def __init__(self):
        addrs = [f"tcp://127.0.0.1:{free_port()}" for _ in range(len(HOPS))]
        self.port = free_port()
        self.procs = [subprocess.Popen([sys.executable, "-c", RELAY, addrs[i], addrs[i + 1]])
                      for i in range(len(HOPS) - 1)]
        self.echo = subprocess.Popen([sys.executable, "-c", ECHO, addrs[0], addrs[-1],
                                      str(self.port)], stdout=subprocess.PIPE, text=True)
        self.procs.append(self.echo)
        assert self.echo.stdout.readline().strip() == "ready"

    def cpu_ticks(self) -> int:
        total = 0
        for p in self.procs:
            with open(f"/proc/{p.pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            total += int(st[11]) + int(st[12])
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


# -- main --------------------------------------------------------------------------------------
async def connect(port: int, users, conns: int, runs: dict, echo: bool) -> list[Conn]:
    out = []
    for k in range(conns):
        shard = k % 2
        name, pw, accts = users[shard]
        mine = accts[k // 2::max(1, conns // 2)] or accts
        out.append(await logon(port, name, pw, 1000 + k, shard, mine))
    for c in out:
        asyncio.get_running_loop().create_task(reader(c, runs, echo))
        asyncio.get_running_loop().create_task(heartbeat(c))
    return out


async def heartbeat(conn: Conn) -> None:
    """A Heartbeat every 5 s, so a connection silent while a backlog drains stays up."""
    while not conn.w.is_closing():
        await asyncio.sleep(5)
        if not conn.w.is_closing():
            conn.w.write(wire.encode(wire.HEARTBEAT, 0, 0, 0))


async def one_run(conns, runs, rate: int, seconds: float, label: str, settle_s: float,
                  snap=None, floor: bool = False) -> dict:
    run_id = len(runs) + 1
    run = Run(rate, seconds, run_id << 40)
    runs[run_id] = run
    before = snap() if snap else None
    c0 = sum(os.times()[:2])
    await drive(conns, run)
    drain = await settle(run, settle_s, floor)
    c1 = sum(os.times()[:2])
    d = summary(run, label, floor)
    d["drain_s"] = round(drain, 2)
    d["filled"] = run.filled
    d["run"] = run
    if snap:
        d["cpu"] = cpu_per_order(before, snap(), len(run.ack), c1 - c0)
    return d


async def ramp_up(conns, runs, ramp, a, snap, idle) -> int | None:
    """The highest rate of `ramp` sustained, trying them in order up to the first failure."""
    sustained = None
    for rate in ramp:
        d = await one_run(conns, runs, rate, a.ramp_s, "ramp", a.settle, snap)
        m = marginal(d["cpu"], idle, rate)
        ok = d["achieved"] >= 0.95 * rate and d["backlog"] <= rate * 0.5 and not d["rejects"]
        print(line(d) + ("  sustained" if ok else "  NOT sustained") +
              f"; CPU us/order {sum(d['cpu'].values()):.0f}"
              + (f", above idle {sum(m.values()):.0f}" if idle else ""))
        if not ok:
            break
        sustained = rate
    return sustained


async def bench(a) -> None:
    rates = [int(x) for x in a.rates.split(",")]
    ramp = [int(x) for x in a.ramp.split(",")] if a.ramp else []
    runs: dict[int, Run] = {}
    print(f"bench_e2e: load average before start {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} cores); {a.conns} connections")
    # the floor first (cheap), then seqex
    fl = Floor()
    try:
        conns = await connect(fl.port, [("f0", "", [0]), ("f1", "", [0])], a.conns, runs, True)
        floor = []
        for rate in rates:
            t0 = fl.cpu_ticks()
            d = await one_run(conns, runs, rate, a.seconds, "floor", 30, floor=True)
            d["cpu_total"] = (fl.cpu_ticks() - t0) / CLK * 1e6 / max(1, d["acked"])
            floor.append(d)
            print(line(d) + f"; CPU {d['cpu_total']:.0f} us/order in the {len(HOPS)} hops")
        for c in conns:
            c.w.close()
    finally:
        fl.stop()
    root = tempfile.mkdtemp(prefix="seqex-bench-e2e-")
    cl = None
    results: list[dict] = []
    try:
        t0 = time.perf_counter()
        cl = Cluster(root, a.topology, a.insecure, a.accounts)
        snap = lambda: cluster_cpu(cl.up.popen.pid)  # noqa: E731
        print(f"seqex up ({a.topology or 'default topology'}, "
              f"{'insecure' if a.insecure else 'CURVE'}): {sum(n_of_kind(snap()).values())} "
              f"processes {n_of_kind(snap())}, ready in {time.perf_counter() - t0:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
        conns = await connect(cl.gateway_port, cl.users, a.conns, runs, False)
        # warm-up: a few pairs through every process
        await one_run(conns, runs, 200, 1.0, "warm-up", 60)
        idle: dict[str, float] = {}
        if a.idle_s > 0:
            idle, woke = await idle_cpu(snap, a.idle_s)
            print(f"  idle (no orders, {a.idle_s:g} s): CPU {sum(idle.values()) / 1e4:.0f}% of "
                  f"one core, {woke:,.0f} wake-ups/s: " + ", ".join(
                      f"{k} {v / 1e4:.1f}%" for k, v in sorted(idle.items(),
                                                              key=lambda x: -x[1])))
        else:
            print("  idle: not measured (--idle-s 0); CPU above idle not given")
        sustained = None
        for k, rate in enumerate(rates):
            d = await one_run(conns, runs, rate, a.seconds, "seqex", a.settle, snap)
            results.append(d)
            print(line(d))
            d["cpu_marginal"] = m = marginal(d["cpu"], idle, d["rate"])
            print(f"    CPU us/order (total {sum(d['cpu'].values()):.0f}): " + ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(d["cpu"].items(), key=lambda x: -x[1])))
            if idle:
                print(f"    above idle (total {sum(m.values()):.0f}): " + ", ".join(
                    f"{k} {v:.0f}" for k, v in sorted(m.items(), key=lambda x: -x[1])))
            if k == 0:   # the ramp after the first (low) rate, before the overload runs
                sustained = await ramp_up(conns, runs, ramp, a, snap, idle)
        # the first (unloaded) run's fills: the overload runs shed at the gateway, by timing
        fills = sorted(results[0]["filled"].items())
        h = hashlib.sha256(json.dumps(fills).encode()).hexdigest()[:16]
        f0, s0 = floor[0], results[0]
        print(f"result: ack p99 at {s0['rate']}/s {s0['ack_p99']:.0f} us = "
              f"{s0['ack_p99'] / f0['ack_p99']:.1f}x the raw floor of the same "
              f"{len(HOPS)} hops ({f0['ack_p99']:.0f} us); fill p99 {s0['fill_p99']:.0f} us")
        if ramp:
            print(f"result: max sustained {sustained or 0}/s with full redundancy "
                  f"(ramp {a.ramp}, {a.ramp_s:g} s each)")
        print(f"result: fills {len(fills)} of {results[0]['orders']} orders at "
              f"{results[0]['rate']}/s, "
              f"hash {h}; load average {os.getloadavg()[0]:.2f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"floor": [{k: v for k, v in d.items() if k not in DROP}
                                     for d in floor],
                           "seqex": [{k: v for k, v in d.items() if k not in DROP}
                                     for d in results],
                           "idle_cpu_us_per_s": idle, "sustained": sustained, "hash": h},
                          f, indent=1)
        for c in conns:
            c.w.close()
    finally:
        if cl is not None:
            cl.stop()
        if a.hops and results:
            hops(results[0]["run"], cl)
        if a.records and cl is not None:
            records_per_message(cl)
        if not a.keep:
            import shutil
            shutil.rmtree(root, ignore_errors=True)


GATEWAY0, TE_OUT, CE_OUT = 0x7200_0000, 0x7300_0000, 0x7000_0000   # docs/order-path.md §2


def first_replicator(cl):
    """The store of the cluster's first replicator (read after the cluster stopped)."""
    from replicator.store import Store
    rep = next(p for p in cl.topo.procs if p.role == "replicator")
    return Store(rep.args[rep.args.index("--data") + 1])


def stream_records(store, name: str) -> list:
    """Every record of stream name the store holds, decoded."""
    from mq.record import decode
    lg, out, seq = store.find(name), [], 1
    while lg is not None:
        frame = lg.read(seq, None, 4 << 20)
        if not frame:
            break
        out += decode(frame)
        seq = out[-1][0] + 1
    return out


def records_per_message(cl) -> None:
    """Print each stream's records (empty ones apart) per client message, the gateway's records
    in the in.te.* streams, over the whole run (warm-up and every rate): what one order costs
    the log."""
    store = first_replicator(cl)
    counts = {}
    for name in sorted(store.names()):
        recs = stream_records(store, name)
        client = sum(1 for r in recs if r[2] & 0xFF00_0000 == GATEWAY0) \
            if name.startswith("in.te.") else 0
        counts[name] = (len(recs), sum(1 for r in recs if not r[6]), client)
    messages = sum(c for _n, _e, c in counts.values())
    print(f"  records per client message ({messages:,} client messages in in.te.*):")
    total = 0.0
    for name, (n, empty, _c) in counts.items():
        total += n / max(1, messages)
        print(f"    {name:<16} {n / max(1, messages):6.2f} ({n:,} records, {empty:,} empty)")
    print(f"    {'all streams':<16} {total:6.2f}")


def hops(run: Run, cl) -> None:
    """Print where the run's orders spent their time (see --hops in the module docstring)."""
    store = first_replicator(cl)

    n_shards = cl.topo.trading["n_shards"]
    sym = next(s for s in cl.topo.symbols.values() if s["symbol_id"] == SECURITY)
    order_at, answer_at = {}, {}        # cid -> (shard, seq, ts); (shard, in.ce seq) -> ts
    for n in range(n_shards):
        for seq, ts, src, ss, _e, kind, pl, _r in stream_records(store, f"in.te.{n}"):
            if src == GATEWAY0 and kind == 83 and pl[13:15] == b"\x64\x00":   # NewOrderSingle
                order_at[CLORDID.unpack_from(pl, 15 + 16)[0]] = (n, seq, ts)
            elif src == CE_OUT | SECURITY:
                answer_at[(n, ss)] = ts
    in_ce = {(r[2], r[3]): (r[0], r[1]) for r in stream_records(store, sym["in"])}
    store.close()
    parts: list[list[int]] = [[], [], [], [], []]
    for cid, took in run.ack.items():
        if cid not in order_at:
            continue
        n, seq, t1 = order_at[cid]
        t0 = run.sched(cid) + run.wall_off
        c_seq, t2 = in_ce.get((TE_OUT | n, seq), (0, 0))
        t3 = answer_at.get((n, c_seq))
        if t2 and t3:
            for lst, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t0 + took - t3, took), strict=True):
                lst.append(v)
    print(f"hops of {len(parts[4])} of the {len(run.ack)} acked orders at {run.rate}/s "
          "(ms; sequencer stamps and client wall clock):")
    for name, xs in zip(("A client -> in.te stamp", "B in.te -> in.ce stamp (TradingEngine)",
                         "C in.ce -> in.te stamp (CrossEngine)", "D in.te stamp -> ack (TE, gateway)",
                         "order -> ack"), parts, strict=True):
        xs.sort()
        print(f"  {name:<42} p50 {pct(xs, .5) / 1000:7.1f}  p90 {pct(xs, .9) / 1000:7.1f}  "
              f"p99 {pct(xs, .99) / 1000:7.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny rates and windows")
    p.add_argument("--rates", default="1000,10000", help="rates of the latency runs")
    p.add_argument("--seconds", type=float, default=15.0, help="each latency run")
    p.add_argument("--ramp", default="2000,3000,4000,5000,6000,8000,10000,15000,20000",
                   help="rates tried for the max sustained figure ('' for none)")
    p.add_argument("--ramp-s", type=float, default=8.0)
    p.add_argument("--idle-s", type=float, default=5.0,
                   help="the idle CPU measurement, seconds (0: none)")
    p.add_argument("--settle", type=float, default=120.0, help="max wait for a run to drain")
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--accounts", type=int, default=64,
                   help="accounts per user (an account holds at most 200 open orders, pending "
                        "ones included)")
    p.add_argument("--topology", help="a topology TOML file (default: the default topology)")
    p.add_argument("--insecure", action="store_true", help="no CURVE (seqex up --insecure)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--records", action="store_true",
                   help="after the run: each stream's records per client message")
    p.add_argument("--hops", action="store_true",
                   help="after the run: where the first latency run's orders spent their time")
    a = p.parse_args(argv)
    if a.quick:
        a.rates, a.seconds, a.ramp, a.ramp_s, a.settle, a.conns = "200", 2.0, "", 1.0, 60, 2
        a.accounts, a.idle_s = 2, 1.0
    from gateway.server import new_event_loop
    loop = new_event_loop()
    try:
        loop.run_until_complete(bench(a))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
