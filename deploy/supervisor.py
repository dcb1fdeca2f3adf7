"""`seqex up` / `down` / `status`: run this host's part of a topology and watch over it.

`up` takes the data directory's lock (``<data_dir>/seqex.lock``, an exclusive ``flock`` held
for the supervisor's life), so a second `up` on the same directory exits at once with one line
and touches nothing. It checks that this host's ports are free (waiting first, up to
``EARLIER_RUN_WAIT_S``, for the processes of an earlier run of the directory whose supervisor
was killed: they are on their way down), starts the processes in waves (``start_waves``: replicators, masters, standby
masters, replicas, then gateways, oracles and publishers; a wave starts at once and waits
until each of its processes answers; one that exits or stays silent stops the start with its
log's last line), writes ``<data_dir>/seqex.json`` atomically (the plan, with
the supervisor's pid), then checks its processes every half second.

A process that died is started again and recovers by itself (a replicator from LMDB and its
peers, a master by claiming a new epoch, a replica from its newest snapshot plus replay).
Restarts back off exponentially: a process that dies within ``STABLE_S`` of its start waits
0.5 s, 1 s, 2 s ... (at most 30 s) before the next try; after ``max_restarts`` such failures in
a row the supervisor gives up on it, prints why (the last line of its log) and records it in
seqex.json, where `seqex status` shows it. The rest keeps running. Ctrl-C, SIGTERM or `seqex
down` stop everything in reverse order and remove the state file.

Heartbeats: a thread of the supervisor PINGs every process once a second and writes, for each,
its pid and the wall-clock time of its last answer to ``<data_dir>/heartbeats.json``
(atomically). It keeps one connection to each process for that (``Pinger``): a new one each
second cost every process a TCP and CURVE handshake and a ZAP check per second, about a tenth
of a core for the default topology at idle. `seqex status` shows the age of each process's last answer, and marks FROZEN a
process whose pid is alive but that has not answered for more than ``FROZEN_AFTER_S``: a
SIGSTOP, a stuck disk, a livelock, which no exit status reveals.
Logs: ``<data_dir>/logs/<process>.log``.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from deploy.procs import Group, Proc
from deploy.topology import Topology
from mq.control import Pinger, ping

STATE_FILE = "seqex.json"
ENGINES_FILE = "engines.json"   # the engine configuration the logs were written under
LOCK_FILE = "seqex.lock"
HEARTBEAT_FILE = "heartbeats.json"
RESTART_DIR = "restart.d"  # `seqex restart` leaves its requests here; the supervisor takes them
RESTART_REQUEST_MAX = 65536   # bytes: a request names processes, no more
STARTING_MAX_S = 900.0     # longer than the replicator's integrity check may take (600 s)
HEARTBEAT_EVERY_S = 1.0  # the supervisor PINGs every process this often
FROZEN_AFTER_S = 3.0     # alive, and silent for longer than this: FROZEN
GATEWAY_WATCHDOG_S = 10.0  # a gateway stopped by a signal (state T) this long is killed
GATEWAY_WATCHDOG_MIN_S = 2.0  # two heartbeat rounds: --gateway-watchdog's least (0: off)
STABLE_S = 30.0          # a process that ran this long has recovered: its backoff resets
BACKOFF_CAP_S = 30.0
EARLIER_RUN_WAIT_S = 60.0  # how long `up` waits for an earlier run's processes to end
DATA_ENV = "SEQEX_DATA"  # in every supervised process's environment: its data directory

# The order processes start in. A wave starts together once the one before it answers: a master
# recovers from its replicators, a standby must find its master holding the lock, a replica
# subscribes to its master, a gateway waits for its TradingEngines. Within a wave nothing
# waits for anything else (ZeroMQ connects when the peer is there).
START_WAVES = {"replicator": 0, "sequencer": 1, "mirror": 1, "replica-hot": 3,
               "replica-warm": 3}


class SupervisorError(Exception):
    """`up` cannot start or go on; the message is the operator's one line."""


class NotUp(Exception):
    """No running cluster in this data directory."""


class Damaged(NotUp):
    """The state file is there but cannot be read as a cluster's plan."""


def backoff_s(failures: int, base_s: float = 0.5, cap_s: float = BACKOFF_CAP_S) -> float:
    """The wait before restart number `failures` (1, 2, ...) of a process that keeps dying:
    base, 2 base, 4 base, ..., at most cap."""
    return min(cap_s, base_s * (2 ** max(0, failures - 1)))


def last_line(path: str) -> str:
    """The last non-empty line of a log (what a crashed process said last)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = [x for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip()[:300] if lines else "(empty log)"


def how_it_ended(returncode: int | None, last: str) -> str:
    """A dead process's end in words, with its log's last line: a signal by its name (a
    SIGKILL's log stops wherever the process was, so that line is no reason), else the
    exit status and what it said last."""
    if returncode is not None and returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        return f"was killed by {sig} (its log ends: {last})"
    return f"exited with status {returncode}: {last}"


def lock_data_dir(data_dir: str) -> int:
    """Take the data directory's lock, or raise SupervisorError naming who holds it."""
    os.makedirs(data_dir, exist_ok=True)
    try:
        return pid_lock(os.path.join(data_dir, LOCK_FILE), 0o644)
    except LockHeld as held:
        raise SupervisorError(f"seqex is already up in {data_dir} (supervisor pid {held}); "
                              f"`seqex down --data {data_dir}` stops it") from None


class LockHeld(Exception):
    """Another process holds the lock; str() is its pid as it wrote it ("?" if unreadable)."""


def pid_lock(path: str, mode: int) -> int:
    """Take an exclusive flock on path (created with mode) and write this pid into it; the fd
    holds the lock for the process's life. LockHeld names the holder's pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LockHeld(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def hold_master_lock(path: str) -> int:
    """A master's standby lock (``--standby-lock``, docs/operations.md "Standby masters"): an
    exclusive flock on path (its directory and the file created), waited for as long as
    another process holds it; then this pid is written into it. The fd holds the lock for the
    process's life: the kernel releases it when the process dies, by SIGKILL too."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def master_lock_holder(path: str) -> int | None:
    """The pid of the live process holding a master's standby lock, as it wrote it (None:
    nobody, or its holder died and no standby has taken it yet)."""
    try:
        with open(path, "rb") as f:
            text = f.read(32).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and _running(int(text)) else None


def standby_lock_of(spec) -> str | None:
    """The --standby-lock path of a master's ProcSpec (None: it has no standby)."""
    args = spec.args
    return args[args.index("--standby-lock") + 1] if "--standby-lock" in args[:-1] else None


def waiting_standby(spec, pid: int | None) -> bool:
    """Whether pid, a live process of spec, is a standby master waiting for its lock (another
    pid holds it). A waiting standby has bound nothing, so it answers no PING: this is how
    the supervisor and `seqex status` know it is well."""
    lock = standby_lock_of(spec)
    if lock is None or not pid or not _running(pid):
        return False
    return master_lock_holder(lock) != pid


def write_atomically(path: str, text: str) -> None:
    """Readers see the old file or the new one, never a torn one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_waves(specs: list) -> list[list]:
    """The processes grouped by START_WAVES (standby masters after the masters; any other role,
    the gateway, oracle and market-data publisher, last), plan order kept within a wave."""
    def wave(spec) -> int:
        if spec.extra.get("standby_of"):
            return 2
        return START_WAVES.get(spec.role, 4)
    waves: dict[int, list] = {}
    for spec in specs:
        waves.setdefault(wave(spec), []).append(spec)
    return [waves[k] for k in sorted(waves)]


def earlier_run(data_dir: str) -> list[int]:
    """The live processes an earlier `up` of data_dir started (SEQEX_DATA in their environment).
    Its supervisor is gone (this one holds the lock), so they got SIGTERM (SEQEX_PARENT) and are
    on their way down, or they are stuck."""
    tag = f"{DATA_ENV}={os.path.abspath(data_dir)}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if tag in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:   # gone, or another user's
            continue
    return [pid for pid in found if _running(pid)]


def wait_for_earlier_run(data_dir: str, timeout_s: float = EARLIER_RUN_WAIT_S) -> None:
    pids = earlier_run(data_dir)
    if not pids:
        return
    print(f"waiting for {processes(len(pids))} of the last run in {data_dir} to stop (its "
          "supervisor ended without stopping them)", flush=True)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if _running(pid)]
    if pids:
        shown = " ".join(str(pid) for pid in pids[:8]) + (" ..." if len(pids) > 8 else "")
        raise SupervisorError(f"{processes(len(pids))} of an earlier run in {data_dir} still "
                              f"running after {timeout_s:g} s (pids {shown}); stop them "
                              "(kill PID) and start again")


def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def port_in_use(endpoint: str) -> bool:
    """Whether a tcp://HOST:PORT endpoint of this machine is taken (False if not bindable
    here for another reason, e.g. another host's address)."""
    if not endpoint.startswith("tcp://"):
        return False
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As ZeroMQ does: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            return exc.errno == 98  # EADDRINUSE
    return False


def check_host(topo: Topology, host: str | None) -> None:
    """--host names a host of the topology (None: every host)."""
    if host is not None and not any(p.host == host for p in topo.procs):
        hosts = sorted({p.host for p in topo.procs})
        raise SupervisorError(f"--host {host}: no process of the topology runs there "
                              f"(hosts: {', '.join(hosts)})")


def engine_configs(topo: Topology) -> dict[str, dict]:
    """stream -> {"engine", "config"}: what the replicas of each engine stream run (their
    --engine and --engine-config)."""
    out: dict[str, dict] = {}
    for p in topo.procs:
        if "--engine-config" in p.args and "--engine" in p.args:
            out[p.stream] = {"engine": p.args[p.args.index("--engine") + 1],
                             "config": json.loads(p.args[p.args.index("--engine-config") + 1])}
    return out


def check_engine_configs(topo: Topology) -> None:
    """An engine's configuration (contract specs, fees, sources, self-trade prevention) is
    part of its state: its snapshots hold it, so a replica restored from one runs the rules
    the log was written under, and a replica replaying the log from seq 1 runs the
    topology's. `up` on a data directory whose logs were written under another configuration
    would let the replicas of one stream diverge (the mirror keeps whichever answers first):
    it is refused, naming the stream and the keys that differ. The first start records the
    configuration in ENGINES_FILE; a stream new to the topology is added to it."""
    path = os.path.join(topo.data_dir, ENGINES_FILE)
    now = engine_configs(topo)
    before: dict = {}
    try:
        with open(path) as f:
            before = json.load(f)
        if not isinstance(before, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        before = {}
    except (OSError, ValueError) as exc:
        raise SupervisorError(f"{path} cannot be read ({exc}): it records the engine "
                              f"configuration this venue's logs were written under") from None
    for stream in sorted(set(before) & set(now)):
        was, wants = before[stream], now[stream]
        if was == wants:
            continue
        old = {"engine": was.get("engine"), **(was.get("config") or {})}
        new = {"engine": wants["engine"], **wants["config"]}
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys)
        raise SupervisorError(
            f"{stream}: the topology changes the configuration its log was written under "
            f"({shown}); it is part of the engine's state, so replicas restored from snapshots "
            f"and replicas replaying the log would run different rules. Set it back, or start "
            f"a new venue in another --data directory")
    if now.keys() - before.keys():
        os.makedirs(topo.data_dir, exist_ok=True)
        write_atomically(path, json.dumps({**before, **now}, sort_keys=True))


def _short(v) -> str:
    text = "(none)" if v is None else json.dumps(v, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def preflight(topo: Topology, host: str | None = None) -> None:
    """Everything that can be checked before a process starts (and, by `seqex up`, before
    anything is written to the data directory)."""
    wait_for_earlier_run(topo.data_dir)
    check_host(topo, host)
    for spec in (p for p in topo.procs if host is None or p.host == host):
        ends = [spec.control] + [spec.args[i + 1] for i, a in enumerate(spec.args)
                                 if a in ("--pub", "--producers", "--inputs")]
        for end in ends:
            if port_in_use(end):
                raise SupervisorError(
                    f"{end} ({spec.name}) is already in use on this machine: another "
                    "seqex (or an earlier run's processes) holds it; stop it or choose "
                    "another --base-port")


class Supervisor:
    def __init__(self, topo: Topology, host: str | None = None, max_restarts: int = 8,
                 backoff_base_s: float = 0.5, title: str = "seqex up",
                 after_start=None, lock_fd: int | None = None,
                 gateway_watchdog_s: float = GATEWAY_WATCHDOG_S):
        self.topo = topo
        self.host = host
        # Children end with the supervisor, however it ends (a SIGKILL included).
        self.group = Group(os.path.join(topo.data_dir, "logs"), die_with_parent=True,
                           insecure_unless_keyed=False)
        self.procs: dict[str, Proc] = {}
        self.running = True
        self.max_restarts = max_restarts
        self.backoff_base_s = backoff_base_s
        # A stopped gateway (SIGSTOP) keeps its sessions bound to connections that are gone,
        # and their cancel-on-disconnect never fires: killed, it is started again and its
        # GatewayStart releases them. 0: never. Only a process stopped by a signal the whole
        # time: a gateway that is busy, or full and refusing connections, misses the probe
        # too, and must not be killed for it.
        self.gateway_watchdog_s = gateway_watchdog_s
        self.stopped_since: dict[str, tuple[int, float]] = {}  # gateway -> (pid, monotonic)
        self.watchdog_killed: dict[str, int] = {}   # gateway -> the pid the watchdog killed
        self.restarts: dict[str, int] = {}       # total restarts per process
        self.failures: dict[str, int] = {}       # quick deaths in a row
        self.started_at: dict[str, float] = {}
        self.due_at: dict[str, float] = {}       # when a dead process may start again
        self.gave_up: dict[str, str] = {}        # process -> why
        self.restarting: set[str] = set()        # being stopped for the operator (restart)
        self.operator_asked: dict[str, str] = {}  # restart asked: what the process was
        self.requests_noted: set[str] = set()    # request files not taken, said once
        self.state_lock = threading.Lock()       # _write_state from the restart threads too
        self.lock_fd = lock_fd    # the data directory's lock, if the caller took it
        self.stopped_by = 0       # the signal that stopped `up` (SIGINT, SIGTERM), if one did
        self.came_up = False      # every process started and answered (the banner printed)
        self.title = title
        # Run once every process answers (the demo users' deposits); its failure is reported,
        # and the cluster keeps running.
        self.after_start = after_start

    def mine(self) -> list:
        return [p for p in self.topo.procs if self.host is None or p.host == self.host]

    def preflight(self) -> None:
        preflight(self.topo, self.host)

    def up(self, ready_timeout_s: float = 60) -> None:
        if self.lock_fd is None:
            self.lock_fd = lock_data_dir(self.topo.data_dir)
        try:
            self.preflight()
        except SupervisorError:
            os.close(self.lock_fd)
            raise
        print(self.title, flush=True)
        self.clear_restart_requests()

        def stop(signum: int, _frame) -> None:
            self.running = False
            self.stopped_by = self.stopped_by or signum
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # SIGHUP (`seqex account create` sends it): the gateways re-read the accounts file.
        self.reload_accounts = False
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_accounts", True))
        try:
            for wave in start_waves(self.mine()):
                self._start_wave(wave, ready_timeout_s)
                if not self.running:
                    return
            self._write_state()
            self.banner()
            self.came_up = True
            if self.after_start is not None:   # beside the supervision, which goes on
                threading.Thread(target=self._after_start, daemon=True).start()
            threading.Thread(target=self._heartbeats, daemon=True).start()
            while self.running:
                time.sleep(0.5)
                if self.reload_accounts:
                    self.reload_accounts = False
                    self.forward_sighup()
                self.take_restart_requests()
                self.check()
        finally:
            print("stopping...", flush=True)
            self.running = False
            self.stop_standbys()
            self.group.stop_all()
            for path in (self.state_path, self.heartbeat_path):
                if os.path.exists(path):
                    os.remove(path)
            os.close(self.lock_fd)
            print("stopped." if self.came_up or not self.stopped_by else
                  f"stopped before the cluster was up ({signal.Signals(self.stopped_by).name})",
                  flush=True)

    def exit_status(self) -> int:
        """0 for a cluster that came up and was stopped (Ctrl-C is how it stops); 128 + the
        signal for one stopped while it was starting, which did not do what was asked."""
        return 128 + self.stopped_by if self.stopped_by and not self.came_up else 0

    def stop_standbys(self) -> None:
        """First the standby masters waiting for their locks: stopping a master must not hand
        its stream to its standby on the way down. (A standby that took its lock a moment ago
        is a master now: it is stopped with the rest.)"""
        specs = {s.name: s for s in self.mine()}
        for name, proc in self.procs.items():
            spec = specs.get(name)
            if spec is not None and proc.alive and waiting_standby(spec, proc.popen.pid):
                proc.stop()

    def _after_start(self) -> None:
        try:
            self.after_start(self.topo)
        except Exception as exc:   # an operating problem; the cluster runs on
            print(f"  after start: {type(exc).__name__}: {exc}", flush=True)

    def forward_sighup(self) -> None:
        """The accounts file changed: every running gateway re-reads it (SIGHUP)."""
        for spec in self.mine():
            proc = self.procs.get(spec.name)
            if spec.role == "gateway" and proc is not None and proc.alive:
                proc.popen.send_signal(signal.SIGHUP)
                print(f"  {spec.name}: re-reading the accounts file", flush=True)

    def _start_wave(self, wave: list, timeout_s: float) -> None:
        """Start every process of one wave, then wait until each answers, each in a thread of
        its own (a PING of a process not yet bound waits out its whole timeout). The wave fails
        when one of its processes exits, or when none of those still silent has answered for
        timeout_s since the wave started or its last process answered: a wave of n processes
        sharing the cores gets as long as n started one after another did."""
        for spec in wave:
            proc = self.group.spawn(spec.name, spec.args, cpu=spec.cpu,
                                    env=child_env(spec, self.topo.data_dir))
            self.procs[spec.name] = proc
            self.started_at[spec.name] = time.monotonic()
        progress = [time.monotonic()]   # when the wave started, or one of it last answered
        printing = threading.Lock()
        failed: list[SupervisorError] = []

        def ready(spec) -> None:
            try:
                self._wait_ready(spec, self.procs[spec.name], timeout_s, progress, failed)
            except SupervisorError as exc:
                failed.append(exc)
                return
            if self.running and not failed:
                progress[0] = time.monotonic()
                line = f"  started {spec.name:<22} {spec.role:<12} {spec.control}\n"
                with printing:   # one whole line each
                    sys.stdout.write(line)
                    sys.stdout.flush()

        with ThreadPoolExecutor(max_workers=len(wave)) as pool:
            list(pool.map(ready, wave))
        if failed:
            raise failed[0]

    def _wait_ready(self, spec, proc: Proc, timeout_s: float, progress: list[float],
                    failed: list) -> None:
        while self.running and not failed:
            if probe(spec, timeout_s=0.5):
                return
            if not proc.alive:
                raise SupervisorError(f"{spec.name} exited with status {proc.popen.returncode} "
                                      f"while starting: {last_line(proc.log_path)} (log: "
                                      f"{proc.log_path})")
            if time.monotonic() > progress[0] + timeout_s:
                raise SupervisorError(f"{spec.name} did not answer on {spec.control} in "
                                      f"{timeout_s:g} s (log: {proc.log_path})")

    @property
    def restart_dir(self) -> str:
        return os.path.join(self.topo.data_dir, RESTART_DIR)

    def take_restart_requests(self) -> None:
        """`seqex restart NAME...` (restart_request): each request file is taken once, in the
        order written, and removed; a name this supervisor does not run is said and skipped.
        Only regular files of at most RESTART_REQUEST_MAX bytes, opened without blocking: the
        directory is writable by whoever runs the cluster, and a FIFO put there blocked the
        supervision, a deeply nested one stopped it (RecursionError), at every start again."""
        files = self._request_files()
        for f in files:
            path = os.path.join(self.restart_dir, f)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                self._note_request(f, "not a regular file")   # a directory, a FIFO, a link
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError as exc:
                self._note_request(f, f"cannot be read ({exc.strerror})")
                continue
            try:
                os.remove(path)       # taken once: one that stays would be acted on each round
            except OSError as exc:
                os.close(fd)
                self._note_request(f, f"cannot be removed ({exc.strerror})")
                continue
            names: list = []
            try:
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read(RESTART_REQUEST_MAX + 1)
                if len(data) > RESTART_REQUEST_MAX:
                    raise ValueError(f"more than {RESTART_REQUEST_MAX} bytes, more than a "
                                     "request holds")
                got = json.loads(data)
                names = got["names"]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError("names: a list of process names")
            except Exception as exc:   # whatever is in the file, supervision goes on
                print(f"  a restart request {f} not taken: {type(exc).__name__}: "
                      f"{str(exc)[:200]}", flush=True)
                names = []
            for name in dict.fromkeys(names):
                if name in self.restarting:
                    print(f"  restart of {name} asked: it is being restarted", flush=True)
                elif name in self.procs:
                    self.restart(name)
                else:
                    print(f"  restart of {name} asked: no such process here", flush=True)

    def _request_files(self) -> list[str]:
        """The request files' names, oldest first; none unless restart.d is a directory of its
        own (not a link: the requests taken are removed, and a link to another directory
        had its .json files removed)."""
        try:
            if not stat.S_ISDIR(os.lstat(self.restart_dir).st_mode):
                self._note_request(RESTART_DIR, "not a directory (a link or a file): no "
                                                "request is taken from it")
                return []
            return sorted(f for f in os.listdir(self.restart_dir) if f.endswith(".json"))
        except OSError:
            return []

    def _note_request(self, f: str, why: str) -> None:
        if f not in self.requests_noted:
            self.requests_noted.add(f)
            print(f"  a restart request {f} not taken: {why}", flush=True)

    def clear_restart_requests(self) -> None:
        """At start: requests left by an earlier run (a client killed after writing one) are
        not this run's to carry out."""
        for f in self._request_files():
            path = os.path.join(self.restart_dir, f)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.remove(path)
            except OSError:
                pass

    def restart(self, name: str) -> None:
        """The operator's restart: a process given up on, or waiting out its backoff, starts
        now with its count of quick deaths at zero; a running one is stopped (SIGTERM; one
        stopped by a signal, SIGKILL) and started again, not counted as a failure (a master's
        standby takes its stream over meanwhile, as in a drill). The stop runs on a thread of
        its own, so that a process slow to stop does not hold up the supervision of the rest;
        the start is check()'s, on this thread: a child asks for SIGTERM when the thread
        that started it ends (PR_SET_PDEATHSIG is per thread), and children started from a
        short-lived thread died of it a second later (an adversary's mass restart)."""
        proc = self.procs[name]
        gave_up = self.gave_up.pop(name, None) is not None
        was = "given up on" if gave_up else "waiting to restart" if name in self.due_at \
            else "running" if proc.alive else "down"
        self.failures[name] = 0
        self.due_at.pop(name, None)
        self.operator_asked[name] = was
        if gave_up:
            self._write_state()
        if not proc.alive:
            self.due_at[name] = time.monotonic()      # check() starts it this round
            return
        self.restarting.add(name)

        def stop() -> None:
            try:
                if stopped_by_signal(proc.popen.pid):
                    proc.kill()              # stopped, it cannot act on SIGTERM
                else:
                    proc.stop()
                self.due_at[name] = time.monotonic()
            finally:
                self.restarting.discard(name)
        threading.Thread(target=stop, name=f"restart-{name}", daemon=True).start()

    def check(self) -> None:
        """One round: restart what died, with backoff; give up on what keeps dying."""
        now = time.monotonic()
        for name, proc in self.procs.items():
            if not self.running or name in self.gave_up or proc.alive \
                    or name in self.restarting:
                continue
            due = self.due_at.get(name)
            if due is None:   # just found dead: decide when to try again
                quick = now - self.started_at.get(name, 0.0) < STABLE_S
                # status 0 after a stable run is a clean stop (`seqex stop`, a drain), not a
                # failure; one within STABLE_S of its start counts, so a loop still ends
                stopped = proc.popen.returncode == 0 and not quick
                # the gateway watchdog's own kill is not the process failing: a gateway
                # stopped again after each start must not be given up on for it
                watchdog = self.watchdog_killed.get(name) == proc.popen.pid
                self.failures[name] = 0 if stopped or watchdog else \
                    self.failures.get(name, 0) + 1 if quick else 1
                if self.failures[name] > self.max_restarts:
                    why = (f"{name} died {self.failures[name]} times in a row, each within "
                           f"{STABLE_S:g} s of its start; giving up on it. Last words: "
                           f"{last_line(proc.log_path)} (log: {proc.log_path}). Fix the cause, "
                           f"then `seqex restart {name}`")
                    self.gave_up[name] = why
                    print(f"  {why}", flush=True)
                    self._write_state()
                    if self.topo.by_name(name).role == "gateway":
                        self._release_gateway(name)
                    continue
                wait = backoff_s(self.failures[name], self.backoff_base_s)
                self.due_at[name] = now + wait
                why = "stopped" if stopped else "the gateway watchdog's kill" if watchdog \
                    else f"failure {self.failures[name]} of {self.max_restarts}"
                print(f"  {name} {how_it_ended(proc.popen.returncode, last_line(proc.log_path))}"
                      f"; restarting in {wait:g} s ({why})", flush=True)
                continue
            if now >= due:
                del self.due_at[name]
                self.restarts[name] = self.restarts.get(name, 0) + 1
                asked = self.operator_asked.pop(name, None)
                print(f"  restarting {name} (" + (f"{asked}; asked by the operator, "
                                                  if asked else "")
                      + f"restart {self.restarts[name]})", flush=True)
                self.started_at[name] = now
                proc.start()

    def _release_gateway(self, name: str) -> None:
        """A gateway given up on: its sessions are released (deploy.trading.release_gateway),
        on a thread, so that the round goes on. Bound to its connections, they could log on at
        no other gateway and their cancel-on-disconnect never fired."""
        args = self.topo.by_name(name).args
        g = json.loads(args[args.index("--config") + 1])["index"]

        def release() -> None:
            from deploy import trading
            shards = [sh["in"] for sh in self.topo.trading["shards"]]
            done: list[str] = []
            wait = 1.0
            # until every shard took it, while the gateway stays given up on (a shard whose
            # sequencer is away when it is given up on is tried again, backing off)
            while self.running and name in self.gave_up:
                if wait > 1.0 and probe(self.topo.by_name(name)) is not None:
                    # started again by hand meanwhile: its own GatewayStart ended the sessions,
                    # and a late one from here would end the ones it has bound since
                    print(f"  {name} answers again: its sessions were released by its own "
                          f"start; not sending GatewayStart({g}) to the rest", flush=True)
                    return
                try:
                    trading.release_gateway(self.topo.data_dir, self.topo, g, done=done)
                except Exception as exc:  # a shard does not answer: said, and tried again
                    print(f"  {name}'s sessions not yet released in "
                          f"{', '.join(s for s in shards if s not in done)} "
                          f"({type(exc).__name__}: {exc}); trying again in {wait:g} s"
                          + (f" (released in {', '.join(done)})" if done else ""), flush=True)
                    time.sleep(wait)
                    wait = min(wait * 2, 30.0)
                    continue
                print(f"  {name}'s sessions released (GatewayStart({g}) from the operator into "
                      f"{', '.join(shards)}): they end as disconnects, may log on at another "
                      "gateway, and their cancel-on-disconnect runs", flush=True)
                return
        threading.Thread(target=release, name=f"release-{name}", daemon=True).start()

    @property
    def state_path(self) -> str:
        return os.path.join(self.topo.data_dir, STATE_FILE)

    @property
    def heartbeat_path(self) -> str:
        return os.path.join(self.topo.data_dir, HEARTBEAT_FILE)

    def _heartbeats(self) -> None:
        """PING every process each HEARTBEAT_EVERY_S; record its pid and its last answer."""
        pinger = Pinger()
        try:
            self._heartbeat_rounds(pinger)
        finally:
            pinger.close()

    def _heartbeat_rounds(self, pinger: Pinger) -> None:
        beats: dict[str, dict] = {}
        specs = {s.name: s for s in self.mine()}
        while self.running:
            round_at = time.monotonic()
            for name, proc in list(self.procs.items()):
                pid = proc.popen.pid if proc.popen else 0
                # A process's silence counts from when it is first watched, or restarted.
                # "answered": whether this pid has answered since it started (a process
                # that has not yet is STARTING, not FROZEN: silent_state)
                beat = beats.setdefault(name, {"pid": pid, "answered_at": time.time(),
                                               "started_at": time.time(), "answered": False})
                if beat["pid"] != pid:
                    beat.update(pid=pid, answered_at=time.time(), started_at=time.time(),
                                answered=False)
                # A standby waiting for its lock binds nothing: alive and waiting is its answer.
                if proc.alive and (waiting_standby(specs[name], pid) and not
                                   stopped_by_signal(pid)
                                   or probe(specs[name], timeout_s=0.5, pinger=pinger)
                                   is not None):
                    beat.update(answered_at=time.time(), answered=True,
                                standby=waiting_standby(specs[name], pid))
                if specs[name].role == "gateway":
                    self._watchdog(name, pid if proc.alive else 0)
            if not self.running:
                return
            try:
                write_atomically(self.heartbeat_path, json.dumps(beats))
            except OSError:
                pass   # the data directory is going away with the supervisor
            time.sleep(max(0.0, HEARTBEAT_EVERY_S - (time.monotonic() - round_at)))

    def _watchdog(self, name: str, pid: int) -> None:
        """A gateway found stopped by a signal (SIGSTOP) in every round for
        gateway_watchdog_s is killed (once); check() starts it again."""
        if not self.gateway_watchdog_s or not pid or pid_state(pid) != "T":
            # (not "t": a debugger's stop is the operator's, not a fault)
            self.stopped_since.pop(name, None)
            return
        since = self.stopped_since.get(name)
        now = time.monotonic()
        if since is None or since[0] != pid:
            self.stopped_since[name] = (pid, now)
            return
        if now - since[1] < self.gateway_watchdog_s or self.watchdog_killed.get(name) == pid:
            return
        self.watchdog_killed[name] = pid
        print(f"  {name} (pid {pid}) has been stopped (SIGSTOP) for {now - since[1]:.0f} s: "
              "killing it, so that its start releases its sessions (they end as disconnects "
              "and their cancel-on-disconnect runs)", flush=True)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    def _write_state(self) -> None:
        d = json.loads(self.topo.to_json())
        d["supervisor"] = os.getpid()
        d["gave_up"] = self.gave_up
        d["host"] = self.host     # the host whose processes this supervisor runs (None: all)
        with self.state_lock:     # (a restart's thread writes it too)
            write_atomically(self.state_path, json.dumps(d, indent=1))

    def banner(self) -> None:
        print(f"seqex is up: {len(self.procs)} processes, data and logs in {self.topo.data_dir}")
        for sym, s in self.topo.symbols.items():
            print(f"  {sym}: orders into {s['in']} at {s['producers']}, results on {s['out']} "
                  f"at {s['out_pub']}")
        t = self.topo.trading
        # the hints name this data directory unless it is the default one (copied as they are
        # printed, they must reach this cluster)
        here = os.path.abspath(self.topo.data_dir)
        d = "" if here == os.path.abspath("seqex-data") else f" --data {shlex.quote(here)}"
        if t and t.get("gateway"):
            print(f"  gateway: clients connect to {' or '.join(t.get('gateways', [t['gateway']]))}"
                  f" (PROTOCOL.md); shards: {', '.join(sh['in'] for sh in t['shards'])}")
            print(f"  seqex client{d} --user alice buy BTCUSDT 0.01 @ 50000   trade (another "
                  "terminal)")
            print(f"  seqex client{d} --user bob watch                         reports as "
                  "they come")
        md = getattr(self.topo, "marketdata", None)
        if md:
            print(f"  market data: http://{md['http']}/ (page, WebSocket, REST); binary feed "
                  f"{md['feed']} (PROTOCOL.md §6)")
        if any(p.role == "oracle" for p in self.topo.procs):
            print("  mark prices: SIMULATED (a seeded random walk; oracle0), not a real feed")
        print(f"  seqex status{d}                         the process table")
        if not (t and t.get("gateway")):
            # (a raw order goes straight into the CrossEngine's log, past every risk check:
            # on a cluster that trades, it would rest in the clients' book)
            print(f"  seqex submit{d} --symbol BTCUSDT --side buy --price 100 --qty 5 "
                  "--account 1")
        print(f"  seqex replay{d} in.ce.BTCUSDT --from 1  the log, decoded (--rebuild: state "
              "hash)")
        print(f"  seqex tail{d} out.ce.BTCUSDT            results as they come")
        print(f"  seqex down{d} (or Ctrl-C)               stop everything", flush=True)


def child_env(spec, data_dir: str) -> dict[str, str]:
    """What a supervised process finds in its environment besides the supervisor's own: its
    name in the topology, its data directory (how a later `up` finds it, earlier_run), and
    where it serves its metrics (deploy/metrics.py)."""
    env = {"SEQEX_PROCESS": spec.name, DATA_ENV: os.path.abspath(data_dir)}
    if spec.extra.get("metrics"):
        env["SEQEX_METRICS"] = spec.extra["metrics"]
    return env


def read_state(data_dir: str, check_alive: bool = True,
               operator_key: bool = True) -> tuple[Topology, int]:
    """The running cluster's plan and supervisor pid; NotUp when there is none. With
    `operator_key`, this process then reaches the cluster with its operator key."""
    path = os.path.join(os.path.abspath(data_dir), STATE_FILE)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise NotUp(f"seqex is not up in {data_dir} (no {STATE_FILE}); run `seqex up`") from None
    except OSError as exc:
        raise NotUp(f"cannot read {path}: {exc.strerror}") from None
    try:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"a JSON {type(d).__name__}, not an object")
        pid = int(d.get("supervisor", 0))
        topo = Topology.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Damaged(f"{path} is damaged ({exc}); `seqex down --data {data_dir}` removes "
                      "it") from None
    if check_alive and (not _running(pid) or lock_holder(data_dir) != pid):
        # the supervisor that wrote the file holds the directory's lock for as long as it
        # runs: a pid that does not is gone (and maybe reused) or the file was copied here
        raise NotUp(f"seqex is not up in {data_dir}: its supervisor (pid {pid}) is gone or "
                    f"does not hold {os.path.join(data_dir, LOCK_FILE)}, so {STATE_FILE} is "
                    f"stale; `seqex down --data {data_dir}` clears it")
    if operator_key:
        from deploy.keys import use_operator_key
        use_operator_key(topo)   # a secured cluster is reached with its operator key
    return topo, pid


def restart_request(data_dir: str, names: list[str], timeout_s: float = 60.0,
                    taken_within_s: float = 10.0) -> int:
    """`seqex restart NAME...`: hand the names to the running supervisor (a request file it
    takes within a round), then wait until each answers as a new process; prints one line
    each. 0 when all answer within timeout_s, else 1."""
    topo, pid = read_state(data_dir)
    host = state_field(data_dir, "host", None)
    for name in names:
        spec = next((s for s in topo.procs if s.name == name), None)
        if spec is None:
            raise SupervisorError(f"no process named {name!r} in this cluster; `seqex status "
                                  f"--data {data_dir}` lists them")
        if host is not None and spec.host != host:
            raise SupervisorError(f"{name} runs on host {spec.host}, not under this supervisor "
                                  f"(host {host}): run `seqex restart` there")
    names = list(dict.fromkeys(names))       # a name twice is one restart
    before = read_heartbeats(data_dir)
    folder = os.path.join(os.path.abspath(data_dir), RESTART_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{time.time_ns():020d}-{os.getpid()}.json")
    write_atomically(path, json.dumps({"names": names}))
    deadline = time.monotonic() + taken_within_s
    while os.path.exists(path):
        if time.monotonic() > deadline:
            os.remove(path)
            raise SupervisorError(f"the supervisor (pid {pid}) did not take the request in "
                                  f"{taken_within_s:g} s (still starting, or stopped? "
                                  "`seqex status`)")
        time.sleep(0.1)
    deadline = time.monotonic() + timeout_s
    waiting = {n: (before.get(n) or {}).get("pid") for n in names}
    status = 0
    while waiting:
        if not _running(pid):
            raise SupervisorError(f"the supervisor (pid {pid}) stopped before "
                                  f"{', '.join(waiting)} answered")
        beats = read_heartbeats(data_dir)
        for name, old_pid in list(waiting.items()):
            b = beats.get(name) or {}
            if b.get("pid") and b.get("pid") != old_pid and b.get("answered"):
                role = "standby, waiting for its stream" if b.get("standby") else "answering"
                print(f"{name}: restarted (pid {b['pid']}), {role}")
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            for name in waiting:
                spec = topo.by_name(name)
                print(f"{name}: not answering {timeout_s:g} s after its restart (log: "
                      f"{os.path.join(topo.data_dir, 'logs', spec.name + '.log')}; "
                      "`seqex status`)")
            status = 1
            break
        if waiting:
            time.sleep(0.2)
    return status


def state_field(data_dir: str, key: str, default):
    """One field of the supervisor's state file; default if it cannot be read."""
    try:
        with open(os.path.join(os.path.abspath(data_dir), STATE_FILE)) as f:
            return json.load(f).get(key, default)
    except (OSError, ValueError, AttributeError):
        return default


def gave_up(data_dir: str) -> dict[str, str]:
    return state_field(data_dir, "gave_up", {})


def lock_holder(data_dir: str) -> int | None:
    """The pid of the supervisor holding the data directory's lock, or None."""
    try:
        fd = os.open(os.path.join(os.path.abspath(data_dir), LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)   # also releases a probe lock taken above
    return None


def down(data_dir: str, timeout_s: float = 60) -> int:
    state = os.path.join(os.path.abspath(data_dir), STATE_FILE)
    try:
        _topo, pid = read_state(data_dir, check_alive=False)
    except NotUp as exc:
        # Still starting (no state file yet), but the lock names its supervisor.
        pid = lock_holder(data_dir)
        if pid is None:
            if isinstance(exc, Damaged):   # nobody holds the directory: clear the wreck
                os.remove(state)
                print(f"no supervisor holds {data_dir}; removed its damaged {STATE_FILE}")
                return 0
            raise
    holder = lock_holder(data_dir)
    if holder is None or not _running(holder):
        # never signal a pid that does not hold this directory's lock: the state file may be
        # stale (the supervisor gone, its pid reused by another program) or copied here
        if os.path.exists(state):
            os.remove(state)
        print(f"the supervisor (pid {pid}) was gone: no process holds "
              f"{os.path.join(data_dir, LOCK_FILE)}; removed its state file")
        return 0
    pid = holder          # the directory's supervisor is the lock's, whatever the file says
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The supervisor removes its state file last; an exited one may linger as a zombie
        # until its parent reaps it, which still answers kill(pid, 0).
        if not _running(pid) or (not os.path.exists(state)
                                 and lock_holder(data_dir) != pid):
            print("seqex is down")
            return 0
        time.sleep(0.1)
    raise SupervisorError(f"the supervisor (pid {pid}) did not stop in {timeout_s:g} s")


def _running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def probe(spec, timeout_s: float = 0.5, pinger: Pinger | None = None,
          web: bool = False) -> dict | None:
    """A process's status: PING on its control endpoint (over ``pinger``'s kept connection
    when given). The gateway, whose only port speaks PROTOCOL.md, is sent a Heartbeat before
    any Logon and must answer with a PROTOCOL.md frame (its Logout(2) "logon first"): a
    connection alone could be another program's port."""
    if spec.extra.get("probe") != "tcp":
        if pinger is not None:
            return pinger.ping(spec.control, timeout_s)
        return ping(spec.control, timeout_s=timeout_s)
    if not speaks_protocol(spec.control, timeout_s):
        return None
    if web and spec.role == "marketdata" and spec.extra.get("http"):
        # Its binary port answers before the publisher has replayed its streams, while it
        # refuses every client (LogonReject 6, HTTP 503): its web port says which. (Asked
        # for `seqex status`, not by the supervisor's heartbeats: a GET every second would
        # be most of the publisher's REST requests.)
        return {"state": marketdata_state(spec.extra["http"], timeout_s)}
    return {"state": "accepting clients"}


def speaks_protocol(addr: str, timeout_s: float = 0.5) -> bool:
    """Whether addr (tcp://host:port) answers a PROTOCOL.md Heartbeat sent before any Logon
    with a PROTOCOL.md frame (the gateway's and the market-data feed's Logout(2) "logon
    first"): a connection alone could be another program's port."""
    from gateway import wire
    host, _, port = addr[len("tcp://"):].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as s:
            s.sendall(wire.encode(wire.HEARTBEAT, 0, 1, 1))
            head = b""
            while len(head) < 4:
                more = s.recv(4 - len(head))
                if not more:
                    return False
                head += more
    except (OSError, ValueError):
        return False
    return head[2:4] == wire.PREFIX.pack(0, wire.ENCODING_TYPE, 0, 0, 0, 0)[2:4]


def marketdata_state(http: str, timeout_s: float = 0.5) -> str:
    """What the market-data publisher at http (tcp://host:port) does with clients, from
    GET /api/v1/exchangeInfo: 200 "accepting clients", 503 "catching up" (it refuses them
    until its streams are replayed), anything else or no answer says so."""
    host, _, port = http[len("tcp://"):].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as s:
            s.sendall(b"GET /api/v1/exchangeInfo HTTP/1.1\r\nHost: " + host.encode()
                      + b"\r\nConnection: close\r\n\r\n")
            line = b""
            while b"\r\n" not in line and len(line) < 256:
                more = s.recv(256)
                if not more:
                    break
                line += more
    except OSError:
        return "accepting binary clients; its web port does not answer"
    code = line.split(b"\r\n", 1)[0].split(b" ")[1:2]
    if code == [b"200"]:
        return "accepting clients"
    if code == [b"503"]:
        return "catching up: refusing clients until its streams are replayed"
    answer = (code or [b"?"])[0].decode("ascii", "replace")[:8]
    return f"accepting binary clients; its web port answers {answer}"


def read_heartbeats(data_dir: str) -> dict[str, dict]:
    """{process: {"pid", "answered_at"}} as the supervisor last wrote them ({} if none)."""
    try:
        with open(os.path.join(os.path.abspath(data_dir), HEARTBEAT_FILE)) as f:
            beats = json.load(f)
    except (OSError, ValueError):
        return {}
    return beats if isinstance(beats, dict) else {}


def stopped_by_signal(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, SIGTSTP, a debugger): state T or t."""
    return pid_state(pid) in ("T", "t")


def pid_state(pid: int) -> str:
    """The process's state letter in /proc (R, S, D, T, t, Z, ...); "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def frozen_advice(name: str, pid: int, silent_s: float) -> str:
    """The operator's next step for a process that is alive and does not answer."""
    if stopped_by_signal(pid):
        why = f"pid {pid} is stopped by a signal: `kill -CONT {pid}` resumes it"
    else:
        why = f"pid {pid} runs but does not answer (see its log)"
    return (f"{name} is FROZEN: no answer for {silent_s:.1f} s; {why}; if it stays frozen, "
            f"`kill -KILL {pid}` and the supervisor restarts it")


def silent_state(name: str, beat: dict, given_up: dict[str, str],
                 frozen_after_s: float) -> tuple[str, float | None, str | None]:
    """The state of a process that did not answer a probe just now, from the supervisor's
    heartbeat of it: (state, seconds since its last answer or None, the operator's next
    step or None). States: GAVE UP (the supervisor said so); STARTING (its pid lives, is not
    stopped, and has not answered since it started, less than STARTING_MAX_S ago: a
    replicator checks its whole LMDB file before it binds and answers, which on a large file
    or a busy machine takes minutes, and killing it only starts that over);
    FROZEN (its pid lives and has been silent for longer than frozen_after_s); "not
    answering" (silent for less); DOWN (no live pid)."""
    pid = beat.get("pid") if isinstance(beat.get("pid"), int) else 0
    at = beat.get("answered_at") if isinstance(beat.get("answered_at"), float) else None
    silent = round(time.time() - at, 3) if at else None
    if name in given_up:
        return "GAVE UP", silent, given_up[name]
    if not (pid and _running(pid)):
        return "DOWN", silent, None
    started = beat.get("started_at") if isinstance(beat.get("started_at"), float) else None
    if beat.get("answered") is False and started is not None and not stopped_by_signal(pid) \
            and time.time() - started < STARTING_MAX_S:
        return "STARTING", silent, (
            f"{name} is STARTING: pid {pid} has not answered since it started "
            f"{time.time() - started:.0f} s ago (a replicator checks its whole file before it "
            f"answers; see its log); it is not frozen")
    if silent is None or silent > frozen_after_s:
        return "FROZEN", silent, frozen_advice(name, pid, silent or 0.0)
    return "not answering", silent, None


def status_rows(topo: Topology, given_up: dict[str, str] | None = None,
                beats: dict[str, dict] | None = None, frozen: list[str] | None = None,
                frozen_after_s: float = FROZEN_AFTER_S) -> list[list[str]]:
    """The status table. beats: the supervisor's heartbeats (read_heartbeats); a process
    that does not answer now, whose pid is alive and whose last answer is older than
    frozen_after_s, is FROZEN, and the operator's next step is appended to `frozen`."""
    given_up = given_up or {}
    beats = beats or {}
    rows = [["process", "role", "core", "stream", "seq", "lag/commit", "rate/s", "answered",
             "state"]]
    for spec in topo.procs:
        beat = beats.get(spec.name) or {}
        pid = beat.get("pid") if isinstance(beat.get("pid"), int) else 0
        master = master_state(spec, pid)
        if master == "standby":
            # (it binds nothing and answers no PING: its live, running pid is its answer)
            rows.append([spec.name, spec.role, _core(spec), spec.stream, "-", "-", "-", "-",
                         f"standby (pid {pid}, waiting for the lock)"])
            continue
        if master == "frozen standby":
            rows.append([spec.name, spec.role, _core(spec), spec.stream, "-", "-", "-", "-",
                         f"FROZEN standby (pid {pid})"])
            if frozen is not None:
                frozen.append(frozen_standby_advice(spec.name, pid))
            continue
        st = probe(spec, web=True) if master is None else None
        if st is None:
            state, silent_s, advice = silent_state(spec.name, beat, given_up, frozen_after_s)
            age = f"{silent_s:.1f} s ago" if silent_s is not None else "-"
            if state == "GAVE UP":
                state = "GAVE UP (see the supervisor's output)"
            elif state in ("FROZEN", "STARTING"):
                state = f"{state} (pid {pid})"
                if frozen is not None:
                    frozen.append(advice)
            rows.append([spec.name, spec.role, _core(spec), spec.stream, "-", "-", "-", age,
                         state])
            continue
        if spec.role == "replicator":
            streams = st.get("streams", {})
            for name, s in sorted(streams.items()) or [("", {})]:
                rows.append([spec.name, spec.role, _core(spec), name, str(s.get("last", "-")),
                             f"commit {s.get('commit', '-')}", "-", "now", "up"])
        elif spec.role in ("sequencer", "mirror"):
            extra = f" divergences {st['divergences']}" if st.get("divergences") else ""
            rows.append([spec.name, spec.role, _core(spec), spec.stream, str(st.get("last")),
                         f"commit {st.get('committed')}", "-", "now",
                         f"epoch {st.get('epoch')}{extra}"])
        elif spec.role in ("gateway", "oracle", "marketdata"):
            # The gateway: its clients' address and sessions; the oracle: what it is (simulated).
            what = st.get("state") or st.get("source_kind") or "up"
            if spec.extra.get("listen"):
                what = f"clients on {spec.extra['listen'][len('tcp://'):]}; {what}"
            rows.append([spec.name, spec.role, _core(spec), ",".join(st.get("streams", [])),
                         str(st.get("sent", "-")), "-", str(st.get("rate", "-")), "now", what])
        else:
            rows.append([spec.name, st.get("replica_role", spec.role), _core(spec), spec.stream,
                         str(st.get("seq")), str(st.get("lag")), str(st.get("rate")), "now",
                         f"snapshot {st.get('snapshot_seq')}"])
    return rows


def master_state(spec, pid: int | None) -> str | None:
    """For a process of a master with a standby (--standby-lock), whose pid the heartbeats
    name: "standby" while it waits for the lock ("frozen standby" while it waits stopped by a
    signal, SIGSTOP), "down" when that pid is dead (its control
    endpoint may answer, but for the other process, which took over); None otherwise (probe
    it: it is the master, or not a master with a standby, or its pid is unknown)."""
    if standby_lock_of(spec) is None or not pid:
        return None
    if not _running(pid):
        return "down"
    if not waiting_standby(spec, pid):
        return None
    # a stopped standby cannot take the lock when its master dies: the stream would wait
    # for the supervisor to restart the master
    return "frozen standby" if stopped_by_signal(pid) else "standby"


def frozen_standby_advice(name: str, pid: int) -> str:
    return (f"{name} is FROZEN: the standby (pid {pid}) is stopped by a signal and would not "
            f"take over if its master died; `kill -CONT {pid}` resumes it")


def _core(spec) -> str:
    return "-" if spec.cpu is None else str(spec.cpu)


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
