"""`seqex`: the one command of the exchange core.

Process verbs (what a supervisor starts): ``replicator``, ``sequencer``, ``mirror``,
``replica``, ``gateway``, ``oracle``, ``marketdata``.
Cluster verbs: ``up``, ``down``, ``status``, ``submit`` (one order and its outcome),
``client`` (trade through the gateway), ``account`` (users, deposits, withdrawals), ``oracle``
(the simulated mark-price process), ``drill`` (a failover drill with a report,
deploy/drill.py), ``deploy systemd`` (a host's units, deploy/systemd.py).
Client verbs: ``produce`` (load generator / feeder), ``tail`` (durable subscriber),
``replay`` (any range of a stream, decoded), ``ping``, ``stop``.
``demo``: the default cluster with a robot trading through the gateway and a live dashboard.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time

SRC_PAYLOAD = "<QQ"  # produce's payload prefix: (source_seq, send time ns), then padding


def _die_with_parent() -> None:
    """A supervisor's child (SEQEX_PARENT names the supervisor's pid) gets SIGTERM when the
    supervisor dies, however it dies: a SIGKILLed `seqex up` must not leave its processes
    running with their ports and no state file to find them by (Linux prctl)."""
    parent = os.environ.pop("SEQEX_PARENT", None)
    if not parent or not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError) as exc:
        logging.warning("cannot end with the supervisor: %s", exc)
        return
    if os.getppid() != int(parent):   # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _observe(args: argparse.Namespace) -> None:
    """A process verb logs JSON lines (SEQEX_LOG_FORMAT=json) and serves Prometheus metrics
    (SEQEX_METRICS=HOST:PORT) when its environment says so (deploy/logjson.py, metrics.py)."""
    if args.verb not in PROCESS_VERBS:
        return
    from deploy import logjson, metrics
    logjson.setup(args.verb, args)
    metrics.start_for_process(args.verb, args)


_standby_fd: int | None = None   # the standby lock, held for the process's life


def _standby(args: argparse.Namespace) -> None:
    """A master given --standby-lock waits for the lock before it binds anything (its metrics
    port included) or talks to a replicator: while another master of the stream holds it,
    this process is that master's hot standby. SIGTERM ends the wait (no handler yet)."""
    global _standby_fd
    path = getattr(args, "standby_lock", None)
    if not path:
        return
    from deploy.supervisor import hold_master_lock, master_lock_holder
    holder = master_lock_holder(path)
    if holder is not None:
        print(f"standby: waiting for {path} (held by the master, pid {holder})", flush=True)
    t0 = time.monotonic()
    _standby_fd = hold_master_lock(path)
    print(f"standby lock {path} taken after {time.monotonic() - t0:.3f} s: taking over",
          flush=True)


def _pin() -> None:
    cpu = os.environ.get("SEQEX_CPU")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(cpu) % (os.cpu_count() or 1)})
        except OSError as exc:
            logging.warning("could not pin to cpu %s: %s", cpu, exc)


def _spin_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--spin-us", type=int_range(0, 1_000_000), default=0, help=(
        "after input, poll without sleeping for this many microseconds (a dedicated core; "
        "default 0: sleep in the poll, docs/log.md)"))


def cmd_replicator(a: argparse.Namespace) -> int:
    from replicator.server import main
    main(a.data, a.bind, a.durability, a.peer, pub=a.pub, spin_us=a.spin_us)
    return 0


def cmd_sequencer(a: argparse.Namespace) -> int:
    from mq.sequencer import main
    main(a.stream, a.producers, a.pub, a.replicator, a.policy, a.tick_ms, a.upstream,
         window_bytes=a.window_bytes, max_uncommitted_bytes=a.max_uncommitted_bytes,
         max_step_ms=a.max_step_ms, source_retention_s=a.source_retention_s,
         max_sources=a.max_sources, spin_us=a.spin_us)
    return 0


def cmd_replica(a: argparse.Namespace) -> int:
    from deploy.engines import replica_main as main
    main(a)
    return 0


def cmd_mirror(a: argparse.Namespace) -> int:
    from mq.mirror import main
    main(a.stream, a.inputs, a.pub, a.replicator, a.policy, a.from_seq)
    return 0


def cmd_gateway(a: argparse.Namespace) -> int:
    """The order-entry gateway (docs/gateway.md). A bad configuration or accounts file is one
    line and status 2 before anything starts."""
    from gateway import accounts, server
    try:
        settings = server.read_settings(a.config)
        users = accounts.load(settings.accounts, len(settings.shards))
    except ValueError as exc:
        return _fail("seqex gateway", str(exc))
    from deploy import metrics
    address = os.environ.get(metrics.ENV)
    return server.main(settings, users, on_start=None if not address else (
        lambda gw: metrics.start_exporter(address, gw.status, "gateway", a)))


def cmd_marketdata(a: argparse.Namespace) -> int:
    """The market-data publisher (docs/marketdata.md); a bad configuration is one line."""
    from gateway.marketdata import publisher
    try:
        conf = publisher.read_config(a.config)
    except ValueError as exc:
        return _fail("seqex marketdata", str(exc))
    from deploy import metrics
    address = os.environ.get(metrics.ENV)
    return publisher.main(conf, on_start=None if not address else (
        lambda pub: metrics.start_exporter(address, pub.status, "marketdata", a)))


def cmd_client(a: argparse.Namespace) -> int:
    from deploy.trader import run
    return run(a)


def cmd_account(a: argparse.Namespace) -> int:
    """`seqex account create NAME --accounts 2,4` (the gateway's accounts file) and `seqex
    account deposit|withdraw ACCOUNT AMOUNT` (operator records through in.te.N)."""
    from deploy import topology, trading
    from deploy.supervisor import NotUp, read_state
    if a.op == "create":
        if len(a.args) != 1:
            raise UsageError("usage: seqex account create NAME --accounts 2,4 [--password P]")
        try:
            accounts = [int(x) for x in (a.accounts or "").split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--accounts {a.accounts!r}: account numbers like 2,4") from None
        if not accounts:
            raise UsageError("seqex account create needs --accounts N[,N...]")
        pid = None
        try:
            topo, pid = read_state(a.data)
        except NotUp:
            topo = topology.load(a.topology, a.data)
        where = os.path.dirname(os.path.abspath(trading.accounts_path(topo)))
        if not os.path.isdir(where):   # (the file is written through a temporary one)
            raise UsageError(f"the directory of the accounts file, {where}, does not exist: "
                             f"give --data of a cluster (`seqex up --data DIR` makes one)")
        before = trading.user_accounts(topo, a.args[0]) if a.replace else []
        user, password = trading.create_user(topo, a.args[0], accounts, a.password,
                                             replace=a.replace)
        shown = "" if a.password else f", password {password} (shown once)"
        print(f"user {user.name} (id {user.user}): accounts "
              f"{', '.join(map(str, user.accounts))}{shown}; in {trading.accounts_path(topo)}")
        dropped = [x for x in before if x not in user.accounts]
        if dropped:
            print(f"note: account{'s' if len(dropped) > 1 else ''} "
                  f"{', '.join(map(str, dropped))} no longer {'are' if len(dropped) > 1 else 'is'} "
                  f"{user.name}'s: the money, positions and open orders in them stay there, "
                  f"reached by no one until a user is given them (`seqex account create NAME "
                  f"--accounts {','.join(map(str, dropped))}`)")
        if pid:   # the running cluster's supervisor tells its gateways to re-read the file
            os.kill(pid, signal.SIGHUP)
            print("the running gateway re-reads the accounts file now")
        return 0
    if len(a.args) != 2:
        raise UsageError(f"usage: seqex account {a.op} ACCOUNT AMOUNT (USDT)")
    account = int(a.args[0]) if a.args[0].isdigit() else None
    if account is None or not 1 <= account <= (1 << 32) - 1:
        raise UsageError(f"account {a.args[0]!r}: a number in 1 .. 2**32-1")
    amount = trading.minor_units(a.args[1])
    topo, _pid = read_state(a.data)
    # The id is chosen here, so that an interrupted transfer can name it: the retry with it
    # is safe (the engine applies one transfer id once), a retry with a new one is not.
    tid = a.transfer_id if a.transfer_id is not None else time.time_ns() // 1000
    try:
        out = trading.transfer(a.data, topo, account, amount, withdraw=a.op == "withdraw",
                               transfer_id=tid, timeout_s=a.timeout)
    except KeyboardInterrupt:
        print(f"seqex account {a.op}: interrupted: the {a.op} of {a.args[1]} USDT to account "
              f"{account} (transfer id {tid}) may have been sent; its outcome is unknown. "
              f"`seqex account {a.op} {account} {a.args[1]} --transfer-id {tid}"
              f"{data_option(a)}` again is "
              "safe: the same transfer id never moves money twice", file=sys.stderr)
        return 130
    print(out.line())
    return 0 if out.applied or out.repeat else 2   # refused: docs/operations.md, exit statuses


def data_option(a: argparse.Namespace) -> str:
    """` --data DIR` as the operator gave it, for a command line an answer suggests (the
    suggestion run as printed must reach the same cluster)."""
    import shlex
    data = getattr(a, "data", None)
    return f" --data {shlex.quote(data)}" if data else ""


def cmd_oracle(a: argparse.Namespace) -> int:
    from deploy.oracle import ConfigError, main
    try:
        main(a.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_produce(a: argparse.Namespace) -> int:
    """Send --count records of --payload-bytes as source --source and append every
    acknowledged run to --acks as 'ss_first ss_last seq_first' lines.

    With --rate R the load is open-loop: record i is due at start + i/R, its payload carries
    that scheduled time (not the moment it left), and whatever is due goes out as one batch
    of at most --batch; so queueing anywhere shows up as latency. Without --rate, batches of
    --batch go out as fast as the --window of unacknowledged records allows."""
    import struct

    from deploy.client import _Producer
    from mq.control import ping
    prefix = struct.Struct(SRC_PAYLOAD)
    # A server that wants CURVE keys this process lacks never completes the handshake, and
    # a producer's first HELLO would wait for it forever: ask it a PING first, as `ping` does.
    first = min(a.timeout, 3.0)
    if ping(a.sequencer, first) is None:
        if a.timeout <= first:
            raise _silent(a.sequencer, "PING", a.timeout)
        # say what it waits for (the default --timeout is minutes: a silence looked hung)
        print(f"seqex produce: no answer from the sequencer at {a.sequencer} yet; waiting up "
              f"to {a.timeout:g} s (--timeout)", file=sys.stderr, flush=True)
        if ping(a.sequencer, a.timeout - first) is None:
            raise _silent(a.sequencer, "PING", a.timeout)
    # --resend-from: a producer restarted with a persisted outbox resends it unchanged
    # from that number; the sequencer drops what it already holds.
    prod = _Producer(a.source, a.sequencer, max_inflight=a.window, next_ss=a.resend_from)
    try:
        return _produce(a, prod, prefix)
    finally:
        prod.close()


def _produce(a: argparse.Namespace, prod, prefix) -> int:
    try:
        prod.connect(a.timeout)
    except TimeoutError:
        raise _silent(a.sequencer, "HELLO (no WELCOME)", a.timeout) from None
    if prod.errors:   # the sequencer refused the source: its reason, not a silence
        err = prod.errors[0]
        raise UsageError(f"the sequencer at {a.sequencer} refused source {a.source}: "
                         f"{err.get('error') or err}")
    acks = open(a.acks, "a") if a.acks else None
    pad = b"\0" * max(0, a.payload_bytes - prefix.size)
    first_ss = prod.next_ss
    if first_ss > a.count:
        print(f"source {a.source}: all {a.count} records already sequenced", flush=True)
    start_ns = time.time_ns()
    step_ns = 1_000_000_000 / a.rate if a.rate else 0.0

    def record_acks(runs: list) -> None:
        if acks and runs:
            acks.write("".join(f"{x} {y} {'-' if s is None else s}\n" for x, y, s in runs))
            acks.flush()

    ss = first_ss
    while ss <= a.count:
        if prod.unacked >= a.window:
            record_acks(prod.poll(1))
            continue
        if a.rate:
            now = time.time_ns()
            due = min(a.count, first_ss + int((now - start_ns) / step_ns))
            if due < ss:
                # Sleep until the next record is due: never spin, the core is shared.
                wait_s = (start_ns + (ss - first_ss) * step_ns - now) / 1e9
                if wait_s >= 0.002:
                    record_acks(prod.poll(int(wait_s * 1000) - 1))
                else:
                    time.sleep(max(0.0, wait_s))
                    record_acks(prod.poll(0))
                continue
            n = min(a.batch, due - ss + 1)
            payloads = [prefix.pack(i, int(start_ns + (i - first_ss) * step_ns)) + pad
                        for i in range(ss, ss + n)]
        else:
            n = min(a.batch, a.count - ss + 1)
            now = time.time_ns()
            payloads = [prefix.pack(i, now) + pad for i in range(ss, ss + n)]
        prod.submit(a.kind, payloads)
        ss += n
        record_acks(prod.poll(0))
    record_acks(prod.flush(a.timeout))
    print(f"source {a.source}: {a.count} records acknowledged", flush=True)
    return 0


def cmd_tail(a: argparse.Namespace) -> int:
    """Follow a stream from --from: decoded lines (or --json), up to seq --to or --count
    records; with --out, append 'seq source source_seq kind' lines to a file and, after a
    crash, resume right after the last complete line (exactly once, in order)."""
    from mq.record import decode
    from mq.subscriber import Subscriber
    view = _StreamView(a)
    next_seq = a.from_seq
    out = None
    if a.out:
        next_seq = _resume_point(a.out, a.from_seq)
        out = open(a.out, "a")
    if a.to is not None and next_seq > a.to:
        raise UsageError(f"--from {next_seq} is beyond --to {a.to}")
    # A durable subscriber (--out) is a machine's: it waits for its stream without a word,
    # through replicator restarts (none answering now is no error). A person's tail, and a
    # resume point the stream has not reached, are checked against the stream first.
    if a.out:
        if view.topo is not None and a.stream not in view.topo.stream_pubs():
            raise UsageError(view._unknown())
        # A file that has taken seqs no replicator holds is another stream's or another
        # cluster's. Only with every replicator answering, by the highest seq any of them
        # stores (the commit point they know lags the live feed): a master that stopped
        # appending, or one replicator behind, is no reason to refuse.
        held = view.held_end() if next_seq != a.from_seq else None
        if held is not None and next_seq > held + 1:
            raise UsageError(f"{a.out} has taken {a.stream} up to seq {next_seq - 1}, but no "
                             f"replicator holds a seq above {held}: the file is another "
                             "stream's or another cluster's; give another --out")
        end = None
    else:
        end = view.end()
    ahead = end is not None and next_seq > end + 1
    if ahead:
        # Following a stream that has not reached --from yet: say so, and wait a bounded time.
        print(f"seqex tail: {a.stream} holds seqs up to {end}; waiting up to {a.wait:g} s for "
              f"seq {next_seq} (--wait)", file=sys.stderr, flush=True)
    sub = Subscriber(a.stream, view.pub, view.replicators, next_seq)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    printed = 0
    started = time.monotonic()
    try:
        while running[0] and (a.to is None or sub.next_seq <= a.to) \
                and (a.count is None or printed < a.count):
            frames = sub.poll(200)
            if ahead and not frames and sub.next_seq == next_seq \
                    and time.monotonic() - started > a.wait:
                raise UsageError(f"no seq {next_seq} of {a.stream} within {a.wait:g} s "
                                 f"(its last seq is {view.end()})")
            for _first, _last, frame in frames:
                recs = decode(frame)
                if a.to is not None:
                    recs = [r for r in recs if r[0] <= a.to]
                if out:
                    if a.count is not None:
                        recs = recs[:a.count - printed]
                    out.write("".join(f"{r[0]} {r[2]} {r[3]} {r[5]}\n" for r in recs))
                    out.flush()
                    printed += len(recs)
                    continue
                for r in recs:
                    if a.count is not None and printed >= a.count:
                        break
                    if view.show(r):
                        printed += 1
    finally:
        sub.close()
    return 0


class _StreamView:
    """A stream as the tools see it: where to read it (from --pub/--replicator, or from the
    running cluster's seqex.json), and how to print its records (decoded, filtered)."""

    def __init__(self, a: argparse.Namespace, need_pub: bool = True):
        from deploy import decode
        self.a = a
        self.decode = decode
        self.topo = None
        # tail's --replicator repeats (a list); replay's is one address (a str)
        self.replicators = [a.replicator] if isinstance(a.replicator, str) \
            else list(a.replicator or [])
        self.pub = getattr(a, "pub", None)
        if not self.replicators or (need_pub and not self.pub):
            from deploy.supervisor import read_state
            self.topo, _pid = read_state(a.data)
        by_id: dict = {}
        units = None
        if self.topo is not None:
            by_id = decode.units_of(self.topo.symbols)
            sym = self.topo.symbol_of_stream(a.stream)
            if sym is not None:
                units = by_id.get(sym["symbol_id"])
            self.replicators = self.replicators or self.topo.replicator_addrs()
            if need_pub and not self.pub:
                pub = self.topo.stream_pubs().get(a.stream)
                if pub is None:
                    raise UsageError(self._unknown())
                self.pub = pub
        self.by_id, self.units = by_id, units
        trading = (self.topo.trading if self.topo is not None else None) or {}
        self.n_shards = trading.get("n_shards")      # None: no order path, or not known
        self.filters = {"kind": getattr(a, "kind", None), "account": getattr(a, "account", None),
                        "order": getattr(a, "order", None)}

    def _unknown(self) -> str:
        names = sorted(self.topo.stream_pubs())
        return (f"unknown stream {self.a.stream!r}: the cluster in {self.a.data} has "
                f"{', '.join(names)}")

    def held_end(self) -> int | None:
        """The highest seq any replicator stores of the stream, when every replicator
        answers and knows it; else None (not known for sure)."""
        from mq.control import ping
        lasts = []
        for addr in list(self.replicators):
            st = ping(addr, timeout_s=2.0)
            s = (st or {}).get("streams", {}).get(self.a.stream)
            if s is None:
                return None
            lasts.append(int(s.get("last") or 0))
        return max(lasts) if lasts else None

    def end(self) -> int | None:
        """The highest committed seq any replicator holds, or None when the stream is one
        they do not store (not replicated). UsageError for a stream nobody knows."""
        from mq.control import ping
        known = self.topo is not None and self.a.stream in self.topo.stream_pubs()
        ends, answered = [], 0
        for addr in list(self.replicators):
            st = ping(addr, timeout_s=2.0)
            if st is None:
                continue
            answered += 1
            if answered == 1:   # read from one that answers
                self.replicators = [addr] + [r for r in self.replicators if r != addr]
            s = st.get("streams", {}).get(self.a.stream)
            if s is not None:
                ends.append(int(s.get("commit") or 0))
        if not answered:
            raise UsageError(f"no replicator answers ({', '.join(self.replicators)}): is the "
                             "cluster up? (`seqex status`)")
        if ends:
            return max(ends)
        if known:
            return None if self._not_replicated() else 0
        if self.topo is not None:
            raise UsageError(self._unknown())
        raise UsageError(f"unknown stream {self.a.stream!r}: no replicator at "
                         f"{', '.join(self.replicators)} holds it")

    def first_answering(self) -> str:
        """The first replicator that answers a PING; UsageError when none does."""
        from mq.control import ping
        for addr in self.replicators:
            if ping(addr, timeout_s=2.0) is not None:
                return addr
        raise UsageError(f"no replicator answers ({', '.join(self.replicators)}): is the "
                         "cluster up? (`seqex status`)")

    def _not_replicated(self) -> bool:
        mirror = next((p for p in self.topo.procs if p.role == "mirror"
                       and p.stream == self.a.stream), None)
        return mirror is not None and "none" in mirror.args

    def show(self, rec: tuple) -> bool:
        """Print one record if the filters keep it; whether it was printed."""
        if not self.a.ticks and self.decode.is_tick(rec):
            return False
        d = self.decode.decode_record(self.a.stream, rec, self.by_id, self.units, self.n_shards)
        if not self.decode.matches(d, **self.filters):
            return False
        print(json.dumps(d) if self.a.json else self.decode.line(d), flush=self.a.flush)
        return True


def _resume_point(path: str, from_seq: int = 1) -> int:
    """1 + the seq of the last complete line (a torn last line is cut off); `from_seq` for a
    file with none yet."""
    if not os.path.exists(path):
        return from_seq
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].splitlines()
        if lines:
            # Check before cutting anything: a file of another format is left as it is.
            fields = lines[-1].split()
            if len(fields) != 4 or not all(x.isdigit() for x in fields) or int(fields[0]) < 1:
                last = lines[-1][:60].decode("utf-8", "replace")
                raise UsageError(f"{path}: its last line {last!r} is not "
                                 "'seq source source_seq kind': not a file `seqex tail --out` "
                                 "wrote; give another --out")
        elif data and not re.fullmatch(rb"[0-9 ]*", data):
            # no complete line, and not the start of one of tail's: not its file
            raise UsageError(f"{path}: not a file `seqex tail --out` wrote (no line of "
                             "'seq source source_seq kind'); give another --out")
        f.truncate(end)
    return int(lines[-1].split()[0]) + 1 if lines else from_seq


def cmd_up(a: argparse.Namespace) -> int:
    from deploy import topology
    topo = topology.load(a.topology, a.data, a.base_port)
    # `seqex up | head -2`: the reader going away must not take the cluster down. The
    # supervisor's lines go on into its log file instead.
    stdout = sys.stdout
    sys.stdout = _StdoutOrLog(stdout, os.path.join(topo.data_dir, "logs", "seqex-up.log"))
    try:
        return _up(a, topo)
    finally:
        sys.stdout = stdout


def _up(a: argparse.Namespace, topo) -> int:
    from deploy import keys
    from deploy.supervisor import (
        LOCK_FILE,
        Supervisor,
        SupervisorError,
        check_engine_configs,
        check_host,
        lock_data_dir,
        preflight,
    )
    check_host(topo, a.host)      # a mistyped --host leaves nothing behind
    # The lock first: a second `up` (maybe of another topology) must not touch the keys of
    # a cluster running in this data directory.
    fresh = not os.path.exists(topo.data_dir)
    lock_fd = lock_data_dir(topo.data_dir)
    try:
        preflight(topo, a.host)   # the ports free: before keys or demo users are written
        check_engine_configs(topo)
    except SupervisorError:
        os.close(lock_fd)
        if fresh:                 # nothing was started: leave no empty data directory
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(topo.data_dir, LOCK_FILE))
                os.rmdir(topo.data_dir)
        raise
    # CURVE keys (generated on first start when this machine runs the whole topology; several
    # hosts bring theirs from one `seqex keys`), docs/security.md; --insecure: benchmarks only
    one_host = len({p.host for p in topo.procs}) == 1   # keys made here cannot disagree
    topo = keys.insecure(topo) if a.insecure else \
        keys.prepare_up(topo, generate_missing=one_host)
    from deploy import trading
    after = None
    if topo.trading and topo.trading.get("demo_accounts") and any(
            p.role == "gateway" and a.host in (None, p.host) for p in topo.procs):
        made = trading.ensure_demo_users(topo)
        if made:
            print("demo users (passwords shown once; `seqex client` finds them in "
                  f"{trading.demo_path(topo.data_dir)}):")
            for name, pw in made.items():
                print(f"  {name:<6} password {pw}")
        after = trading.first_start_deposits
    elif topo.trading and (topo.trading.get("liq") or {}).get("insurance_fund") and any(
            p.stream == "in.liq" and a.host in (None, p.host) for p in topo.procs):
        after = trading.first_start_deposits   # the insurance fund, demo accounts or not
    sup = Supervisor(topo, a.host, max_restarts=a.max_restarts,
                     backoff_base_s=a.restart_backoff, after_start=after, lock_fd=lock_fd,
                     gateway_watchdog_s=a.gateway_watchdog,
                     title=f"seqex up: {a.topology or 'the default topology (one machine, loopback)'}")
    sup.up(a.ready_timeout)
    return sup.exit_status()


class _StdoutOrLog:
    """stdout until its reader goes away (EPIPE), then the file at ``path`` (appended,
    created with its directory): a supervisor keeps supervising when nobody reads it."""

    def __init__(self, out, path: str):
        self.out, self.path, self.file = out, path, None

    def write(self, text: str) -> int:
        if self.file is None:
            try:
                return self.out.write(text)
            except BrokenPipeError:
                self._switch()
        self.file.write(text)
        return len(text)

    def flush(self) -> None:
        if self.file is None:
            try:
                self.out.flush()
                return
            except BrokenPipeError:
                self._switch()
        self.file.flush()

    def isatty(self) -> bool:
        return self.file is None and self.out.isatty()

    def _switch(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a", buffering=1)
        self.file.write(f"seqex up: its standard output was closed at "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
                        "its lines go on here\n")
        # what is left in the pipe's buffer, and Python's last flush at exit, go nowhere
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())


def cmd_down(a: argparse.Namespace) -> int:
    from deploy.supervisor import down
    return down(a.data)


def cmd_restart(a: argparse.Namespace) -> int:
    from deploy.supervisor import restart_request
    return restart_request(a.data, a.names, timeout_s=a.timeout)


def cmd_status(a: argparse.Namespace) -> int:
    from deploy.supervisor import gave_up, print_table, read_heartbeats, read_state, status_rows
    topo, _pid = read_state(a.data)
    given_up = gave_up(a.data)
    if a.json:
        from deploy.metrics import status_doc
        print(json.dumps(status_doc(topo, given_up, read_heartbeats(a.data), a.frozen_after),
                         indent=1))
        return 0
    frozen: list[str] = []
    print_table(status_rows(topo, given_up, read_heartbeats(a.data), frozen, a.frozen_after))
    for why in [*given_up.values(), *frozen]:
        print(f"  {why}")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    """One order into in.ce.SYMBOL; prints its outcome from out.ce.SYMBOL: accepted (resting),
    filled (price and quantity), expired, or rejected with the reason in words (on stderr,
    exit status 2). Prices and quantities are in the contract's units."""
    from deploy.client import Client, OutcomeTimeout, Rejected, describe
    if a.market and a.price is not None:
        raise UsageError("a market order takes no --price")
    if not a.market and a.price is None:
        raise UsageError("--price is required for a limit order (or give --market)")
    from mq.sources import OPERATOR_SOURCE_MIN, is_operator
    with Client(a.data, a.source) as client:
        trades = getattr(getattr(client, "topo", None), "trading", None)
        if trades and a.bypass_risk and not is_operator(client.source):
            # (such a CrossEngine obeys a direct order only from the operator; its refusal
            # names no order, so the client could not tell it apart from another's record)
            raise UsageError(f"--source {client.source}: on a cluster with TradingEngines the "
                             f"CrossEngine takes a direct order only from an operator source "
                             f"({OPERATOR_SOURCE_MIN} and up); leave --source out")
        if trades and not a.bypass_risk:
            # Its orders come from the TradingEngines: one put straight into in.ce is on no
            # account's books, and its fills against users' orders leave the engines'
            # clearing positions apart (`seqex audit` names them).
            raise UsageError(
                f"this cluster trades through its TradingEngines: an order put straight into "
                f"in.ce.{a.symbol} has no margin check and is on no account's books; trade "
                "with `seqex client`, or give --bypass-risk to send it anyway")
        tif = a.tif or ("ioc" if a.market else "gtc")
        try:
            outcome = client.submit(a.symbol, a.side, a.qty, a.price, a.account, a.market,
                                    tif, a.client_order_id, timeout_s=a.timeout)
        except OutcomeTimeout as exc:
            # This command ends here, but what it sent may still be sequenced: a second
            # submit would be a second order. Say how to find the first.
            t = exc.pending[0]
            look = (f"`seqex replay in.ce.{a.symbol} --order {t.client_order_id}` shows it "
                    "once it is; do not submit it again before you have looked")
            if t.seq is None:
                raise UsageError(
                    f"no acknowledgement of the order (client order id {t.client_order_id}) "
                    f"from the sequencer in {a.timeout:g} s; it was sent and may still be "
                    f"sequenced: {look}") from None
            raise UsageError(f"{exc}; the order is in the log and stands: `seqex replay "
                             f"out.ce.{a.symbol} --order {t.client_order_id}` shows its "
                             "result once there is one; do not submit it again") from None
    if isinstance(outcome, Rejected):
        raise UsageError(f"order {describe(outcome, a.symbol)}")
    print(describe(outcome, a.symbol))
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from mq.control import replay
    from mq.record import decode, scan
    if a.rebuild:
        if a.from_seq is not None and a.from_seq != 1:
            raise UsageError(f"--rebuild applies the stream from seq 1 to a fresh engine; "
                             f"--from {a.from_seq} would give another state (leave it out; "
                             "--to stops earlier)")
        return _rebuild(a)
    given = [o for o, v in (("--engine", a.engine), ("--engine-config", a.engine_config))
             if v is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} only "
                         "with --rebuild (without it, nothing would use them)")
    a.from_seq = a.from_seq or 1
    if a.to is not None and a.from_seq > a.to:
        raise UsageError(f"--from {a.from_seq} is beyond --to {a.to}")
    view = _StreamView(a, need_pub=False)
    end = view.end()
    if end is not None and a.from_seq > end:
        raise UsageError(f"--from {a.from_seq} is beyond the end of {a.stream} (the last "
                         f"committed seq is {end})")
    progress = sys.stderr.isatty() and not sys.stdout.isatty()
    seen = shown = ticks = 0
    for frame in replay(view.replicators[0], a.stream, a.from_seq, a.to):
        if progress:  # output goes to a file or pipe: show how far it got
            print(f"\r  replayed up to seq {scan(frame)[2]:,}", end="", file=sys.stderr)
        for rec in decode(frame):
            seen += 1
            ticks += view.decode.is_tick(rec)
            shown += view.show(rec)
    if progress:
        print(file=sys.stderr)
    if seen and not shown:   # say why nothing was printed, not nothing
        filters = [f"--{k} {v}" for k, v in view.filters.items() if v is not None]
        what = f"{seen:,} record{'s' if seen > 1 else ''}"
        if ticks == seen and not a.ticks:
            print(f"{what}, all Ticks (show them with --ticks)", file=sys.stderr)
        else:
            print(f"{what}, none matches {' '.join(filters) or 'the filters'}"
                  f"{'' if a.ticks or not ticks else f' ({ticks:,} Ticks: --ticks shows them)'}",
                  file=sys.stderr)
    return 0


def _replica_config(topo, stream: str, engine: str) -> dict | None:
    """The configuration the cluster's replicas of `stream` run `engine` with: a symbol's
    CrossEngine from its table, a TradingEngine shard from its replicas' command line."""
    sym = topo.symbol_of_stream(stream)
    if sym is not None and engine == "crossengine":
        return sym["engine"]
    for args in _replica_args(topo, stream):
        if args[args.index("--engine") + 1] == engine and "--engine-config" in args:
            return json.loads(args[args.index("--engine-config") + 1])
    return None


def _replica_args(topo, stream: str) -> list[list[str]]:
    """The command lines of the cluster's engine replicas of ``stream``."""
    return [p.args for p in (topo.procs if topo is not None else ())
            if p.role.startswith("replica-") and p.stream == stream and "--engine" in p.args]


def _rebuild(a: argparse.Namespace) -> int:
    """Apply the stream from seq 1 to a fresh engine; print the state hash at the last seq
    (and, for an engine that keeps books, that its audit balances there). The engine's
    configuration comes from --engine-config or from the running cluster's seqex.json, never
    from a default: another configuration gives another hash."""
    from deploy.engines import ENGINES
    from mq.control import replay
    from mq.record import scan
    if a.stream.startswith("out."):
        # an out stream is an engine's output, not its input: applied to an engine it read
        # as truncated commands and ended in an internal error
        raise UsageError(f"--rebuild applies an engine's input stream; {a.stream} is an "
                         f"engine's output (rebuild its in.{a.stream[4:]} instead)")
    topo = None
    if not a.engine_config or not a.engine:
        from deploy.supervisor import NotUp, read_state
        try:
            topo, _pid = read_state(a.data)
        except NotUp as exc:
            if not a.engine_config:
                raise UsageError(f"--rebuild needs the engine's configuration: {exc}; or give "
                                 "--engine-config") from None
    if a.engine is not None and a.engine not in ENGINES:
        raise UsageError(f"--engine {a.engine!r}: no such engine (the engines: "
                         f"{', '.join(sorted(ENGINES))})")
    engine = a.engine or _stream_engine(topo, a.stream)
    if engine not in ENGINES:
        raise UsageError(f"--rebuild: name the engine of {a.stream} with --engine "
                         f"({', '.join(sorted(ENGINES))})")
    if a.engine_config:
        try:
            config = json.loads(a.engine_config)
        except ValueError as exc:
            raise UsageError(f"--engine-config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise UsageError("--engine-config must be a JSON object")
    else:
        config = _replica_config(topo, a.stream, engine)
        if config is None:
            runs = _stream_engine(topo, a.stream)
            if runs in ENGINES and runs != engine:
                raise UsageError(f"--rebuild: {a.stream} is a {runs}'s stream, not a "
                                 f"{engine}'s (leave --engine out, or give --engine {runs})")
            raise UsageError(f"--rebuild: the cluster in {a.data} has no configuration for "
                             f"{a.stream}; give --engine-config")
    try:
        eng, _restore = ENGINES[engine](config)
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"--engine-config does not fit the {engine}: {exc}") from None
    # Read from a replicator that answers (a frozen or dead one would time out).
    replicator = _StreamView(a, need_pub=False).first_answering()
    last, started = 0, time.monotonic()
    for frame in replay(replicator, a.stream, 1, a.to):
        eng.apply_frame(frame)
        last = scan(frame)[2]
        if sys.stderr.isatty():
            print(f"\r  rebuilt up to seq {last:,}", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    result = {"stream": a.stream, "engine": engine, "seq": last,
              "state_hash": eng.state_hash().hex(),
              "seconds": round(time.monotonic() - started, 3)}
    if hasattr(eng, "audit"):
        eng.audit()     # raises with its report if the books do not balance
        result["audit"] = "balanced"
    if a.json:
        print(json.dumps(result))
        return 0
    books = "; its books balance (audit)" if "audit" in result else ""
    print(f"{a.stream}: rebuilt a fresh {engine} from seq 1 to {last:,} in "
          f"{result['seconds']:g} s: state hash {result['state_hash']}{books}")
    return 0


def _stream_engine(topo, stream: str) -> str | None:
    """The engine the cluster's replicas of `stream` run (their --engine), else the one the
    default topology names the stream by."""
    replicas = _replica_args(topo, stream)
    if replicas:
        return replicas[0][replicas[0].index("--engine") + 1]
    if stream.startswith("in.ce."):
        return "crossengine"
    if stream.startswith("in.te."):
        return "tradingengine"
    return "liqengine" if stream == "in.liq" else None


def cmd_audit(a: argparse.Namespace) -> int:
    """One global check of the books, rebuilt from the logs alone (deploy/audit.py)."""
    from deploy import audit
    from deploy.supervisor import NotUp, read_state
    try:
        topo, _pid = read_state(a.data)
    except NotUp as exc:
        raise UsageError(str(exc)) from None
    if not getattr(topo, "trading", None):
        raise UsageError(f"the cluster in {a.data} has no order path to audit")
    try:
        report = audit.audit(topo, every=a.every)
    except (RuntimeError, TimeoutError) as exc:
        raise UsageError(f"seqex audit: {exc}") from None
    if a.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(audit.render(report)))
    return 0 if report.ok else 1


def _silent(addr: str, what: str, timeout_s: float) -> UsageError:
    from mq import auth
    why = "nothing seqex runs there, or it wants other keys than these" \
        if auth.identity() is not None else \
        "nothing seqex runs there, or it wants CURVE keys (--keys DIR, or --data of its cluster)"
    return UsageError(f"{addr} did not answer {what} in {timeout_s:g} s: {why}")


def cmd_ping(a: argparse.Namespace) -> int:
    from mq import auth
    from mq.control import ping
    no_key = None
    try:
        stats = ping(a.addr, a.timeout)
    except auth.KeyFileError as exc:
        # the trust policy names no ZeroMQ server there: the gateway's and the market-data
        # feed's ports are in the topology but have no CURVE key
        stats, no_key = None, exc
    if stats is None:
        if a.addr.startswith("tcp://") and (proto := _protocol_port(a.addr, a.timeout)):
            # the gateway's and the market-data feed's ports speak PROTOCOL.md, not PING
            if a.json:
                print(json.dumps({"protocol": "PROTOCOL.md", "answered": True,
                                  "process": proto}, indent=2, sort_keys=True))
            else:
                print(f"{a.addr}: {proto} answered a Heartbeat (a PROTOCOL.md port has no "
                      "PING; `seqex status` shows the process)")
            return 0
        if no_key is not None:
            raise no_key
        raise _silent(a.addr, "PING", a.timeout)
    if a.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    role = stats.get("role", "server")
    what = stats.get("stream") or stats.get("name") or ""
    print(f"{a.addr}: {role}{' of ' + what if what else ''} answered")
    shown = _named(stats, a.data)
    for line in status_lines({k: v for k, v in shown.items() if k not in ("role", "stream")}):
        print(line)
    return 0


def _protocol_port(addr: str, timeout_s: float) -> str | None:
    """What answers a PROTOCOL.md Heartbeat at addr with a frame, as the supervisor probes
    the gateway (deploy.supervisor.speaks_protocol), or None."""
    from deploy.supervisor import speaks_protocol
    if not speaks_protocol(addr, timeout_s):
        return None
    return "a PROTOCOL.md port (the client gateway or the market-data feed)"


def _named(stats: dict, data_dir: str) -> dict:
    """A PING answer with names for a person: a peer's CURVE key as its name in the trust
    policy (the operator, a process, a producer), a source id as its writer, and an oracle's
    prices (ticks) in the quote currency when the cluster in data_dir knows the tick sizes."""
    from deploy import decode
    from mq import auth
    out = dict(stats)
    topo = None
    with contextlib.suppress(Exception):   # names are a help: without them, the numbers
        from deploy.supervisor import read_state
        topo, _pid = read_state(data_dir, operator_key=False)
    by_id = decode.units_of(topo.symbols) if topo is not None else {}
    by_name = {u.name: u for u in by_id.values()}
    ident = auth.identity()
    if isinstance(out.get("refusals"), dict) and out["refusals"]:
        def peer(key: str) -> str:
            name = ident.trust.name(key) if ident is not None else "unknown"
            if name == "unknown" or key == auth.OTHER_KEYS:
                return key if key == auth.OTHER_KEYS else f"a key the policy does not know ({key})"
            return name
        out["refusals"] = {peer(str(k)): v for k, v in out["refusals"].items()}
    if type(out.get("source")) is int:
        name = decode.source_name(out["source"], by_id)
        if name != str(out["source"]):
            out["source"] = f"{name} ({out['source']})"
    if out.get("role") == "oracle":
        for key in ("index", "marks"):
            prices = out.get(key)
            if not isinstance(prices, dict):
                continue
            if prices and all(sym in by_name for sym in prices):
                out[key] = {sym: by_name[sym].price(t) for sym, t in prices.items()}
            else:   # the tick sizes are the cluster's: say what the numbers are
                out[f"{key} in ticks (give --data of the cluster for prices)"] = out.pop(key)
    return out


def status_lines(value, indent: str = "  ") -> list[str]:
    """A process's PING answer as lines a person reads: one ``name: value`` per field, nested
    tables indented, counts with thousands separators, nanosecond times as UTC."""
    out: list[str] = []
    for key, v in sorted(value.items(), key=lambda kv: str(kv[0])):
        name = str(key).replace("_", " ")
        if name.endswith(" ns") and type(v) is int and v > 10**17:   # a wall-clock time
            name = {"ts": "time"}.get(name[:-3], name[:-3])
        if isinstance(v, dict):
            out.append(f"{indent}{name}:" + ("" if v else " none"))
            out.extend(status_lines(v, indent + "  "))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out.append(f"{indent}{name}:")
            for x in v:
                inner = status_lines(x, indent + "    ")
                out.append(f"{indent}  - {inner[0].strip()}" if inner else f"{indent}  -")
                out.extend(inner[1:])
        else:
            out.append(f"{indent}{name}: {_status_value(str(key), v)}")
    return out


def _status_value(key: str, v) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, int) and key.endswith("_ns") and v > 10**17:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v // 10**9)) + \
            f".{v % 10**9 // 10**6:03d} UTC"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(_status_value(key, x) for x in v) or "none"
    return str(v)


def cmd_stop(a: argparse.Namespace) -> int:
    from mq import wire
    from mq.control import call
    try:
        kind, body, _ = call(a.addr, wire.STOP, timeout_s=a.timeout)
    except TimeoutError:
        raise _silent(a.addr, "STOP", a.timeout) from None
    if kind != wire.PONG:
        why = body.get("error", body) if isinstance(body, dict) else body
        raise UsageError(f"{a.addr} refused STOP: {why}")
    print(f"{a.addr}: stopping (it answered STOP; under `seqex up` its supervisor restarts "
          "it)")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The default cluster (the running one in --data, else started here), a robot trading
    through the gateway with many accounts, and the live dashboard (deploy/demo.py)."""
    from deploy import demo
    try:
        return demo.main(a.data, a.rate, a.users, a.seconds, a.plain, a.seed, a.base_port)
    except BrokenPipeError:
        raise                    # the reader went away (`| head`): main stops quietly
    except (demo.DemoError, ConnectionError, OSError) as exc:
        raise UsageError(str(exc)) from None


# -- argument types: each refuses bad input with one line --------------------------------------

class UsageError(Exception):
    """Bad input or a state the user can fix: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message} (--help for usage)", file=sys.stderr)
        sys.exit(2)


_ENDPOINT = re.compile(r"tcp://(\*|[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]):(\d{1,5}|\*)"
                       r"|ipc://[^\0]{1,255}|inproc://[^\0]{1,255}")


def endpoint(text: str) -> str:
    m = _ENDPOINT.fullmatch(text)
    if not m or (m.group(2) not in (None, "*") and not 1 <= int(m.group(2)) <= 65535):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an endpoint like tcp://127.0.0.1:7001 (port 1 .. 65535)")
    return text


def int_range(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{v} is out of range {lo} .. {hi if hi is not None else 'any'}")
        return v
    parse.__name__ = "integer"
    return parse


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 86_400:
        raise argparse.ArgumentTypeError(f"{text}: a number of seconds above 0, at most 86400")
    return v


def watchdog_seconds(text: str) -> float:
    """0 (off), or seconds from GATEWAY_WATCHDOG_MIN_S (two of the supervisor's rounds) up
    to a day."""
    from deploy.supervisor import GATEWAY_WATCHDOG_MIN_S
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (v == 0 or GATEWAY_WATCHDOG_MIN_S <= v <= 86_400):
        raise argparse.ArgumentTypeError(f"{text}: 0 (off) or a number of seconds from "
                                         f"{GATEWAY_WATCHDOG_MIN_S:g} to 86400")
    return v


def stream_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream name like in.ce.BTCUSDT")
    return text


def decimal_arg(text: str) -> str:
    from decimal import Decimal, InvalidOperation

    from gateway.client import plain_decimal
    if not plain_decimal(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if d < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return text


def kind_filter(text: str) -> str:
    """--kind: a command or event name some codec knows (any case), or a kind number; a
    name nobody knows would filter out every record without a word."""
    from deploy import decode
    if re.fullmatch(r"\d{1,5}", text) and int(text) <= 65_535:
        return text
    if text.lower() not in decode.known_names():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a command or event name (e.g. NewOrder, OrderAccepted, Trade, "
            "OrderRejected) nor a kind number")
    return text


def json_object(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return text


def upstream_spec(text: str) -> str:
    from mq.sequencer import Upstream
    try:
        Upstream.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


SOURCE = int_range(1, (1 << 32) - 1)
SEQ = int_range(1, (1 << 64) - 1)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PROCESS_VERBS = ("replicator", "sequencer", "replica", "mirror", "gateway", "oracle",
                 "marketdata")


def _log_level() -> int | str:
    text = os.environ.get("SEQEX_LOG", "INFO").strip().upper()
    if text in LEVELS:
        return text
    raise UsageError(f"SEQEX_LOG must be one of {', '.join(x.lower() for x in LEVELS)}, "
                     f"got {os.environ['SEQEX_LOG']!r}")


ENGINE_NAMES = ("crossengine", "liqengine", "tradingengine")   # mq.replica.ENGINES (a test compares them)


def parser() -> Parser:
    p = Parser(prog="seqex", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True, parser_class=Parser)
    from deploy import keys
    keys.register(p, sub)   # --keys/--key/--insecure and `seqex keys` (docs/security.md)

    s = sub.add_parser("replicator", help="run a replicator process")
    s.add_argument("--data", required=True, help="LMDB directory")
    s.add_argument("--bind", required=True, type=endpoint,
                   help="ZeroMQ endpoint, e.g. tcp://127.0.0.1:7001")
    s.add_argument("--durability", choices=["os", "fsync"], default="os")
    s.add_argument("--peer", action="append", default=[], type=endpoint,
                   help="another replicator, for catch-up and comparison (repeat)")
    s.add_argument("--pub", type=endpoint, default=None,
                   help="also publish each committed record here, for streams whose policy "
                        "one copy commits (`first`): subscribers skip a hop (docs/log.md)")
    _spin_arg(s)
    s.set_defaults(fn=cmd_replicator)

    s = sub.add_parser("sequencer", help="run the sequencer master of one stream")
    s.add_argument("--stream", required=True, type=stream_name)
    s.add_argument("--producers", required=True, type=endpoint,
                   help="endpoint producers connect to")
    s.add_argument("--pub", required=True, type=endpoint, help="endpoint subscribers connect to")
    s.add_argument("--replicator", action="append", required=True, type=endpoint,
                   help="repeat per replicator")
    s.add_argument("--policy", choices=["first", "quorum", "all"], default="quorum")
    s.add_argument("--tick-ms", type=int_range(1, 3_600_000), default=100,
                   help="idle Tick interval, ms (at most an hour)")
    s.add_argument("--window-bytes", type=int_range(1), default=256 << 20,
                   help="recent frames kept to resend to replicators")
    s.add_argument("--max-uncommitted-bytes", type=int_range(1), default=None,
                   help="backpressure: refuse new batches beyond this (default window/4)")
    s.add_argument("--max-step-ms", type=int_range(1), default=1000,
                   help="sequenced time moves by at most this from one record to the next")
    s.add_argument("--source-retention-s", type=int_range(1), default=86_400,
                   help="a producer source idle this long in sequenced time is forgotten")
    s.add_argument("--max-sources", type=int_range(1, 20_000), default=20_000,
                   help="producer sources remembered at once; past it new ones are refused")
    s.add_argument("--upstream", action="append", default=[], type=upstream_spec, help=(
        "take another stream as a source (repeat): 'stream=NAME,source=ID,pub=ADDR,"
        "replicators=ADDR|ADDR,kinds=K|K,route=MASK'; kinds and route are optional, route takes "
        "only the records with route & MASK != 0 (hex or decimal)"))
    s.add_argument("--standby-lock", metavar="PATH", help=(
        "run as a hot standby: bind nothing until an exclusive lock on PATH is taken (waiting "
        "while another master of the stream holds it), then take over with a new epoch"))
    _spin_arg(s)
    s.set_defaults(fn=cmd_sequencer)

    s = sub.add_parser("replica", help="run an engine replica (hot or warm) on its in stream")
    s.add_argument("--name", required=True)
    s.add_argument("--engine", choices=ENGINE_NAMES, default="crossengine")
    s.add_argument("--engine-config", default="{}", type=json_object,
                   help="JSON: the engine's parameters")
    s.add_argument("--stream", required=True, type=stream_name,
                   help="the input stream, e.g. in.ce.BTCUSDT")
    s.add_argument("--pub", required=True, type=endpoint, help="the input stream's live feed")
    s.add_argument("--replicator", action="append", required=True, type=endpoint)
    s.add_argument("--control", required=True, type=endpoint,
                   help="endpoint for PING/HASH/PROMOTE/STOP")
    s.add_argument("--role", choices=["hot", "warm"], default="hot")
    s.add_argument("--mirror", type=endpoint,
                   help="the out stream's mirror master (inputs endpoint)")
    s.add_argument("--snapshots", help="this replica's snapshot directory")
    s.add_argument("--shared-snapshots", help="a snapshot directory shared by the replicas")
    s.add_argument("--snapshot-every", type=int_range(1), default=100_000)
    s.add_argument("--snapshot-s", type=seconds, default=30.0)
    s.add_argument("--keep", type=int_range(1, 1000), default=3)
    s.set_defaults(fn=cmd_replica)

    s = sub.add_parser("mirror", help="run the mirror master of an out.* stream")
    s.add_argument("--stream", required=True, type=stream_name)
    s.add_argument("--inputs", required=True, type=endpoint,
                   help="endpoint the hot engine replicas send to")
    s.add_argument("--pub", required=True, type=endpoint, help="endpoint subscribers connect to")
    s.add_argument("--replicator", action="append", default=[], type=endpoint,
                   help="repeat per replicator")
    s.add_argument("--policy", choices=["none", "first", "quorum", "all"], default="none")
    s.add_argument("--from-seq", type=SEQ, default=1,
                   help="with policy none: the first seq of the stream this mirror serves")
    s.add_argument("--standby-lock", metavar="PATH", help=(
        "run as a hot standby: bind nothing until an exclusive lock on PATH is taken (waiting "
        "while another master of the stream holds it), then take over with a new epoch"))
    s.set_defaults(fn=cmd_mirror)

    s = sub.add_parser("gateway", help="run the order-entry gateway (PROTOCOL.md over TCP)")
    s.add_argument("--config", required=True,
                   help="JSON object, or a file holding one: index, listen, accounts, shards, "
                        "specs, max_depth, heartbeat_ms, max_connections, journal_cache_bytes, "
                        "index_file (docs/gateway.md)")
    s.set_defaults(fn=cmd_gateway)
    s = sub.add_parser("marketdata", help="run the market-data publisher (binary feed, "
                                          "WebSocket, page)")
    s.add_argument("--config", required=True,
                   help="JSON object, or a file holding one: feed, http, replicators, symbols "
                        "(docs/marketdata.md)")
    s.set_defaults(fn=cmd_marketdata)
    from deploy import trader
    trader.register(sub)
    sub.choices["client"].set_defaults(fn=cmd_client)

    s = sub.add_parser("account", help="users of the gateway; deposits and withdrawals "
                                       "(through the log)")
    s.add_argument("op", choices=["create", "deposit", "withdraw"])
    s.add_argument("args", nargs="*", help="create: NAME; deposit|withdraw: ACCOUNT AMOUNT")
    s.add_argument("--accounts", help="create: the user's accounts, e.g. 2,4 (one shard)")
    s.add_argument("--password", help="create: default: a random one, printed once")
    s.add_argument("--replace", action="store_true",
                   help="create: replace an existing user (new password, these accounts)")
    s.add_argument("--transfer-id", type=int_range(1, (1 << 64) - 1),
                   help="deposit|withdraw: a unique id (default: from the clock); a retry "
                        "with the same id never moves money twice")
    s.add_argument("--topology", help="create without a running cluster: its TOML file")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--timeout", type=seconds, default=15.0)
    s.set_defaults(fn=cmd_account)

    s = sub.add_parser("oracle", help="run the SIMULATED mark-price source (a random walk)")
    s.add_argument("--config", required=True, help="JSON: see deploy/oracle.py")
    s.set_defaults(fn=cmd_oracle)

    s = sub.add_parser("produce", help="send records into a stream")
    s.add_argument("--sequencer", required=True, type=endpoint)
    s.add_argument("--source", type=SOURCE, required=True)
    s.add_argument("--count", type=int_range(0, 1 << 40), required=True)
    s.add_argument("--rate", type=int_range(0, 10**8), default=0)
    s.add_argument("--batch", type=int_range(1, 65_536), default=64)
    s.add_argument("--window", type=int_range(1, 1 << 30), default=100_000)
    s.add_argument("--kind", type=int_range(2, 65_535), default=16)
    s.add_argument("--payload-bytes", type=int_range(0, 1 << 20), default=64)
    s.add_argument("--acks", help="append acknowledged runs to this file")
    s.add_argument("--resend-from", type=SEQ, help="resend from this source_seq on")
    s.add_argument("--timeout", type=seconds, default=120)
    s.set_defaults(fn=cmd_produce)

    def view_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--json", action="store_true", help="one JSON object per record (with "
                       "--rebuild: the result as one JSON object)")
        s.add_argument("--ticks", action="store_true", help="show the idle Ticks too")
        s.add_argument("--kind", type=kind_filter, help="only records with this command or event "
                       "(e.g. NewOrder, Trade, OrderRejected; any case) or kind number")
        s.add_argument("--account", type=int_range(0, (1 << 32) - 1),
                       help="only records that name this account")
        s.add_argument("--order", type=int_range(0, (1 << 64) - 1),
                       help="only records that name this order id or client order id")
        s.add_argument("--data", default="seqex-data",
                       help="the running cluster's data directory (addresses, tick sizes)")
        s.set_defaults(flush=False)

    s = sub.add_parser("tail", help="follow a stream, decoded (exactly once; --out resumes)")
    s.add_argument("stream", type=stream_name)
    s.add_argument("--pub", action="append", type=endpoint,
                   help="default: from the running cluster; repeat to listen to the "
                        "replicators' publishers (`replicator --pub`), first copy wins")
    s.add_argument("--replicator", action="append", type=endpoint,
                   help="default: the running cluster's replicators")
    s.add_argument("--from", dest="from_seq", type=SEQ, default=1)
    s.add_argument("--to", type=SEQ, help="stop after this seq")
    s.add_argument("--count", type=int_range(1), help="stop after this many records shown")
    s.add_argument("--wait", type=seconds, default=30.0,
                   help="how long to wait for --from when the stream has not reached it")
    s.add_argument("--out", help="append 'seq source source_seq kind' lines to this file")
    view_args(s)
    s.set_defaults(fn=cmd_tail, flush=True)

    s = sub.add_parser("replay", help="print records of a stream from a replicator, decoded")
    s.add_argument("stream", type=stream_name)
    s.add_argument("--replicator", type=endpoint,
                   help="default: the first replicator of the running cluster")
    s.add_argument("--rebuild", action="store_true",
                   help="rebuild the engine from the log and print its state hash")
    s.add_argument("--engine", help="with --rebuild: the engine (default: the one the "
                                    "cluster's replicas of the stream run)")
    s.add_argument("--engine-config", type=json_object,
                   help="with --rebuild: JSON of the engine's parameters "
                   "(a TradingEngine's specs, shard and n_shards)")
    s.add_argument("--from", dest="from_seq", type=SEQ, default=None,
                   help="the first seq shown (default 1; --rebuild always starts at 1)")
    s.add_argument("--to", type=SEQ)
    view_args(s)
    s.set_defaults(fn=cmd_replay)

    s = sub.add_parser("audit", help="check every engine's books, rebuilt from the logs")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--every", type=int_range(1, 1 << 30), default=1,
                   help="run each engine's audit every N records (default: after every one)")
    s.add_argument("--json", action="store_true", help="the report as one JSON object")
    s.set_defaults(fn=cmd_audit)

    for verb, fn in (("ping", cmd_ping), ("stop", cmd_stop)):
        s = sub.add_parser(verb, help=f"{verb} a seqex server")
        s.add_argument("addr", type=endpoint)
        s.add_argument("--data", default="seqex-data", help="the cluster's data directory: "
                       "its keys (when --keys is not given) and, for ping, names and units")
        if verb == "ping":
            s.add_argument("--json", action="store_true", help="the answer as JSON")
        s.add_argument("--timeout", type=seconds, default=2.0)
        s.set_defaults(fn=fn)

    s = sub.add_parser("up", help="start and supervise this host's processes")
    s.add_argument("--topology", help="TOML file (default: one machine over loopback)")
    s.add_argument("--data", help="data directory (default: the topology's, ./seqex-data)")
    s.add_argument("--base-port", type=int_range(1, 65535),
                   help="first port (default: the topology's)")
    s.add_argument("--host", help="start only this host's processes")
    s.add_argument("--max-restarts", type=int_range(0, 1000), default=8,
                   help="quick deaths in a row before the supervisor gives up on a process")
    s.add_argument("--restart-backoff", type=seconds, default=0.5,
                   help="the first restart delay; it doubles per quick death, up to 30 s")
    s.add_argument("--ready-timeout", type=seconds, default=60.0,
                   help="how long the processes starting together (a wave: replicators, "
                   "masters, standbys, replicas, the rest) may go without one of them answering")
    s.add_argument("--gateway-watchdog", type=watchdog_seconds, default=10.0, metavar="SECONDS",
                   help="a gateway stopped by a signal (SIGSTOP) this long is killed and started "
                   "again, so that its sessions are released (0: never; default 10)")
    s.set_defaults(fn=cmd_up)

    for verb, fn, text in (("down", cmd_down, "stop a running `seqex up`"),
                           ("status", cmd_status, "the table of processes")):
        s = sub.add_parser(verb, help=text)
        s.add_argument("--data", default="seqex-data")
        if verb == "status":
            s.add_argument("--frozen-after", type=seconds, default=3.0,
                           help="a live process silent for longer than this is FROZEN")
            s.add_argument("--json", action="store_true",
                           help="one JSON object: every process's plan, state and status")
        s.set_defaults(fn=fn)
    s = sub.add_parser("restart", help="start a process again: one the supervisor gave up on, "
                                       "or a running one (stopped first)")
    s.add_argument("names", nargs="+", metavar="NAME", help="process names, as `seqex status` "
                                                           "lists them")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--timeout", type=seconds, default=60.0,
                   help="how long to wait for each to answer (default 60 s)")
    s.set_defaults(fn=cmd_restart)

    from deploy import systemd
    systemd.register(sub)   # `seqex deploy systemd --host NAME` (docs/operations.md)
    from deploy import drill
    drill.register(sub, int_range, seconds)   # `seqex drill NAME` (docs/operations.md)

    s = sub.add_parser("submit", help="put one order into in.ce.SYMBOL and print its outcome")
    s.add_argument("--data", default="seqex-data")
    s.add_argument("--symbol", default="BTCUSDT")
    s.add_argument("--side", type=str.lower, choices=["buy", "sell"], required=True)
    s.add_argument("--price", type=decimal_arg,
                   help="limit price in the contract's units (a multiple of its tick size)")
    s.add_argument("--qty", type=decimal_arg, required=True,
                   help="quantity in the contract's units (a multiple of its lot size)")
    s.add_argument("--account", type=int_range(1, (1 << 32) - 1), default=1)
    s.add_argument("--market", action="store_true")
    s.add_argument("--tif", type=str.lower, choices=["gtc", "ioc", "fok"],
                   help="time in force (default: gtc for a limit order, ioc for a market one)")
    s.add_argument("--client-order-id", type=int_range(1, (1 << 64) - 1))
    s.add_argument("--source", type=SOURCE,
                   help="producer source id (default: a free one, locked for this client)")
    s.add_argument("--timeout", type=seconds, default=10.0,
                   help="how long to wait for the outcome")
    s.add_argument("--bypass-risk", action="store_true",
                   help="on a cluster with TradingEngines, send it all the same (drills, "
                        "tests): no margin check, on no account's books")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("demo", help="the default cluster, a trading robot and a live dashboard")
    s.add_argument("--data", default="seqex-data",
                   help="the cluster's data directory (started here if nothing runs there)")
    s.add_argument("--rate", type=int_range(1, 100_000), default=300,
                   help="orders/s the robot offers in all (open loop)")
    s.add_argument("--users", type=int_range(1, 500), default=20,
                   help="robot users, one funded account each")
    s.add_argument("--seconds", type=int_range(1, 7 * 86_400),
                   help="stop after this long (default: until Ctrl-C)")
    s.add_argument("--plain", action="store_true",
                   help="a line every 2 s instead of the dashboard (also without a terminal)")
    s.add_argument("--seed", type=int_range(0, (1 << 63) - 1), default=1)
    s.add_argument("--base-port", type=int_range(1, 65535),
                   help="first port of a cluster started here (default: the topology's)")
    s.set_defaults(fn=cmd_demo)
    return p


def _one_of(exc: BaseException, *names: str) -> bool:
    """Whether exc is an instance of one of the classes 'module.Class'. A module that was
    never imported cannot have raised: main() imports nothing just to classify an error."""
    for name in names:
        module, _, cls = name.rpartition(".")
        kind = getattr(sys.modules.get(module), cls, None)
        if kind is not None and isinstance(exc, kind):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Every failure the user can act on (bad input, nothing running, a peer
    that does not answer) is one line on stderr and exit status 2, never a traceback. A bug
    in a client verb is one line and exit status 1 (SEQEX_LOG=debug shows its traceback); a
    process verb's bug keeps its traceback for the log, as a broken invariant must."""
    verb = "seqex"
    try:
        level = _log_level()
        logging.basicConfig(level=level,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        p = parser()
        args = p.parse_args(argv)
        verb = f"seqex {args.verb}"
        _check_text(p, args)
        from deploy import keys
        try:
            keys.setup(args)
        except SystemExit as exc:   # a key or trust option refused: one line, status 2
            if not isinstance(exc.code, str):
                raise
            print(" ".join(exc.code.split()), file=sys.stderr)
            return 2
        _die_with_parent()
        _pin()
        _standby(args)
        _observe(args)
        return args.fn(args)
    except BrokenPipeError:
        # The reader went away (`seqex replay ... | head`): stop quietly, as tools do.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):   # stdout is not a file (embedded use)
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        process_verb = verb.split()[-1] in PROCESS_VERBS
        if isinstance(exc, UsageError) or _one_of(
                exc, "deploy.topology.TopologyError", "deploy.supervisor.SupervisorError",
                "deploy.keys.KeysError",
                "deploy.supervisor.NotUp", "deploy.client.ClientError"):
            return _fail(verb, str(exc))
        if _one_of(exc, "zmq.ZMQError"):
            return _fail(verb, f"ZeroMQ: {exc}")
        if isinstance(exc, TimeoutError):
            return _fail(verb, str(exc) or "timed out")
        if isinstance(exc, FileExistsError) and exc.filename \
                and not os.path.isdir(exc.filename):
            # os.makedirs of a directory whose name a file holds: "File exists" misleads
            return _fail(verb, f"{exc.filename} is a file, not a directory")
        if isinstance(exc, OSError):
            return _fail(verb, f"{exc.strerror or exc}"
                               f"{f': {exc.filename}' if exc.filename else ''}")
        if isinstance(exc, ValueError) and not process_verb:
            return _fail(verb, str(exc))   # the client's and the codecs' checks of values
        if process_verb or logging.getLogger().level <= logging.DEBUG:
            raise
        print(f"{verb}: internal error: {type(exc).__name__}: {exc} (SEQEX_LOG=debug shows "
              "the traceback)", file=sys.stderr)
        return 1


def _check_text(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every text argument is valid UTF-8: a byte string that is not (Python keeps its bytes
    as surrogates) failed later, deep in an encode, with a message that named no argument,
    and `up` left its lock behind. One line now, naming the argument."""
    actions = list(p._actions)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            actions += action.choices[args.verb]._actions
    names = {a.dest: (a.option_strings[0] if a.option_strings else a.metavar or a.dest.upper())
             for a in actions}
    if args.verb == "account":   # its positionals by what they are
        names["args"] = "NAME" if args.op == "create" else "ACCOUNT or AMOUNT"
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                shown = "" if dest == "password" else " " + repr(
                    text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                raise UsageError(f"{names.get(dest, dest)}{shown}: not valid UTF-8 text "
                                 "(check the terminal's or the script's encoding)") from None


def _fail(verb: str, message: str) -> int:
    print(f"{verb}: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
