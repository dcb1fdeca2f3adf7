"""`seqex keys`: a CURVE keypair for every process of a topology, and the trust policy.

Layout of the keys directory (default ``<data_dir>/keys``, mode 0755):

* ``<process>.key``: the z85 public key (mode 0644): anyone on the host may read it;
* ``<process>.key_secret``: the z85 secret key (mode 0600, written under umask 077, so it is
  never readable by others, not even for a moment);
* ``operator.key`` / ``operator.key_secret``: the operator's key, which the `seqex` client
  tools use (STOP, PROMOTE, CLAIM, operator records);
* ``<producer>.key`` / ``.key_secret`` for every producer named with ``--producer``;
* ``trust.json``: the policy every process loads (mq/auth.py): which key masters which
  stream, which replica feeds which mirror, which producer may use which source ids, and
  which public key each endpoint must present.

Existing keys are kept (``--rotate NAME`` replaces one, see docs/security.md); the policy is
rewritten from the topology and the public keys every time.

``ensure(topo)`` generates what is missing (``seqex up`` calls it on first start) and
``secure(topo)`` puts ``--keys DIR --key NAME`` in front of every process's command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

import zmq

from mq import auth, sources

OPERATOR = "operator"
PROCESS_VERBS = ("replicator", "sequencer", "mirror", "replica", "gateway", "oracle",
                 "marketdata")
NOT_TOOLS = PROCESS_VERBS + ("keys", "up", "demo")  # every other verb is an operator tool
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def keys_dir_of(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), "keys")


def write_keypair(keys_dir: str, name: str, replace: bool = False) -> bool:
    """Create name's keypair unless it exists (or replace it); True if one was written."""
    pub, sec = auth.public_path(keys_dir, name), auth.secret_path(keys_dir, name)
    if not replace and os.path.exists(pub) and os.path.exists(sec):
        return False
    os.makedirs(keys_dir, mode=0o755, exist_ok=True)
    public, secret = zmq.curve_keypair()
    old = os.umask(0o077)
    try:
        tmp = sec + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, sec)
        tmp = pub + ".tmp"
        with open(tmp, "wb") as f:
            f.write(public + b"\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub)
    finally:
        os.umask(old)
    return True


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) \
        else None


def key_name(spec) -> str:
    """The name of a process's keypair: its own, but a standby master's is its primary's (the
    clients of those endpoints expect one server key, whichever of the two is master)."""
    return spec.extra.get("key") or spec.name


def server_endpoints(spec) -> list[str]:
    """The endpoints a process binds (the ones whose key its clients must expect)."""
    if spec.role in ("gateway", "marketdata"):   # their ports speak PROTOCOL.md, not ZeroMQ
        return []
    if spec.role == "oracle":     # its --config names the control endpoint
        return [spec.control]
    flags = {"replicator": ("--bind",), "sequencer": ("--producers", "--pub"),
             "mirror": ("--inputs", "--pub")}.get(spec.role, ("--control",))
    return [a for a in (_arg(spec.args, f) for f in flags) if a]


def policy(topo, keys_dir: str, producers: dict[str, list[int]] | None = None) -> auth.Trust:
    """The trust policy of a topology (its public keys must exist in keys_dir)."""
    peers: dict[str, auth.Peer] = {}
    servers: dict[str, str] = {}
    mirror_stream = {p.control: p.stream for p in topo.procs if p.role == "mirror"}
    for spec in topo.procs:
        if spec.extra.get("standby_of"):   # its primary's key, already in the policy
            continue
        key = auth.load_public(keys_dir, spec.name).decode()
        masters: frozenset[str] = frozenset()
        feeds: frozenset[str] = frozenset()
        if spec.role in ("sequencer", "mirror"):
            masters = frozenset([spec.stream])
        elif spec.role.startswith("replica-"):
            out = mirror_stream.get(_arg(spec.args, "--mirror") or "")
            feeds = frozenset([out]) if out else frozenset()
        # A producer process of the topology (the gateway, the oracle) may write its source ids
        # (docs/order-path.md §2) into the streams it feeds, as a --producer key may.
        srcs = frozenset(spec.extra.get("sources", ()))
        peers[key] = auth.Peer(spec.name, masters, feeds, srcs)
        for endpoint in server_endpoints(spec):
            servers[endpoint] = key
    for name, srcs in sorted((producers or {}).items()):
        key = auth.load_public(keys_dir, name).decode()
        peers[key] = auth.Peer(name, sources=frozenset(srcs))
    operator = frozenset([auth.load_public(keys_dir, OPERATOR).decode()])
    return auth.Trust(operator, peers, servers)


def check_producers(topo, producers: dict[str, list[int]]) -> None:
    """A producer's name must be a plain file name that no process and not the operator has
    (it would share that keypair, and its entry would replace that role in the policy); its
    source ids must be client ids (1 .. OPERATOR_SOURCE_MIN - 1: 0 is the sequencer's Ticks,
    the rest the operator's), each owned by one producer."""
    processes = {p.name for p in topo.procs}
    owner: dict[int, str] = {}
    for name, srcs in sorted(producers.items()):
        if not _NAME.fullmatch(name or ""):
            raise ValueError(f"--producer {name!r}: a name is letters, digits, '.', '_' and "
                             f"'-', not starting with '.' or '-'")
        if name == OPERATOR:
            raise ValueError(f"--producer {name}: that is the operator's key, not a producer's")
        if name in processes:
            raise ValueError(f"--producer {name}: a process of the topology has that name "
                             f"(and key)")
        for src in srcs:
            if sources.is_operator(src):
                raise ValueError(f"--producer {name}: source {src} is an operator source id "
                                 f"(from {sources.OPERATOR_SOURCE_MIN}): only the operator "
                                 f"key may use it")
            if not 0 < src < 1 << 32:
                raise ValueError(f"--producer {name}: source {src} outside 1 .. "
                                 f"{sources.OPERATOR_SOURCE_MIN - 1}")
            if owner.setdefault(src, name) != name:
                raise ValueError(f"--producer {name}: source {src} is {owner[src]}'s too; both "
                                 f"may not own one source id")


def known_producers(topo, keys_dir: str) -> dict[str, list[int]]:
    """The producers the keys directory's trust.json names ({name: source ids}): the peers
    that are neither a process of the topology nor the operator. {} without a policy."""
    try:
        trust = auth.Trust.load(keys_dir)
    except auth.KeyFileError:
        return {}
    processes = {key_name(p) for p in topo.procs} | {OPERATOR}
    return {p.name: sorted(p.sources) for p in trust.peers.values()
            if p.name not in processes and p.sources}


def generate(topo, keys_dir: str | None = None, producers: dict[str, list[int]] | None = None,
             rotate: list[str] | None = None) -> str:
    """Keys for every process, the operator and the producers; then trust.json. The
    producers the policy has already stay (a --rotate or a new producer dropped them);
    ``producers`` adds to them, or gives one of them other source ids."""
    keys_dir = keys_dir or keys_dir_of(topo.data_dir)
    producers = {**known_producers(topo, keys_dir), **(producers or {})}
    check_producers(topo, producers)
    os.makedirs(keys_dir, mode=0o755, exist_ok=True)
    try:
        # every process and tool refuses such a directory at use: refused here, before
        # secret keys are written into it
        auth.check_owned(keys_dir)
    except auth.KeyFileError as exc:
        raise KeysError(f"{exc}; no keys were written") from None
    names = list(dict.fromkeys(key_name(p) for p in topo.procs)) + [OPERATOR] \
        + sorted(producers or {})
    for name in rotate or []:
        if name not in names:
            raise ValueError(f"--rotate {name}: no such process, producer or operator")
    for name in names:
        write_keypair(keys_dir, name, replace=name in (rotate or []))
    trust = policy(topo, keys_dir, producers)
    path = os.path.join(keys_dir, auth.TRUST_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(trust.to_dict(), f, indent=1)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
    return keys_dir


def for_log_cluster(cluster, keys_dir: str,
                    producers: dict[str, list[int]] | None = None) -> auth.Trust:
    """Keys and policy for a deploy.local.LogCluster (one stream: replicators ``replicator<i>``
    and its ``sequencer``), as the process tests and benchmarks start it."""
    names = [f"replicator{i}" for i in range(len(cluster.rep_addrs))] + ["sequencer", OPERATOR]
    for name in names + sorted(producers or {}):
        write_keypair(keys_dir, name)

    def key(name: str) -> str:
        return auth.load_public(keys_dir, name).decode()

    peers = {key(f"replicator{i}"): auth.Peer(f"replicator{i}")
             for i in range(len(cluster.rep_addrs))}
    peers[key("sequencer")] = auth.Peer("sequencer", masters=frozenset([cluster.stream]))
    for name, srcs in sorted((producers or {}).items()):
        peers[key(name)] = auth.Peer(name, sources=frozenset(srcs))
    servers = {a: key(f"replicator{i}") for i, a in enumerate(cluster.rep_addrs)}
    servers.update({a: key(f"replicator{i}") for i, a in enumerate(cluster.rep_pubs)})
    servers[cluster.prod_addr] = servers[cluster.pub_addr] = key("sequencer")
    trust = auth.Trust(frozenset([key(OPERATOR)]), peers, servers)
    with open(os.path.join(keys_dir, auth.TRUST_FILE), "w", encoding="utf-8") as f:
        json.dump(trust.to_dict(), f, indent=1)
    os.chmod(os.path.join(keys_dir, auth.TRUST_FILE), 0o644)
    return trust


def ensure(topo, keys_dir: str | None = None) -> str:
    """On first start (no trust.json, or a key missing), generate; otherwise keep all."""
    keys_dir = keys_dir or keys_dir_of(topo.data_dir)
    names = [key_name(p) for p in topo.procs] + [OPERATOR]
    missing = not os.path.exists(os.path.join(keys_dir, auth.TRUST_FILE)) or any(
        not os.path.exists(auth.secret_path(keys_dir, n)) for n in names)
    if missing:
        generate(topo, keys_dir)
    return keys_dir


def secure(topo, keys_dir: str | None = None):
    """The topology with ``--keys DIR --key NAME`` in front of every process's arguments."""
    keys_dir = keys_dir or keys_dir_of(topo.data_dir)
    procs = [dataclasses.replace(p, args=["--keys", keys_dir, "--key", key_name(p),
                                                        *p.args])
             for p in topo.procs]
    return dataclasses.replace(topo, procs=procs)


def prepare_up(topo, generate_missing: bool = True):
    """What `seqex up` does before it starts a process: the keys (generated on first start
    when generate_missing, as for the default topology; a topology of several hosts must
    have them from `seqex keys`, run once and copied, or the hosts' keys would differ), this
    supervisor the operator (it pings the processes), and every process started with its
    identity; the data directory closed to other users (mode 0700). Returns the topology to
    start."""
    keys_dir = keys_dir_of(topo.data_dir)
    # The log on disk, the snapshots and the process logs hold every order: CURVE keeps other
    # users off the sockets, this mode keeps them off the files (docs/security.md).
    os.makedirs(topo.data_dir, mode=0o700, exist_ok=True)
    if os.stat(topo.data_dir).st_uid != os.geteuid():
        auth.check_owned(topo.data_dir)     # another user's: refused (they could chmod it)
    os.chmod(topo.data_dir, 0o700)
    if generate_missing:
        ensure(topo, keys_dir)
    elif not os.path.exists(os.path.join(keys_dir, auth.TRUST_FILE)):
        raise auth.KeyFileError(f"no keys in {keys_dir}; run `seqex keys --topology FILE` "
                                f"once and copy the keys directory to every host "
                                f"(docs/security.md)")
    auth.configure(keys_dir, OPERATOR)
    for spec in topo.procs:   # a bad key is named now, not by a process restarted in a loop
        auth.load_pair(keys_dir, key_name(spec))
    return secure(topo, keys_dir)


def use_operator_key(topo) -> None:
    """A tool that found a running cluster through its data directory (read_state) reaches
    it with the operator key there, if the cluster runs with keys and the tool has none."""
    if not auth.insecure() or not any("--keys" in p.args for p in topo.procs):
        return
    keys_dir = next(p.args[p.args.index("--keys") + 1] for p in topo.procs if "--keys" in p.args)
    if os.path.exists(auth.secret_path(keys_dir, OPERATOR)):
        auth.configure(keys_dir, OPERATOR)


def insecure(topo):
    """The topology with ``--insecure`` in front of every process's arguments (`seqex
    --insecure up`: benchmarks only; each process prints the warning)."""
    procs = [dataclasses.replace(p, args=["--insecure", *p.args]) for p in topo.procs]
    return dataclasses.replace(topo, procs=procs)


# -- the command line ----------------------------------------------------------------------
def register(parser: argparse.ArgumentParser, sub) -> None:
    """The global options (before the verb) and the `keys` verb."""
    parser.add_argument("--keys", help="keys directory (CURVE on every socket; see "
                        "docs/security.md); client tools use its operator key by default")
    parser.add_argument("--key", help="this process's name in the keys directory "
                        "(default: operator)")
    parser.add_argument("--insecure", action="store_true",
                        help="run without CURVE: for benchmarks only (prints a warning)")
    s = sub.add_parser("keys", help="generate CURVE keys and the trust policy for a topology")
    s.add_argument("--topology", help="TOML file (default: one machine over loopback)")
    s.add_argument("--data", help="data directory (default: the topology's)")
    s.add_argument("--base-port", type=int, help="the first port, as given to `seqex up` "
                   "(default: the running cluster's in --data, else the topology's)")
    s.add_argument("--dir", help="keys directory (default: <data>/keys)")
    s.add_argument("--producer", action="append", default=[],
                   help="NAME=SRC[,SRC...]: a producer key allowed those source ids (repeat)")
    s.add_argument("--rotate", action="append", default=[],
                   help="replace this process's (or the operator's) keypair (repeat)")
    s.set_defaults(fn=cmd_keys)


def setup(args: argparse.Namespace) -> None:
    """Take the identity the options name, or say (on stdout, which is the process's log)
    that CURVE is off. An operator tool (any verb not in NOT_TOOLS) without --keys takes the
    operator key of its data directory (--data, else ./seqex-data) when that has keys."""
    verb = getattr(args, "verb", None)
    keys_dir = getattr(args, "keys", None)
    if not keys_dir and not args.insecure and verb not in NOT_TOOLS:
        found = keys_dir_of(getattr(args, "data", None) or "seqex-data")
        if os.path.exists(os.path.join(found, auth.TRUST_FILE)):
            keys_dir = found
    if keys_dir:
        if args.insecure:
            raise SystemExit("seqex: --keys and --insecure exclude each other")
        if verb in PROCESS_VERBS and not args.key:
            # A server with the operator's key would present the wrong key to its clients,
            # and hold the key that may do everything in a process that needs far less.
            raise SystemExit(f"seqex {verb}: --keys needs --key NAME (this process's name "
                             f"in the keys directory)")
        try:
            auth.configure(keys_dir, args.key or OPERATOR)
        except auth.KeyFileError as exc:
            raise SystemExit(f"seqex: {exc}") from None
    elif verb in PROCESS_VERBS and not args.insecure:
        # Never insecure by omission: without CURVE any local process could write the log.
        raise SystemExit(f"seqex {verb}: no --keys given: pass --keys DIR --key NAME (from "
                         f"`seqex keys`), or --insecure to run without CURVE (benchmarks only)")
    elif verb in PROCESS_VERBS or (verb == "up" and args.insecure):
        print(auth.INSECURE_WARNING, flush=True)


class KeysError(Exception):
    """`seqex keys` refused its input: one line, exit status 2 (deploy/cli.py main)."""


def _servers(topo) -> list[str]:
    return sorted(ep for spec in topo.procs for ep in server_endpoints(spec))


def cmd_keys(a: argparse.Namespace) -> int:
    from deploy import supervisor, topology
    # A cluster up in the data directory: the policy is made for its plan (its ports): one
    # for other ports would lock its tools and its restarted processes out.
    data = a.data or topology.load(a.topology).data_dir
    try:
        # (not with its operator key: the policy being remade may be the damaged part)
        running, _pid = supervisor.read_state(data, operator_key=False)
    except supervisor.Damaged:
        pid = supervisor.lock_holder(data)
        if pid is not None:     # up, on ports its damaged state no longer says
            raise KeysError(f"seqex is up in {data} (supervisor pid {pid}) and its "
                            f"{supervisor.STATE_FILE} is damaged, so its ports are unknown: "
                            f"restart it (`seqex down`, `seqex up`) before making its keys") from None
        running = None
    except supervisor.NotUp:
        running = None
    if a.base_port is not None and not 1 <= a.base_port <= 65535:
        raise KeysError(f"--base-port {a.base_port}: a port, 1 .. 65535")
    if running is not None and a.topology is None and a.base_port is None:
        topo = running
    else:
        topo = topology.load(a.topology, a.data, a.base_port)
        if running is not None and _servers(topo) != _servers(running):
            raise KeysError(f"seqex is up in {data} on other addresses than these "
                            f"(leave out --topology and --base-port to use its own)")
    producers: dict[str, list[int]] = {}
    for spec in a.producer:
        name, _, srcs = spec.partition("=")
        try:
            producers[name] = [int(x) for x in srcs.split(",") if x]
        except ValueError:
            raise KeysError(f"--producer {spec!r}: NAME=SRC[,SRC...]") from None
        if not name or not producers[name]:
            raise KeysError(f"--producer {spec!r}: NAME=SRC[,SRC...]")
    kept = known_producers(topo, a.dir or keys_dir_of(topo.data_dir))
    try:
        keys_dir = generate(topo, a.dir, producers, a.rotate)
    except (ValueError, auth.KeyFileError) as exc:
        raise KeysError(str(exc)) from None
    every = sorted({*kept, *producers})
    print(f"keys for {len(topo.procs)} processes, the operator and {len(every)} producer"
          f"{'' if len(every) == 1 else 's'}{': ' + ', '.join(every) if every else ''} "
          f"in {keys_dir} (secret keys mode 0600); policy in "
          f"{os.path.join(keys_dir, auth.TRUST_FILE)}")
    for name in dict.fromkeys(a.rotate):
        print(f"rotated: {name} has a new keypair ({auth.public_path(keys_dir, name)}); "
              "restart what uses it, and give it to who holds the old one")
    return 0
