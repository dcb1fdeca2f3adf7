"""Child processes of seqex: spawn with a log file, stop politely, kill, clean up.

Used by `seqex demo`, the process tests and the benchmarks, so that all of them start the
real `seqex` processes the same way and never leave one behind.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import closing

_issued: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not
    handed out before (the kernel may offer a just-closed port again)."""
    while True:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _issued:
            _issued.add(port)
            return port


def free_port_block(n: int = 64) -> int:
    """The first of n consecutive TCP ports on 127.0.0.1 that were all free a moment ago
    (64 by default: the default topology's 33 ports and the 25 metrics ports after them),
    below the kernel's ephemeral range (32768 up), so that no outgoing connection of another
    program takes one of them between this check and the bind."""
    import random
    rng = random.Random()
    for _ in range(200):
        base = rng.randint(20_000, 32_767 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Proc:
    """One `python -m deploy.cli ...` child, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: str, cpu: int | None = None,
                 die_with_parent: bool = False, env: dict[str, str] | None = None):
        self.name = name
        self.env = env or {}   # added to the environment (SEQEX_PROCESS, SEQEX_METRICS)
        self.die_with_parent = die_with_parent
        self.args = args
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.cpu = cpu
        self.popen: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        if self.cpu is not None:
            env["SEQEX_CPU"] = str(self.cpu)
        if self.die_with_parent:   # deploy/cli.py: SIGTERM when this process dies
            env["SEQEX_PARENT"] = str(os.getpid())
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "deploy.cli", *self.args],
                                          stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash every part of seqex must survive."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode if self.popen else None

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout_s)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


SERVER_VERBS = ("replicator", "sequencer", "mirror", "replica", "gateway", "oracle",
                "marketdata")


def tool_args(args: list[str]) -> list[str]:
    """An operator tool given neither keys nor a data directory runs with an explicit
    --insecure (tests, benchmarks): it would otherwise take the keys of whatever ./seqex-data
    its working directory holds (a checkout where `seqex up` ran), not those of the cluster
    it was pointed at."""
    if "--keys" in args or "--insecure" in args or "--data" in args:
        return args
    verb = next((a for a in args if not a.startswith("-")), None)
    if verb is None or verb in SERVER_VERBS or verb in ("keys", "up", "demo"):
        return args
    return ["--insecure", *args]


def harness_args(args: list[str]) -> list[str]:
    """A server verb given no keys runs with an explicit --insecure (tests, benchmarks, the
    demo): a server never runs without CURVE unless its command line says so. A tool, as
    tool_args says."""
    if args and args[0] in SERVER_VERBS and "--keys" not in args and "--insecure" not in args:
        return ["--insecure", *args]
    return tool_args(args)


class Group:
    """Processes started together and stopped together, even when a test fails."""

    def __init__(self, log_dir: str, die_with_parent: bool = False,
                 insecure_unless_keyed: bool = True):
        """insecure_unless_keyed: a process verb given no --keys runs with an explicit
        --insecure (the harness of tests, benchmarks and the demo); the supervisor passes
        False, so what it starts is exactly what the topology's keys say."""
        self.log_dir = log_dir
        self.die_with_parent = die_with_parent
        self.insecure_unless_keyed = insecure_unless_keyed
        os.makedirs(log_dir, exist_ok=True)
        self.procs: list[Proc] = []

    def spawn(self, name: str, args: list[str], cpu: int | None = None,
              env: dict[str, str] | None = None) -> Proc:
        if self.insecure_unless_keyed:
            args = harness_args(args)
        proc = Proc(name, args, self.log_dir, cpu, self.die_with_parent, env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
