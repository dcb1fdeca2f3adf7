"""`seqex demo`: the default cluster, a robot that trades through the gateway with many
accounts, and a live terminal dashboard.

* The cluster: the one running in ``--data`` if there is one (a `seqex up` in another terminal),
  else `seqex up --data DIR` is started here as a child process (its output in
  ``DIR/up.log``) and stopped when the demo ends.
* The robot users: ``robot01`` .. ``robotNN`` in the gateway's accounts file, one account each
  (ids from 1001, spread over the shards), each with a deposit through the log on first use
  (fixed transfer ids, so a second demo deposits nothing twice). The gateway re-reads the
  accounts file on SIGHUP, which the demo sends it after adding users, and on its own within a
  second of the file changing; the robot retries a refused logon until the users are in.
* The dashboard (rich): order, acknowledgement, trade and reject rates and order ->
  acknowledgement latency percentiles over the last 10 s; per symbol the mark, the robot's mid,
  and the top of its own book; the recent trades; and every process's role, seq, lag and state,
  from the same probes as `seqex status`, so a drill fired from another terminal shows as a
  process going DOWN or FROZEN and coming back, and as a dip in the rates.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

from deploy.robot import Robot, Symbol

ROBOT_ACCOUNT_BASE = 1001
ROBOT_DEPOSIT = "1000000"
ROBOT_TRANSFER_BASE = 9_000_000      # transfer ids of the robot deposits: base + account
ROBOT_FILE = "robot-users.json"


class DemoError(RuntimeError):
    """The demo cannot go on; the message is one line."""


def _running_topology(data: str):
    from deploy.supervisor import NotUp, read_state
    try:
        topo, _pid = read_state(data)
        return topo
    except NotUp:
        return None


def start_cluster(data: str, timeout_s: float = 180.0,
                  base_port: int | None = None) -> tuple[object, subprocess.Popen]:
    """`seqex up --data DATA` as a child; returns once every process answers."""
    os.makedirs(data, exist_ok=True)
    log = open(os.path.join(data, "up.log"), "ab")       # noqa: SIM115 (the child keeps it)
    extra = ["--base-port", str(base_port)] if base_port else []
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "up", "--data", data, *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            # its last line says why (a port in use, a second `up`): this run's only
            with open(os.path.join(data, "up.log"), "rb") as f:
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            why = f": {lines[-1].strip()}" if lines else ""
            raise DemoError(f"`seqex up` ended with status {proc.returncode}{why} (see "
                            f"{os.path.join(data, 'up.log')})")
        with open(os.path.join(data, "up.log"), "rb") as f:
            if b"seqex is up" in f.read():
                topo = _running_topology(data)
                if topo is not None:
                    return topo, proc
        time.sleep(0.2)
    stop_cluster(proc)
    raise DemoError(f"the cluster did not come up within {timeout_s:g} s; see "
                    f"{os.path.join(data, 'up.log')}")


def stop_cluster(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def robot_users(topo, n: int, log=print) -> list[tuple[str, str, list[int]]]:
    """``n`` robot users with one funded account each (created and funded once)."""
    import json

    from deploy import trading
    path = os.path.join(topo.data_dir, ROBOT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {"users": {}}
    users = doc.setdefault("users", {})
    changed = False
    for i in range(n):
        name = f"robot{i + 1:02d}"
        if name in users:
            continue
        account = ROBOT_ACCOUNT_BASE + i
        pw = secrets.token_urlsafe(12)
        trading.create_user(topo, name, [account], pw, replace=True)   # its own robot user
        users[name] = {"password": pw, "accounts": [account], "funded": False}
        changed = True
    if changed:
        trading.write_private_json(path, doc)
        _reload_gateway(topo)
    for name in sorted(users)[:n]:
        u = users[name]
        if not u.get("funded"):
            for account in u["accounts"]:
                out = trading.transfer(topo.data_dir, topo, account,
                                       trading.minor_units(ROBOT_DEPOSIT),
                                       transfer_id=ROBOT_TRANSFER_BASE + account)
                log(f"  {name}: {out.line()}")
            u["funded"] = True
            trading.write_private_json(path, doc)
    return [(name, users[name]["password"], users[name]["accounts"])
            for name in sorted(users)[:n]]


def _reload_gateway(topo) -> None:
    """SIGHUP to the gateway processes of this data directory (they re-read the accounts)."""
    from deploy.supervisor import read_heartbeats
    beats = read_heartbeats(topo.data_dir)
    for p in topo.procs:
        if p.role == "gateway":
            pid = (beats.get(p.name) or {}).get("pid")
            if isinstance(pid, int) and pid > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGHUP)
    # no wait here: a gateway also re-reads a changed file within a second, and the robot
    # retries a refused logon until the new users are in (Robot.connect)


def symbols_of(topo) -> list[Symbol]:
    out = []
    for name, s in topo.symbols.items():
        tick = int(Decimal(s["tick_size"]) * 10**8)
        start = int(Decimal(s["spec"]["mark_start_ticks"])) if "spec" in s and \
            "mark_start_ticks" in s["spec"] else 1000
        out.append(Symbol(name, s["symbol_id"], tick, start))
    return out


def follow_marks(topo, symbols: list[Symbol]) -> dict[str, int]:
    """The oracle's current marks (ticks) by symbol name; the robot's mids follow them."""
    from mq.control import ping
    for p in topo.procs:
        if p.role == "oracle":
            st = ping(p.control, timeout_s=1.0) or {}
            marks = st.get("marks") or {}
            for s in symbols:
                if isinstance(marks.get(s.name), int) and marks[s.name] > 20:
                    s.mid_ticks = marks[s.name]
            return marks
    return {}


def _one_row_per_replicator(rows: list[list[str]]) -> list[list[str]]:
    """`seqex status` gives a replicator a row per stream; the dashboard one row per process:
    how many streams it holds and the most records any of them holds beyond the commit."""
    out: list[list[str]] = []
    reps: dict[str, list] = {}
    for r in rows:
        if len(r) == 9 and r[1] == "replicator" and r[8] == "up":
            agg = reps.get(r[0])
            if agg is None:
                agg = reps[r[0]] = [r[0], r[1], r[2], 0, 0, "now", "up"]
                out.append(agg)
            agg[3] += 1
            try:
                agg[4] = max(agg[4], int(r[4]) - int(r[5].split()[-1]))
            except ValueError:
                pass
        else:
            out.append(r)
    return [[a[0], a[1], a[2], f"{a[3]} streams", "-", f"ahead of commit {a[4]}", "-", a[5],
             a[6]] if a[0] in reps and a is reps[a[0]] else a for a in out]


def _px(ticks: int, tick: int) -> str:
    return f"{Decimal(ticks * tick) / 10**8:,.2f}"


class Dashboard:
    """The live view: rebuilt twice a second from the robot's stats and the process table
    (probed in a thread every 2 s, as `seqex status` does)."""

    def __init__(self, topo, robot: Robot, title: str):
        self.topo, self.robot, self.title = topo, robot, title
        self.rows: list[list[str]] = []
        self.marks: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        from deploy.supervisor import read_heartbeats, status_rows
        while not self.stop.is_set():
            try:
                self.rows = status_rows(self.topo, None, read_heartbeats(self.topo.data_dir))
                self.marks = follow_marks(self.topo, self.robot.symbols)
            except Exception as exc:            # a probe must never end the demo
                self.rows = [["status", str(exc)]]
            self.stop.wait(2.0)

    def render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        w = self.robot.stats.window()
        st = self.robot.stats

        def ms(v):
            return "-" if v is None else f"{v:.1f}"
        head = Table.grid(padding=(0, 3))
        for _ in range(8):
            head.add_column()
        head.add_row("orders/s", f"{w['sent_s']:.0f}", "acked/s", f"{w['acked_s']:.0f}",
                     "trades/s", f"{w['trades_s']:.0f}", "rejects/s", f"{w['rejects_s']:.0f}")
        head.add_row("ack p50 ms", ms(w["p50_ms"]), "p99 ms", ms(w["p99_ms"]),
                     "p99.9 ms", ms(w["p999_ms"]), "totals", f"{st.sent} sent {st.acked} acked "
                     f"{st.trades} trades {st.rejected} rejected")
        market = Table(title="market (mark from the SIMULATED index; the robot quotes around "
                             "it)", expand=True)
        for c in ("symbol", "mark", "robot mid", "robot live orders"):
            market.add_column(c)
        for s in self.robot.symbols:
            live = sum(1 for ss in self.robot.sessions for o in ss.live.values()
                       if o.security_id == s.security_id)
            mark = self.marks.get(s.name)
            market.add_row(s.name, _px(mark, s.tick) if isinstance(mark, int) else "-",
                           _px(s.mid_ticks, s.tick), str(live))
        tape = Table(title="recent trades (taker side)", expand=True)
        for c in ("time", "symbol", "side", "price", "qty"):
            tape.add_column(c)
        by_name = {s.name: s for s in self.robot.symbols}
        lots = {n: Decimal(v["lot_size"]) for n, v in self.topo.symbols.items()}
        for t, sym, side, px, qty in list(st.trades_tape)[-8:][::-1]:
            price = Decimal(px) / 10**8 if sym in by_name else px
            q = qty * lots.get(sym, 1)
            tape.add_row(time.strftime("%H:%M:%S", time.localtime(t)), str(sym), side,
                         f"{price:,.2f}", f"{q}")
        procs = Table(title="processes (as `seqex status`)", expand=True)
        rows = self.rows or [["process", "role", "core", "stream", "seq", "lag/commit",
                              "rate/s", "answered", "state"]]
        for c in rows[0]:
            procs.add_column(c)
        for r in _one_row_per_replicator(rows[1:]):
            procs.add_row(*[str(x) for x in r])
        errors = "\n".join(self.robot.errors[-3:])
        parts = [Panel(head, title=self.title), market, tape, procs]
        if errors:
            parts.append(Panel(errors, title="robot"))
        return Group(*parts)

    async def run(self) -> None:
        from rich.live import Live
        self.thread.start()
        # the terminal's own screen: the figures stay at the top whatever the window's height
        with Live(self.render(), refresh_per_second=2, screen=True) as live:
            while self.robot.running:
                live.update(self.render())
                await asyncio.sleep(0.5)

    async def run_plain(self) -> None:
        """Without a terminal: one line every 2 s."""
        self.thread.start()
        while self.robot.running:
            await asyncio.sleep(2.0)
            w = self.robot.stats.window()
            down = [r[0] for r in self.rows[1:] if r and r[-1] in ("DOWN",) or
                    (r and str(r[-1]).startswith("FROZEN"))]
            print(f"orders/s {w['sent_s']:.0f} acked/s {w['acked_s']:.0f} trades/s "
                  f"{w['trades_s']:.0f} ack p50 {w['p50_ms'] or 0:.1f} ms p99 "
                  f"{w['p99_ms'] or 0:.1f} ms; down: {', '.join(down) or 'none'}", flush=True)


async def run_demo(topo, rate: int, n_users: int, seconds: float | None, plain: bool,
                   seed: int, started: list | None = None) -> Robot:
    """Trade until ``seconds`` pass (None: until interrupted); the robot is put in ``started``
    as soon as it exists, so that its figures survive a Ctrl-C."""
    gw = topo.trading.get("gateway")
    if not gw:
        raise DemoError("this cluster has no gateway ([trading] gateway = false)")
    host, port = gw.rsplit(":", 1)
    users = robot_users(topo, n_users)
    symbols = symbols_of(topo)
    follow_marks(topo, symbols)
    robot = Robot(host, int(port), users, symbols, rate, seed)
    if started is not None:
        started.append(robot)
    await robot.connect()
    dash = Dashboard(topo, robot, f"seqex demo: {len(users)} robot users, {rate} orders/s "
                                  f"offered, data in {topo.data_dir}")
    loop = asyncio.get_running_loop()
    view = loop.create_task(dash.run_plain() if plain else dash.run())
    trading = loop.create_task(robot.run(seconds))
    try:
        await asyncio.wait({trading, view}, return_when=asyncio.FIRST_COMPLETED)
        if view.done() and not view.cancelled() and view.exception() is not None:
            # the dashboard's output is gone (`| head` closed the pipe, the terminal died):
            # nobody watches, so the demo ends, and stops the cluster it started (main)
            raise view.exception()
        await trading
    finally:
        robot.running = False
        dash.stop.set()
        if not trading.done():
            trading.cancel()
        await asyncio.gather(view, trading, return_exceptions=True)
        await robot.close()
    return robot


def main(data: str, rate: int, users: int, seconds: float | None, plain: bool,
         seed: int = 1, base_port: int | None = None) -> int:
    def leave(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # a closed terminal (SIGHUP) or a kill (SIGTERM) stops the cluster this demo started
    signal.signal(signal.SIGHUP, leave)
    signal.signal(signal.SIGTERM, leave)
    topo = _running_topology(data)
    proc = None
    if topo is None:
        print(f"seqex demo: starting the default cluster in {data} (its output in "
              f"{os.path.join(data, 'up.log')}) ...", flush=True)
        topo, proc = start_cluster(data, base_port=base_port)
    elif not getattr(topo, "trading", None):
        raise DemoError(f"the cluster in {data} has no order path ([trading])")
    started: list = []
    try:
        asyncio.run(run_demo(topo, rate, users, seconds, plain or not sys.stdout.isatty(),
                             seed, started))
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            try:
                print("seqex demo: stopping the cluster it started ...", flush=True)
            except OSError:
                pass             # stdout gone (`| head`): the cluster stops all the same
            stop_cluster(proc)
    # what the robot did, also when Ctrl-C (or SIGTERM, SIGHUP) ended it
    for robot in started:
        s = robot.stats
        print(f"seqex demo: {s.sent} orders sent, {s.acked} acknowledged, {s.trades} trades, "
              f"{s.rejected} rejected {dict(sorted(s.reasons.items())) or ''}".rstrip())
    return 0
