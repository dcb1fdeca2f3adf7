"""Prometheus metrics of every seqex process, and the cluster's status as JSON.

Every long-running process (replicator, sequencer, mirror, replica, gateway, oracle, market
data) serves
``/metrics`` in the Prometheus text format (prometheus-client) when ``SEQEX_METRICS=HOST:PORT``
is in its environment. ``assign()`` gives each process of a plan its address: the process's
host address from the topology's ``[hosts]`` table, and a port from the first one above every
port of the plan (or, for a plan at the top of the port range, the ports just below it), in
plan order, so every host that reads the topology file agrees on every
metrics address (`seqex status --json` lists them, `seqex deploy systemd` writes them into the
units, the supervisor passes them to its children).

What a scrape shows is what the process itself answers to PING at that moment (docs/
operations.md, "Metrics"): the exporter's thread sends PING to the process's own control
endpoint and turns the answer into metric families. Nothing is shared with the process's loop,
so no lock is taken on the hot path and a scrape never reads half-updated state; a process
whose loop is stuck answers no PING, and its scrape says ``seqex_up 0`` after at most one
second (a process stopped whole, SIGSTOP, answers no scrape: Prometheus's own ``up`` is 0). The
gateway and the market-data publisher, which have no ZeroMQ control endpoint, hand their own
``status()`` (plain counters and queue lengths, read between two statements of the event
loop) instead.

Names: ``seqex_<role>_<what>[_<unit>]``; monotonic counts are counters (``_total``), positions
(seqs), depths, ages and rates are gauges. Labels: ``process``, ``stream``, and where one
process has many of a thing, ``replicator``, ``upstream``, ``shard``, ``symbol``.

``status_doc()`` is `seqex status --json`: per process its plan (role, host, stream, control
and metrics addresses), its state (``up``, ``DOWN``, ``FROZEN``, ``GAVE UP``, ``not
answering``), the age of its last answer, and its whole PING answer.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

ENV = "SEQEX_METRICS"          # HOST:PORT this process serves /metrics on
ENV_PROCESS = "SEQEX_PROCESS"  # the process's name in the topology (metrics and logs say it)

# Keys of a PING answer that only ever grow: exported as counters (``<key>_total``).
COUNTERS = frozenset({
    # masters (mq/master.py, mq/sequencer.py, mq/mirror.py)
    "sequenced", "frames", "duplicates", "refused", "unauthorized", "reconciled",
    "tail_records", "accepted", "bad_batches", "held_duplicates", "dropped_held",
    "held_frames", "gaps_reported", "copies_compared", "divergences",
    # replicator/server.py
    "appended_records", "commits", "replayed_bytes", "quarantined", "damaged_reads", "errors",
    "disk_full_refusals", "duplicate_records",
    # mq/replica.py
    "applied", "snapshots", "published_frames", "send_blocked", "gaps_told", "resends",
    "bad_snapshots", "snapshot_failures",
    # gateway/server.py
    "connections", "refused_connections", "evicted_connections", "logons", "logon_rejects", "auth_failures",
    "logouts_sent", "protocol_errors", "client_messages", "throttled", "shed",
    "retransmit_rejects", "heartbeat_timeouts", "logon_timeouts", "core_timeouts",
    "slow_consumers", "session_messages", "bad_payloads", "auth_cached", "auth_scrypt",
    "auth_joined", "auth_busy", "auth_timeouts", "probes", "journal_reads",
    "journal_read_failures", "index_writes", "index_write_failures",
    # deploy/oracle.py
    "sent", "intervals"})

# Keys given their own families below (or not numbers worth a series).
_SPECIAL = frozenset({
    "role", "stream", "streams", "name", "replica_role", "epoch", "last", "committed",
    "replicators", "upstreams", "alarms", "refusals", "seq", "lag", "rate", "snapshot_seq",
    "snapshot_age_s", "state", "source_kind", "marks", "connected", "damaged_streams",
    "clients", "snapshot_requests", "resnapshots", "slow_consumer_disconnects", "caught_up",
    "dropped_messages",
    "disk_full", "queue_depth", "in_flight", "ts_ns", "restored_from", "source"})

_ENDPOINT = re.compile(r"tcp://([^:/]+|\[[^\]]+\]):(\d+)")


class MetricsError(ValueError):
    """The metrics ports do not fit (the message names how many and where)."""


# -- addresses --------------------------------------------------------------------------------

def plan_ports(topo) -> list[int]:
    """Every TCP port the plan's processes bind or name (controls, feeds, the gateway)."""
    ports = []
    for p in topo.procs:
        for text in [p.control, *p.args, *(str(v) for v in p.extra.values())]:
            ports += [int(m.group(2)) for m in _ENDPOINT.finditer(text)]
    return ports


def host_address(topo, spec) -> str:
    """The address of a process's host (from its control endpoint: the topology's [hosts])."""
    m = _ENDPOINT.match(spec.control)
    return m.group(1).strip("[]") if m else "127.0.0.1"


def assign(topo):
    """Give every process of the plan its metrics address (``spec.extra["metrics"]``): its
    host's address, the ports after the plan's highest one, in plan order (below the plan's
    lowest when the plan ends too near 65535). Returns topo."""
    used = plan_ports(topo)
    n = len(topo.procs)
    first = max(used, default=0) + 1
    if first + n - 1 > 65535:          # a plan at the top of the range: the ports below it
        first = min(used, default=0) - n
        if first < 1:
            raise MetricsError(f"no room for the {n} metrics ports of {n} processes next to "
                               f"the plan's ports; choose another base_port")
    for i, spec in enumerate(topo.procs):
        spec.extra["metrics"] = f"{host_address(topo, spec)}:{first + i}"
    return topo


def control_of(verb: str, args) -> str | None:
    """The control endpoint (answers PING) of a process verb, from its parsed arguments."""
    if verb == "replicator":
        return args.bind
    if verb == "sequencer":
        return args.producers
    if verb == "mirror":
        return args.inputs
    if verb == "replica":
        return args.control
    if verb == "oracle":
        import json
        try:
            conf = json.loads(args.config)
        except ValueError:
            return None
        return conf.get("control") if isinstance(conf, dict) else None
    return None


def stream_of(verb: str, args) -> str:
    return getattr(args, "stream", None) or ""


# -- the exporter -----------------------------------------------------------------------------

def families(status: dict | None, process: str, role: str, stream: str = "") -> Iterator[Any]:
    """The metric families of one PING answer (None: the process did not answer)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily("seqex_up", "1 if the process answered its status request, else 0",
                           labels=["process", "role"])
    up.add_metric([process, role], 0 if status is None else 1)
    yield up
    if status is None:
        return
    base = {"process": process}
    if stream:
        base["stream"] = stream

    def gauge(name: str, doc: str, value: Any, **labels: str) -> Any:
        lab = {**base, **labels}
        g = GaugeMetricFamily(name, doc, labels=list(lab))
        g.add_metric(list(lab.values()), float(value))
        return g

    kind = status.get("role", role)
    if kind in ("sequencer", "mirror"):
        last = int(status.get("last") or 0)
        yield gauge("seqex_stream_last_seq", "the highest seq this master has stamped", last)
        yield gauge("seqex_stream_commit_seq", "the highest seq committed (the ack policy "
                    "holds) and fanned out", status.get("committed") or 0)
        yield gauge("seqex_stream_epoch", "this master's epoch", status.get("epoch") or 0)
        acked = GaugeMetricFamily("seqex_stream_replicator_acked_seq",
                                  "the highest contiguous seq each replicator acknowledged",
                                  labels=[*base, "replicator"])
        lag = GaugeMetricFamily("seqex_stream_replication_lag_records",
                                "records stamped and not yet acknowledged by the replicator",
                                labels=[*base, "replicator"])
        for lk in status.get("replicators") or []:
            a = int(lk.get("acked") or 0)
            acked.add_metric([*base.values(), lk.get("addr", "?")], a)
            lag.add_metric([*base.values(), lk.get("addr", "?")], max(0, last - a))
        yield acked
        yield lag
        ups = GaugeMetricFamily("seqex_sequencer_upstream_next_seq", "the next seq this "
                                "sequencer takes from each upstream stream",
                                labels=[*base, "upstream"])
        for name, up_ in sorted((status.get("upstreams") or {}).items()):
            ups.add_metric([*base.values(), name], up_.get("next") or 0)
        yield ups
        if kind == "mirror":
            yield gauge("seqex_mirror_alarms", "divergence alarms held (hot replicas whose "
                        "output differed from the first copy)", len(status.get("alarms") or []))
    elif kind == "replicator":
        fams = {k: GaugeMetricFamily(f"seqex_replicator_{k}", doc,
                                     labels=["process", "stream"])
                for k, doc in (("last_seq", "the highest seq stored"),
                               ("commit_seq", "the highest seq known committed"),
                               ("epoch", "the highest epoch seen (fencing)"))}
        for name, s in sorted((status.get("streams") or {}).items()):
            fams["last_seq"].add_metric([process, name], s.get("last") or 0)
            fams["commit_seq"].add_metric([process, name], s.get("commit") or 0)
            fams["epoch"].add_metric([process, name], s.get("epoch") or 0)
        yield from fams.values()
        yield gauge("seqex_replicator_disk_full", "1 while the store refuses writes for want "
                    "of room", 1 if status.get("disk_full") else 0)
        yield gauge("seqex_replicator_damaged_streams", "streams whose store is damaged "
                    "(quarantined)", len(status.get("damaged_streams") or []))
    elif kind == "replica":
        seq = int(status.get("seq") or 0)
        snap = int(status.get("snapshot_seq") or 0)
        yield gauge("seqex_replica_applied_seq", "the last seq applied to the engine", seq)
        yield gauge("seqex_replica_lag_records", "highest seq seen on the feed minus applied",
                    status.get("lag") or 0)
        yield gauge("seqex_replica_rate_per_s", "records applied per second (recent)",
                    status.get("rate") or 0)
        yield gauge("seqex_replica_hot", "1 for a hot replica (publishes), 0 for warm",
                    1 if status.get("replica_role") == "hot" else 0)
        yield gauge("seqex_replica_snapshot_seq", "the seq of the newest snapshot", snap)
        yield gauge("seqex_replica_snapshot_age_records", "records applied since the newest "
                    "snapshot", max(0, seq - snap))
        if status.get("snapshot_age_s") is not None:
            yield gauge("seqex_replica_snapshot_age_seconds", "seconds since the newest "
                        "snapshot was taken (or since start, if none)", status["snapshot_age_s"])
    elif kind == "gateway":
        depth = GaugeMetricFamily("seqex_gateway_queue_depth", "client records queued for a "
                                  "shard's in.te stream, not yet handed to its producer",
                                  labels=["process", "shard"])
        flight = GaugeMetricFamily("seqex_gateway_in_flight_records", "records handed to a "
                                   "shard's producer that the shard has not yet applied",
                                   labels=["process", "shard"])
        for shard, d in enumerate(status.get("queue_depth") or []):
            depth.add_metric([process, str(shard)], d)
        for shard, d in enumerate(status.get("in_flight") or []):
            flight.add_metric([process, str(shard)], d)
        yield depth
        yield flight
    elif kind == "marketdata":
        yield from _marketdata_families(status, process)
    elif kind == "oracle":
        marks = GaugeMetricFamily("seqex_oracle_mark_ticks", "the simulated mark price, ticks",
                                  labels=["process", "symbol"])
        for sym, ticks in sorted((status.get("marks") or {}).items()):
            marks.add_metric([process, sym], ticks)
        yield marks
    refused = CounterMetricFamily("seqex_auth_refusals", "messages refused for the sender's "
                                  "role (mq/auth.py), by reason", labels=["process", "reason"])
    by_reason: dict[str, int] = {}
    for reasons in (status.get("refusals") or {}).values():
        for reason, n in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + int(n)
    for reason, n in sorted(by_reason.items()):
        refused.add_metric([process, reason], n)
    yield refused
    # Every other number the process reports, under its own name.
    for key, value in sorted(status.items()):
        if key in _SPECIAL or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name = f"seqex_{kind}_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"
        if key in COUNTERS:
            c = CounterMetricFamily(name, f"{kind} {key.replace('_', ' ')} (PING: {key})",
                                    labels=list(base))
            c.add_metric(list(base.values()), value)
            yield c
        else:
            yield gauge(name, f"{kind} {key.replace('_', ' ')} (PING: {key})", value)


def _marketdata_families(status: dict, process: str) -> Iterator[Any]:
    """The market-data publisher (gateway/marketdata/publisher.py status()): per out stream
    its applied seq and lag, per feed its clients and what it sent."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    per_stream = (("applied_seq", "the last seq of the out stream applied to the book",
                   "seq"),
                  ("seen_seq", "the highest seq of the out stream seen (live feed, replay)",
                   "seen"),
                  ("lag_records", "seen minus applied", "lag"),
                  ("replaying", "1 while catching up from a replicator, 0 on the live feed",
                   "replaying"))
    for suffix, doc, key in per_stream:
        g = GaugeMetricFamily(f"seqex_marketdata_{suffix}", doc, labels=["process", "stream"])
        for stream, st in sorted((status.get("streams") or {}).items()):
            g.add_metric([process, stream], float(st.get(key) or 0))
        yield g
    g = GaugeMetricFamily("seqex_marketdata_caught_up", "1 once every out stream was "
                          "replayed up to the live feed", labels=["process"])
    g.add_metric([process], 1.0 if status.get("caught_up") else 0.0)
    yield g
    g = GaugeMetricFamily("seqex_marketdata_clients", "clients connected now (binary: logged "
                          "on; websocket: open WebSocket connections)", labels=["process", "feed"])
    for feed, n in sorted((status.get("clients") or {}).items()):
        g.add_metric([process, feed], n)
    yield g
    for key, name, doc in (
            ("sent", "messages_sent", "messages sent to clients (binary frames, WebSocket "
             "messages), snapshots included"),
            ("slow_consumer_disconnects", "slow_consumer_disconnects", "clients disconnected "
             "for reading too slowly (binary Logout(7), WebSocket closed)"),
            ("snapshot_requests", "snapshot_requests", "snapshots asked for (binary "
             "MarketDataRequest, HTTP /api/v1/depth)"),
            ("resnapshots", "resnapshots", "fresh snapshots sent to a client that fell "
             "behind and drained"),
            ("dropped_messages", "dropped_messages", "updates not sent to a client that fell "
             "behind (it gets a fresh snapshot)")):
        c = CounterMetricFamily(f"seqex_marketdata_{name}", doc, labels=["process", "feed"])
        for feed, n in sorted((status.get(key) or {}).items()):
            c.add_metric([process, feed], n)
        yield c


class StatusCollector:
    """A prometheus-client collector that asks the process for its status on every scrape."""

    def __init__(self, status_fn: Callable[[], dict | None], process: str, role: str,
                 stream: str = ""):
        self.status_fn, self.process, self.role, self.stream = status_fn, process, role, stream

    def collect(self) -> Iterator[Any]:
        started = time.monotonic()
        try:
            status = self.status_fn()
        except Exception:   # a scrape must never take the process down
            status = None
        yield from families(status, self.process, self.role, self.stream)
        from prometheus_client.core import GaugeMetricFamily
        g = GaugeMetricFamily("seqex_scrape_seconds", "how long the status request took",
                              labels=["process"])
        g.add_metric([self.process], time.monotonic() - started)
        yield g


DRILLS_FILE = "drills.jsonl"   # in the cluster's data directory: one line per `seqex drill`
DRILL_PHASES = ("detected", "restarted", "recovered", "resumed")


class DrillCollector:
    """Drill outcomes, from the lines `seqex drill` appends to ``<data>/drills.jsonl``: served
    by every replicator of the cluster (the file is its data directory's parent's), so each
    host's scrape carries the drills run there. A missing file is no drill yet; a bad line is
    skipped."""

    def __init__(self, path: str):
        self.path = path

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        runs: dict[tuple[str, str], int] = {}
        last: dict[str, dict] = {}
        try:
            with open(self.path) as f:
                for line in f:
                    try:
                        d = json.loads(line)
                        name, ok = str(d["drill"]), bool(d["ok"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    key = (name, "ok" if ok else "failed")
                    runs[key] = runs.get(key, 0) + 1
                    last[name] = d
        except OSError:
            pass
        c = CounterMetricFamily("seqex_drills", "`seqex drill` runs by drill and outcome",
                                labels=["drill", "outcome"])
        for (name, outcome), n in sorted(runs.items()):
            c.add_metric([name, outcome], n)
        yield c
        ok = GaugeMetricFamily("seqex_drill_last_ok", "1 if the drill's last run passed",
                               labels=["drill"])
        at = GaugeMetricFamily("seqex_drill_last_timestamp_seconds", "when the drill last "
                               "struck (Unix time)", labels=["drill"])
        secs = GaugeMetricFamily("seqex_drill_last_seconds", "the drill's last run: strike to "
                                 "detected, restarted, recovered, and first order acknowledged "
                                 "after it (resumed)", labels=["drill", "phase"])
        lost = GaugeMetricFamily("seqex_drill_last_orders", "the drill's last run: orders "
                                 "lost and applied twice (both must be 0)",
                                 labels=["drill", "what"])
        for name, d in sorted(last.items()):
            ok.add_metric([name], 1.0 if d.get("ok") else 0.0)
            if isinstance(d.get("at_unix"), (int, float)):
                at.add_metric([name], float(d["at_unix"]))
            for phase in DRILL_PHASES:
                v = d.get(f"{phase}_s")
                if isinstance(v, (int, float)):
                    secs.add_metric([name, phase], float(v))
            for what in ("lost", "applied_twice"):
                if isinstance(d.get(what), int):
                    lost.add_metric([name, what], float(d[what]))
        yield from (ok, at, secs, lost)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{ENV}={text!r}: must be HOST:PORT")
    return host.strip("[]"), int(port)


def serve(address: str, status_fn: Callable[[], dict | None], process: str, role: str,
          stream: str = "", drills: str | None = None):
    """Serve /metrics on address (HOST:PORT) from a daemon thread; returns (server, thread).
    Only this process's families are served (its own registry: no Python runtime metrics)."""
    from prometheus_client import CollectorRegistry
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_fn, process, role, stream))
    if drills:
        registry.register(DrillCollector(drills))
    return _start_server(host, port, registry)


METRICS_MAX_OPEN = 8        # connections an exporter serves at once
METRICS_TIMEOUT_S = 5.0     # a connection silent this long (mid-request) is closed


def _start_server(host: str, port: int, registry):
    """prometheus-client's WSGI server with bounds: it starts a thread per connection and
    reads without a timeout, so idle connections to the metrics port (which lives inside every
    engine process) would each hold a thread and a file descriptor for ever, until the process
    cannot open a socket of its own. Here every read times out after METRICS_TIMEOUT_S, and at
    METRICS_MAX_OPEN open connections the oldest is shut down to make room for the new one (a
    scrape takes milliseconds; only a connection that sends nothing stays that long)."""
    import socket
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import (
        ThreadingWSGIServer,
        _get_best_family,
        _SilentHandler,
        make_wsgi_app,
    )

    class Handler(_SilentHandler):
        timeout = METRICS_TIMEOUT_S   # StreamRequestHandler sets it on the socket

        def parse_request(self) -> bool:
            ok = super().parse_request()
            if ok:   # a whole request: a scrape being answered, evicted last
                self.server.answering(self.request)
            return ok

    class Server(ThreadingWSGIServer):
        evicted = 0
        failed = 0        # connections that ended in an error (handle_error)
        report_at = 0.0   # the next time one that is not a socket error may be logged
        request_queue_size = 128   # listen backlog (socketserver's default is 5)

        def __init__(self, *args, **kwargs) -> None:
            self.open: dict[int, socket.socket] = {}   # by arrival, oldest first
            self.busy: set[int] = set()   # those that sent a whole request
            self.lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def answering(self, request) -> None:
            with self.lock:
                self.busy.add(id(request))

        def process_request(self, request, client_address) -> None:
            with self.lock:
                while len(self.open) >= METRICS_MAX_OPEN:
                    # the oldest that has not sent a whole request yet (an idle or slow
                    # connection's), else the oldest: a flood of idle connections does not
                    # cut off the scrapes being answered
                    key = next((k for k in self.open if k not in self.busy),
                               next(iter(self.open)))
                    oldest = self.open.pop(key)
                    self.busy.discard(key)
                    self.evicted += 1
                    try:   # its thread's read returns at once and the thread ends
                        oldest.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.open[id(request)] = request
            super().process_request(request, client_address)

        def shutdown_request(self, request) -> None:
            with self.lock:
                self.open.pop(id(request), None)
                self.busy.discard(id(request))
            super().shutdown_request(request)

        def handle_error(self, request, client_address) -> None:
            """socketserver prints a traceback to stderr (the process's log) for every failed
            connection: anyone who can reach the port could grow the log without bound with
            half-open connections. A connection that timed out, reset or was shut down here
            is closed and counted; anything else is one log line a minute."""
            exc = sys.exc_info()[1]
            self.failed += 1
            if isinstance(exc, OSError):
                return
            now = time.monotonic()
            if now >= self.report_at:
                self.report_at = now + 60.0
                logging.getLogger("seqex.metrics").warning(
                    "a metrics request from %s failed (%s: %s); %d failed connections so far",
                    client_address[0] if client_address else "?", type(exc).__name__, exc,
                    self.failed)

    Server.address_family, addr = _get_best_family(host, port)
    httpd = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


def start_for_process(verb: str, args) -> bool:
    """In a process verb: serve metrics if SEQEX_METRICS is set. The status comes from PING on
    the process's own control endpoint (the gateway passes its own, see cmd_gateway).
    Returns whether an exporter was started. A metrics port that cannot be bound is logged and
    the process runs on: metrics are never worth an outage."""
    address = os.environ.get(ENV)
    if not address or verb in ("gateway", "marketdata"):
        return False
    control = control_of(verb, args)
    if control is None:
        return False
    from mq.control import ping

    def status() -> dict | None:
        return ping(control, timeout_s=1.0)

    return start_exporter(address, status, verb, args)


def start_exporter(address: str, status: Callable[[], dict | None], verb: str, args) -> bool:
    process = os.environ.get(ENV_PROCESS) or getattr(args, "name", None) \
        or getattr(args, "key", None) or verb
    try:
        data = getattr(args, "data", None) if verb == "replicator" else None
        drills = os.path.join(os.path.dirname(os.path.abspath(data)), DRILLS_FILE) if data \
            else None
        serve(address, status, process, verb, stream_of(verb, args), drills)
    except (OSError, ValueError) as exc:
        logging.getLogger("seqex.metrics").error("metrics not served on %s: %s", address, exc)
        return False
    logging.getLogger("seqex.metrics").info("metrics on http://%s/metrics", address)
    return True


def scrape(address: str, timeout_s: float = 2.0) -> dict[tuple[str, tuple], float]:
    """Read a /metrics page: {(name, sorted label items): value} (tests, `seqex drill`)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- `seqex status --json` --------------------------------------------------------------------

def status_doc(topo, given_up: dict[str, str] | None = None,
               beats: dict[str, dict] | None = None, frozen_after_s: float = 3.0) -> dict:
    """The cluster as JSON: every process's plan, state, last answer and status."""
    from deploy.supervisor import frozen_standby_advice, master_state, probe, silent_state
    given_up = given_up or {}
    beats = beats or {}
    out = []
    threads, answers = [], {}

    def pid_of(spec) -> int | None:
        pid = (beats.get(spec.name) or {}).get("pid")
        return pid if isinstance(pid, int) else None

    def ask(spec) -> None:
        # a master's standby waiting for its lock binds nothing; a dead master's control
        # endpoint answers for its standby, which took over
        if master_state(spec, pid_of(spec)) is None:
            answers[spec.name] = probe(spec, web=True)

    for spec in topo.procs:   # in parallel: a cluster with frozen processes answers in 0.5 s
        t = threading.Thread(target=ask, args=(spec,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    for spec in topo.procs:
        st = answers.get(spec.name)
        beat = beats.get(spec.name) or {}
        pid = beat.get("pid") if isinstance(beat.get("pid"), int) else None
        entry: dict[str, Any] = {
            "process": spec.name, "role": spec.role, "host": spec.host, "stream": spec.stream,
            "control": spec.control, "metrics": spec.extra.get("metrics"), "pid": pid}
        master = master_state(spec, pid)
        if master == "standby":
            # it binds nothing and answers no PING: its live, running pid is its answer
            entry.update(state="standby", answered_s_ago=None, status=None)
        elif master == "frozen standby":
            entry.update(state="FROZEN", answered_s_ago=None, status=None,
                         advice=frozen_standby_advice(spec.name, pid))
        elif st is not None:
            entry.update(state="up", answered_s_ago=0.0, status=st)
        else:
            state, silent, why = silent_state(spec.name, beat, given_up, frozen_after_s)
            entry.update(state=state, answered_s_ago=silent, status=None)
            if why:
                entry["advice"] = why
        out.append(entry)
    return {"at": time.time(), "data_dir": topo.data_dir, "processes": out,
            # a standby master waiting for its lock is well: it counts as up
            "up": sum(e["state"] in ("up", "standby") for e in out),
            "standby": sum(e["state"] == "standby" for e in out), "total": len(out)}
