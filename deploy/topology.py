"""Topology: which processes run where, on which ports and cores, with which data directory.

A topology is a TOML file (DEFAULT below is the embedded one: everything on this machine over
loopback, data in ./seqex-data). From it, ``plan()`` derives the exact command line of every
process, in start order: replicators, then per symbol the in.ce sequencer, the out.ce mirror
and the CrossEngine replicas (hot first, then warm). Ports are given out in that order from
``base_port``, so every host that reads the same file agrees on every address.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

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

[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = 1
min_qty = 1
max_qty = 1000000
in_policy = "quorum"         # ack policy of in.ce.BTCUSDT
out_policy = "first"         # ack policy of out.ce.BTCUSDT (none: not replicated)
hot = 2
warm = 1
snapshot_every = 100000
"""


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

    def to_json(self) -> str:
        return json.dumps({"data_dir": self.data_dir, "symbols": self.symbols,
                           "procs": [p.__dict__ for p in self.procs]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        d = json.loads(text)
        return cls(d["data_dir"], [ProcSpec(**p) for p in d["procs"]], d["symbols"])


def load(path: str | None = None, data_dir: str | None = None,
         base_port: int | None = None) -> Topology:
    text = DEFAULT if path is None else open(path, encoding="utf-8").read()
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path or 'the default topology'}: {exc}") from None
    return plan(conf, data_dir, base_port)


def plan(conf: dict, data_dir: str | None = None, base_port: int | None = None) -> Topology:
    cluster = conf.get("cluster", {})
    hosts = conf.get("hosts", {"local": "127.0.0.1"})
    root = os.path.abspath(data_dir or cluster.get("data_dir", "seqex-data"))
    port = base_port or int(cluster.get("base_port", 7100))
    cores = list(cluster.get("cores") or range(os.cpu_count() or 1))
    tick_ms = int(cluster.get("tick_ms", 100))
    procs: list[ProcSpec] = []

    def addr(host: str) -> str:
        nonlocal port
        port += 1
        if host not in hosts:
            raise ValueError(f"unknown host {host!r} (hosts: {sorted(hosts)})")
        return f"tcp://{hosts[host]}:{port - 1}"

    reps = conf.get("replicator", [])
    if not reps:
        raise ValueError("a topology needs at least one [[replicator]]")
    rep_addrs = []
    for r in reps:
        host = r.get("host", next(iter(hosts)))
        a = addr(host)
        rep_addrs.append(a)
        procs.append(ProcSpec(r["name"], "replicator", host,
                              ["replicator", "--data", os.path.join(root, r["name"]), "--bind",
                               a, "--durability", r.get("durability", "os")], a))
    for p, a in zip(procs, rep_addrs, strict=True):
        p.args += sum((["--peer", other] for other in rep_addrs if other != a), [])
    rep_args = sum((["--replicator", a] for a in rep_addrs), [])
    symbols = {}
    core_i = 0
    for s in conf.get("symbol", []):
        sym, host = s["name"], s.get("host", next(iter(hosts)))
        in_stream, out_stream = f"in.ce.{sym}", f"out.ce.{sym}"
        prod, pub = addr(host), addr(host)
        procs.append(ProcSpec(f"sequencer.{sym}", "sequencer", host, [
            "sequencer", "--stream", in_stream, "--producers", prod, "--pub", pub,
            "--policy", s.get("in_policy", "quorum"), "--tick-ms", str(tick_ms), *rep_args],
            prod, in_stream))
        m_in, m_pub = addr(host), addr(host)
        out_policy = s.get("out_policy", "first")
        procs.append(ProcSpec(f"mirror.{sym}", "mirror", host, [
            "mirror", "--stream", out_stream, "--inputs", m_in, "--pub", m_pub,
            "--policy", out_policy, *(rep_args if out_policy != "none" else [])],
            m_in, out_stream))
        engine = {"symbol_id": int(s.get("symbol_id", 1)), "tick_size": int(s.get("tick_size", 1)),
                  "min_qty": int(s.get("min_qty", 1)), "max_qty": int(s.get("max_qty", 10**9))}
        snaps = os.path.join(root, "snapshots", sym)
        names = [f"hot{i}" for i in range(int(s.get("hot", 2)))] + \
                [f"warm{i}" for i in range(int(s.get("warm", 1)))]
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
                os.path.join(snaps, "warm0"), "--snapshot-every",
                str(int(s.get("snapshot_every", 100_000)))], control, in_stream, cpu))
        symbols[sym] = {"in": in_stream, "out": out_stream, "producers": prod, "pub": pub,
                        "out_pub": m_pub, "engine": engine}
    return Topology(root, procs, symbols)
