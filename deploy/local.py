"""A log cluster on this machine: replicators and the sequencer of one stream, as real
`seqex` processes on loopback. The demo, the process tests and the benchmarks use it."""
from __future__ import annotations

import os
import time

from deploy.procs import Group, Proc, tcp
from mq.control import ping, stats, wait_until
from replicator.store import Store


class LogCluster:
    def __init__(self, root: str, stream: str = "in.test", replicators: int = 2,
                 policy: str = "quorum", durability: str = "os", tick_ms: int = 100,
                 endpoint=tcp, cpus: list[int] | None = None, peers: bool = True,
                 sequencer_args: list[str] | None = None, keys_dir: str | None = None,
                 producers: dict[str, list[int]] | None = None, fanout: bool = False,
                 replicator_args: list[str] | None = None):
        """keys_dir: run every process with CURVE, keys and policy written there
        (deploy.keys.for_log_cluster; `producers` names the producer keys and their source
        ids); the caller takes an identity (mq.auth.configure(keys_dir, "operator")) before
        start() to reach the processes."""
        self.root = root
        self.stream = stream
        self.policy = policy
        self.durability = durability
        self.tick_ms = tick_ms
        self.group = Group(os.path.join(root, "logs"))
        self._endpoint = endpoint
        self.rep_addrs = [endpoint() for _ in range(replicators)]
        # fanout: each replicator also publishes what it stores (policy `first`, docs/log.md)
        self.rep_pubs = [endpoint() for _ in range(replicators)] if fanout else []
        self.prod_addr = endpoint()
        self.pub_addr = endpoint()
        self.cpus = cpus
        self.peers = peers
        self.sequencer_args = sequencer_args or []
        self.replicator_args = replicator_args or []
        self.replicators: list[Proc] = []
        self.sequencer: Proc | None = None
        self.keys_dir = keys_dir
        if keys_dir:
            from deploy.keys import for_log_cluster
            for_log_cluster(self, keys_dir, producers)

    def key_args(self, name: str) -> list[str]:
        """The global options that give process `name` its identity (none without keys)."""
        return ["--keys", self.keys_dir, "--key", name] if self.keys_dir else []

    def data_dir(self, i: int) -> str:
        return os.path.join(self.root, f"replicator{i}")

    def _cpu(self, i: int) -> int | None:
        return self.cpus[i % len(self.cpus)] if self.cpus else None

    def start(self, timeout_s: float = 60) -> LogCluster:
        for i, addr in enumerate(self.rep_addrs):
            peers = sum((["--peer", p] for p in self.rep_addrs if p != addr and self.peers), [])
            self.replicators.append(self.group.spawn(
                f"replicator{i}", [*self.key_args(f"replicator{i}"), "replicator",
                                   "--data", self.data_dir(i), "--bind", addr,
                                   "--durability", self.durability, *peers,
                                   *(["--pub", self.rep_pubs[i]] if self.rep_pubs else []),
                                   *self.replicator_args],
                cpu=self._cpu(i + 1)))
        for addr in self.rep_addrs:
            wait_until(lambda addr=addr: ping(addr), timeout_s, f"replicator {addr}")
        self.start_sequencer(timeout_s)
        return self

    def start_sequencer(self, timeout_s: float = 60, new_endpoints: bool = False,
                        name: str = "sequencer") -> Proc:
        """Start a master. new_endpoints: on fresh addresses, as a standby on another host
        would be, while the old master may still hold the old ones."""
        if new_endpoints:
            self.prod_addr, self.pub_addr = self._endpoint(), self._endpoint()
        args = [*self.key_args("sequencer"), "sequencer", "--stream", self.stream,
                "--producers", self.prod_addr,
                "--pub", self.pub_addr, "--policy", self.policy, "--tick-ms", str(self.tick_ms)]
        for addr in self.rep_addrs:
            args += ["--replicator", addr]
        self.sequencer = self.group.spawn(name, args + self.sequencer_args, cpu=self._cpu(0))
        wait_until(lambda: (ping(self.prod_addr) or {}).get("epoch"), timeout_s, "the sequencer")
        return self.sequencer

    def restart_replicator(self, i: int, timeout_s: float = 60) -> None:
        self.replicators[i].start()
        wait_until(lambda: ping(self.rep_addrs[i]), timeout_s, f"replicator {i}")

    def status(self) -> dict:
        """The sequencer's PING answer, {} if it does not answer within a second."""
        return ping(self.prod_addr) or {}

    def stats(self, timeout_s: float = 30.0) -> dict:
        """The sequencer's PING answer, asked again until it answers (mq.control.stats)."""
        return stats(self.prod_addr, timeout_s)

    def drain(self, timeout_s: float = 180) -> None:
        """Stop the sequencer once every replicator holds all it sequenced. (A master just
        restarted answers once it has recovered, which on a busy machine took over 5 s; a
        replicator restarted under load may take a minute to catch up before it holds all.)
        A master that died is an error that names the end of its log."""
        from mq import wire
        from mq.control import call
        end = time.monotonic() + timeout_s
        while True:
            try:
                call(self.prod_addr, wire.STOP,
                     timeout_s=min(10.0, max(1.0, end - time.monotonic())))
                break
            except TimeoutError as exc:
                seq = self.sequencer
                if not seq.alive and seq.popen.returncode == 0:
                    break     # it answered a STOP no one waited for any more, and stopped
                if seq.alive and time.monotonic() < end:
                    continue
                tail = seq.log().strip().splitlines()[-3:]
                raise TimeoutError(f"{exc}; the sequencer is "
                                   f"{'alive' if seq.alive else 'dead'}, its log ends: "
                                   + " | ".join(tail)) from None
        self.sequencer.wait(timeout_s)

    def stop(self) -> None:
        self.group.stop_all()

    def read_logs(self) -> list[tuple[int, bytes]]:
        """(last, bytes of 1..last) of every replicator; call after stop()."""
        out = []
        for i in range(len(self.rep_addrs)):
            store = Store(self.data_dir(i), map_size=1 << 30)
            log = store.stream(self.stream)
            out.append((log.last, log.read(1)))
            store.close()
        return out

    def __enter__(self) -> LogCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
