"""`seqex drill NAME`: a failover drill against the running cluster, under a light live load,
with a report.

Drills (``--target`` names another process of the same kind):

* ``kill-hot-ce``: SIGKILL of a hot CrossEngine replica (default ``ce.<first symbol>.hot0``);
  the other hot replica carries the out stream, the supervisor restarts the killed one, which
  restores its snapshot and replays;
* ``kill-replicator``: SIGKILL of a replicator (default: the last); its peers keep the quorum,
  the supervisor restarts it and it catches up;
* ``kill-all-hot-ce``: SIGKILL of every hot CrossEngine replica of a symbol (default the first;
  ``--target`` names any replica of another), then PROMOTE of its warm replica, which resends
  the outputs the mirror has not committed and carries the out stream; the supervisor restarts
  the killed ones (they come back hot: the stream then has one hot replica more, and no warm
  one until the promoted replica is restarted);
* ``kill-te``: the same for the TradingEngine replicas of a shard (default the shard of the
  load's accounts, ``te<N>.hot*``; ``--target`` names any replica of another shard): the warm
  TradingEngine is promoted and takes over;
* ``kill-sequencer``: SIGKILL of the master of an in stream (default ``sequencer.<first
  symbol>``, the load's): the supervisor restarts it and it takes over with a new epoch (learn,
  claim, adopt, reconcile: docs/log.md "Failover"). With a standby (the default topology:
  ``sequencer.<symbol>.standby``, on the same lock) the default target is whichever of the
  two is the master now, and the standby takes over as soon as the kernel releases the
  lock: ``took_over`` names it (``took_over_pid``, ``took_over_s``), and ``standby_again``
  says whether the killed one, restarted, waits as the new standby. Without one, the
  restarted master takes over on the same endpoints. ``recovered_s`` is when the stream's
  master answers with an epoch above the old one; the report gives both epochs;
* ``kill-gateway``: SIGKILL of a gateway (default ``gateway0``) under a load *through* it (two
  SDK clients, gateway/client.py, as the drill's own users): the supervisor restarts it and
  the clients log on into their sessions again and resend what was not applied, with the same
  SeqNos (``run_gateway``; its report is described there and in docs/operations.md);
* ``freeze``: SIGSTOP of a process (default ``ce.<first symbol>.hot1``) for ``--freeze-s``
  (default 5), then SIGCONT; the supervisor's heartbeat (a PING each second) is what detects
  it: `seqex status` marks it FROZEN once it has been silent for ``--frozen-after``.
* ``disk-full``: the data directory of a replicator (default: the last) filled: it must be a
  tmpfs of its own (mounted there before `seqex up`; remounting needs root), which the drill
  remounts at the size it uses (plus 64 KiB), for ``--full-s`` (default 3) seconds once the
  replicator says so (PING ``disk_full``: it refuses writes, logs "disk full at PATH", and its
  peers keep the quorum), then at its former size; it catches up from its peers by itself.
  ``detected_s`` is when it reports its disk full; ``restarted_s`` stays empty (no restart).

The load: on a cluster that trades through a gateway (``[trading]``, the default topology),
two SDK clients (gateway/client.py) log on as the drill's own users (``drill-gw-a``,
``drill-gw-b``, funded accounts 3001 and 3001 + the shard count, both on one shard) and send
pairs of crossing limit orders at the mark on the first symbol, ``--rate`` per second in all
(default 200), through the gateway and the TradingEngine like any client's: risk-checked and
margined, they trade with clients' orders at that price. An order is
*acknowledged* when its first report (ExecutionReport, BusinessReject) arrives; it must be
accepted or rejected exactly once in its shard's TradingEngine out stream. Without a gateway
(a CrossEngine-only topology) one client (deploy/client.py, its own source id) sends the
pairs straight into ``in.ce.<symbol>`` as account 1, and an order is acknowledged when its
outcome is read from ``out.ce.<symbol>``; its orders are read back from the in stream by
source seq. The drill runs the load for ``--before`` seconds, strikes, watches the target,
keeps the load on until the target is back and ``--after`` seconds more, then waits for
every outcome (the gateway load then mass-cancels what it left resting).

The report (``--json``: the same, as one object):

* what was done to which process (name, pid), and when (UTC);
* ``detected_s``: from the strike until `seqex status` (the heartbeats) shows the target
  DOWN or FROZEN; ``restarted_s``: until the supervisor started a new pid (kills; its
  children in /proc, then its heartbeats file);
  ``recovered_s``: until the target answers again, caught up (a replica with lag 0, a
  replicator holding every stream up to its master's commit point);
* ``resumed_s``: from the strike until the first acknowledgement of an order sent after it;
  order latencies (send to outcome) before and after the strike, p50/p99/max;
* orders sent, acknowledged, lost and applied twice, both of which must be 0: through the
  gateway, lost is never answered and applied twice is accepted twice, and each order must
  be accepted or rejected exactly once in its TradingEngine's out stream, read back from a
  replicator (``in_te_out_stream``: missing, twice; one refused by a BusinessReject, throttled
  or shed, is answered: ``business_rejects``), and every record of that out stream for the
  load's symbol taken into its CrossEngine's in stream exactly once (``to_crossengine``:
  the hop kill-sequencer and the CrossEngine drills strike); without a gateway, lost is sent and never
  in the in stream and applied twice is in it more than once, and of the lost, those the
  sequencer never acknowledged (the load stops waiting 60 s after the drill: a cluster that
  fell that far behind leaves them unsent);
* the state hash of every replica of every stream, asked (HASH) until the replicas of a
  stream answer at one seq: they must be equal; and the stream rebuilt from seq 1 to that
  seq on a fresh engine gives the same hash, and the TradingEngine's audit balances there
  (every shard's books, to the minor unit);
* ``promoted`` (kill-all-hot-ce, kill-te): the warm replica, when its PROMOTE was answered and
  the seq it resent its outputs from;
* ``audit``: the global audit (`seqex audit`, deploy/audit.py) at the end: every TradingEngine
  shard and the LiqEngine rebuilt from its log, their books checked every 100 records, and
  every engine added up against deposits minus withdrawals.

``ok`` is true when nothing was lost or doubled, every order was acknowledged and every
stream's replicas agree. Exit status 0 when ok, else 1; a drill that cannot run (no such
process, nothing running) is one line and status 2. The figures are one run's on a
shared machine: compare medians of many runs, not one.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from deploy import topology as _topo

DRILLS = ("kill-hot-ce", "kill-all-hot-ce", "kill-te", "kill-sequencer", "kill-replicator",
          "kill-gateway", "freeze", "disk-full")
FULL_SLACK = 64 << 10  # disk-full: the tmpfs remounted at what it uses plus this
AUDIT_EVERY = 100      # the global audit's books checked every this many records, and at the end
GROUP_DRILLS = ("kill-all-hot-ce", "kill-te")   # every hot replica of a stream, then PROMOTE
COUNT_AGAIN_S = 30.0   # a stream read back short is read again this long (replicators lag)


class DrillError(Exception):
    """The drill cannot run as asked (no such process, nothing running); one line."""


@dataclass
class Load:
    """Orders into in.ce.SYMBOL from a thread of its own, and their outcomes."""
    data_dir: str
    symbol: str
    rate: int
    price: str
    qty: str
    account: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    tickets: list = field(default_factory=list)
    acked_at: dict = field(default_factory=dict)   # client_order_id -> monotonic time
    source: int = 0
    start_seq: int = 0
    error: str | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from deploy.client import Client, OutcomeTimeout
        try:
            with Client(self.data_dir) as client:
                self.source = client.source
                interval = 1.0 / self.rate
                due = time.monotonic()
                side = 0
                pending = []
                self.started.set()
                while not self.stop.is_set():
                    now = time.monotonic()
                    while due <= now and not self.stop.is_set():
                        t = client.send(self.symbol, ("buy", "sell")[side], self.qty,
                                        self.price, account=self.account)
                        t.sent_at = time.monotonic()
                        side ^= 1
                        self.tickets.append(t)
                        pending.append(t)
                        due += interval
                        if due < now - 1.0:   # a long stall: no burst to catch up
                            due = now
                    pending = self._pump(client, pending, 0.005, OutcomeTimeout)
                deadline = time.monotonic() + 60
                while pending and time.monotonic() < deadline:
                    pending = self._pump(client, pending, 0.2, OutcomeTimeout)
                self.start_seq = client.start_seq.get(self.symbol, 0)
        except Exception as exc:   # reported, never a hang of the drill
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started.set()

    def _pump(self, client, pending: list, timeout_s: float, timeout_exc) -> list:
        try:
            client.wait(pending[:1] or [], timeout_s)
        except timeout_exc:
            pass
        now = time.monotonic()
        left = []
        for t in pending:
            if t.outcome is None:
                left.append(t)
            elif t.client_order_id not in self.acked_at:
                self.acked_at[t.client_order_id] = now
        return left


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)


def _beats(data_dir: str) -> dict:
    from deploy.supervisor import read_heartbeats
    return read_heartbeats(data_dir)


def _pid_of(data_dir: str, name: str) -> int:
    """The pid of a running process from the supervisor's heartbeats; a pid that is missing or
    gone is read again for up to 15 s (the file is written once a round: a cluster just up may
    not have it yet, a process restarted a moment ago may still have its old pid there)."""
    deadline = time.monotonic() + 15.0
    while True:
        pid = (_beats(data_dir).get(name) or {}).get("pid")
        if not isinstance(pid, int) or pid <= 0:
            if time.monotonic() < deadline:      # a cluster just up: its first round
                time.sleep(0.2)
                continue
            raise DrillError(f"no pid of {name} in the supervisor's heartbeats (is it on this "
                             "host, and running?)")
        try:
            os.kill(pid, 0)
            return pid
        except PermissionError:
            return pid
        except ProcessLookupError:
            if time.monotonic() > deadline:
                raise DrillError(f"{name} is not running (its pid {pid} is gone; the supervisor "
                                 "stops restarting a process that keeps dying: `seqex status`)"
                                 ) from None
            time.sleep(0.2)


def _child_running(supervisor: int, spec, exclude: frozenset = frozenset()) -> int | None:
    """The pid of the supervisor's child running spec's command line now, or None: the
    moment of a restart, without waiting for the heartbeats file (written once a round).
    exclude: pids not to count (a master and its standby have one command line)."""
    try:
        with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:
        return None
    want = [a.encode() for a in spec.args]
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if words[-len(want):] == want and pid not in exclude:
            return pid
    return None


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    from deploy.supervisor import pid_state
    return pid_state(pid) not in ("", "Z", "X")


def _resume(target: str, pid: int) -> str:
    """SIGCONT to a frozen process; it may be gone (the supervisor kills a gateway frozen
    longer than its --gateway-watchdog, and starts it again)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return f"{target} (pid {pid}) was gone before the SIGCONT (killed by the supervisor?)"
    return f"{target} resumed (SIGCONT)"


def _state(topo, data_dir: str, name: str, frozen_after_s: float) -> str:
    from deploy.metrics import status_doc
    sub = type(topo)(topo.data_dir, [topo.by_name(name)], topo.symbols, topo.trading)
    doc = status_doc(sub, {}, _beats(data_dir), frozen_after_s)
    return doc["processes"][0]["state"]


def _caught_up(topo, spec) -> bool:
    from deploy.supervisor import probe
    if spec.role == "replicator":
        # The masters' commit points first, then what the replicator holds: under load the
        # commit point moves on, and a replicator that holds what was committed a moment
        # before it was asked has caught up.
        commits = {}
        for p in topo.procs:
            if p.role in ("sequencer", "mirror") and spec.control in p.args:
                m = probe(p)
                if m is None:
                    return False
                commits[p.stream] = m.get("committed") or 0
        st = probe(spec)
        if st is None:
            return False
        held = st.get("streams") or {}
        return all(held.get(stream, {}).get("last", 0) >= c for stream, c in commits.items())
    st = probe(spec)
    if st is None:
        return False
    if spec.role.startswith("replica-"):
        return st.get("lag") == 0
    return True


def replica_hashes(topo, timeout_s: float = 8.0) -> dict:
    """{stream: {"seq", "equal", "replicas": {name: hash}}}: HASH of every replica of each
    stream, asked again until all of a stream answer at one seq (Ticks move it)."""
    from mq import wire
    from mq.control import call
    out = {}
    streams: dict[str, list] = {}
    for p in topo.procs:
        if p.role.startswith("replica-"):
            streams.setdefault(p.stream, []).append(p)
    for stream, specs in sorted(streams.items()):
        deadline = time.monotonic() + timeout_s
        got: dict = {}
        while True:
            got = {}
            for p in specs:
                try:
                    _k, body, _ = call(p.control, wire.HASH, timeout_s=2.0)
                    got[p.name] = (body.get("seq"), body.get("hash"))
                except TimeoutError:
                    got[p.name] = (None, None)
            seqs = {s for s, _h in got.values()}
            if (len(seqs) == 1 and None not in seqs) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        seqs = {s for s, _h in got.values()}
        hashes = {h for _s, h in got.values()}
        out[stream] = {"seq": min((s for s in seqs if s is not None), default=None),
                       "same_seq": len(seqs) == 1 and None not in seqs,
                       "equal": len(seqs) == 1 and len(hashes) == 1 and None not in hashes,
                       "replicas": {n: h for n, (_s, h) in got.items()},
                       "answers": dict(got)}
    return out


def rebuild_check(topo, hashes: dict) -> dict:
    """{stream: {"seq", "hash_equal", "audit"}}: every stream whose replicas agreed at seq S
    is applied from seq 1 to S, from a replicator, to a fresh engine configured as its
    replicas; its hash must equal theirs, and an engine that keeps books (the TradingEngine,
    the LiqEngine) must pass its audit there (``"balanced"``, else the audit's report).

    A stream whose replicas never answered at one seq (a live load keeps it moving) is applied
    record by record up to the highest seq any of them answered at, and each replica's hash is
    compared with the log's state at its own seq (``"seqs"``); the stream's entry in
    ``hashes`` then says ``"compared": "each at its own seq"`` and its ``equal`` is that
    outcome: replicas at the log's state at their seqs are equal wherever their seqs meet."""
    from deploy.engines import ENGINES
    from mq.control import replay
    from mq.record import decode
    out = {}
    for stream, h in sorted(hashes.items()):
        spec = next((p for p in topo.procs if p.role.startswith("replica-")
                     and p.stream == stream and "--engine" in p.args), None)
        if spec is None:
            continue
        answered = {n: (sq, hx) for n, (sq, hx) in h.get("answers", {}).items()
                    if sq is not None and hx is not None}
        each = not h.get("same_seq")
        seq = max((sq for sq, _hx in answered.values()), default=None) if each else h.get("seq")
        if not seq or (each and len(answered) < len(h["replicas"])):
            continue
        engine = spec.args[spec.args.index("--engine") + 1]
        config = json.loads(spec.args[spec.args.index("--engine-config") + 1]) \
            if "--engine-config" in spec.args else {}
        want: dict[int, list] = {}
        for n, (sq, hx) in answered.items():
            want.setdefault(sq, []).append((n, hx))
        eng, _restore = ENGINES[engine](config)
        last_error: Exception | None = None
        matched: dict[str, bool] = {}
        for addr in topo.replicator_addrs():
            try:
                last_frame = b""
                for frame in replay(addr, stream, 1, seq):
                    if not each:
                        eng.apply_frame(frame)
                        last_frame = frame
                        continue
                    for rseq, ts, src, _ss, _ep, kind, payload, _route in decode(frame):
                        eng.apply(rseq, ts, kind, bytes(payload), src)
                        if rseq in want:
                            mine = eng.state_hash().hex()
                            for n, hx in want[rseq]:
                                matched[n] = hx == mine
                        last_frame = frame
                # a replicator still catching up answers with less than asked: the next one
                got_to = max((r[0] for r in decode(last_frame)), default=0)
                if got_to < seq:
                    raise RuntimeError(f"{addr} holds {stream} only up to seq {got_to}")
                last_error = None
                break
            except (TimeoutError, RuntimeError) as exc:
                last_error = exc
                eng, _restore = ENGINES[engine](config)
                matched = {}
        if last_error is not None:
            out[stream] = {"seq": seq, "hash_equal": False, "error": str(last_error)}
            continue
        if each:
            entry: dict = {"seq": seq, "seqs": {n: sq for n, (sq, _hx) in answered.items()},
                           "hash_equal": len(matched) == len(answered) and all(
                               matched.values())}
            h["compared"] = "each at its own seq, against the log"
            h["equal"] = entry["hash_equal"]
        else:
            entry = {"seq": seq, "hash_equal": {eng.state_hash().hex()} ==
                     set(h["replicas"].values())}
        if hasattr(eng, "audit"):
            try:
                eng.audit()
                entry["audit"] = "balanced"
            except Exception as exc:   # the audit's report, in the drill's report
                entry["audit"] = f"FAILED: {exc}"
        out[stream] = entry
    return out


def count_in_stream(topo, stream: str, source: int, first_seq: int) -> dict[int, int]:
    """{source_seq: times it is in the stream} for one source, from the replicator whose log
    of the stream reaches furthest (one still catching up holds less: its count would show
    orders as lost that its peers hold)."""
    from deploy.supervisor import probe
    # The sequencer's commit point first: a replicator serves what it knows is committed, and
    # it learns of the newest commits a moment after the sequencer acknowledged them. Count
    # again until one replicator holds what was committed before the count began.
    committed = 0
    for p in topo.procs:
        if p.role == "sequencer" and p.stream == stream:
            m = probe(p)
            committed = max(committed, (m or {}).get("committed") or 0)

    def count(rec, counts: dict) -> None:
        if rec[2] == source:
            counts[rec[3]] = counts.get(rec[3], 0) + 1
    return _again(lambda: _furthest(topo, stream, first_seq, count),
                  lambda best: best[0] >= committed)[1]


def _again(read, complete, interval_s: float = 0.2):
    """``read()`` until ``complete(result)`` or COUNT_AGAIN_S have passed; the last result. A
    replicator serves what it knows is committed and learns of the newest commits a moment
    after the master acknowledged them, so a stream read back at once may be short."""
    deadline = time.monotonic() + COUNT_AGAIN_S
    while True:
        got = read()
        if complete(got) or time.monotonic() > deadline:
            return got
        time.sleep(interval_s)


def _latency_ms(before: list[float], after: list[float]) -> dict:
    """Order latencies (seconds) before and after the strike: p50, p99 and max in ms."""
    return {w: {"p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99), "max": _pct(xs, 1.0)}
            for w, xs in (("before", before), ("after", after))}


def _furthest(topo, stream: str, first_seq: int, count) -> tuple[int, dict]:
    """(last seq, counts) of the stream from first_seq, from the replicator whose log reaches
    furthest: ``count(record, counts)`` adds each record to the counts."""
    from mq.control import replay
    from mq.record import decode
    last_error = None
    best: tuple[int, dict] | None = None
    for addr in topo.replicator_addrs():
        counts: dict = {}
        last = 0
        try:
            for frame in replay(addr, stream, max(1, first_seq)):
                for rec in decode(frame):
                    last = rec[0]
                    count(rec, counts)
        except (TimeoutError, RuntimeError) as exc:
            last_error = exc
            continue
        if best is None or last > best[0]:
            best = (last, counts)
    if best is None:
        raise DrillError(f"no replicator answered a replay of {stream}: {last_error}")
    return best


def run(data_dir: str, name: str, target: str | None = None, rate: int = 200,
        before_s: float = 2.0, after_s: float = 2.0, freeze_s: float = 5.0,
        frozen_after_s: float = 3.0, timeout_s: float = 120.0, full_s: float = 3.0,
        done: list[str] | None = None) -> dict:
    """The drill; ``done`` (when given) collects, as it happens, what was done to the
    cluster, for the line an interrupted drill prints (cmd_drill)."""
    done = [] if done is None else done
    from deploy.supervisor import probe, read_state
    if name not in DRILLS:
        raise DrillError(f"no drill {name!r} (drills: {', '.join(DRILLS)})")
    topo, supervisor = read_state(data_dir)
    sym = next(iter(topo.symbols), None)
    if sym is None:
        raise DrillError("the cluster has no symbol to put a load on")
    s = topo.symbols[sym]
    gateway = gateway_of(topo)   # the load trades through it, else straight into in.ce.<sym>
    account = GW_ACCOUNT_BASE if gateway is not None else 1
    n_shards = len((topo.trading or {}).get("shards") or [])
    default = {"kill-hot-ce": f"ce.{sym}.hot0", "kill-all-hot-ce": f"ce.{sym}.hot0",
               "kill-te": f"te{account % n_shards}.hot0" if n_shards else "te0.hot0",
               "kill-replicator": [p.name for p in topo.procs if p.role == "replicator"][-1],
               "kill-sequencer": f"sequencer.{sym}",
               "freeze": f"ce.{sym}.hot1",
               "disk-full": [p.name for p in topo.procs if p.role == "replicator"][-1]}[name]
    partner = None   # kill-sequencer: the target's standby (or master), on the same lock
    if name == "kill-sequencer":
        from deploy.supervisor import master_lock_holder, standby_lock_of
        lock = None
        try:
            lock = standby_lock_of(topo.by_name(target or default))
        except StopIteration:
            pass
        pair = [p for p in topo.procs if lock and standby_lock_of(p) == lock]
        if target is None and len(pair) == 2:   # the master now (it may be the standby)
            holder = master_lock_holder(lock)
            default = next((p.name for p in pair
                            if (_beats(data_dir).get(p.name) or {}).get("pid") == holder),
                           default)
        if len(pair) == 2:
            partner = next(p for p in pair if p.name != (target or default))
    target = target or default
    try:
        spec = topo.by_name(target)
    except StopIteration:
        raise DrillError(f"no process {target!r} in the running topology") from None
    if name in ("kill-hot-ce", "kill-all-hot-ce") and not (
            spec.role.startswith("replica-") and spec.stream.startswith("in.ce.")) or \
            name == "kill-hot-ce" and spec.role != "replica-hot":
        raise DrillError(f"{name}: {target} is not a {'hot ' * (name == 'kill-hot-ce')}"
                         "CrossEngine replica")
    if name == "kill-te" and not (spec.role.startswith("replica-") and
                                  spec.stream.startswith("in.te.")):
        raise DrillError(f"kill-te: {target} is not a TradingEngine replica")
    if name == "kill-sequencer" and spec.role != "sequencer":
        raise DrillError(f"kill-sequencer: {target} is not a sequencer")
    partner_pid = None
    if partner is not None:
        from deploy.supervisor import waiting_standby
        partner_pid = _pid_of(data_dir, partner.name)
        if waiting_standby(spec, _pid_of(data_dir, target)):
            raise DrillError(f"kill-sequencer: {target} is the standby now; its master is "
                             f"{partner.name} (no --target: the master)")
    if name in ("kill-replicator", "disk-full") and spec.role != "replicator":
        raise DrillError(f"{name}: {target} is not a replicator")
    disk = None
    if name == "disk-full":
        disk = spec.args[spec.args.index("--data") + 1]
        if not os.path.ismount(disk):
            raise DrillError(f"disk-full: {disk} ({target}'s data) is not a filesystem of its "
                             "own; mount a tmpfs there before `seqex up` (mount -t tmpfs -o "
                             "size=2g tmpfs DIR, as root)")
        disk_size = os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize
    warm = None
    if name in GROUP_DRILLS:
        group = [p for p in topo.procs if p.stream == spec.stream and p.role.startswith(
            "replica-")]
        targets = [p for p in group if p.role == "replica-hot"]
        warm = next((p for p in group if p.role == "replica-warm"), None)
        if warm is None:
            raise DrillError(f"{name}: {spec.stream} has no warm replica to promote")
        _pid_of(data_dir, warm.name)
    else:
        targets = [spec]
    pids = {p.name: _pid_of(data_dir, p.name) for p in targets}
    pid = pids[targets[0].name]
    # A price well inside the contract: tick multiples, the mark's start if known.
    price = str(s.get("tick_size", "1"))
    mark = next((sp.get("mark_start_ticks") for sp in [s.get("spec") or {}]), None)
    if mark:
        from decimal import Decimal
        price = str(Decimal(s["tick_size"]) * mark)
    if gateway is not None:
        load, th, acct = start_gateway_load(topo, gateway, sym, rate)
        load_text = (f"{rate} orders/s on {sym} through {gateway.name} from "
                     f"{', '.join(u for u, _p, _a in load.users)}")
    else:
        load = Load(data_dir, sym, rate, price, str(s.get("lot_size", "1")), account=account)
        th = threading.Thread(target=load.run, name="drill-load", daemon=True)
        th.start()
        load.started.wait(30)
        if load.error:
            raise DrillError(f"the load could not start: {load.error}")
        load_text = f"{rate} orders/s into {s['in']} as account {account} (no gateway)"
    time.sleep(before_s)
    report: dict = {"drill": name, "target": ", ".join(p.name for p in targets),
                    "targets": [p.name for p in targets], "role": spec.role if not warm
                    else "replica-hot", "stream": spec.stream, "pid": pid, "pids": pids,
                    "rate_per_s": rate, "load": load_text}
    old_epoch = None
    if name == "kill-sequencer":
        old_epoch = (probe(spec, timeout_s=2.0) or {}).get("epoch")
        report["epoch_before"] = old_epoch
        if partner is not None:
            report["standby"] = partner.name
            report["standby_pid"] = partner_pid
    continued = False
    # from the strike on, the undo (SIGCONT, the disk given back) runs whatever happens,
    # a Ctrl-C included: one between the SIGSTOP and the watch left the replica frozen
    try:
        strike_wall, strike = time.time(), time.monotonic()
        if gateway is not None:
            load.strike = strike
        if name == "freeze":
            os.kill(pid, signal.SIGSTOP)
            done.append(f"{target} (pid {pid}) frozen (SIGSTOP)")
            report["action"] = f"SIGSTOP for {freeze_s:g} s, then SIGCONT"
        elif name == "disk-full":
            # a tmpfs cannot shrink below what it holds: under load the replicator may write
            # more than the slack between the reading and the remount, so read again with more
            # slack
            for attempt in range(6):
                try:
                    _remount(disk, _tmpfs_used(disk) + (FULL_SLACK << attempt))
                    done.append(f"{target}'s data directory {disk} made full")
                    break
                except DrillError:
                    if attempt == 5:
                        raise
            report["action"] = (f"its data directory {disk} full (tmpfs remounted at the size "
                                f"it uses) for {full_s:g} s once it says so, then "
                                f"{disk_size >> 20} MiB")
        else:
            for p in targets:
                os.kill(pids[p.name], signal.SIGKILL)
                done.append(f"{p.name} (pid {pids[p.name]}) killed (SIGKILL; its supervisor "
                            "restarts it)")
            report["action"] = "SIGKILL"
        report["at_unix"] = round(strike_wall, 6)
        report["at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(strike_wall)) + \
            f".{int(strike_wall * 1e6) % 1_000_000:06d}Z"
        if warm is not None:
            report["promoted"] = _promote(warm, strike)
            report["action"] += f" of every hot replica, then PROMOTE of {warm.name}"
        detected = restarted = recovered = None
        seen_down: set = set()
        new_pids: dict = {}
        deadline = strike + timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            if detected is None and name != "disk-full":
                for p in targets:
                    if p.name not in seen_down and _state(topo, data_dir, p.name,
                                                          frozen_after_s) in ("DOWN", "FROZEN"):
                        seen_down.add(p.name)
                if len(seen_down) == len(targets):
                    detected = time.monotonic() - strike
            if name == "disk-full":
                st = probe(spec)
                if detected is None and st and st.get("disk_full"):
                    detected = time.monotonic() - strike
                if not continued and (detected is not None and now - strike - detected >=
                                      full_s or now - strike >= timeout_s / 2):
                    _remount(disk, disk_size)
                    done.append(f"{disk} given back its size ({disk_size >> 20} MiB)")
                    continued = True
                if continued and st and not st.get("disk_full") and _caught_up(topo, spec):
                    recovered = time.monotonic() - strike
                    break
            elif name == "freeze":
                if not continued and not _alive(pid):
                    # the supervisor killed it (a gateway stopped past --gateway-watchdog)
                    # and starts it again: recovered is measured to the new process
                    report["killed_by_supervisor_s"] = _r(now - strike)
                    done.append(f"{target} (pid {pid}) killed by the supervisor while stopped")
                    continued = True
                    thawed = time.monotonic()
                if not continued and now - strike >= freeze_s:
                    done.append(_resume(target, pid))
                    continued = True
                    thawed = time.monotonic()
                # a gateway is back when it answers an order sent after the strike, not when
                # it answers the supervisor's probe
                if continued and detected is not None and _caught_up(topo, spec) and (
                        spec.role != "gateway" or gateway is None or any(
                            o.acked_at is not None and o.acked_at >= thawed and
                            o.sent_at >= strike for o in list(load.orders))):
                    recovered = time.monotonic() - strike
                    break
            else:
                for p in targets:
                    if p.name in new_pids:
                        continue
                    mates = frozenset([pids[p.name], partner_pid or 0])
                    new = _child_running(supervisor, p, mates) or \
                        (_beats(data_dir).get(p.name) or {}).get("pid")
                    if isinstance(new, int) and new not in mates:
                        new_pids[p.name] = new
                if restarted is None and len(new_pids) == len(targets):
                    restarted = time.monotonic() - strike
                if partner is not None and old_epoch is not None:
                    # the standby takes the lock, then the stream with a new epoch; the
                    # killed master, restarted, waits for the lock as the new standby
                    def took_over(at: float) -> None:
                        if "took_over_s" not in report and \
                                master_lock_holder(standby_lock_of(spec)) == partner_pid:
                            report.update(took_over=partner.name, took_over_pid=partner_pid,
                                          took_over_s=_r(at - strike))

                    took_over(time.monotonic())
                    if recovered is None:
                        epoch = (probe(spec) or {}).get("epoch")
                        if isinstance(epoch, int) and epoch > old_epoch:
                            # (the probe may have waited across the takeover: the lock first)
                            at = time.monotonic()
                            took_over(at)
                            report["epoch_after"] = epoch
                            recovered = at - strike
                    if recovered is not None and restarted is not None and \
                            "took_over_s" in report and \
                            waiting_standby(spec, new_pids.get(spec.name)):
                        report["standby_again"] = True
                        report["standby_again_s"] = _r(time.monotonic() - strike)
                        break
                elif restarted is not None and old_epoch is not None:
                    epoch = (probe(spec) or {}).get("epoch")
                    if isinstance(epoch, int) and epoch > old_epoch:
                        report["epoch_after"] = epoch
                        recovered = time.monotonic() - strike
                        break
                elif restarted is not None and all(_caught_up(topo, p) for p in targets) and \
                        (warm is None or _caught_up(topo, warm)):
                    recovered = time.monotonic() - strike
                    break
            time.sleep(0.05)
    finally:
        def undo() -> None:
            nonlocal continued
            if name == "freeze" and not continued:
                continued = True
                done.append(_resume(target, pid))
            if name == "disk-full" and not continued:
                _remount(disk, disk_size)
                continued = True
                done.append(f"{disk} given back its size ({disk_size >> 20} MiB)")
        undo_surely(undo)
    if name not in ("freeze", "disk-full"):
        report["new_pid"] = new_pids.get(targets[0].name)
        report["new_pids"] = new_pids
    if partner is not None:
        report.setdefault("took_over", None)
        report.setdefault("took_over_pid", None)
        report.setdefault("standby_again", False)
    time.sleep(after_s)
    load.stop.set()
    th.join(120)
    report.update(detected_s=_r(detected), restarted_s=_r(restarted), recovered_s=_r(recovered))
    if load.error:
        report["load_error"] = load.error
    if gateway is not None:
        orders, orders_ok = gateway_orders(topo, load, acct, strike, recovered)
        report.update(orders)
    else:
        report.update(_raw_orders(topo, s["in"], load, strike))
        o = report["orders"]
        orders_ok = o["sent"] > 0 and o["acknowledged"] == o["sent"] and \
            not o["lost"] and not o["applied_twice"]
    report["hashes"] = replica_hashes(topo)
    report["rebuild"] = rebuild_check(topo, report["hashes"])
    for h in report["hashes"].values():
        h.pop("answers", None)
    report["audit"] = global_audit(topo)
    report["ok"] = (report["audit"]["ok"] and "error" not in report.get("promoted", {})
                    and orders_ok and recovered is not None and detected is not None
                    and (partner is None or bool(report["took_over"]
                                                 and report["standby_again"]))
                    and all(h["equal"] for h in report["hashes"].values())
                    and len(report["rebuild"]) == len(report["hashes"])
                    and all(r["hash_equal"] and r.get("audit", "balanced") == "balanced"
                            for r in report["rebuild"].values()))
    return report


def _raw_orders(topo, in_stream: str, load: Load, strike: float) -> dict:
    """The raw load's orders (no gateway), once it has stopped: ``resumed_s``,
    ``latency_ms`` and ``orders`` for the report, read back from the in stream by the load's
    source id and source seqs."""
    report: dict = {}
    tickets = list(load.tickets)
    acked = [t for t in tickets if t.outcome is not None]
    after = [t for t in acked if t.sent_at >= strike]
    first_after = min((load.acked_at.get(t.client_order_id, float("inf")) for t in after),
                      default=None)
    report["resumed_s"] = _r(first_after - strike) if first_after not in (None, float("inf")) \
        else None
    lat_before = [load.acked_at[t.client_order_id] - t.sent_at for t in acked
                  if t.sent_at < strike and t.client_order_id in load.acked_at]
    lat_after = [load.acked_at[t.client_order_id] - t.sent_at for t in after
                 if t.client_order_id in load.acked_at]
    report["latency_ms"] = _latency_ms(lat_before, lat_after)
    counts = count_in_stream(topo, in_stream, load.source, load.start_seq + 1) if load.source else {}
    sent_ss = {t.source_seq for t in tickets}
    lost = sorted(ss for ss in sent_ss if counts.get(ss, 0) == 0)
    twice = sorted(ss for ss, n in counts.items() if n > 1)
    report["orders"] = {"sent": len(tickets), "acknowledged": len(acked), "lost": len(lost),
                        "applied_twice": len(twice)}
    # of the lost, those the sequencer never acknowledged (still in the client's producer when
    # the load gave up waiting): a cluster too slow to take the load, not a log that dropped
    # what it had acknowledged
    unacked = {t.source_seq for t in tickets if t.seq is None and t.outcome is None}
    report["orders"]["lost_never_acknowledged_by_the_sequencer"] = len(set(lost) & unacked)
    if lost:
        report["orders"]["lost_source_seqs"] = lost[:20]
    if twice:
        report["orders"]["twice_source_seqs"] = twice[:20]
    return report


def global_audit(topo) -> dict:
    """`seqex audit` (deploy/audit.py) of the cluster: every TradingEngine shard and the
    LiqEngine rebuilt from its log, audited every ``AUDIT_EVERY`` records and at the end, and
    every engine's books added up against deposits minus withdrawals. A topology without a
    TradingEngine has no books: ``{"ok": True, "skipped": ...}``."""
    from deploy.audit import audit
    if not (topo.trading or {}).get("shards"):
        return {"ok": True, "skipped": "no TradingEngine in this topology"}
    try:
        r = audit(topo, every=AUDIT_EVERY)
    except Exception as exc:     # no replicator answers, no configuration: in the report
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    d = r.to_dict()
    return {"ok": d["ok"], "total": d["total"], "expected": d["expected"],
            "clearing_net": d["clearing_net"], "clearing_money": d["clearing_money"],
            "at_rest": d["at_rest"], "seconds": d["seconds"],
            "records": sum(e["records"] for e in d["engines"]),
            "errors": [f"{e['name']}: {e['error']}" for e in d["engines"] if e["error"]]}


def _tmpfs_used(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _remount(path: str, size: int) -> None:
    import subprocess
    out = subprocess.run(["mount", "-o", f"remount,size={size}", path], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise DrillError(f"disk-full: cannot remount {path} (root only): "
                         f"{out.stderr.strip()[:200]}")


def _promote(warm, strike: float) -> dict:
    """PROMOTE to the warm replica (the operator key); its answer and when it came."""
    from mq import wire
    from mq.control import call
    try:
        kind, body, _ = call(warm.control, wire.PROMOTE, timeout_s=30)
    except TimeoutError as exc:
        return {"name": warm.name, "error": str(exc)}
    out = {"name": warm.name, "at_s": _r(time.monotonic() - strike)}
    if kind != wire.PONG:
        out["error"] = f"{kind[:16]!r} {body}"[:300]
    else:
        out["resent_from"] = body.get("resent_from")
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def describe(r: dict) -> str:
    """The report for a terminal."""
    pids = ", ".join(str(v) for v in (r.get("pids") or {r["target"]: r["pid"]}).values())
    lines = [f"drill {r['drill']}: {r['action']} of {r['target']} ({r['role']}"
             f"{', ' + r['stream'] if r['stream'] else ''}; pid{'s' * (',' in pids)} {pids}) "
             f"at {r['at']}"]

    def s(x):
        return "never" if x is None else f"{x:.3f} s"
    how = "it reports its disk full" if r["drill"] == "disk-full" else \
        "status shows it DOWN/FROZEN"
    lines.append(f"  detected ({how}): {s(r['detected_s'])}")
    if r["drill"] not in ("freeze", "disk-full"):
        lines.append(f"  restarted by the supervisor: {s(r['restarted_s'])} (new pid"
                     f"{'s' * (len(r.get('new_pids') or {}) > 1)} "
                     f"{', '.join(str(v) for v in (r.get('new_pids') or {}).values())})")
    pr = r.get("promoted")
    if pr:
        lines.append(f"  promoted {pr['name']}: " + (f"FAILED {pr['error']}" if "error" in pr
                     else f"{pr['at_s']:.3f} s, resending outputs from seq {pr['resent_from']}"
                     if pr["resent_from"] is not None else "it was hot already"))
    if "standby" in r:
        took = f"took the lock at {s(r.get('took_over_s'))}" if r.get("took_over") else \
            "did NOT take over"
        lines.append(f"  standby {r['standby']} (pid {r['standby_pid']}) {took}; the killed "
                     f"master, restarted, " + ("waits as the new standby" if r.get(
                         "standby_again") else "is NOT waiting as the new standby"))
    if "epoch_before" in r:
        lines.append(f"  master epoch {r['epoch_before']} before, {r.get('epoch_after')} after "
                     + ("(the standby's takeover)" if "standby" in r
                        else "(the restarted master's takeover)"))
    if r.get("killed_by_supervisor_s") is not None:
        lines.append(f"  killed by the supervisor while stopped (its --gateway-watchdog): "
                     f"{s(r['killed_by_supervisor_s'])}; started again, and recovered is "
                     "measured to the new process")
    lines.append(f"  recovered (answers, caught up): {s(r['recovered_s'])}")
    lines.append(f"  service: first order acknowledged after the fault: {s(r['resumed_s'])}")
    lat = r["latency_ms"]
    lines.append(f"  order latency ms before: p50 {lat['before']['p50']} p99 "
                 f"{lat['before']['p99']} max {lat['before']['max']}; after: p50 "
                 f"{lat['after']['p50']} p99 {lat['after']['p99']} max {lat['after']['max']}")
    o = r["orders"]
    if r.get("load"):
        lines.append(f"  load: {r['load']}")
    line = (f"  orders: sent {o['sent']}, acknowledged {o['acknowledged']}, lost "
            f"{o['lost']}, applied twice {o['applied_twice']}")
    st = o.get("in_te_out_stream")
    if st:
        line += (f"; in {', '.join(st['streams'])}: missing {st['missing']}, twice "
                 f"{st['twice']}")
    lines.append(line)
    lines += _answer_lines(o)
    lines += _hop_lines(o)
    for stream, h in r["hashes"].items():
        verdict = "equal" if h["equal"] else ("DIFFER" if h["same_seq"] else
                                              "not compared (replicas at different seqs)")
        if h.get("compared"):
            verdict = ("each equal to the log's state at its own seq" if h["equal"] else
                       "one DIFFERS from the log's state at its seq")
        rb = r.get("rebuild", {}).get(stream)
        if rb is not None:
            verdict += "; rebuilt from seq 1: " + ("same hash" if rb["hash_equal"] else
                                                   "ANOTHER HASH")
            if "audit" in rb:
                verdict += f", audit {rb['audit']}"
        lines.append(f"  {stream}: {len(h['replicas'])} replicas at seq {h['seq']}: hashes "
                     f"{verdict}")
    a = r.get("audit") or {}
    if "skipped" in a:
        lines.append(f"  global audit: none ({a['skipped']})")
    elif "error" in a:
        lines.append(f"  global audit: could not run: {a['error']}")
    elif a:
        from deploy.audit import usdt
        lines.append(f"  global audit ({a['records']:,} records rebuilt in {a['seconds']} s): "
                     + ("balanced" if a["ok"] else "UNBALANCED") + f": sum {usdt(a['total'])} "
                     f"USDT, deposits - withdrawals {usdt(a['expected'])} USDT")
        for e in a["errors"]:
            lines.append(f"    {e}")
    if r.get("load_error"):
        lines.append(f"  load: {r['load_error']}")
    lines.append(_verdict(r))
    return "\n".join(lines)


def _verdict(r: dict) -> str:
    """OK, or FAILED with what failed, in words (from the report's own figures)."""
    if r.get("ok"):
        return "  OK"
    why = []
    o = r.get("orders") or {}
    if o:
        if not o.get("sent"):
            why.append("no order was sent")
        if o.get("lost"):
            why.append(f"{o['lost']} orders never answered")
        if o.get("applied_twice"):
            why.append(f"{o['applied_twice']} orders applied twice")
        st = o.get("in_te_out_stream") or {}
        if st.get("missing") or st.get("twice"):
            why.append("orders missing or twice in the TradingEngine's out stream")
        if any(h.get("missing") or h.get("twice") for h in o.get("to_crossengine") or []):
            why.append("orders missing or twice on their way to the CrossEngine")
        if "accepted_after_strike" in o and not o["accepted_after_strike"]:
            rejected = ", ".join(f"{k} {v}" for k, v in (o.get("rejected_by_reason")
                                                         or {}).items())
            why.append("no order sent after the strike was accepted"
                       + (f" (rejected: {rejected})" if rejected else ""))
    for key, text in (("detected_s", "the fault was not detected"),
                      ("recovered_s", "service did not come back"),
                      ("resumed_s", "no order was answered after the strike")):
        if key in r and r[key] is None:
            why.append(text)
    if "error" in (r.get("promoted") or {}):
        why.append(f"the promotion failed: {r['promoted']['error']}")
    if "took_over" in r and not (r.get("took_over") and r.get("standby_again", True)):
        why.append("the standby did not take over, or none waits again")
    if not all(s.get("same_session", True) for s in r.get("sessions") or []):
        why.append("a client session did not resume")
    if not all(h.get("equal", True) for h in (r.get("hashes") or {}).values()):
        why.append("replica state hashes differ")
    rb = r.get("rebuild") or {}
    if len(rb) != len(r.get("hashes") or {}) or not all(
            x.get("hash_equal") and x.get("audit", "balanced") == "balanced"
            for x in rb.values()):
        why.append("a rebuild from the log differs")
    if not (r.get("audit") or {}).get("ok", True):
        why.append("the global audit is unbalanced")
    if r.get("load_error"):
        why.append("the load failed")
    return "  FAILED: " + ("; ".join(why) if why else "see the figures above")


def _answer_lines(o: dict) -> list[str]:
    """What the gateway load's orders got: accepted, rejected (by reason), refused."""
    if "accepted" not in o:
        return []
    why = ", ".join(f"{k} {v}" for k, v in o["rejected_by_reason"].items())
    line = (f"  answers: accepted {o['accepted']} ({o['accepted_after_strike']} sent after the "
            f"strike), rejected {o['rejected']}{f' ({why})' if why else ''}")
    if o.get("business_rejects"):
        line += f", refused by BusinessReject (throttled, shed) {o['business_rejects']}"
    if o.get("sent_per_s") is not None:
        line += f"; sent {o['sent_per_s']:.0f} orders/s"
    return [line]


def _hop_lines(o: dict) -> list[str]:
    return [f"  {h['from']} -> {h['to']}: {h['records']} records, not taken {h['missing']}, "
            f"taken twice {h['twice']}" for h in o.get("to_crossengine") or []]


def record_outcome(data_dir: str, r: dict) -> None:
    """One line in ``<data>/drills.jsonl`` (the replicators' metrics serve it: deploy/metrics.py
    DrillCollector); a data directory that cannot be written loses the line, not the report."""
    from deploy.metrics import DRILLS_FILE
    line = {"drill": r["drill"], "target": r["target"], "ok": r["ok"], "at": r["at"],
            "at_unix": r.get("at_unix"),
            **{k: r.get(k) for k in ("detected_s", "restarted_s", "recovered_s", "resumed_s")},
            "lost": r["orders"]["lost"], "applied_twice": r["orders"]["applied_twice"]}
    try:
        with open(os.path.join(data_dir, DRILLS_FILE), "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass


def undo_surely(undo) -> None:
    """Run ``undo`` (give the target back) to its end whatever interrupts it: a
    KeyboardInterrupt inside it (an interrupt that came as the drill was ending) runs it again,
    and is raised once it is done. ``undo`` does each step once, however often it is called."""
    interrupted = False
    while True:
        try:
            undo()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


class Interrupts:
    """While a drill runs: the first SIGINT, SIGTERM or SIGHUP interrupts it (as a
    KeyboardInterrupt, so that its undo runs: the strike is undone, the load stopped) and any
    later one is noted and dropped, so that nothing cuts the undo or the line that says what
    was done short. Without it a SIGTERM (a CI job's timeout, `kill`) or a SIGHUP (the
    operator's terminal gone) ended the drill at once with its target frozen, and a second
    Ctrl-C between the first and the undo could skip the SIGCONT."""
    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.first: int | None = None
        self.saved: dict = {}

    def __enter__(self) -> Interrupts:
        for sig in self.WATCHED:
            self.saved[sig] = signal.signal(sig, self._on)
        return self

    def _on(self, signum, _frame) -> None:
        if self.first is None:
            self.first = signum
            raise KeyboardInterrupt

    def __exit__(self, *_exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it."""
        return 128 + (self.first or signal.SIGINT)


def cmd_drill(a: argparse.Namespace) -> int:
    with Interrupts() as interrupts:
        return _drill(a, interrupts)


def _drill(a: argparse.Namespace, interrupts: Interrupts) -> int:
    done: list[str] = []   # what the drill did to the cluster, as it happened
    try:
        if a.name == "kill-gateway":
            report = run_gateway(a.data, a.target, a.rate, a.before, a.after, a.frozen_after,
                                 a.timeout, done=done)
        else:
            report = run(a.data, a.name, a.target, a.rate, a.before, a.after, a.freeze_s,
                         a.frozen_after, a.timeout, a.full_s, done=done)
    except DrillError as exc:
        print(f"seqex drill: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from deploy import cli
        what = "; ".join(done) if done else "nothing was done to the target yet"
        by = signal.Signals(interrupts.first or signal.SIGINT).name
        try:
            print(f"seqex drill: interrupted by {by} ({a.name}): {what}; the drill's load "
                  f"stopped, its orders may rest in the book; no report. `seqex status"
                  f"{cli.data_option(a)}` shows the cluster", file=sys.stderr, flush=True)
        except OSError:      # SIGHUP: the terminal is gone
            pass
        return interrupts.exit_status
    record_outcome(a.data, report)
    text = describe_gateway(report) if a.name == "kill-gateway" else describe(report)
    print(json.dumps(report, indent=1) if a.json else text, flush=True)
    return 0 if report["ok"] else 1


def register(sub, int_range, seconds) -> None:
    """The `drill` verb; the argument types are deploy/cli.py's."""
    s = sub.add_parser("drill", help="a failover drill under live load, with a report")
    s.add_argument("name", choices=DRILLS)
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--target", help="the process to strike (default: see the drill)")
    s.add_argument("--rate", type=int_range(2, 100_000), default=200, help="orders per second")
    s.add_argument("--before", type=seconds, default=2.0, help="seconds of load before")
    s.add_argument("--after", type=seconds, default=2.0, help="seconds of load after recovery")
    s.add_argument("--freeze-s", type=seconds, default=5.0, help="freeze: how long stopped")
    s.add_argument("--full-s", type=seconds, default=3.0,
                   help="disk-full: how long the disk stays full once the replicator says so")
    s.add_argument("--frozen-after", type=seconds, default=3.0,
                   help="freeze: silent this long is FROZEN (as `seqex status`)")
    s.add_argument("--timeout", type=seconds, default=120.0,
                   help="give up waiting for recovery after this long")
    s.add_argument("--json", action="store_true", help="the report as one JSON object")
    s.set_defaults(fn=cmd_drill)


# -- kill-gateway: the load through the gateway, its sessions resumed ------------------------

GW_USERS_FILE = "drill-gateway-users.json"   # in the data directory: the drill's users
GW_STATE_DIR = "drill-gateway"               # their session state files (gateway/client.py)
GW_ACCOUNT_BASE = 3001                       # the drill users' accounts: base, base + n_shards
GW_DEPOSIT = "1000000"                       # USDT on each, once
GW_TRANSFER_BASE = 9_500_000                 # deposit transfer ids: base + account
GW_FIRST = ("new", "rejected")               # ExecutionReports that apply an order (or not)


def gateway_users(topo, log=lambda _line: None) -> list[tuple[str, str, int]]:
    """The drill's two users (``drill-gw-a``, ``drill-gw-b``), each with one funded account on
    one shard: created, funded and written to ``<data>/drill-gateway-users.json`` once (fixed
    transfer ids: a repeat deposit is answered and changes nothing). [(name, password,
    account)]."""
    from deploy import trading
    from deploy.demo import _reload_gateway
    path = os.path.join(topo.data_dir, GW_USERS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {"users": {}}
    users = doc.setdefault("users", {})
    n = int((topo.trading or {}).get("n_shards") or 1)
    changed = False
    for i, name in enumerate(("drill-gw-a", "drill-gw-b")):
        if name in users:
            continue
        import secrets
        pw = secrets.token_urlsafe(12)
        account = GW_ACCOUNT_BASE + i * n        # both on one shard: pairs meet in one order
        try:
            trading.create_user(topo, name, [account], pw, replace=True)   # the drill's own
        except trading.TradingError as exc:
            raise DrillError(f"cannot add the drill's user {name}: {exc}") from None
        users[name] = {"password": pw, "account": account, "funded": False}
        changed = True
    if changed:
        trading.write_private_json(path, doc)
        _reload_gateway(topo)
    for name in sorted(users):
        u = users[name]
        if not u.get("funded"):
            try:
                out = trading.transfer(topo.data_dir, topo, u["account"],
                                       trading.minor_units(GW_DEPOSIT),
                                       transfer_id=GW_TRANSFER_BASE + u["account"])
            except Exception as exc:    # one line: the drill cannot run
                raise DrillError(f"cannot fund the drill's user {name}'s account "
                                 f"{u['account']}: {type(exc).__name__}: {exc}") from None
            log(f"{name}: {out.line()}")
            u["funded"] = True
            trading.write_private_json(path, doc)
    return [(name, users[name]["password"], users[name]["account"]) for name in sorted(users)]


@dataclass
class GwOrder:
    client: int            # which of the load's clients sent it
    cl_ord_id: int
    seq_no: int            # its SeqNo in that client's session
    account: int
    sent_at: float
    acked_at: float | None = None
    applied: int = 0       # ExecutionReports New/Rejected and BusinessRejects naming it
    business_rejected: bool = False   # refused by a BusinessReject (throttled, shed, ...)
    accepted: bool = False            # an ExecutionReport New
    rejected: int | None = None       # an ExecutionReport Rejected: its OrdRejReason


@dataclass
class GatewayLoad:
    """Orders through the gateway: two SDK clients (gateway/client.py), sessions persisted in
    ``<data>/drill-gateway/``, pairs of crossing limit orders at ``rate`` per second in all, at
    the mark (refreshed every second). Runs its own asyncio loop in a thread."""
    host: str
    port: int
    users: list
    instruments: dict
    symbol: str
    qty: str
    state_dir: str
    rate: int
    topo: object
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    orders: list = field(default_factory=list)
    by_key: dict = field(default_factory=dict)       # (client, cl_ord_id) -> GwOrder
    by_seq: dict = field(default_factory=dict)       # (client, SeqNo) -> GwOrder
    strike: float | None = None
    disconnected_at: float | None = None              # first client that lost its connection
    relogged_at: dict = field(default_factory=dict)  # client -> its first LogonAck after it
    sessions: list = field(default_factory=list)      # per client: {user, before, after, ...}
    not_applied: int = 0
    logouts: list = field(default_factory=list)
    error: str | None = None
    clients: list = field(default_factory=list)
    price: str | None = None
    mass_cancelled: set = field(default_factory=set)   # (client, ClOrdID) answered

    def run(self) -> None:
        import asyncio
        try:
            asyncio.run(self._main())
        except Exception as exc:   # reported, never a hang of the drill
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started.set()

    async def _connect(self, user: str, pw: str, deadline_s: float = 30.0):
        """A logged-on client of the user's persisted session; a refusal for credentials is
        retried (a user just added reaches the gateway within a second)."""
        import asyncio

        from gateway import client as sdk
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, f"{user}.session.json")
        end = time.monotonic() + deadline_s
        while True:
            c = sdk.Client(self.host, self.port, user, pw, path, self.instruments,
                           connect_timeout_s=10.0)
            c.state.sync = DRILL_SYNC
            try:
                return await c.connect()
            except (sdk.SessionError, ConnectionError) as exc:
                await c.close(logout=False)
                if time.monotonic() > end:
                    raise DrillError(f"kill-gateway: {user} cannot log on: {exc}") from None
                await asyncio.sleep(0.5)

    async def _main(self) -> None:
        import asyncio
        from decimal import Decimal

        from deploy.demo import follow_marks, symbols_of
        syms = {s.name: s for s in symbols_of(self.topo)}
        sym = syms[self.symbol]
        tick = Decimal(self.topo.symbols[self.symbol]["tick_size"])

        async def marks() -> None:
            while True:
                await asyncio.to_thread(follow_marks, self.topo, [sym])
                self.price = str(tick * sym.mid_ticks)
                await asyncio.sleep(1.0)

        await asyncio.to_thread(follow_marks, self.topo, [sym])
        self.price = str(tick * sym.mid_ticks)
        for user, pw, _account in self.users:
            self.clients.append(await self._connect(user, pw))
        for (user, _pw, _a), c in zip(self.users, self.clients, strict=True):
            self.sessions.append({"user": user, "session_id": c.session_id,
                                  "logons_before": c.stats["logons"]})
        tasks = [asyncio.get_running_loop().create_task(marks())]
        tasks += [asyncio.get_running_loop().create_task(self._read(i, c))
                  for i, c in enumerate(self.clients)]
        # what an earlier run left resting (its tidy lost to a fault) cancelled first, so that
        # its orders do not fill the accounts' 200 open orders and refuse this run's
        await self._tidy()
        self.started.set()
        interval = 1.0 / self.rate
        due = time.monotonic()
        k = 0
        price = self.price
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                while due <= now and not self.stop.is_set():
                    pair, taker = divmod(k, 2)
                    maker = pair % 2
                    maker_side = ("buy", "sell")[(pair // 2) % 2]
                    if not taker:
                        price = self.price        # both orders of a pair at one price
                    ci = maker if not taker else 1 - maker
                    side = maker_side if not taker else ("sell" if maker_side == "buy"
                                                         else "buy")
                    await self._send(ci, side, price)
                    k += 1
                    due += interval
                    if due < now - 1.0:     # a long stall: no burst to catch up
                        due = now
                self._watch()
                await asyncio.sleep(0.002)
            # every order's answer, then the resting ones cancelled (the books left as found)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(o.acked_at is None for o in self.orders):
                self._watch()
                await asyncio.sleep(0.01)
            await self._tidy()
        finally:
            for t in tasks:
                t.cancel()
            for c in self.clients:
                c.state.last_seen = max(c.state.last_seen, c.received_upto)
                c.state.sync = True
                c.state.save()                   # the session, for the next run
                await c.close()
            for s, c in zip(self.sessions, self.clients, strict=True):
                s.update(session_id_after=c.session_id, logons=c.stats["logons"],
                         resent=c.stats["resent"], dropped_from_outbox=c.stats[
                             "dropped_from_outbox"], duplicates=c.stats["duplicates"],
                         new_session_after=c.new_session)

    async def _send(self, ci: int, side: str, price: str) -> None:
        c = self.clients[ci]
        account = self.users[ci][2]
        seq_no = c.state.next_seq
        cl = await c.new_order(self.symbol, side, self.qty, price, account=account)
        o = GwOrder(ci, cl, seq_no, account, time.monotonic())
        self.orders.append(o)
        self.by_key[(ci, cl)] = o
        self.by_seq[(ci, seq_no)] = o

    def _watch(self) -> None:
        """The clients' connections, seen from here: the first one lost after the strike, and
        each client's next LogonAck."""
        if self.strike is None:
            return
        now = time.monotonic()
        for i, c in enumerate(self.clients):
            if not c.logged_on.is_set() and self.disconnected_at is None:
                self.disconnected_at = now
            if i not in self.relogged_at and c.logged_on.is_set() and \
                    c.stats["logons"] > self.sessions[i]["logons_before"]:
                self.relogged_at[i] = now

    async def _read(self, ci: int, c) -> None:
        """The client's reports as they come (without the SDK's per-report save: the drill's
        own process does not crash; its sessions are saved at the end)."""
        from gateway.aio import wait_set
        while True:
            c.wakeup.clear()
            while c.queue:
                self._report(ci, c.queue.popleft())
            if c.error is not None:
                self.error = self.error or f"client {self.users[ci][0]}: {c.error}"
                return
            await wait_set(c.wakeup, 0.1)

    def _report(self, ci: int, r) -> None:
        from gateway import client as sdk
        now = time.monotonic()
        o = None
        if isinstance(r, sdk.ExecutionReport | sdk.CancelReject):
            o = self.by_key.get((ci, r.cl_ord_id))
        elif isinstance(r, sdk.BusinessReject):
            o = self.by_key.get((ci, r.ref_id)) if r.ref_id is not None else \
                self.by_seq.get((ci, r.ref_seq))
        elif isinstance(r, sdk.NotApplied):
            self.not_applied += r.count
        elif isinstance(r, sdk.MassCancelReport):
            self.mass_cancelled.add((ci, r.cl_ord_id))
        elif isinstance(r, sdk.Logout):
            self.logouts.append(f"{self.users[ci][0]}: Logout {r.reason} {r.text}")
        if o is None:
            return
        if o.acked_at is None:
            o.acked_at = now
        if isinstance(r, sdk.BusinessReject) or (isinstance(r, sdk.ExecutionReport) and
                                                 r.exec_type in GW_FIRST):
            o.applied += 1
        if isinstance(r, sdk.BusinessReject):
            o.business_rejected = True
        elif isinstance(r, sdk.ExecutionReport) and r.exec_type == "new":
            o.accepted = True
        elif isinstance(r, sdk.ExecutionReport) and r.exec_type == "rejected":
            o.rejected = r.reason

    async def _tidy(self) -> None:
        """A mass cancel of the drill's symbol on each session (an order left resting when its
        partner was refused), its report awaited a few seconds."""
        import asyncio
        ids = []
        for c in self.clients:
            ids.append(await c.mass_cancel(self.symbol))
        end = time.monotonic() + 10
        while time.monotonic() < end and not all(
                (ci, i) in self.mass_cancelled for ci, i in enumerate(ids)):
            await asyncio.sleep(0.05)


# The drill's clients persist their sessions as the SDK does (before each send, after each
# processed report), minus the fsync (SessionState.sync False): an fsync per message would cap
# the load at a few hundred orders per second on a shared disk, and what the drill kills is
# the gateway, not its own process. DRILL_SYNC names this decision.
DRILL_SYNC = False


def _stream_last(topo, stream: str) -> int:
    """The highest seq of a stream any replicator holds now (0: none answers)."""
    from mq.control import ping
    best = 0
    for addr in topo.replicator_addrs():
        st = ping(addr, timeout_s=2.0) or {}
        best = max(best, int(((st.get("streams") or {}).get(stream) or {}).get("last") or 0))
    return best


def _started_mono(pid: int) -> float | None:
    """The time.monotonic() at which process ``pid`` started: its age from the kernel's
    start tick and uptime (Linux /proc; None elsewhere or when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def count_exec_reports(topo, stream: str, accounts: set, first_seq: int) -> dict:
    """{(account, client_order_id): ExecutionReports New or Rejected} in a TradingEngine's
    out stream from first_seq, for the given accounts (the replicator that holds most)."""
    from tradingengine import codec as te

    def count(rec, counts: dict) -> None:
        payload = bytes(rec[6])
        if not payload:
            return
        try:
            events = te.decode_events(payload)
        except ValueError:
            return
        for ev in events:
            if ev[0] == te.EXEC_REPORT and ev[3] in accounts and \
                    ev[1] in (te.EXEC_NEW, te.EXEC_REJECTED):
                key = (ev[3], ev[5])
                counts[key] = counts.get(key, 0) + 1
    return _furthest(topo, stream, first_seq, count)[1]


def _listen_of(gateway) -> tuple[str, int]:
    """(host, port) a gateway's clients connect to."""
    listen = gateway.extra.get("listen") or gateway.control
    host, _, port = listen[len("tcp://"):].rpartition(":") if listen.startswith("tcp://") \
        else listen.rpartition(":")
    return host.strip("[]"), int(port)


def gateway_of(topo):
    """The first gateway of a topology that trades through one, else None."""
    if not (topo.trading or {}).get("gateway"):
        return None
    return next((p for p in topo.procs if p.role == "gateway"), None)


def start_gateway_load(topo, gateway, sym: str, rate: int):
    """The drill's users (created and funded once) trading ``sym`` through ``gateway`` at
    ``rate`` orders/s from a thread of its own, logged on. (load, thread, {"out_streams",
    "start"}): each of their shards' TradingEngine out stream and its last seq before the load,
    for `gateway_orders`."""
    t = topo.trading or {}
    instruments = {i["symbol"]: (i["security_id"], i["tick"], i["lot"])
                   for i in t["instruments"]}
    users = gateway_users(topo)
    import logging
    logging.getLogger("seqex.client").setLevel(logging.WARNING)   # a line per resent order
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # writes into the killed connection
    n = int(t.get("n_shards") or 1)
    out_streams = {sh: t["shards"][sh]["out"] for sh in sorted({a % n for _u, _p, a in users})}
    # in.ce.<sym>'s last seq before out.te's: every out.te record after its mark reaches
    # in.ce.<sym> after that one's
    ce_in = topo.symbols[sym]["in"]
    ce_start = _stream_last(topo, ce_in)
    start = {sh: _stream_last(topo, s) for sh, s in out_streams.items()}
    host, port = _listen_of(gateway)
    load = GatewayLoad(host, port, users, instruments, sym,
                       str(topo.symbols[sym].get("lot_size", "1")),
                       os.path.join(os.path.abspath(topo.data_dir), GW_STATE_DIR), rate, topo)
    th = threading.Thread(target=load.run, name="drill-gateway-load", daemon=True)
    th.start()
    load.started.wait(60)
    if load.error or not load.clients or len(load.sessions) < len(users):
        load.stop.set()
        th.join(30)
        raise DrillError(f"the load could not start: {load.error or 'no logon in 60 s'}")
    return load, th, {"out_streams": out_streams, "start": start, "ce_in": ce_in,
                      "ce_start": ce_start,
                      "ce_bit": _topo.symbol_route(int(topo.symbols[sym]["symbol_id"]))}


def gateway_orders(topo, load: GatewayLoad, acct: dict, strike: float,
                   recovered: float | None) -> tuple[dict, bool]:
    """The gateway load's orders, once it has stopped: ``resumed_s``, ``latency_ms`` and
    ``orders`` for the report (each order answered once, and accepted or rejected exactly once
    in its TradingEngine's out stream), and whether they pass."""
    orders = list(load.orders)
    acked = [o for o in orders if o.acked_at is not None]
    after = [o for o in acked if o.sent_at >= strike]
    r: dict = {"resumed_s": _r(min(o.acked_at for o in after) - strike) if after else None}
    lat_b = [o.acked_at - o.sent_at for o in acked if o.sent_at < strike]
    lat_a = [o.acked_at - o.sent_at for o in after]
    r["latency_ms"] = _latency_ms(lat_b, lat_a)
    lost = [o for o in orders if o.acked_at is None]
    twice = [o for o in orders if o.applied > 1]
    accounts = {a for _u, _p, a in load.users}
    # each order accepted or rejected in its TradingEngine's out stream once (one refused by
    # a BusinessReject, throttled or shed, is not: the engine answered it so)
    ends = {sh: _stream_last(topo, s) for sh, s in acct["out_streams"].items()}

    def read() -> dict:
        got: dict = {}
        for sh, stream in acct["out_streams"].items():
            got.update(count_exec_reports(topo, stream, accounts, acct["start"][sh] + 1))
        return got

    def unseen(got: dict) -> list:
        return [o for o in orders if not o.business_rejected and
                got.get((o.account, o.cl_ord_id), 0) == 0]
    in_stream = _again(read, lambda got: not unseen(got), 0.5)
    missing = unseen(in_stream)
    stream_twice = [o for o in orders if in_stream.get((o.account, o.cl_ord_id), 0) > 1]
    # the hop the drills strike between the engines: every record of those out streams for
    # the load's symbol taken into its CrossEngine's in stream exactly once
    hops = [count_hop(topo, stream, acct["start"][sh], ends[sh], acct["ce_bit"],
                      acct["ce_in"], acct["ce_start"], _topo.SRC_TE_OUT | sh)
            for sh, stream in acct["out_streams"].items()]
    o_r = r["orders"] = {
        "sent": len(orders), "acknowledged": len(acked), "lost": len(lost),
        "applied_twice": len(twice), "not_applied_reports": load.not_applied,
        "in_te_out_stream": {"streams": sorted(acct["out_streams"].values()),
                             "missing": len(missing), "twice": len(stream_twice)},
        "sent_per_s": round(len(orders) / (orders[-1].sent_at - orders[0].sent_at), 1)
        if len(orders) > 1 and orders[-1].sent_at - orders[0].sent_at >= 1.0 else None,
        "accepted": sum(o.accepted for o in orders),
        "accepted_after_strike": sum(o.accepted for o in orders if o.sent_at >= strike),
        "rejected": sum(o.rejected is not None for o in orders),
        "rejected_by_reason": _by_reason(o.rejected for o in orders if o.rejected is not None),
        "business_rejects": sum(o.business_rejected for o in orders),
        "to_crossengine": hops,
        "resent_after_logon": sum(s.get("resent", 0) for s in load.sessions),
        "sent_during_outage": sum(1 for o in orders if o.sent_at >= strike and (
            recovered is None or o.sent_at < strike + recovered))}
    if lost:
        o_r["lost_cl_ord_ids"] = [(o.client, o.cl_ord_id) for o in lost[:20]]
    if twice or stream_twice:
        o_r["twice_cl_ord_ids"] = [(o.client, o.cl_ord_id) for o in (twice or stream_twice)[:20]]
    # service came back: an order sent after the strike was accepted, not only answered
    ok = bool(orders) and not (lost or twice or missing or stream_twice or load.error) and \
        all(not h["missing"] and not h["twice"] for h in hops) and \
        o_r["accepted_after_strike"] > 0
    return r, ok


def _by_reason(reasons) -> dict[str, int]:
    """{OrdRejReason in words: count} (PROTOCOL.md ExecutionReport.Reason when rejected)."""
    from gateway import wire
    names = {getattr(wire, k): k[len("ORD_REJ_"):].lower().replace("_", " ")
             for k in dir(wire) if k.startswith("ORD_REJ_")}
    out: dict[str, int] = {}
    for x in reasons:
        name = names.get(x, f"reason {x}")
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def count_hop(topo, out_stream: str, out_start: int, out_end: int, bit: int, in_stream: str,
              in_start: int, source: int) -> dict:
    """Records of ``out_stream`` in (out_start, out_end] whose route has ``bit``, against
    their copies in ``in_stream`` after in_start (source ``source``, source seq = the out
    record's seq): how many, how many not taken (counted again until none is missing or 30 s
    have passed: the in stream may be a moment behind) and how many taken twice."""
    def sent(rec, acc: dict) -> None:
        if rec[0] <= out_end and len(rec) > 7 and rec[7] & bit:
            acc[rec[0]] = 1

    def taken(rec, acc: dict) -> None:
        if rec[2] == source and out_start < rec[3] <= out_end:
            acc[rec[3]] = acc.get(rec[3], 0) + 1
    out_seqs = _furthest(topo, out_stream, out_start + 1, sent)[1]
    got = _again(lambda: _furthest(topo, in_stream, in_start + 1, taken)[1],
                 lambda got: all(ss in got for ss in out_seqs), 0.5)
    missing = [ss for ss in out_seqs if ss not in got]
    return {"from": out_stream, "to": in_stream, "records": len(out_seqs),
            "missing": len(missing), "twice": sum(1 for n in got.values() if n > 1)}


def run_gateway(data_dir: str, target: str | None = None, rate: int = 200,
                before_s: float = 2.0, after_s: float = 2.0, frozen_after_s: float = 3.0,
                timeout_s: float = 120.0, done: list[str] | None = None) -> dict:
    """``kill-gateway``: SIGKILL of a gateway (default ``gateway0``) under a load through it;
    the supervisor restarts it and the clients resume their sessions (docs/operations.md).
    ``done``: as run()'s."""
    done = [] if done is None else done
    from deploy.supervisor import read_state
    topo, supervisor = read_state(data_dir)
    t = topo.trading or {}
    if not t.get("gateway"):
        raise DrillError("kill-gateway: this cluster runs no gateway (its topology has no "
                         "[trading] gateway)")
    target = target or next((p.name for p in topo.procs if p.role == "gateway"), "gateway0")
    try:
        spec = topo.by_name(target)
    except StopIteration:
        raise DrillError(f"no process {target!r} in the running topology") from None
    if spec.role != "gateway":
        raise DrillError(f"kill-gateway: {target} is not a gateway")
    pid = _pid_of(data_dir, target)
    host, port = _listen_of(spec)
    sym = next(iter(topo.symbols), None)
    if sym is None:
        raise DrillError("the cluster has no symbol to put a load on")
    load, th, acct = start_gateway_load(topo, spec, sym, rate)
    time.sleep(before_s)
    report: dict = {"drill": "kill-gateway", "target": target, "targets": [target],
                    "role": "gateway", "stream": "", "pid": pid, "pids": {target: pid},
                    "rate_per_s": rate, "gateway": f"{host}:{port}",
                    "users": [u for u, _p, _a in load.users]}
    strike_wall, strike = time.time(), time.monotonic()
    load.strike = strike
    os.kill(pid, signal.SIGKILL)
    done.append(f"{target} (pid {pid}) killed (SIGKILL; its supervisor restarts it)")
    report["action"] = "SIGKILL"
    report["at_unix"] = round(strike_wall, 6)
    report["at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(strike_wall)) + \
        f".{int(strike_wall * 1e6) % 1_000_000:06d}Z"
    down = restarted = recovered = None
    new_pid = None
    deadline = strike + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        if down is None and _state(topo, data_dir, target, frozen_after_s) in ("DOWN",
                                                                                 "FROZEN"):
            down = now - strike
        if new_pid is None:
            new = _child_running(supervisor, spec) or (_beats(data_dir).get(target) or {}
                                                       ).get("pid")
            if isinstance(new, int) and new != pid:
                # when the process started (the kernel's clock), not when this loop saw it:
                # the clients may log on again before a busy machine lets the loop look
                began = _started_mono(new)
                new_pid = new
                restarted = now - strike if began is None else \
                    min(now - strike, max(0.0, began - strike))
        if len(load.relogged_at) == len(load.users) and restarted is not None:
            recovered = max(load.relogged_at.values()) - strike
            break
        if load.error:
            break
        time.sleep(0.02)
    time.sleep(after_s)
    load.stop.set()
    th.join(120)
    seen = load.disconnected_at
    report.update(detected_s=_r(None if seen is None else seen - strike),
                  status_down_s=_r(down), restarted_s=_r(restarted), recovered_s=_r(recovered),
                  new_pid=new_pid, new_pids={target: new_pid} if new_pid else {})
    if load.error:
        report["load_error"] = load.error
    if load.logouts:
        report["logouts"] = load.logouts[:10]
    orders, orders_ok = gateway_orders(topo, load, acct, strike, recovered)
    report.update(orders)
    report["sessions"] = [dict(s, same_session=s.get("session_id_after") == s["session_id"]
                               and s.get("new_session_after") is False)
                          for s in load.sessions]
    report["hashes"] = replica_hashes(topo)
    report["rebuild"] = rebuild_check(topo, report["hashes"])
    for h in report["hashes"].values():
        h.pop("answers", None)
    report["audit"] = global_audit(topo)
    report["ok"] = (report["audit"]["ok"] and orders_ok and recovered is not None
                    and report["detected_s"] is not None
                    and report["resumed_s"] is not None
                    and all(s["same_session"] for s in report["sessions"])
                    and all(h["equal"] for h in report["hashes"].values())
                    and len(report["rebuild"]) == len(report["hashes"])
                    and all(r["hash_equal"] and r.get("audit", "balanced") == "balanced"
                            for r in report["rebuild"].values()))
    return report


def describe_gateway(r: dict) -> str:
    """The kill-gateway report for a terminal."""
    def s(x):
        return "never" if x is None else f"{x:.3f} s"
    o = r["orders"]
    lines = [f"drill kill-gateway: SIGKILL of {r['target']} (gateway {r['gateway']}; pid "
             f"{r['pid']}) at {r['at']}, under {r['rate_per_s']} orders/s from "
             f"{', '.join(r['users'])}",
             f"  detected (a client lost its connection): {s(r['detected_s'])}; status "
             f"DOWN: {s(r.get('status_down_s'))}",
             f"  restarted by the supervisor: {s(r['restarted_s'])} (new pid {r['new_pid']})",
             f"  recovered (every client logged on again): {s(r['recovered_s'])}",
             f"  service: first order acknowledged after the fault: {s(r['resumed_s'])}"]
    for ss in r["sessions"]:
        lines.append(f"  {ss['user']}: session {ss['session_id']} "
                     + ("resumed" if ss["same_session"] else "NOT RESUMED")
                     + f" ({ss.get('logons')} logons, {ss.get('resent')} messages resent with "
                     f"their SeqNos)")
    lat = r["latency_ms"]
    lines.append(f"  order latency ms before: p50 {lat['before']['p50']} p99 "
                 f"{lat['before']['p99']} max {lat['before']['max']}; after: p50 "
                 f"{lat['after']['p50']} p99 {lat['after']['p99']} max {lat['after']['max']}")
    st = o["in_te_out_stream"]
    lines.append(f"  orders: sent {o['sent']} ({o['sent_during_outage']} while the gateway "
                 f"was down), acknowledged {o['acknowledged']}, lost {o['lost']}, applied "
                 f"twice {o['applied_twice']}; in {', '.join(st['streams'])}: missing "
                 f"{st['missing']}, twice {st['twice']}")
    lines += _answer_lines(o) + _hop_lines(o)
    rest = describe({**r, "drill": "kill-gateway", "hashes": r["hashes"],
                     "latency_ms": r["latency_ms"]}).splitlines()
    lines += [ln for ln in rest if ln.startswith(("  in.", "  global audit", "    "))]
    for x in ("load_error",):
        if r.get(x):
            lines.append(f"  load: {r[x]}")
    lines.append(_verdict(r))
    return "\n".join(lines)
