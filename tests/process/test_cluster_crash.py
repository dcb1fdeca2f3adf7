"""The whole machine dies at once (a power loss that keeps the disk), while clients trade.

`seqex up` of the default topology; alice and bob trade through the gateway with the SDK
(gateway/client.py), pairs of crossing limit orders on both symbols (alice's accounts are on
shard 0, bob's on shard 1: every fill is a fill on both shards). At a moment drawn from the run's
seed (tests/seed.py: SEQEX_SEED replays it) every process of the data directory, the supervisor
included, is stopped (SIGSTOP, so that none sees another die) and then SIGKILLed. alice's
application lives on another machine: her Client object stays and keeps sending for a second
into its outbox, then waits. bob's application dies with the machine: its Client is dropped
without a Logout, and a new one on the same session file resumes after the restart (what it
had sent and not seen acknowledged is resent from the persisted outbox). Then `seqex up` again
on the same --data and --base-port, both clients resume, trade a few seconds more, and:

* every order sent was applied exactly once: one ExecutionReport New or Rejected (or one
  BusinessReject naming its SeqNo) per ClOrdID in the server's journal (out.te.N), no NotApplied,
  no duplicate-ClOrdID reject;
* every server message was handed to the application exactly once: its SeqNos are 1..H, H the
  journal's last for the session, each report equal to the journal's (PossDup aside), every
  ExecID once;
* every live TradingEngine replica's figures for alice's and bob's accounts (balance, margins,
  positions: QUERY) equal those of a fresh engine fed the log up to the replica's seq; the
  positions equal the sum of the fills the applications received; every replica of every
  stream has one state hash, equal to a rebuild from seq 1; `seqex audit` balances and the
  clearing positions net to zero at rest.

On a failure the data directory's logs are kept in /tmp/crashrepro-<seed>/.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import time
from decimal import Decimal

import pytest

from deploy.procs import Group, free_port_block
from mq.control import wait_until
from tests.process.test_cli import seqex
from tests.process.test_cluster import pids_of
from tests.seed import SEED

pytest.importorskip("gateway.server", reason="the gateway process")

from deploy.drill import global_audit, rebuild_check, replica_hashes  # noqa: E402
from deploy.supervisor import earlier_run, read_state  # noqa: E402
from gateway import client as sdk  # noqa: E402
from gateway import wire as gwire  # noqa: E402
from tests.process.test_order_path_faults import journal  # noqa: E402

RATE = int(os.environ.get("SEQEX_CRASH_RATE", "100"))          # orders a second, both clients
AFTER_S = float(os.environ.get("SEQEX_CRASH_AFTER_S", "4"))     # trading after the restart
UP_DEADLINE_S = 300.0


# -- the machine --------------------------------------------------------------------------------

def machine_pids(data: str, supervisor: int) -> set[int]:
    """Every live process of the data directory: SEQEX_DATA in its environment (what the
    supervisor gives every child), its command line, and the supervisor."""
    found = set(pids_of(data)) | set(earlier_run(data))
    found.add(supervisor)
    found.discard(os.getpid())
    return {p for p in found if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def freeze(data: str, supervisor: int) -> set[int]:
    """The power goes: every process of the machine stopped in one sweep, so that none sees
    another die (no SIGTERM from a dying supervisor, no drain). The pids stopped."""
    stopped: set[int] = set()
    for _ in range(3):       # a process started between the scan and the stop: scan again
        todo = machine_pids(data, supervisor) - stopped
        if not todo:
            break
        for pid in sorted(todo, key=lambda p: p != supervisor):     # the supervisor first
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
            except ProcessLookupError:
                pass
    return stopped


def kill_all(stopped: set[int]) -> list[int]:
    """... and nothing of them runs again: SIGKILL."""
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(stopped)


# -- the client applications ------------------------------------------------------------------

class App:
    """A client application: its SDK session (the session file survives it), what it sent,
    and every report it was handed, each recorded and then marked processed (so a crash of
    the application after the record gets no copy of it)."""

    def __init__(self, name: str, user: str, pw: str, account: int, path: str, gw: tuple,
                 instruments: dict):
        self.name, self.user, self.pw, self.account, self.path = name, user, pw, account, path
        self.gw, self.instruments = gw, instruments
        self.client: sdk.Client | None = None
        self.reader: asyncio.Task | None = None
        self.sent: dict[int, dict] = {}        # ClOrdID -> {seq, symbol, side, qty, phase}
        self.got: list[tuple[str, sdk.Report]] = []   # (phase, report) as handed over
        self.phase = "before"
        self.error: str | None = None
        self.clients: list[sdk.Client] = []
        self.unacked_at_crash: list[int] = []  # client SeqNos in the outbox at the crash
        self.in_flight_at_crash: list[int] = []   # (alice: and her sends in the outage)
        self.resume_next_expected: int | None = None   # LogonAck's after the restart

    @property
    def up(self) -> bool:
        return self.client is not None and self.client.logged_on.is_set()

    async def start(self, deadline_s: float = 180.0) -> None:
        end = time.monotonic() + deadline_s
        while True:
            c = sdk.Client(*self.gw, self.user, self.pw, self.path, self.instruments,
                           connect_timeout_s=10.0)
            # atomically, before each send and after each processed report, as the SDK does,
            # minus the fsync (deploy/drill.py): the page cache survives this crash (the
            # clients' machine keeps running), and an fsync per message on 2 busy cores
            # would hold the event loop more than the rate leaves it
            c.state.sync = False
            try:
                await c.connect()
                break
            except (sdk.SessionError, ConnectionError) as exc:
                await c.close(logout=False)
                if time.monotonic() > end:
                    raise AssertionError(f"{self.name} cannot log on: {exc}") from None
                await asyncio.sleep(0.5)
        self.client = c
        self.clients.append(c)
        self.reader = asyncio.get_running_loop().create_task(self._read(c))

    async def _read(self, c: sdk.Client) -> None:
        while True:
            try:
                r = await c.next_report()
            except sdk.SessionError as exc:
                self.error = f"{self.name}: {exc}"
                return
            self.got.append((self.phase, r))     # handled ...
            c.processed()                         # ... then marked processed

    async def crash(self) -> None:
        """The application dies: no Logout, no save after this moment."""
        c = self.client
        self.client = None
        self.reader.cancel()
        c._closing = True
        c._task.cancel()
        c._drop_connection()
        await asyncio.gather(self.reader, c._task, return_exceptions=True)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.client is not None:
            await self.client.close()

    async def order(self, symbol: str, side: str, qty: Decimal, price: Decimal) -> None:
        c = self.client
        seq = c.state.next_seq
        cl = await c.new_order(symbol, side, qty, price, account=self.account)
        self.sent[cl] = {"seq": seq, "symbol": symbol, "side": side, "qty": qty,
                         "phase": self.phase}

    # -- what came back ---------------------------------------------------------------------
    def reports(self) -> list[sdk.Report]:
        return [r for _p, r in self.got if not isinstance(r, sdk.Logout)]

    def first_answers(self) -> dict[int, list]:
        """ClOrdID -> the answers that say it was applied (ER New/Rejected, BusinessReject)."""
        by_seq = {o["seq"]: cl for cl, o in self.sent.items()}
        out: dict[int, list] = {cl: [] for cl in self.sent}
        for r in self.reports():
            if isinstance(r, sdk.ExecutionReport) and r.exec_type in ("new", "rejected") and \
                    r.cl_ord_id in out:
                out[r.cl_ord_id].append(r)
            elif isinstance(r, sdk.BusinessReject) and r.ref_seq in by_seq:
                out[by_seq[r.ref_seq]].append(r)
        return out

    def unanswered(self) -> list[int]:
        return [cl for cl, rs in self.first_answers().items() if not rs]


def _sid(inst: dict) -> int:
    return inst["security_id"]


async def trade(apps: list[App], syms: dict, marks: dict, rng: random.Random,
                until: asyncio.Event, stats: dict) -> None:
    """Pairs of crossing GTC limit orders at RATE orders/s: one app's order at the mark (a
    tick or two off), the other's on the other side at the same price; the pause between
    sends and which app makes are drawn from rng. An app that is not running sends nothing;
    one that is disconnected queues its orders in its outbox."""
    interval = 2.0 / RATE
    due = time.monotonic()
    while not until.is_set():
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(min(due - now, 0.05))
            continue
        due = max(due + interval, now)          # behind: no burst to catch up
        sym = rng.choice(sorted(syms))
        tick, lot = syms[sym]
        price = tick * (marks[sym] + rng.randint(-2, 2))
        qty = lot * rng.randint(1, 3)
        maker = rng.randrange(2)
        side = rng.choice(("buy", "sell"))
        other = "sell" if side == "buy" else "buy"
        for app, s in ((apps[maker], side), (apps[1 - maker], other)):
            if app.client is None or app.error:
                continue
            await app.order(sym, s, qty, price)
            stats["sent"] = stats.get("sent", 0) + 1
        await asyncio.sleep(0)                  # the readers run between pairs


# -- checks -------------------------------------------------------------------------------------

def _decode(tid: int, block: bytes, c: sdk.Client) -> sdk.Report:
    frame, _ = gwire.read_frame(gwire.frame_from_block(tid, block))
    return c._report(tid, gwire.decode(frame))


def _plain(r) -> object:
    return dataclasses.replace(r, poss_dup=False) if hasattr(r, "poss_dup") else r


def check_sessions(apps: list[App], jr: dict) -> dict:
    facts = {}
    for app in apps:
        sid = app.clients[-1].session_id
        assert all(c.session_id == sid for c in app.clients), (app.name, "a new session")
        mine = jr.get(sid, {})
        h = max(mine, default=0)
        reports = app.reports()
        seqs = [r.seq for r in reports]
        # every server message handed over once, none missing, in order
        assert seqs == list(range(1, h + 1)), (app.name, "server SeqNos handed over", h,
                                               _runs(seqs))
        decoder = app.clients[-1]
        for r in reports:
            tid, block = mine[r.seq]
            want = _decode(tid, block, decoder)
            assert _plain(r) == _plain(want), (app.name, r.seq, r, want)
        execs = [r.exec_id for r in reports if isinstance(r, sdk.ExecutionReport)]
        assert len(execs) == len(set(execs)), (app.name, "an ExecID handed over twice")
        assert not [r for r in reports if isinstance(r, sdk.NotApplied)], \
            (app.name, "NotApplied: a client SeqNo was skipped",
             [r for r in reports if isinstance(r, sdk.NotApplied)])
        dup = [r for r in reports if isinstance(r, sdk.ExecutionReport | sdk.CancelReject)
               and (r.exec_type == "rejected" if isinstance(r, sdk.ExecutionReport) else True)
               and r.reason == 6]
        assert not dup, (app.name, "duplicate-ClOrdID reject: an order entered twice", dup[:3])
        # every order sent applied exactly once
        answers = app.first_answers()
        lost = [cl for cl, rs in answers.items() if not rs]
        twice = {cl: rs for cl, rs in answers.items() if len(rs) > 1}
        assert not lost, (app.name, "orders never applied", lost[:20], len(lost))
        assert not twice, (app.name, "orders applied twice", list(twice.items())[:5])
        assert sorted(app.sent) == list(range(1, len(app.sent) + 1)), (app.name, "ClOrdIDs")
        news = sum(1 for rs in answers.values() if isinstance(rs[0], sdk.ExecutionReport)
                   and rs[0].exec_type == "new")
        refused = {}
        for rs in answers.values():
            r = rs[0]
            if not (isinstance(r, sdk.ExecutionReport) and r.exec_type == "new"):
                k = f"{type(r).__name__}:{getattr(r, 'reason', '')}"
                refused[k] = refused.get(k, 0) + 1
        fills = [r for r in reports if isinstance(r, sdk.ExecutionReport)
                 and r.exec_type == "trade"]
        resent = sum(c.stats["resent"] for c in app.clients)
        facts[app.name] = {"session": sid, "server_seqs": h, "orders": len(app.sent),
                           "accepted": news, "refused": refused, "fills": len(fills),
                           "fill_symbols": sorted({f.symbol for f in fills}),
                           "unacked_at_crash": len(app.unacked_at_crash),
                           "resent": resent,
                           "in_flight_at_crash": len(app.in_flight_at_crash),
                           "of_which_not_applied_so_resent": sum(
                               1 for q in app.in_flight_at_crash
                               if q >= app.resume_next_expected),
                           "dropped_from_outbox": sum(c.stats["dropped_from_outbox"]
                                                      for c in app.clients),
                           "duplicates_dropped": sum(c.stats["duplicates"] for c in app.clients),
                           "logons": sum(c.stats["logons"] for c in app.clients),
                           "possdup_handed": sum(1 for r in reports
                                                 if getattr(r, "poss_dup", False)),
                           "phases": {p: sum(1 for q, _r in app.got if q == p)
                                      for p in ("before", "outage", "after")}}
        assert news >= len(app.sent) * 0.8, (app.name, "most orders accepted", facts[app.name])
        # the orders in the outbox at the crash: applied once each, after the restart
        for seq in app.unacked_at_crash:
            cl = next(cl for cl, o in app.sent.items() if o["seq"] == seq)
            assert len(answers[cl]) == 1, (app.name, seq)
    return facts


def _runs(seqs: list[int]) -> str:
    """1..5, 7, 7, 8..9: a list of SeqNos, short."""
    out, start, prev = [], None, None
    for s in seqs + [None]:
        if start is not None and s is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            out.append(f"{start}..{prev}" if prev != start else f"{start}")
        start = prev = s
    return ", ".join(out)[:400]


def check_books(topo, apps: list[App]) -> dict:
    """Every hot TradingEngine replica's live figures for the apps' accounts equal a fresh
    engine's fed the log up to the replica's seq; the positions equal the fills handed over."""
    from deploy.audit import rebuild
    from deploy.cli import _replica_config
    from mq import wire as mqwire
    from mq.control import call
    t = topo.trading
    n = int(t["n_shards"])
    accounts = sorted({a.account for a in apps})
    fills: dict[tuple[int, int], int] = {}
    for app in apps:
        for r in app.reports():
            if isinstance(r, sdk.ExecutionReport) and r.exec_type == "trade":
                lots = int(r.last_qty / app.clients[-1].instruments[r.symbol].lot)
                key = (r.account, r.security_id)
                fills[key] = fills.get(key, 0) + (lots if r.side == "buy" else -lots)
    seen = {}
    for shard_no, shard in enumerate(t["shards"]):
        mine = [a for a in accounts if a % n == shard_no]
        if not mine:
            continue
        config = _replica_config(topo, shard["in"], "tradingengine")
        for p in topo.procs:
            if p.role != "replica-hot" or p.stream != shard["in"]:
                continue
            kind, body, _ = call(p.control, mqwire.QUERY, {"accounts": mine}, timeout_s=10)
            assert kind == mqwire.PONG and "error" not in body and not body["catching_up"], \
                (p.name, body)

            def rebuilt_to(seq=body["seq"], config=config, stream=shard["in"], name=p.name):
                # a replicator serves what it knows is committed, and learns of the newest
                # commits a moment after the replica applied them: ask again (any of them)
                for addr in topo.replicator_addrs():
                    try:
                        eng, _n, error = rebuild("tradingengine", config, addr, stream, seq,
                                                 every=1000)
                    except (TimeoutError, RuntimeError):
                        continue
                    assert not error, (name, error)
                    if eng.seq == seq:
                        return eng
                return None
            eng = wait_until(rebuilt_to, 60, f"the log of {shard['in']} up to {p.name}'s seq "
                             f"{body['seq']} on a replicator")
            rebuilt = json.loads(json.dumps(eng.view_accounts(mine)))
            live = json.loads(json.dumps(body["accounts"]))
            assert live == rebuilt, (p.name, body["seq"], live, rebuilt)
            for v in rebuilt:
                for row in v["positions"]:
                    assert row[1] == fills.get((v["account"], row[0]), 0), \
                        (p.name, v["account"], row, fills)
                seen[v["account"]] = {"balance": v["balance"],
                                      "positions": {row[0]: row[1] for row in v["positions"]}}
            for key, lots in fills.items():
                if key[0] in mine:
                    v = next(x for x in rebuilt if x["account"] == key[0])
                    assert any(row[0] == key[1] and row[1] == lots for row in v["positions"]), \
                        (p.name, key, lots, v)
    return seen


# -- the test -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_power_loss_of_the_whole_machine_while_clients_trade(tmp_path):
    seed = SEED
    rng = random.Random(seed)
    crash_after = rng.uniform(2.0, 6.0)
    print(f"\ncluster crash: SEQEX_SEED={seed}, crash {crash_after:.2f} s into the trading, "
          f"{RATE} orders/s")
    data = str(tmp_path / "data")
    base = free_port_block()
    up_args = ["up", "--data", data, "--base-port", str(base), "--ready-timeout", "180"]
    timings: dict[str, float] = {}
    ok = False
    with Group(str(tmp_path / "logs")) as group:
        try:
            up = group.spawn("up", up_args)
            wait_until(lambda: "demo: bob: deposit 4" in up.log() or not up.alive, 300,
                       "seqex up and the demo deposits")
            assert up.alive, up.log()
            topo, sup = read_state(data)
            assert sup == up.popen.pid
            with open(os.path.join(data, "demo-users.json")) as f:
                users = json.load(f)["passwords"]
            host, port = topo.trading["gateway"].rsplit(":", 1)
            instruments = {i["symbol"]: (i["security_id"], i["tick"], i["lot"])
                           for i in topo.trading["instruments"]}
            syms = {s: (Decimal(str(tick)), Decimal(str(lot)))
                    for s, (_sid, tick, lot) in instruments.items()}
            state_dir = tmp_path / "sessions"
            state_dir.mkdir()
            apps = [App(name, name, users[name], acct, str(state_dir / f"{name}.json"),
                        (host, int(port)), instruments)
                    for name, acct in (("alice", 2), ("bob", 3))]
            n = int(topo.trading["n_shards"])
            assert {a.account % n for a in apps} == {0, 1}, "the apps on both shards"
            cluster = {"topo": topo, "data": data}
            up2 = asyncio.run(scenario(apps, syms, topo, data, up, group, up_args, rng,
                                       crash_after, timings, cluster))
            # -- at rest: the books --------------------------------------------------------
            topo, _sup = read_state(data)
            t0 = time.monotonic()
            books = check_books(topo, apps)
            print(f"books (minor units / lots), live == replay: {books}")
            hashes = replica_hashes(topo, 20)
            rb = rebuild_check(topo, hashes)     # a stream still moving: each at its seq
            assert set(rb) == set(hashes), (sorted(rb), sorted(hashes))
            for stream, r in rb.items():
                assert hashes[stream]["equal"] and r["hash_equal"], (stream, hashes[stream], r)
                if stream.startswith(("in.te.", "in.liq")):
                    assert r.get("audit") == "balanced", (stream, r)
            a = global_audit(topo)
            assert a["ok"] and a["total"] == a["expected"] and not a["errors"], a
            from deploy.audit import audit
            wait_until(lambda: audit(topo, every=1000).at_rest, 120,
                       "the clearing positions and money to net to zero at rest")
            timings["checks"] = time.monotonic() - t0
            log2 = up2.log()
            assert "gave up" not in log2.lower(), log2[-3000:]
            print(f"hashes: {json.dumps({s: h['seq'] for s, h in hashes.items()})}; audit "
                  f"{a['total']} == {a['expected']}; timings (s): "
                  f"{ {k: round(v, 1) for k, v in timings.items()} }")
            down = seqex("down", "--data", data, timeout=180)
            assert down.returncode == 0, down.stdout + down.stderr
            assert up2.wait(120) == 0
            ok = True
        finally:
            if not ok:
                keep = f"/tmp/crashrepro-{seed}"
                shutil.rmtree(keep, ignore_errors=True)
                for src, dst in ((os.path.join(data, "logs"), "data-logs"),
                                 (str(tmp_path / "logs"), "up-logs"),
                                 (str(tmp_path / "sessions"), "sessions")):
                    if os.path.isdir(src):
                        shutil.copytree(src, os.path.join(keep, dst), dirs_exist_ok=True)
                for name in ("seqex.json", "heartbeats.json"):
                    if os.path.exists(os.path.join(data, name)):
                        shutil.copy(os.path.join(data, name), keep)
                print(f"logs kept in {keep}")
                if os.path.exists(os.path.join(data, "seqex.json")):
                    seqex("down", "--data", data, timeout=180)
    left = machine_pids(data, -1) if os.path.isdir(data) else set()
    for pid in left:      # only ours: SEQEX_DATA of this test's data directory
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {sorted(left)}"
    assert pids_of(data) == []


async def scenario(apps, syms, topo, data, up, group, up_args, rng, crash_after, timings,
                   cluster):
    from deploy.demo import follow_marks, symbols_of
    demo_syms = symbols_of(topo)
    await asyncio.to_thread(follow_marks, topo, demo_syms)
    marks = {s.name: s.mid_ticks for s in demo_syms}
    stop_marks = asyncio.Event()

    async def follow() -> None:
        while not stop_marks.is_set():
            with_oracle = await asyncio.to_thread(follow_marks, topo, demo_syms)
            if with_oracle:
                marks.update({s.name: s.mid_ticks for s in demo_syms})
            await asyncio.sleep(1.0)
    marks_task = asyncio.get_running_loop().create_task(follow())
    for app in apps:
        await app.start()
    alice, bob = apps
    stats: dict = {}
    # -- before: trade, then the machine dies ------------------------------------------------
    stop = asyncio.Event()
    trading = asyncio.get_running_loop().create_task(trade(apps, syms, marks, rng, stop, stats))
    await asyncio.sleep(crash_after)
    assert not trading.done(), trading
    pre = stats.get("sent", 0)
    print(f"{pre} orders sent in {crash_after:.2f} s ({pre / crash_after:.0f}/s)")
    for app in apps:
        app.phase = "outage"
    stopped = await asyncio.to_thread(freeze, data, up.popen.pid)
    # orders in flight at the moment the power goes: written to the gateway's socket, never
    # read by it (bob's die in his outbox, to be resent by his next Client from its file)
    burst = rng.choice(sorted(syms))
    tick, lot = syms[burst]
    for _k in range(3):
        await alice.order(burst, "buy", lot, tick * marks[burst])
        await bob.order(burst, "sell", lot, tick * marks[burst])
    frozen_sends = {app.name: sorted(o["seq"] for o in app.sent.values())[-3:] for app in apps}
    await asyncio.sleep(0.2)              # on the wire
    await bob.crash()                     # bob's application dies with the machine
    killed = await asyncio.to_thread(kill_all, stopped)
    t_crash = time.monotonic()
    up.popen.wait(30)
    for app in apps:
        app.unacked_at_crash = [s for s, _t, _b in (app.clients[-1].state.outbox)]
        app.in_flight_at_crash = list(app.unacked_at_crash)
    print(f"power loss after {pre} orders: {len(killed)} processes SIGKILLed (supervisor "
          f"{up.popen.pid}); in the outboxes: alice {len(alice.unacked_at_crash)}, bob "
          f"{len(bob.unacked_at_crash)}")
    await asyncio.sleep(1.0)              # alice keeps sending into her outbox
    stop.set()
    await trading
    alice.unacked_at_crash = [s for s, _t, _b in alice.client.state.outbox]
    await asyncio.to_thread(wait_until, lambda: not machine_pids(data, -1), 30,
                            "every process of the machine gone")
    # -- the restart --------------------------------------------------------------------------
    up2 = group.spawn("up-again", up_args)
    await asyncio.to_thread(wait_until, lambda: "seqex is up" in up2.log() or not up2.alive,
                            UP_DEADLINE_S, "seqex up again after the crash")
    assert up2.alive, up2.log()[-5000:]
    timings["restart"] = time.monotonic() - t_crash
    print(f"seqex is up again {timings['restart']:.1f} s after the crash")
    await asyncio.to_thread(read_state, data)
    await bob.start(deadline_s=180)
    await asyncio.to_thread(wait_until, lambda: alice.up or alice.error, 180,
                            "alice's session to resume")
    assert not alice.error, alice.error
    timings["resumed"] = time.monotonic() - t_crash
    for app in apps:
        app.resume_next_expected = app.client.logon_ack.NextExpectedSeqNo
        # what was sent to the frozen gateway was never applied: the resume resends it
        assert min(frozen_sends[app.name]) >= app.resume_next_expected, \
            (app.name, frozen_sends[app.name], app.resume_next_expected)
    assert bob.client.stats["resent"] >= 3, bob.client.stats
    # -- after: trade a few seconds more ------------------------------------------------------
    for app in apps:
        app.phase = "after"
    stop = asyncio.Event()
    trading = asyncio.get_running_loop().create_task(trade(apps, syms, marks, rng, stop, stats))
    await asyncio.sleep(AFTER_S)
    stop.set()
    await trading
    stop_marks.set()
    await marks_task

    async def answered() -> None:
        end = time.monotonic() + 180
        while any(app.unanswered() for app in apps):
            assert not any(app.error for app in apps), [a.error for a in apps]
            assert time.monotonic() < end, {a.name: a.unanswered()[:20] for a in apps}
            await asyncio.sleep(0.2)
    await answered()
    # everything the journal holds for the sessions (late fills, cancels) handed over
    end = time.monotonic() + 120
    while True:
        jr = await asyncio.to_thread(journal, cluster)
        if all(max(jr.get(a.clients[-1].session_id, {0: 0})) ==
               max((r.seq for r in a.reports()), default=0) for a in apps):
            break
        assert time.monotonic() < end, "the journal and the handed-over reports never met"
        await asyncio.sleep(0.5)
    for app in apps:
        assert app.error is None, app.error
    facts = check_sessions(apps, jr)
    print(f"sent {stats.get('sent')} orders; sessions: {json.dumps(facts)}")
    assert all(f["fills"] > 0 for f in facts.values()), facts
    assert set().union(*(f["fill_symbols"] for f in facts.values())) == set(syms), facts
    assert alice.clients[0].stats["logons"] >= 2 and len(bob.clients) == 2, facts
    assert sum(len(a.unacked_at_crash) for a in apps) > 0, "nothing was in flight at the crash"
    assert sum(f["resent"] for f in facts.values()) > 0, "nothing was resent from an outbox"
    for app in apps:
        await app.close()
    return up2
