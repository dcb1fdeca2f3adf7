"""Topology: which processes run where, on which ports and cores, with which data directory.

A topology is a TOML file (DEFAULT below is the embedded one: everything on this machine over
loopback, data in ./seqex-data). ``load()`` reads it and ``validate()`` checks it whole before
anything starts: every key's type and range, unknown keys, names, hosts and the port range.
A problem raises ``TopologyError`` naming the file, the line and the key. From a valid file,
``plan()`` derives the exact command line of every process, in start order: replicators, then
per symbol the in.ce sequencer, the out.ce mirror and the CrossEngine replicas (hot first, then
warm); then, with a ``[trading]`` table (docs/order-path.md), per TradingEngine shard N the
in.te.N sequencer, the out.te.N mirror and the TradingEngine replicas, then the gateway and the
mark-price oracle. Ports are given out in that order from ``base_port``, so every host that
reads the same file agrees on every address. With ``[cluster] standby = true`` (the default)
every sequencer and mirror is followed by its hot standby ``<name>.standby``: the same
command line and endpoints, both with ``--standby-lock <data>/locks/<stream>.lock``; it takes
no port of its own (docs/operations.md "Standby masters").

Source ids and routes follow docs/order-path.md §1-§2: in.te.N takes ``out.ce.SYM`` as source
``0x7000_0000 | symbol_id`` with ``route=1<<N``; in.ce.SYM takes ``out.te.N`` as source
``0x7300_0000 | N`` with ``route=1<<(symbol_id % 64)``; the oracle writes as
``0x7100_0000 | i`` and the gateway as ``0x7200_0000 | g`` into every in.te.N.

Units: a symbol's ``tick_size`` and ``lot_size`` are decimals in the contract's units (the
quote currency per tick, the base asset per lot). The CrossEngine works in integer ticks and
lots only (its own tick is 1); clients convert at the edge (deploy/client.py, deploy/decode.py).
The TradingEngine's contract spec of a symbol (tradingengine/margin.py ContractSpec) comes from
the symbol's keys too: leverage, risk tiers (limits in the quote currency), fees and funding in
ppm; ``value`` (minor units, 1e-8 of the quote currency, per tick per lot) is derived from the
sizes, so a symbol of the TradingEngine needs sizes with at most 8 decimal places.
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
standby = true               # a hot standby master per stream (<name>.standby), on one lock

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
tick_size = "0.5"            # the price step, in USDT (a decimal: "0.5", "0.01")
lot_size = "0.001"           # the quantity step, in BTC (one lot)
min_qty = 1                  # lots
max_qty = 1000000            # lots
in_policy = "quorum"         # ack policy of in.ce.BTCUSDT: 2 of the 3 replicators
out_policy = "first"         # ack policy of out.ce.BTCUSDT (none: not replicated)
hot = 2
warm = 1
snapshot_every = 100000
mark_start = "50000"         # the simulated mark price starts here (USDT)

[[symbol]]
name = "ETHUSDT"
symbol_id = 2
tick_size = "0.05"
lot_size = "0.01"
mark_start = "3000"

[trading]
shards = 2                   # TradingEngine shards: in.te.N / out.te.N, accounts by account % shards
hot = 2
warm = 1
oracle = "simulated"         # a seeded random walk of the mark price (no real feed): "off" for none
oracle_interval_ms = 1000
oracle_seed = 1
gateway = true               # the client gateway (PROTOCOL.md over TCP); a number: that many
demo_accounts = true         # users alice and bob with deposits, created on first start
liq = true                   # the LiqEngine: in.liq / out.liq, 1 hot + 1 warm replica
insurance_fund = "50000"     # USDT deposited into the insurance fund on first start
self_trade = "allow"         # an order meeting its own account's resting order: "allow" (it
                             # trades), "cancel_newest", "cancel_oldest" or "cancel_both"

[marketdata]                 # the publisher of out.ce.*: binary feed, WebSocket, HTTP, page
"""

PPM_MAX = 1_000_000
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
    trading: dict | None = None   # shards, gateway address, instruments (None: no order path)
    marketdata: dict | None = None  # {"feed", "http"} HOST:PORT of the publisher (None: none)

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

    def stream_pubs(self) -> dict[str, str]:
        """Every stream of the cluster and the address it is published on: in.ce.SYM and
        out.ce.SYM of each symbol, in.te.N and out.te.N of each TradingEngine shard, in.liq
        and out.liq (what `seqex tail` and `replay` may follow)."""
        out = {}
        tables = list(self.symbols.values())
        if self.trading:
            tables += list(self.trading.get("shards") or [])
            if self.trading.get("liq"):
                tables.append(self.trading["liq"])
        for t in tables:
            out[t["in"]] = t["pub"]
            out[t["out"]] = t["out_pub"]
        return out

    def to_json(self) -> str:
        return json.dumps({"data_dir": self.data_dir, "symbols": self.symbols,
                           "trading": self.trading, "marketdata": self.marketdata,
                           "procs": [p.__dict__ for p in self.procs]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        """The plan a state file holds; ValueError naming what is off when its shape is not a
        plan's (a hand-edited or foreign file), so that no verb trips over it later."""
        d = json.loads(text)
        for key, kind in (("data_dir", str), ("procs", list), ("symbols", dict)):
            if not isinstance(d.get(key), kind):
                raise ValueError(f"'{key}' is not a JSON {_JSON_NAMES[kind]}")
        for key in ("trading", "marketdata"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ValueError(f"'{key}' is not a JSON object")
        if not all(isinstance(p, dict) for p in d["procs"]) or not all(
                isinstance(v, dict) for v in d["symbols"].values()):
            raise ValueError("'procs' and 'symbols' must hold JSON objects")
        return cls(d["data_dir"], [ProcSpec(**p) for p in d["procs"]], d["symbols"],
                   d.get("trading"), d.get("marketdata"))


_JSON_NAMES = {str: "string", list: "array", dict: "object"}


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
    ck.known("", None, conf, {"cluster", "hosts", "replicator", "symbol", "trading",
                              "marketdata"})
    out: dict = {}

    cluster = conf.get("cluster", {})
    if not isinstance(cluster, dict):
        ck.fail("", None, "cluster", "must be a table [cluster]")
        cluster = {}
    ck.known("cluster", None, cluster, {"data_dir", "base_port", "cores", "tick_ms", "standby"})
    standby = cluster.get("standby", True)
    if not isinstance(standby, bool):
        ck.fail("cluster", None, "standby", f"must be true or false, got {standby!r}")
        standby = True
    out["standby"] = standby
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
                                  "snapshot_every", "host", *SPEC_KEYS})
        name = ck.name("symbol", i, s)
        if name in sym_names:
            ck.fail("symbol", i, "name", f"{name!r} is used twice")
        sym_names.add(name or "")
        # a CrossEngine's order ids are symbol_id << 40 | n, and the engines' source ids
        # carry it in their low 24 bits: 1 .. 2**24-1
        sid = ck.integer("symbol", i, s, "symbol_id", i + 1, 1, (1 << 24) - 1)
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
    trading = conf.get("trading")
    out["trading"] = None
    if trading is not None:
        if not isinstance(trading, dict):
            ck.fail("", None, "trading", "must be a table [trading]")
            trading = {}
        out["trading"] = t = _trading(ck, trading, hosts)
        n_ports += t["shards"] * (4 + t["hot"] + t["warm"]) + t["gateway"] \
            + (t["oracle"] != "off") + (4 + t["liq_hot"] + t["liq_warm"] if t["liq"] else 0)
        if not out["symbols"]:
            ck.fail("trading", None, "", "a [trading] table needs at least one [[symbol]]")
        for i, (s, sym) in enumerate(zip(syms, out["symbols"], strict=True)):
            sym["spec"] = _contract(ck, i, s, sym)
            if t["liq"] and symbol_route(sym["symbol_id"]) == LIQ_ROUTE:
                ck.fail("symbol", i, "symbol_id", f"{sym['symbol_id']} routes by bit 63 "
                        "(symbol_id % 64), which is the LiqEngine's: pick another id")
        if len(out["symbols"]) > 64 and not ck.problems:
            ck.fail("trading", None, "", "at most 64 symbols trade (one route bit each)")
    md = conf.get("marketdata")
    out["marketdata"] = None
    if md is not None:
        if not isinstance(md, dict):
            ck.fail("", None, "marketdata", "must be a table [marketdata]")
            md = {}
        ck.known("marketdata", None, md, {"host"})
        out["marketdata"] = {"host": ck.host("marketdata", 0, md, hosts)}
        n_ports += 2
        if not out["symbols"]:
            ck.fail("marketdata", None, "", "a [marketdata] table needs at least one [[symbol]]")
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


SPEC_KEYS = {"max_leverage", "tiers", "maker_fee_ppm", "taker_fee_ppm", "funding_interval_s",
             "funding_cap_ppm", "band_ppm", "max_price", "mark_start"}
TRADING_KEYS = {"shards", "hot", "warm", "in_policy", "out_policy", "snapshot_every", "host",
                "oracle", "oracle_interval_ms", "oracle_seed", "oracle_step_ppm", "gateway",
                "max_depth", "journal_cache_bytes", "demo_accounts", "liq", "liq_hot", "liq_warm", "insurance_fund",
                "self_trade"}
# [trading] self_trade: what the CrossEngine does when an order would trade with a resting order
# of its own account (its STP modes, docs/crossengine.md; docs/tradingengine.md §4)
SELF_TRADE = {"allow": 0, "cancel_newest": 1, "cancel_oldest": 2, "cancel_both": 3}
# Risk tiers by default (limits in the quote currency): 100x to 1M, 50x to 10M, 20x to 100M.
DEFAULT_TIERS = [{"limit": "1000000", "mmr_ppm": 5_000, "max_leverage": 100},
                 {"limit": "10000000", "mmr_ppm": 10_000, "max_leverage": 50},
                 {"limit": "100000000", "mmr_ppm": 25_000, "max_leverage": 20}]
MINOR = Decimal(10) ** 8        # minor units (and PROTOCOL.md mantissas) per unit
SRC_CE_OUT = 0x7000_0000        # | symbol_id: out.ce.SYM into in.te.N
SRC_ORACLE = 0x7100_0000        # | i: mark-price oracle i into every in.te.N
SRC_GATEWAY = 0x7200_0000       # | g: gateway g into every in.te.N
MAX_GATEWAYS = 16
SRC_TE_OUT = 0x7300_0000        # | N: out.te.N into every in.ce.SYM
SRC_TE_TO_LIQ = 0x7400_0000     # | N: out.te.N into in.liq (docs/liqengine.md §2)
SRC_CE_TO_LIQ = 0x7500_0000     # | symbol_id: out.ce.SYM into in.liq
SRC_LIQ_OUT = 0x7600_0000       # out.liq into every in.ce.SYM and in.te.N
LIQ_ROUTE = 1 << 63             # route bit 63: a record that concerns the LiqEngine


def symbol_route(symbol_id: int) -> int:
    """The route bit of a symbol: out.te.N and out.liq records for it carry it, in.ce.SYM
    takes them by it (docs/order-path.md §1-§2)."""
    return 1 << (symbol_id % 64)


def _scaled(v: str) -> Decimal:
    return Decimal(v) * MINOR


def _contract(ck: _Checker, i: int, s: dict, sym: dict) -> dict:
    """The TradingEngine's ContractSpec of a symbol, as spec_from_dict takes it (integers:
    ticks, lots, minor units, ppm, leverage x100)."""
    lev = ck.integer("symbol", i, s, "max_leverage", 100, 1, 10_000)
    maker = ck.integer("symbol", i, s, "maker_fee_ppm", 200, -PPM_MAX, PPM_MAX)
    taker = ck.integer("symbol", i, s, "taker_fee_ppm", 550, 0, PPM_MAX)
    if taker + maker < 0:
        ck.fail("symbol", i, "maker_fee_ppm", f"a rebate ({maker}) larger than the taker fee "
                                              f"({taker}) would let trades drain the pool")
    interval = ck.integer("symbol", i, s, "funding_interval_s", 8 * 3600, 1, 366 * 86400)
    cap = ck.integer("symbol", i, s, "funding_cap_ppm", 7_500, 0, PPM_MAX)
    band = ck.integer("symbol", i, s, "band_ppm", 50_000, 1, PPM_MAX - 1)
    tick, lot = Decimal(sym["tick_size"]), Decimal(sym["lot_size"])
    value = tick * lot * MINOR
    for key, v in (("tick_size", tick), ("lot_size", lot)):
        if v * MINOR != (v * MINOR).to_integral():
            ck.fail("symbol", i, key, f"a traded symbol's {key} has at most 8 decimal places, "
                                      f"got {sym[key]}")
    if value != value.to_integral() or value < 1:
        ck.fail("symbol", i, "lot_size", f"tick_size x lot_size must be a whole number of "
                                         f"1e-8 USDT, got {tick * lot}")
        value = Decimal(1)
    value_i = int(value)
    # An order's value (max_qty * max_price * value) must stay inside int64 (margin.py).
    limit = (1 << 62) - 1
    default_max = min(1_000_000_000, limit // (sym["max_qty"] * value_i))
    max_price = s.get("max_price")
    if max_price is None:
        max_ticks = default_max
    else:
        text = ck.decimal("symbol", i, s, "max_price", "1")
        ticks = Decimal(text) / tick
        max_ticks = int(ticks) if ticks == ticks.to_integral() else 0
        if max_ticks < 1:
            ck.fail("symbol", i, "max_price", f"must be a whole number of ticks ({tick}), got "
                                              f"{max_price!r}")
            max_ticks = 1
        elif sym["max_qty"] * max_ticks * value_i > limit:
            ck.fail("symbol", i, "max_price", f"max_qty x max_price is too large a value "
                                              f"(at most {default_max * tick} here)")
    start = Decimal(ck.decimal("symbol", i, s, "mark_start", str(min(100, max_ticks) * tick)))
    start_ticks = start / tick
    if start_ticks != start_ticks.to_integral() or not 1 <= start_ticks <= max_ticks:
        ck.fail("symbol", i, "mark_start", f"must be a whole number of ticks ({tick}) below "
                                           f"max_price, got {s.get('mark_start')!r}")
        start_ticks = Decimal(1)
    tiers_in = s.get("tiers", DEFAULT_TIERS)
    tiers: list[dict] = []
    if not isinstance(tiers_in, list) or not tiers_in \
            or not all(isinstance(t, dict) for t in tiers_in):
        ck.fail("symbol", i, "tiers", "must be a list of tables like {limit = \"1000000\", "
                                      "mmr_ppm = 5000, max_leverage = 100}")
        tiers_in = DEFAULT_TIERS
    last_limit, last_mmr, mm_amount = 0, 0, 0
    for t in tiers_in:
        bad = set(t) - {"limit", "mmr_ppm", "max_leverage"}
        if bad:
            ck.fail("symbol", i, "tiers", f"unknown key {sorted(bad)[0]!r} in a tier (known: "
                                          f"limit, mmr_ppm, max_leverage)")
            continue
        lim_text = ck.decimal("symbol", i, t, "limit", "1")
        lim = _scaled(lim_text)
        mmr = ck.integer("symbol", i, t, "mmr_ppm", 5_000, 1, PPM_MAX - 1)
        tlev = ck.integer("symbol", i, t, "max_leverage", lev, 1, lev)
        if lim != lim.to_integral() or int(lim) <= last_limit or int(lim) >= 1 << 62:
            ck.fail("symbol", i, "tiers", f"tier limits must ascend, in 1e-8 steps, below "
                                          f"4.6e10; got {lim_text}")
            continue
        if PPM_MAX * 100 // (tlev * 100) <= mmr:
            ck.fail("symbol", i, "tiers", f"a tier's initial margin (1/{tlev}) must exceed "
                                          f"its maintenance rate ({mmr} ppm)")
            continue
        # Continuous maintenance margin at each edge: value*mmr_new - a_new = value*mmr_old - a_old.
        mm_amount += last_limit * (mmr - last_mmr) // PPM_MAX if tiers else 0
        tiers.append({"limit": int(lim), "mmr_ppm": mmr, "mm_amount": mm_amount,
                      "max_leverage_x100": tlev * 100})
        last_limit, last_mmr = int(lim), mmr
    spec = {"symbol": sym["symbol_id"], "value": value_i, "max_leverage_x100": lev * 100,
            "tiers": tiers, "maker_fee_ppm": maker, "taker_fee_ppm": taker,
            "funding_interval_ns": interval * 1_000_000_000, "band_ppm": band,
            "funding_cap_ppm": cap, "max_qty": sym["max_qty"], "max_price": max_ticks,
            "tick": int(tick * MINOR) or 1, "lot": int(lot * MINOR) or 1}
    if not ck.problems:
        try:
            from tradingengine.engine import spec_from_dict
            spec_from_dict(spec)
        except (ValueError, TypeError) as exc:
            ck.fail("symbol", i, "", f"not a valid contract: {exc}")
    spec["mark_start_ticks"] = int(start_ticks)
    return spec


def _trading(ck: _Checker, t: dict, hosts: dict) -> dict:
    ck.known("trading", None, t, TRADING_KEYS)
    gateway = t.get("gateway", True)
    if isinstance(gateway, bool):
        gateway = int(gateway)
    elif not isinstance(gateway, int) or not 0 <= gateway <= MAX_GATEWAYS:
        ck.fail("trading", None, "gateway", f"must be true, false or a number of gateways "
                f"0 .. {MAX_GATEWAYS}, got {gateway!r}")
        gateway = 1
    demo = t.get("demo_accounts", False)
    if not isinstance(demo, bool):
        ck.fail("trading", None, "demo_accounts", f"must be true or false, got {demo!r}")
        demo = False
    liq = t.get("liq", True)
    if not isinstance(liq, bool):
        ck.fail("trading", None, "liq", f"must be true or false, got {liq!r}")
        liq = True
    fund = t.get("insurance_fund", "0")
    try:
        fund_minor = _scaled(str(fund))
        if fund_minor < 0 or fund_minor != fund_minor.to_integral() or fund_minor >= 1 << 62:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        ck.fail("trading", None, "insurance_fund", f"must be a non-negative amount of the quote "
                f"currency with at most 8 decimals, got {fund!r}")
        fund_minor = Decimal(0)
    return {
        # route bit 63 belongs to the LiqEngine, so at most 63 shards (docs/liqengine.md §1)
        "shards": ck.integer("trading", None, t, "shards", 2, 1, 63),
        "liq": liq,
        "self_trade": SELF_TRADE[ck.choice("trading", None, t, "self_trade", "allow",
                                           tuple(SELF_TRADE))],
        "liq_hot": ck.integer("trading", None, t, "liq_hot", 1, 1, 16),
        "liq_warm": ck.integer("trading", None, t, "liq_warm", 1, 0, 16),
        "insurance_fund": int(fund_minor),
        "hot": ck.integer("trading", None, t, "hot", 2, 1, 16),
        "warm": ck.integer("trading", None, t, "warm", 1, 0, 16),
        "in_policy": ck.choice("trading", None, t, "in_policy", "quorum",
                               ("first", "quorum", "all")),
        "out_policy": ck.choice("trading", None, t, "out_policy", "first",
                                ("none", "first", "quorum", "all")),
        "snapshot_every": ck.integer("trading", None, t, "snapshot_every", 100_000, 1, 1 << 40),
        "host": ck.host("trading", 0, t, hosts),
        "oracle": ck.choice("trading", None, t, "oracle", "simulated", ("simulated", "off")),
        "oracle_interval_ms": ck.integer("trading", None, t, "oracle_interval_ms", 1000, 10,
                                         3_600_000),
        "oracle_seed": ck.integer("trading", None, t, "oracle_seed", 1, 0, (1 << 63) - 1),
        "oracle_step_ppm": ck.integer("trading", None, t, "oracle_step_ppm", 500, 0, 100_000),
        "gateway": gateway,
        "max_depth": ck.integer("trading", None, t, "max_depth", 10_000, 1, 1 << 30),
        "journal_cache_bytes": ck.integer("trading", None, t, "journal_cache_bytes", 128 << 20,
                                          0, 1 << 40),
        "demo_accounts": demo}


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
        # The engine counts in ticks and lots; the decimal sizes live at the edge.
        engine = {"symbol_id": s["symbol_id"], "tick_size": 1, "min_qty": s["min_qty"],
                  "max_qty": s["max_qty"]}
        prod, pub, _m_in, m_pub, core_i = _engine_streams(
            procs, addr, tag=sym, replica=f"ce.{sym}", engine_name="crossengine",
            engine=engine, host=host, in_stream=in_stream, out_stream=out_stream,
            in_policy=s["in_policy"], out_policy=s["out_policy"], tick_ms=tick_ms,
            rep_args=rep_args, ups=[], hot=s["hot"], warm=s["warm"],
            snaps=os.path.join(root, "snapshots", sym), snapshot_every=s["snapshot_every"],
            cores=cores, core_i=core_i)
        symbols[sym] = {"in": in_stream, "out": out_stream, "producers": prod, "pub": pub,
                        "out_pub": m_pub, "engine": engine, "symbol_id": s["symbol_id"],
                        "tick_size": s["tick_size"], "lot_size": s["lot_size"],
                        "min_qty": s["min_qty"], "max_qty": s["max_qty"]}
    topo = Topology(root, procs, symbols)
    if conf.get("trading"):
        _plan_trading(conf, topo, addr, rep_addrs, cores, core_i)
    if conf.get("marketdata"):
        _plan_marketdata(conf, topo, addr, rep_addrs)
    topo = _with_metrics(topo)
    if conf.get("standby", True):
        _add_standbys(topo)
    return topo


def _add_standbys(topo: Topology) -> None:
    """A hot standby per master (docs/operations.md "Standby masters"): after every sequencer
    and mirror, ``<name>.standby`` on the same host with the same arguments, both given
    ``--standby-lock <data>/locks/<stream>.lock``; whichever holds the lock is the master, the
    other waits bound to nothing. The standby has its primary's key (its clients expect that
    server key on those endpoints) and its metrics address (served by whichever is master)."""
    procs: list[ProcSpec] = []
    for p in topo.procs:
        procs.append(p)
        if p.role not in ("sequencer", "mirror"):
            continue
        p.args += ["--standby-lock", os.path.join(topo.data_dir, "locks", f"{p.stream}.lock")]
        procs.append(ProcSpec(f"{p.name}.standby", p.role, p.host, list(p.args), p.control,
                              p.stream, p.cpu, {**p.extra, "standby_of": p.name,
                                                "key": p.name}))
    topo.procs[:] = procs


def _engine_streams(procs: list, addr, *, tag: str, replica: str, engine_name: str,
                    engine: dict, host: str, in_stream: str, out_stream: str,
                    in_policy: str, out_policy: str, tick_ms: int, rep_args: list[str],
                    ups: list[str], hot: int, warm: int, snaps: str, snapshot_every: int,
                    cores: list[int], core_i: int) -> tuple[str, str, str, str, int]:
    """One engine's stream pair: the sequencer of ``in_stream`` (named ``sequencer.TAG``, with
    its upstreams), the mirror of ``out_stream`` and the hot and warm replicas
    (``REPLICA.hotI``, ``REPLICA.warmI``), ports given out in that order. Returns the
    sequencer's producer and pub endpoints, the mirror's inputs and pub, and the next core."""
    prod, pub = addr(host), addr(host)
    procs.append(ProcSpec(f"sequencer.{tag}", "sequencer", host, [
        "sequencer", "--stream", in_stream, "--producers", prod, "--pub", pub,
        "--policy", in_policy, "--tick-ms", str(tick_ms), *rep_args, *ups], prod, in_stream))
    m_in, m_pub = addr(host), addr(host)
    procs.append(ProcSpec(f"mirror.{tag}", "mirror", host, [
        "mirror", "--stream", out_stream, "--inputs", m_in, "--pub", m_pub,
        "--policy", out_policy, *(rep_args if out_policy != "none" else [])],
        m_in, out_stream))
    names = [f"hot{i}" for i in range(hot)] + [f"warm{i}" for i in range(warm)]
    shared = "warm0" if warm else "hot0"
    for name in names:
        control = addr(host)
        role = "hot" if name.startswith("hot") else "warm"
        procs.append(ProcSpec(f"{replica}.{name}", f"replica-{role}", host, [
            "replica", "--name", f"{replica}.{name}", "--engine", engine_name,
            "--engine-config", json.dumps(engine), "--stream", in_stream, "--pub", pub,
            *rep_args, "--control", control, "--role", role, "--mirror", m_in,
            "--snapshots", os.path.join(snaps, name), "--shared-snapshots",
            os.path.join(snaps, shared), "--snapshot-every", str(snapshot_every)],
            control, in_stream, cores[core_i % len(cores)]))
        core_i += 1
    return prod, pub, m_in, m_pub, core_i


def _with_metrics(topo: Topology) -> Topology:
    """Every process's metrics address, after the plan's ports (deploy/metrics.py)."""
    from deploy import metrics
    try:
        return metrics.assign(topo)
    except metrics.MetricsError as exc:
        raise TopologyError(str(exc)) from None


def _plan_marketdata(conf: dict, topo: Topology, addr, rep_addrs: list[str]) -> None:
    """The market-data publisher (docs/marketdata.md): it follows every out.ce.SYM; its
    binary feed port answers the supervisor's probe as the gateway's does."""
    host = conf["marketdata"]["host"]
    feed, http = addr(host), addr(host)
    mconf = {"feed": feed[len("tcp://"):], "http": http[len("tcp://"):],
             "replicators": list(rep_addrs),
             "symbols": [{"symbol": name, "symbol_id": st["symbol_id"], "tick": st["tick_size"],
                          "lot": st["lot_size"], "out": st["out"], "pub": st["out_pub"]}
                         for name, st in topo.symbols.items()]}
    if getattr(topo, "trading", None) and topo.trading.get("accounts"):
        # the binary feed's Logon is the gateway's (PROTOCOL.md §6): the same users
        mconf["accounts"] = topo.trading["accounts"]
    topo.procs.append(ProcSpec("marketdata0", "marketdata", host,
                               ["marketdata", "--config", json.dumps(mconf)], feed,
                               extra={"probe": "tcp", "listen": feed, "http": http}))
    topo.marketdata = {"feed": mconf["feed"], "http": mconf["http"]}


def _plan_trading(conf: dict, topo: Topology, addr, rep_addrs: list[str], cores: list[int],
                  core_i: int) -> None:
    """The order path (docs/order-path.md): TradingEngine shards, the gateway, the oracle; and
    the upstreams of every in.ce.SYM on the out.te.N streams."""
    t = conf["trading"]
    host, root, n_shards = t["host"], topo.data_dir, t["shards"]
    rep_args = sum((["--replicator", a] for a in rep_addrs), [])
    reps = "|".join(rep_addrs)
    specs = [s["spec"] for s in conf["symbols"]]
    engine_specs = [{k: v for k, v in sp.items() if k != "mark_start_ticks"} for sp in specs]
    ce_sources = {str(SRC_CE_OUT | s["symbol_id"]): s["symbol_id"] for s in conf["symbols"]}
    oracle_sources = [SRC_ORACLE] if t["oracle"] != "off" else []
    gateway_sources = [SRC_GATEWAY | g for g in range(t["gateway"])]
    # the LiqEngine's out stream feeds every shard and CrossEngine (docs/liqengine.md §2)
    liq_sources = {"liq_sources": [SRC_LIQ_OUT]} if t["liq"] else {}
    te_sources = [SRC_TE_OUT | n for n in range(n_shards)]
    shards = []
    for n in range(n_shards):
        in_stream, out_stream = f"in.te.{n}", f"out.te.{n}"
        ups = []
        for st in topo.symbols.values():
            ups += ["--upstream", f"stream={st['out']},source={SRC_CE_OUT | st['symbol_id']},"
                                  f"pub={st['out_pub']},replicators={reps},route={1 << n:#x}"]
        engine = {"specs": engine_specs, "shard": n, "n_shards": n_shards,
                  "ce_sources": ce_sources, "oracle_sources": oracle_sources,
                  "gateway_sources": gateway_sources, **liq_sources,
                  **({"self_trade": t["self_trade"]} if t["self_trade"] else {})}
        prod, pub, _m_in, m_pub, core_i = _engine_streams(
            topo.procs, addr, tag=f"te{n}", replica=f"te{n}", engine_name="tradingengine",
            engine=engine, host=host, in_stream=in_stream, out_stream=out_stream,
            in_policy=t["in_policy"], out_policy=t["out_policy"], tick_ms=conf["tick_ms"],
            rep_args=rep_args, ups=ups, hot=t["hot"], warm=t["warm"],
            snaps=os.path.join(root, "snapshots", f"te{n}"),
            snapshot_every=t["snapshot_every"], cores=cores, core_i=core_i)
        shards.append({"shard": n, "in": in_stream, "out": out_stream, "producers": prod,
                       "pub": pub, "out_pub": m_pub, "replicators": list(rep_addrs)})
    # Each CrossEngine takes the commands of every shard for its symbol, and is told the shards.
    for s in conf["symbols"]:
        st = topo.symbols[s["name"]]
        st["engine"].update(te_sources=te_sources, n_shards=n_shards, **liq_sources)
        seq = topo.by_name(f"sequencer.{s['name']}")
        for sh in shards:
            seq.args += ["--upstream", f"stream={sh['out']},source={SRC_TE_OUT | sh['shard']},"
                                       f"pub={sh['out_pub']},replicators={reps},"
                                       f"route={symbol_route(s['symbol_id']):#x}"]
        for p in topo.procs:
            if p.role.startswith("replica-") and p.stream == st["in"]:
                i = p.args.index("--engine-config") + 1
                p.args[i] = json.dumps(st["engine"])
        st["spec"] = s["spec"]
    instruments = [{"symbol": s["name"], "security_id": s["symbol_id"],
                    "tick": s["tick_size"], "lot": s["lot_size"]} for s in conf["symbols"]]
    trading: dict = {"shards": shards, "n_shards": n_shards, "instruments": instruments}
    gateways = []
    for g in range(t["gateway"]):
        # The gateway's configuration as `seqex gateway --config` takes it (gateway/server.py
        # parse_settings): shard N is in.te.N's producer endpoint and out.te.N's feed; its
        # source id is 0x7200_0000 | index. It has no ZeroMQ control endpoint: the supervisor
        # checks it by connecting to its client port. Every gateway serves every session (the
        # sessions' state is the TradingEngines'): a client may log on at any of them.
        listen = addr(host)
        gconf = {"index": g, "listen": listen[len("tcp://"):],
                 "accounts": os.path.join(root, "accounts.json"),
                 "shards": [{"in": sh["producers"], "pub": sh["out_pub"],
                             "replicators": sh["replicators"]} for sh in shards],
                 "specs": [{"symbol_id": s["symbol_id"], "name": s["name"],
                            "tick": s["tick_size"], "lot": s["lot_size"]}
                           for s in conf["symbols"]],
                 "max_depth": t["max_depth"], "journal_cache_bytes": t["journal_cache_bytes"],
                 "index_file": os.path.join(root, f"gateway{g}", "journal.index")}
        topo.procs.append(ProcSpec(f"gateway{g}", "gateway", host,
                                   ["gateway", "--config", json.dumps(gconf)], listen,
                                   extra={"sources": [SRC_GATEWAY | g], "listen": listen,
                                          "probe": "tcp"}))
        gateways.append(listen[len("tcp://"):])
        trading["accounts"] = gconf["accounts"]
    if gateways:
        trading["gateway"] = gateways[0]      # where a client goes unless told otherwise
        trading["gateways"] = gateways
    if t["oracle"] != "off":
        control = addr(host)
        oconf = {"index": 0, "source": SRC_ORACLE, "control": control,
                 "interval_ms": t["oracle_interval_ms"], "seed": t["oracle_seed"],
                 "step_ppm": t["oracle_step_ppm"],
                 "state": os.path.join(root, "oracle0", "walk.json"),
                 "shards": [{"in": sh["in"], "producers": sh["producers"]} for sh in shards],
                 "symbols": [{"symbol": s["name"], "symbol_id": s["symbol_id"],
                              "start_ticks": s["spec"]["mark_start_ticks"],
                              "max_ticks": s["spec"]["max_price"],
                              "funding_interval_ms":
                                  s["spec"]["funding_interval_ns"] // 1_000_000}
                             for s in conf["symbols"]]}
        topo.procs.append(ProcSpec("oracle0", "oracle", host,
                                   ["oracle", "--config", json.dumps(oconf)], control,
                                   extra={"sources": [SRC_ORACLE]}))
    trading["demo_accounts"] = t["demo_accounts"]
    topo.trading = trading
    if t["liq"]:
        _plan_liq(conf, topo, addr, rep_args, reps, shards, engine_specs, oracle_sources,
                  cores, core_i)


def _plan_liq(conf: dict, topo: Topology, addr, rep_args: list[str], reps: str,
              shards: list[dict], engine_specs: list[dict], oracle_sources: list[int],
              cores: list[int], core_i: int) -> None:
    """The LiqEngine (docs/liqengine.md): in.liq takes the records of every out.te.N and
    out.ce.SYM that concern it (route bit 63) and the marks; out.liq goes back into every
    in.ce.SYM (its closing orders) and in.te.N (its ADL). Its ports are given out after every
    other process's, so adding it moved no one's."""
    t = conf["trading"]
    host, root = t["host"], topo.data_dir
    in_stream, out_stream = "in.liq", "out.liq"
    ups = []
    for sh in shards:
        ups += ["--upstream", f"stream={sh['out']},source={SRC_TE_TO_LIQ | sh['shard']},"
                              f"pub={sh['out_pub']},replicators={reps},route={LIQ_ROUTE:#x}"]
    for st in topo.symbols.values():
        ups += ["--upstream", f"stream={st['out']},source={SRC_CE_TO_LIQ | st['symbol_id']},"
                              f"pub={st['out_pub']},replicators={reps},route={LIQ_ROUTE:#x}"]
    min_qty = {st["symbol_id"]: st["min_qty"] for st in topo.symbols.values()}
    liq_specs = [{**sp, "min_qty": min_qty.get(sp["symbol"], 1)} for sp in engine_specs]
    engine = {"specs": liq_specs, "n_shards": len(shards),
              "te_sources": {str(SRC_TE_TO_LIQ | sh["shard"]): sh["shard"] for sh in shards},
              "ce_sources": {str(SRC_CE_TO_LIQ | st["symbol_id"]): st["symbol_id"]
                             for st in topo.symbols.values()},
              "oracle_sources": oracle_sources}
    prod, pub, m_in, m_pub, core_i = _engine_streams(
        topo.procs, addr, tag="liq", replica="liq", engine_name="liqengine", engine=engine,
        host=host, in_stream=in_stream, out_stream=out_stream, in_policy=t["in_policy"],
        out_policy=t["out_policy"], tick_ms=conf["tick_ms"], rep_args=rep_args, ups=ups,
        hot=t["liq_hot"], warm=t["liq_warm"], snaps=os.path.join(root, "snapshots", "liq"),
        snapshot_every=t["snapshot_every"], cores=cores, core_i=core_i)
    # out.liq back into the engines: closing orders by symbol bit, ADL by shard bit.
    for sym, st in topo.symbols.items():
        topo.by_name(f"sequencer.{sym}").args += [
            "--upstream", f"stream={out_stream},source={SRC_LIQ_OUT},pub={m_pub},"
                          f"replicators={reps},route={symbol_route(st['symbol_id']):#x}"]
    for sh in shards:
        topo.by_name(f"sequencer.te{sh['shard']}").args += [
            "--upstream", f"stream={out_stream},source={SRC_LIQ_OUT},pub={m_pub},"
                          f"replicators={reps},route={1 << sh['shard']:#x}"]
    oracle = [p for p in topo.procs if p.role == "oracle"]
    for p in oracle:
        i = p.args.index("--config") + 1
        oconf = json.loads(p.args[i])
        oconf["shards"].append({"in": in_stream, "producers": prod})
        p.args[i] = json.dumps(oconf)
    topo.trading["liq"] = {"in": in_stream, "out": out_stream, "producers": prod, "pub": pub,
                           "out_pub": m_pub, "replicators": rep_args[1::2],
                           "insurance_fund": t["insurance_fund"]}
