"""`seqex up` / `down` / `status`: run this host's part of a topology and watch over it.

`up` starts every process of this host in plan order (each waits for the ones before it to
answer), writes ``<data_dir>/seqex.json`` (the plan, with the supervisor's pid), then checks
its processes every half second: a process that died is started again, and it recovers by
itself (a replicator from LMDB and its peers, a master by claiming a new epoch, a replica from
its newest snapshot plus replay). Ctrl-C, SIGTERM or `seqex down` stop everything in reverse
order and remove the state file. Logs: ``<data_dir>/logs/<process>.log``.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from deploy.procs import Group, Proc
from deploy.topology import Topology
from mq.control import ping, wait_until

STATE_FILE = "seqex.json"


class Supervisor:
    def __init__(self, topo: Topology, host: str | None = None):
        self.topo = topo
        self.host = host
        self.group = Group(os.path.join(topo.data_dir, "logs"))
        self.procs: dict[str, Proc] = {}
        self.running = True
        self.restarts: dict[str, int] = {}

    def mine(self) -> list:
        return [p for p in self.topo.procs if self.host is None or p.host == self.host]

    def up(self, ready_timeout_s: float = 60) -> None:
        os.makedirs(self.topo.data_dir, exist_ok=True)
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "running", False))
        try:
            for spec in self.mine():
                self.procs[spec.name] = self.group.spawn(spec.name, spec.args, cpu=spec.cpu)
                wait_until(lambda spec=spec: ping(spec.control), ready_timeout_s,
                           f"{spec.name} to answer on {spec.control}")
                print(f"  started {spec.name:<22} {spec.role:<12} {spec.control}", flush=True)
            with open(self.state_path, "w") as f:
                f.write(self.topo.to_json().replace('"procs"', f'"supervisor": {os.getpid()}, '
                                                              '"procs"', 1))
            self.banner()
            while self.running:
                time.sleep(0.5)
                for name, proc in self.procs.items():
                    if self.running and not proc.alive:
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        print(f"  {name} exited ({proc.popen.returncode}); restarting "
                              f"(restart {self.restarts[name]})", flush=True)
                        proc.start()
        finally:
            print("stopping...", flush=True)
            self.group.stop_all()
            if os.path.exists(self.state_path):
                os.remove(self.state_path)
            print("stopped.", flush=True)

    @property
    def state_path(self) -> str:
        return os.path.join(self.topo.data_dir, STATE_FILE)

    def banner(self) -> None:
        print(f"seqex is up: {len(self.procs)} processes, data and logs in {self.topo.data_dir}")
        for sym, s in self.topo.symbols.items():
            print(f"  {sym}: orders into {s['in']} at {s['producers']}, results on {s['out']} "
                  f"at {s['out_pub']}")
        print("  seqex status                         the process table")
        print("  seqex submit --symbol BTCUSDT --side buy --price 100 --qty 5 --account 1")
        print("  seqex replay in.ce.BTCUSDT --from 1  the log, decoded (--rebuild: state hash)")
        print("  seqex down (or Ctrl-C)               stop everything", flush=True)


def read_state(data_dir: str) -> tuple[Topology, int]:
    path = os.path.join(os.path.abspath(data_dir), STATE_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"seqex is not up in {data_dir} (no {STATE_FILE}); run `seqex up`")
    with open(path) as f:
        text = f.read()
    import json
    pid = json.loads(text).get("supervisor", 0)
    return Topology.from_json(text), pid


def down(data_dir: str, timeout_s: float = 60) -> int:
    _topo, pid = read_state(data_dir)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        os.remove(os.path.join(os.path.abspath(data_dir), STATE_FILE))
        print("the supervisor was gone; removed its state file")
        return 0
    state = os.path.join(os.path.abspath(data_dir), STATE_FILE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The supervisor removes its state file last; an exited one may linger as a zombie
        # until its parent reaps it, which still answers kill(pid, 0).
        if not os.path.exists(state) or not _running(pid):
            print("seqex is down")
            return 0
        time.sleep(0.1)
    print(f"the supervisor (pid {pid}) did not stop in {timeout_s} s", file=sys.stderr)
    return 1


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def status_rows(topo: Topology) -> list[list[str]]:
    rows = [["process", "role", "core", "stream", "seq", "lag/commit", "rate/s", "state"]]
    for spec in topo.procs:
        st = ping(spec.control, timeout_s=0.5)
        if st is None:
            rows.append([spec.name, spec.role, _core(spec), spec.stream, "-", "-", "-", "DOWN"])
            continue
        if spec.role == "replicator":
            streams = st.get("streams", {})
            for name, s in sorted(streams.items()) or [("", {})]:
                rows.append([spec.name, spec.role, _core(spec), name, str(s.get("last", "-")),
                             f"commit {s.get('commit', '-')}", "-", "up"])
        elif spec.role in ("sequencer", "mirror"):
            extra = f" divergences {st['divergences']}" if st.get("divergences") else ""
            rows.append([spec.name, spec.role, _core(spec), spec.stream, str(st.get("last")),
                         f"commit {st.get('committed')}", "-",
                         f"epoch {st.get('epoch')}{extra}"])
        else:
            rows.append([spec.name, st.get("replica_role", spec.role), _core(spec), spec.stream,
                         str(st.get("seq")), str(st.get("lag")), str(st.get("rate")),
                         f"snapshot {st.get('snapshot_seq')}"])
    return rows


def _core(spec) -> str:
    return "-" if spec.cpu is None else str(spec.cpu)


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
