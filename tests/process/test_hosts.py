"""Three hosts from one topology file (deploy/topologies/three-hosts.toml), on three loopback
addresses of this machine (127.0.0.2, .3, .4), each `seqex up --host NAME` with its own data
directory and the keys of one `seqex keys`, copied to each. Proves: the cluster comes up
across the hosts and trades through the gateway; every process serves its metrics on its
host's address and logs JSON lines; host c (a replicator, and ETHUSDT's sequencer, mirror and
CrossEngines) is then killed whole (SIGKILL of its supervisor and of every process it ran,
as a machine that loses power), and service goes on through a and b: BTCUSDT orders are
still accepted and filled, the logs still commit at quorum (2 of 3 replicators), and
`seqex status --json` on host a shows exactly host c's processes down. Host c then comes back
(`seqex up --host c` again): its replicator catches up and ETHUSDT trades again."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from deploy import metrics
from deploy.procs import Group, free_port_block
from mq.control import wait_until
from tests.process.test_cli import seqex

TOPOLOGY = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "topologies",
                        "three-hosts.toml")
HOSTS = ("a", "b", "c")


def _status(data: str) -> dict:
    out = seqex("status", "--json", "--data", data, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_hosts_trade_on_after_one_host_is_lost(tmp_path):
    base = free_port_block(60)
    data = {h: str(tmp_path / f"host-{h}") for h in HOSTS}
    topo_file = str(tmp_path / "three-hosts.toml")
    with open(TOPOLOGY) as f:   # the trust policy names every endpoint: ports in the file
        text = f.read()
    assert "base_port = 7100" in text
    with open(topo_file, "w") as f:
        f.write(text.replace("base_port = 7100", f"base_port = {base}"))
    out = seqex("keys", "--topology", topo_file, "--data", data["a"])
    assert out.returncode == 0, out.stderr
    for h in ("b", "c"):
        os.makedirs(data[h], mode=0o700)
        shutil.copytree(os.path.join(data["a"], "keys"), os.path.join(data[h], "keys"))

    def client(*args):
        got = seqex("client", "--data", data["a"], *args, timeout=120)
        assert "Traceback" not in got.stdout + got.stderr, got.stdout + got.stderr
        return got

    with Group(str(tmp_path / "logs")) as group:
        ups = {}
        for h in HOSTS:
            ups[h] = group.spawn(f"up-{h}", ["up", "--topology", topo_file, "--host", h,
                                             "--data", data[h], "--ready-timeout", "240"],
                                  env={"SEQEX_LOG_FORMAT": "json"})
        wait_until(lambda: "demo: bob: deposit 4" in ups["a"].log()
                   or not all(u.alive for u in ups.values()), 400,
                   "three hosts up and the demo deposits")
        for h, u in ups.items():
            assert u.alive, f"host {h}: {u.log()}"
        st = wait_until(lambda: (s := _status(data["a"]))["up"] == s["total"] and s, 120,
                        "every process of the three hosts answering")
        by_host = {h: [p for p in st["processes"] if p["host"] == h] for h in HOSTS}
        # a: the order path and the LiqEngine; every sequencer and mirror has its standby
        assert [len(by_host[h]) for h in HOSTS] == [23, 8, 8]
        # a standby's lock is on its host: host a's own standbys show as such
        assert {p["process"] for p in st["processes"] if p["state"] == "standby"} == {
            p["process"] for p in by_host["a"] if p["process"].endswith(".standby")}
        addr = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
        for h in HOSTS:
            for p in by_host[h]:
                assert p["control"].startswith(f"tcp://{addr[h]}:"), p
                assert p["metrics"].startswith(f"{addr[h]}:"), p

        out = client("--user", "alice", "buy", "BTCUSDT", "0.01", "@", "50000")
        assert out.returncode == 0 and "accepted, resting" in out.stdout, out
        out = client("--user", "bob", "sell", "BTCUSDT", "0.004")
        assert out.returncode == 0 and "filled 0.004 @ 50000.00 (taker)" in out.stdout, out

        # metrics, on each host's address
        seq_btc = next(p for p in st["processes"] if p["process"] == "sequencer.BTCUSDT")
        m = metrics.scrape(seq_btc["metrics"])
        key = (("process", "sequencer.BTCUSDT"), ("stream", "in.ce.BTCUSDT"))
        commit_before = m[("seqex_stream_commit_seq", key)]
        assert m[("seqex_up", (("process", "sequencer.BTCUSDT"), ("role", "sequencer")))] == 1
        assert commit_before >= 1
        hot = next(p for p in st["processes"] if p["process"] == "te0.hot0")
        mh = metrics.scrape(hot["metrics"])
        assert mh[("seqex_replica_applied_seq", (("process", "te0.hot0"),
                                                 ("stream", "in.te.0")))] >= 1

        # JSON-lines logs, with the process, its stream and seqs
        with open(os.path.join(data["b"], "logs", "sequencer.BTCUSDT.log")) as f:
            lines = [json.loads(x) for x in f if x.startswith("{")]
        assert lines and all(x["process"] == "sequencer.BTCUSDT" and
                             x["stream"] == "in.ce.BTCUSDT" for x in lines)
        assert any("seq" in x for x in lines)

        # host c is lost whole: its supervisor and every process it ran, SIGKILL at once
        sup_c = ups["c"].popen.pid
        victims = _children(sup_c)
        assert len(victims) == 8, victims
        for pid in [sup_c, *victims]:
            os.kill(pid, signal.SIGKILL)
        ups["c"].popen.wait(30)
        wait_until(lambda: all(not os.path.exists(f"/proc/{p}") or
                               "Z" in open(f"/proc/{p}/stat").read().split()[2]
                               for p in victims), 30, "host c's processes gone")

        # service goes on through a and b: BTCUSDT still trades, end to end
        out = client("--user", "alice", "buy", "BTCUSDT", "0.002", "@", "50000")
        assert out.returncode == 0 and "accepted, resting" in out.stdout, out
        out = client("--user", "bob", "sell", "BTCUSDT", "0.008")
        # it takes what rests: 0.006 left of the first buy, then the 0.002 bid
        assert out.returncode == 0 and out.stdout.splitlines()[-2:] == [
            "bob: BTCUSDT sell 0.008 @ market [order 2] filled 0.006 @ 50000.00 (taker), "
            "0.002 left",
            "bob: BTCUSDT sell 0.008 @ market [order 2] filled 0.002 @ 50000.00 (taker), done"], out
        m = metrics.scrape(seq_btc["metrics"])
        assert m[("seqex_stream_commit_seq", key)] > commit_before
        st = _status(data["a"])
        down = sorted(p["process"] for p in st["processes"]
                      if p["state"] not in ("up", "standby"))
        assert down == sorted(p["process"] for p in by_host["c"]), down
        # both surviving replicators hold in.ce.BTCUSDT up to the commit point (one status
        # probes the processes one after another and Ticks move the commit point on, so the
        # replicators are read again until they hold what was committed when it was read)
        reps = [p for p in st["processes"] if p["role"] == "replicator" and p["state"] == "up"]
        assert len(reps) == 2
        committed = next(p for p in st["processes"]
                         if p["process"] == "sequencer.BTCUSDT")["status"]["committed"]

        def replicators_hold() -> bool:
            now = [p for p in _status(data["a"])["processes"] if p["role"] == "replicator"
                   and p["state"] == "up"]
            return len(now) == 2 and all(
                r["status"]["streams"]["in.ce.BTCUSDT"]["last"] >= committed for r in now)
        wait_until(replicators_hold, 60, "both surviving replicators at the commit point")

        # host c comes back: its replicator catches up, ETHUSDT trades again
        ups["c"] = group.spawn("up-c-again", ["up", "--topology", topo_file, "--host", "c",
                                              "--data", data["c"], "--ready-timeout", "240"],
                               env={"SEQEX_LOG_FORMAT": "json"})
        wait_until(lambda: (s := _status(data["a"]))["up"] == s["total"], 300,
                   "host c's processes answering again")

        def replicator2_caught_up():
            st = _status(data["a"])
            procs = {p["process"]: p for p in st["processes"]}
            commit = procs["sequencer.BTCUSDT"]["status"]["committed"]
            held = procs["replicator2"]["status"]["streams"].get("in.ce.BTCUSDT", {})
            return held.get("last", 0) >= commit
        wait_until(replicator2_caught_up, 120, "replicator2 caught up on in.ce.BTCUSDT")
        out = client("--user", "alice", "buy", "ETHUSDT", "0.1", "@", "3000")
        assert out.returncode == 0 and "accepted, resting" in out.stdout, out
        out = client("--user", "bob", "sell", "ETHUSDT", "0.1")
        assert out.returncode == 0 and "filled 0.1 @ 3000.00 (taker), done" in out.stdout, out

        for h in HOSTS:
            out = seqex("down", "--data", data[h], timeout=120)
            assert out.returncode == 0, out.stderr
        for h in HOSTS:
            ups[h].wait(60)
    # nothing of the three hosts is left running
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
