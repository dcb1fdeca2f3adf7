"""`seqex up`, `status`, `replay --rebuild` and `down` on a fresh data directory (real
processes on 127.0.0.1): the default topology comes up, every process answers, orders flow;
a hot replica killed with SIGKILL is restarted by the supervisor and catches up; a rebuild of
the engine from the log, up to a seq sampled from the live replica, gives the hash the live
replica had at that seq; `seqex down` stops everything and leaves no process behind."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from deploy.procs import Group, free_port_block, tool_args
from deploy.supervisor import read_state
from mq import wire
from mq.control import call, ping, wait_until
from mq.producer import Producer
from mq.record import decode
from mq.sources import OPERATOR_SOURCE_MIN
from tests.property.test_crossengine_determinism import flow

SEED = int(os.environ.get("SEQEX_SEED", "20261122"))


free_block = free_port_block


def seqex(*args: str, env: dict | None = None, timeout: float = 120, cwd: str | None = None
          ) -> subprocess.CompletedProcess:
    """`seqex ARGS`; a tool pointed at a cluster by address alone runs --insecure (tool_args),
    whatever ./seqex-data the working directory holds."""
    return subprocess.run([sys.executable, "-m", "deploy.cli", *tool_args(list(args))],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def pids_of(data: str, name: str | None = None) -> list[int]:
    """Processes whose command line mentions the data directory (and the name)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if data in cmd and "deploy.cli" in cmd and (name is None or f"--name {name} " in cmd):
            out.append(int(pid))
    return out


@pytest.mark.timeout(600)
def test_up_status_rebuild_down(tmp_path):
    data = str(tmp_path / "data")
    rng = random.Random(SEED)
    with Group(str(tmp_path / "logs")) as group:
        up = group.spawn("up", ["up", "--data", data, "--base-port", str(free_block())])
        # the default topology is 25 processes: on 2 busy cores starting them takes a while
        wait_until(lambda: os.path.exists(os.path.join(data, "seqex.json")), 300, "seqex up")
        topo, _pid = read_state(data)

        def status_all_up():
            st = seqex("status", "--data", data)
            assert st.returncode == 0, st.stderr
            return st if "DOWN" not in st.stdout else None
        # each status probe waits 0.5 s for an answer: a loaded host may miss one, not all
        status = wait_until(status_all_up, 120, "every process answering seqex status")
        for spec in topo.procs:
            assert spec.name in status.stdout
        sym = topo.symbols["BTCUSDT"]
        hot0 = topo.by_name("ce.BTCUSDT.hot0").control
        cmds = [(r[5], r[6]) for f in flow(3000, seed=SEED) for r in decode(f)]
        # the cluster runs with CURVE: this process has the operator's key (read_state), and
        # writes in.ce under an operator source id
        prod = Producer(OPERATOR_SOURCE_MIN + 11, sym["producers"])
        prod.connect()
        samples = []
        kill_at = rng.randint(500, 2500)
        for i in range(0, len(cmds), 50):
            for kind, payload in cmds[i:i + 50]:
                prod.submit(kind, [payload])
            prod.flush(60)
            if rng.random() < 0.2:
                _k, h, _ = call(hot0, wire.HASH, timeout_s=10)
                samples.append((h["seq"], h["hash"]))
            if i <= kill_at < i + 50:
                victim = pids_of(data, "ce.BTCUSDT.hot1")
                assert len(victim) == 1
                os.kill(victim[0], signal.SIGKILL)
        sub_ = seqex("submit", "--data", data, "--side", "buy", "--price", "1000", "--qty", "2",
                     "--account", "3", "--bypass-risk")
        # The flow may leave the symbol halted: then the order is sequenced and rejected
        # (status 2, the outcome on stderr); either way the outcome names its seq.
        outcome = sub_.stdout + sub_.stderr
        assert sub_.returncode in (0, 2) and "at seq" in outcome, outcome
        submitted = int(outcome.split("at seq")[1].split()[0])
        # from a client's source the CrossEngine would refuse it (source_not_operator): said
        # before anything is sent, not as "another producer uses source 77"
        other = seqex("submit", "--data", data, "--side", "buy", "--price", "1000", "--qty",
                      "2", "--account", "3", "--bypass-risk", "--source", "77")
        assert other.returncode == 2 and "only from an operator source" in other.stderr, \
            other.stderr
        last = wait_until(lambda: ping(sym["producers"]), 10, "the sequencer")["last"]
        assert 0 < submitted <= last
        hot1 = topo.by_name("ce.BTCUSDT.hot1").control
        wait_until(lambda: (ping(hot1) or {}).get("seq", 0) >= last, 120,
                   "the killed replica to be restarted and catch up")
        assert "restarting" in up.log()
        assert samples, "no state hash was sampled"
        for seq, expected in samples:
            out = seqex("replay", "in.ce.BTCUSDT", "--data", data, "--rebuild", "--json", "--to",
                        str(seq))
            assert out.returncode == 0, out.stderr
            rebuilt = json.loads(out.stdout.strip().splitlines()[-1])
            assert (rebuilt["seq"], rebuilt["state_hash"]) == (seq, expected)
        prod.close()
        down = seqex("down", "--data", data)
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(60) == 0
        assert not os.path.exists(os.path.join(data, "seqex.json"))
        assert pids_of(data) == [], "processes left behind after seqex down"
        assert seqex("status", "--data", data).returncode != 0
