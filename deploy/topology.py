"""Topology: which processes run where, on which ports and cores, with which data directory.

A topology is a TOML file (DEFAULT below is the embedded one: everything on this machine over
loopback, data in ./seqex-data). ``load()`` reads it and ``validate()`` checks it whole before
anything starts: every key's type and range, unknown keys, names, hosts and the port range.
A problem raises ``TopologyError`` naming the file, the line and the key. From a valid file,
``plan()`` derives the exact command line of every process, in start order: replicators, then
per symbol the in.ce sequencer, the out.ce mirror and the CrossEngine replicas (hot first, then
warm). Ports are given out in that order from ``base_port``, so every host that reads the same
file agrees on every address.

Units: a symbol's ``tick_size`` and ``lot_size`` are decimals in the contract's units (the
quote currency per tick, the base asset per lot). The CrossEngine works in integer ticks and
lots only (its own tick is 1); clients convert at the edge (deploy/client.py, deploy/decode.py).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import tomllib

DEFAULT = """
[cluster]
data_dir = "seqex-data"      # relative to the working directory
base_port = 7100             # every process's ports are given out from here, in plan order
cores = []                   # cores to pin replicas to, round-robin; empty: all of this machine's
tick_ms = 100

[hosts]
local = "127.0.0.1"          # name -> address; `seqex up --host NAME` starts that host's part

[[replicator]]
name = "replicator0"
durability = "os"

[[replicator]]
name = "replicator1"
durability = "os"

[[replicator]]
name = "replicator2"         # three at quorum: any one may die or freeze, intake goes on
durability = "os"

[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = "1"              # the price step, in USDT (a decimal: "0.5", "0.01")
lot_size = "1"               # the quantity step, in contracts
min_qty = 1                  # lots
max_qty = 1000000            # lots
in_policy = "quorum"         # ack policy of in.ce.BTCUSDT: 2 of the 3 replicators
out_policy = "first"         # ack policy of out.ce.BTCUSDT (none: not replicated)
hot = 2
warm = 1
snapshot_every = 100000
"""

MAX_ORDERS = 10_000_000                 # the CrossEngine's default order pool
MAX_QTY_LOTS = (1 << 62) // MAX_ORDERS - 1  # the engine needs max_orders * max_qty < 2**62
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class TopologyError(ValueError):
    """A topology that cannot run; the message names the file, line and key."""


@dataclass
class ProcSpec:
    name: str
    role: str                 # replicator, sequencer, mirror, replica-hot, replica-warm
    host: str
    args: list[str]
    control: str              # the endpoint that answers PING
    stream: str = ""
    cpu: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Topology:
    data_dir: str
    procs: list[ProcSpec]
    symbols: dict[str, dict]

    def by_name(self, name: str) -> ProcSpec:
        return next(p for p in self.procs if p.name == name)

    def replicator_addrs(self) -> list[str]:
        return [p.control for p in self.procs if p.role == "replicator"]

    def symbol_of_stream(self, stream: str) -> dict | None:
        """The symbol table of in.ce.SYM / out.ce.SYM, or None."""
        for s in self.symbols.values():
            if stream in (s["in"], s["out"]):
                return s
        return None

    def to_json(self) -> str:
        return json.dumps({"data_dir": self.data_dir, "symbols": self.symbols,
                           "procs": [p.__dict__ for p in self.procs]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        d = json.loads(text)
        return cls(d["data_dir"], [ProcSpec(**p) for p in d["procs"]], d["symbols"])


# -- validation -------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


def _lines(text: str) -> dict[tuple[str, int, str], int]:
    """(table, index, key) -> line number of every `key = value` line, and (table, index, "")
    -> the line of each table's header. Arrays of tables count from 0; plain tables are 0."""
    where: dict[tuple[str, int, str], int] = {}
    counts: dict[str, int] = {}
    table, index = "", 0
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            table = m.group(2).strip('"')
            if m.group(1) == "[[":
                counts[table] = counts.get(table, -1) + 1
                index = counts[table]
            else:
                index = 0
            where.setdefault((table, index, ""), no)
            continue
        m = _KEY.match(line)
        if m:
            where.setdefault((table, index, m.group(1).strip('"')), no)
    return where


class _Checker:
    """Collects every problem of one topology, each with its file, line and key."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.where = _lines(text)
        self.problems: list[str] = []

    def fail(self, table: str, index: int | None, key: str, problem: str) -> None:
        line = (self.where.get((table, index or 0, key)) or self.where.get((key, 0, ""))
                or self.where.get((table, index or 0, "")))
        name = table if index is None else f"{table}[{index}]"
        if key:
            name = f"{name}.{key}" if name else key
        at = f"{self.path}:{line}" if line else self.path
        self.problems.append(f"{at}: {name}: {problem}")

    def known(self, table: str, index: int | None, d: dict, keys: set[str]) -> None:
        for k in d:
            if k not in keys:
                self.fail(table, index, k, f"unknown key (known: {', '.join(sorted(keys))})")

    def integer(self, table: str, index: int | None, d: dict, key: str, default: int,
                lo: int, hi: int) -> int:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(table, index, key, f"must be an integer, got {v!r}")
            return default
        if not lo <= v <= hi:
            self.fail(table, index, key, f"must be in {lo} .. {hi}, got {v}")
            return default
        return v

    def choice(self, table: str, index: int | None, d: dict, key: str, default: str,
               options: tuple[str, ...]) -> str:
        v = d.get(key, default)
        if v not in options:
            self.fail(table, index, key,
                      f"must be one of {', '.join(repr(o) for o in options)}, got {v!r}")
            return default
        return v

    def decimal(self, table: str, index: int | None, d: dict, key: str, default: str) -> str:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            self.fail(table, index, key, f"must be a decimal number like \"0.5\", got {v!r}")
            return default
        try:
            dec = Decimal(str(v))
        except InvalidOperation:
            dec = Decimal(-1)
        if not dec.is_finite() or dec <= 0 or dec.as_tuple().exponent < -18:
            self.fail(table, index, key, f"must be a positive decimal (at most 18 places), "
                                         f"got {v!r}")
            return default
        return str(dec.normalize()) if dec == dec.to_integral() else str(dec)

    def name(self, table: str, index: int, d: dict, key: str = "name") -> str | None:
        if key not in d:
            self.fail(table, index, "", f"needs a {key}")
            return None
        v = d[key]
        if not isinstance(v, str) or not NAME_RE.fullmatch(v):
            self.fail(table, index, key, "must be 1 to 32 letters, digits, '_' or '-', "
                                         f"got {v!r}")
            return None
        return v

    def host(self, table: str, index: int, d: dict, hosts: dict) -> str:
        first = next(iter(hosts), "local")
        v = d.get("host", first)
        if v not in hosts:
            self.fail(table, index, "host", f"unknown host {v!r} (the [hosts] table has "
                                            f"{', '.join(sorted(hosts)) or 'none'})")
            return first
        return v


def validate(conf: dict, path: str = "the topology", text: str = "",
             data_dir: str | None = None, base_port: int | None = None) -> dict:
    """Check a parsed topology whole; return it normalised (defaults filled in, decimals as
    strings). Raises TopologyError naming the first problem's line and key, and how many more."""
    ck = _Checker(path, text)
    if not isinstance(conf, dict):
        raise TopologyError(f"{path}: not a TOML table")
    ck.known("", None, conf, {"cluster", "hosts", "replicator", "symbol"})
    out: dict = {}

    cluster = conf.get("cluster", {})
    if not isinstance(cluster, dict):
        ck.fail("", None, "cluster", "must be a table [cluster]")
        cluster = {}
    ck.known("cluster", None, cluster, {"data_dir", "base_port", "cores", "tick_ms"})
    dd = cluster.get("data_dir", "seqex-data")
    if not isinstance(dd, str) or not dd:
        ck.fail("cluster", None, "data_dir", f"must be a directory name, got {dd!r}")
        dd = "seqex-data"
    out["data_dir"] = data_dir or dd
    out["base_port"] = ck.integer("cluster", None, cluster, "base_port", 7100, 1, 65535)
    if base_port is not None:
        if isinstance(base_port, bool) or not isinstance(base_port, int) \
                or not 1 <= base_port <= 65535:
            raise TopologyError(f"--base-port must be a port in 1 .. 65535, got {base_port}")
        out["base_port"] = base_port
    out["tick_ms"] = ck.integer("cluster", None, cluster, "tick_ms", 100, 1, 3_600_000)
    cores = cluster.get("cores", [])
    if not isinstance(cores, list) or any(isinstance(c, bool) or not isinstance(c, int)
                                          or not 0 <= c < 4096 for c in cores):
        ck.fail("cluster", None, "cores", f"must be a list of core numbers, got {cores!r}")
        cores = []
    out["cores"] = cores

    hosts = conf.get("hosts", {"local": "127.0.0.1"})
    if not isinstance(hosts, dict) or not hosts:
        ck.fail("", None, "hosts", "must be a table of name = \"address\" with one entry or more")
        hosts = {"local": "127.0.0.1"}
    for h, addr in hosts.items():
        if not NAME_RE.fullmatch(h):
            ck.fail("hosts", None, h, "a host name is 1 to 32 letters, digits, '_' or '-'")
        if not isinstance(addr, str) or not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,253}", addr):
            ck.fail("hosts", None, h, f"must be an address like \"127.0.0.1\", got {addr!r}")
    out["hosts"] = hosts

    reps = conf.get("replicator")
    names: set[str] = set()
    out["replicators"] = []
    if not isinstance(reps, list) or not reps or not all(isinstance(r, dict) for r in reps):
        ck.fail("", None, "replicator", "a topology needs at least one [[replicator]] table")
        reps = []
    for i, r in enumerate(reps):
        ck.known("replicator", i, r, {"name", "durability", "host"})
        name = ck.name("replicator", i, r)
        if name in names:
            ck.fail("replicator", i, "name", f"{name!r} is used twice")
        names.add(name or "")
        out["replicators"].append({
            "name": name or f"replicator{i}",
            "durability": ck.choice("replicator", i, r, "durability", "os", ("os", "fsync")),
            "host": ck.host("replicator", i, r, hosts)})

    syms = conf.get("symbol", [])
    out["symbols"] = []
    if not isinstance(syms, list) or not all(isinstance(s, dict) for s in syms):
        ck.fail("", None, "symbol", "must be [[symbol]] tables")
        syms = []
    ids: set[int] = set()
    sym_names: set[str] = set()
    n_ports = len(out["replicators"])
    for i, s in enumerate(syms):
        ck.known("symbol", i, s, {"name", "symbol_id", "tick_size", "lot_size", "min_qty",
                                  "max_qty", "in_policy", "out_policy", "hot", "warm",
                                  "snapshot_every", "host"})
        name = ck.name("symbol", i, s)
        if name in sym_names:
            ck.fail("symbol", i, "name", f"{name!r} is used twice")
        sym_names.add(name or "")
        sid = ck.integer("symbol", i, s, "symbol_id", i + 1, 1, (1 << 32) - 1)
        if sid in ids:
            ck.fail("symbol", i, "symbol_id", f"{sid} is used twice")
        ids.add(sid)
        min_qty = ck.integer("symbol", i, s, "min_qty", 1, 1, MAX_QTY_LOTS)
        max_qty = ck.integer("symbol", i, s, "max_qty", 1_000_000, 1, MAX_QTY_LOTS)
        if max_qty < min_qty:
            ck.fail("symbol", i, "max_qty", f"must be at least min_qty ({min_qty}), got {max_qty}")
        hot = ck.integer("symbol", i, s, "hot", 2, 1, 16)
        warm = ck.integer("symbol", i, s, "warm", 1, 0, 16)
        n_ports += 4 + hot + warm
        out["symbols"].append({
            "name": name or f"symbol{i}", "symbol_id": sid,
            "tick_size": ck.decimal("symbol", i, s, "tick_size", "1"),
            "lot_size": ck.decimal("symbol", i, s, "lot_size", "1"),
            "min_qty": min_qty, "max_qty": max_qty,
            "in_policy": ck.choice("symbol", i, s, "in_policy", "quorum",
                                   ("first", "quorum", "all")),
            "out_policy": ck.choice("symbol", i, s, "out_policy", "first",
                                    ("none", "first", "quorum", "all")),
            "hot": hot, "warm": warm,
            "snapshot_every": ck.integer("symbol", i, s, "snapshot_every", 100_000, 1,
                                         1 << 40),
            "host": ck.host("symbol", i, s, hosts)})
    last_port = out["base_port"] + n_ports - 1
    if not ck.problems and last_port > 65535:
        ck.fail("cluster", None, "base_port" if base_port is None else "",
                f"{out['base_port']} + the {n_ports} ports of the plan runs past 65535")
        if base_port is not None:
            ck.problems[-1] = f"--base-port {base_port}: the plan needs {n_ports} ports, " \
                              f"which runs past 65535"
    if ck.problems:
        more = len(ck.problems) - 1
        raise TopologyError(ck.problems[0] + (f" (and {more} more problem"
                                              f"{'s' if more > 1 else ''})" if more else ""))
    return out


def load(path: str | None = None, data_dir: str | None = None,
         base_port: int | None = None) -> Topology:
    """Read, validate and plan a topology file (None: the default). Raises TopologyError."""
    name = path or "the default topology"
    if path is None:
        text = DEFAULT
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise TopologyError(f"{path}: no such topology file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TopologyError(f"{path}: cannot read it: {exc}") from None
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{name}: not valid TOML: {exc}") from None
    return plan(validate(conf, name, text, data_dir, base_port))


def plan(conf: dict, data_dir: str | None = None, base_port: int | None = None) -> Topology:
    """The processes of a validated topology (a raw TOML dict is validated first)."""
    if "replicators" not in conf:
        conf = validate(conf, data_dir=data_dir, base_port=base_port)
    hosts = conf["hosts"]
    root = os.path.abspath(data_dir or conf["data_dir"])
    port = base_port or conf["base_port"]
    cores = list(conf["cores"] or range(os.cpu_count() or 1))
    tick_ms = conf["tick_ms"]
    procs: list[ProcSpec] = []

    def addr(host: str) -> str:
        nonlocal port
        port += 1
        return f"tcp://{hosts[host]}:{port - 1}"

    rep_addrs = []
    for r in conf["replicators"]:
        a = addr(r["host"])
        rep_addrs.append(a)
        procs.append(ProcSpec(r["name"], "replicator", r["host"],
                              ["replicator", "--data", os.path.join(root, r["name"]), "--bind",
                               a, "--durability", r["durability"]], a))
    for p, a in zip(procs, rep_addrs, strict=True):
        p.args += sum((["--peer", other] for other in rep_addrs if other != a), [])
    rep_args = sum((["--replicator", a] for a in rep_addrs), [])
    symbols = {}
    core_i = 0
    for s in conf["symbols"]:
        sym, host = s["name"], s["host"]
        in_stream, out_stream = f"in.ce.{sym}", f"out.ce.{sym}"
        prod, pub = addr(host), addr(host)
        procs.append(ProcSpec(f"sequencer.{sym}", "sequencer", host, [
            "sequencer", "--stream", in_stream, "--producers", prod, "--pub", pub,
            "--policy", s["in_policy"], "--tick-ms", str(tick_ms), *rep_args],
            prod, in_stream))
        m_in, m_pub = addr(host), addr(host)
        out_policy = s["out_policy"]
        procs.append(ProcSpec(f"mirror.{sym}", "mirror", host, [
            "mirror", "--stream", out_stream, "--inputs", m_in, "--pub", m_pub,
            "--policy", out_policy, *(rep_args if out_policy != "none" else [])],
            m_in, out_stream))
        # The engine counts in ticks and lots; the decimal sizes live at the edge.
        engine = {"symbol_id": s["symbol_id"], "tick_size": 1, "min_qty": s["min_qty"],
                  "max_qty": s["max_qty"]}
        snaps = os.path.join(root, "snapshots", sym)
        names = [f"hot{i}" for i in range(s["hot"])] + [f"warm{i}" for i in range(s["warm"])]
        shared = "warm0" if s["warm"] else "hot0"
        for n in names:
            control = addr(host)
            cpu = cores[core_i % len(cores)]
            core_i += 1
            role = "hot" if n.startswith("hot") else "warm"
            procs.append(ProcSpec(f"ce.{sym}.{n}", f"replica-{role}", host, [
                "replica", "--name", f"ce.{sym}.{n}", "--engine", "crossengine",
                "--engine-config", json.dumps(engine), "--stream", in_stream, "--pub", pub,
                *rep_args, "--control", control, "--role", role, "--mirror", m_in,
                "--snapshots", os.path.join(snaps, n), "--shared-snapshots",
                os.path.join(snaps, shared), "--snapshot-every",
                str(s["snapshot_every"])], control, in_stream, cpu))
        symbols[sym] = {"in": in_stream, "out": out_stream, "producers": prod, "pub": pub,
                        "out_pub": m_pub, "engine": engine, "symbol_id": s["symbol_id"],
                        "tick_size": s["tick_size"], "lot_size": s["lot_size"],
                        "min_qty": s["min_qty"], "max_qty": s["max_qty"]}
    return Topology(root, procs, symbols)
