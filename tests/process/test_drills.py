"""`seqex drill` against a running default cluster (with keys), one test per drill, each
reading the `--json` report: the fault was detected and the target recovered, service went on
(an order sent after the fault was acknowledged), no order was lost or applied twice (read
back from the in stream), every stream's replicas give one state hash at one seq, the stream
rebuilt from seq 1 gives that hash too, and every TradingEngine shard's audit balances. The
cluster is shared by the drills of this module (one `seqex up`, stopped at the end); a drill
runs its own light load (200 orders/s on BTCUSDT through the gateway, from two SDK clients as
the drill's own users), which may run while clients trade: with the demo's robot trading at
the same prices, the global audit balances. A bad drill name or target is one line, status 2,
and strikes nothing."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from deploy.procs import Group, free_port_block
from mq.control import wait_until
from tests.process.test_cli import one_line_error, seqex

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drills")
    data = str(tmp / "data")
    # replicator2's data on a tmpfs of its own, for disk-full (root; else that drill is skipped)
    disk = os.path.join(data, "replicator2")
    os.makedirs(disk)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", disk],
                             capture_output=True, text=True).returncode == 0
    try:
        yield from _cluster(tmp, data)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", disk], capture_output=True)


def _cluster(tmp, data: str):
    with Group(str(tmp / "logs")) as group:
        up = group.spawn("up", ["up", "--data", data, "--base-port", str(free_port_block(60)),
                                "--ready-timeout", "180"])
        wait_until(lambda: "demo: bob: deposit 4" in up.log() or not up.alive, 300,
                   "seqex up")
        assert up.alive, up.log()
        yield data
        out = seqex("down", "--data", data, timeout=120)
        assert out.returncode == 0, out.stderr
        up.wait(60)


def drill(data: str, *args: str) -> dict:
    out = seqex("drill", *args, "--data", data, "--json", timeout=400)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip(), f"seqex drill exited {out.returncode}: {out.stderr.strip()}"
    report = json.loads(out.stdout)
    assert out.returncode == (0 if report["ok"] else 1), out
    return report


def check(report: dict) -> None:
    print(json.dumps({k: v for k, v in report.items() if k != "hashes"}))
    o = report["orders"]
    assert o["sent"] > 100 and o["acknowledged"] == o["sent"], report
    assert o["lost"] == 0 and o["applied_twice"] == 0, report
    # through the gateway: each order accepted or rejected once by its TradingEngine
    assert o["in_te_out_stream"] == {"streams": ["out.te.1"], "missing": 0, "twice": 0}, o
    # and every order the engine passed on reached the CrossEngine's in stream once
    hop, = o["to_crossengine"]
    assert (hop["from"], hop["to"]) == ("out.te.1", "in.ce.BTCUSDT"), hop
    # (an order the TradingEngine rejected sends nothing on; each accepted one went through)
    assert hop["records"] >= o["accepted"] > 0 and hop["missing"] == hop["twice"] == 0, hop
    assert report["detected_s"] is not None and report["recovered_s"] is not None, report
    assert report["resumed_s"] is not None, report
    # every stream of the default topology: 2 in.ce, 2 in.te (3 replicas each), in.liq (2)
    assert len(report["hashes"]) == 5, sorted(report["hashes"])
    for stream, h in report["hashes"].items():
        assert h["equal"] and len(h["replicas"]) == (2 if stream == "in.liq" else 3), (stream, h)
    # every stream rebuilt from seq 1 gives the replicas' hash; every shard's audit balances
    assert set(report["rebuild"]) == set(report["hashes"])
    for stream, rb in report["rebuild"].items():
        assert rb["hash_equal"], (stream, rb)
        assert rb.get("audit") == ("balanced" if stream.startswith(("in.te.", "in.liq"))
                                   else None), rb
    # the global audit (`seqex audit`): every engine rebuilt, its books added up
    a = report["audit"]
    assert a["ok"] and a["total"] == a["expected"] and not a["errors"], a
    assert report["ok"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_hot_ce(cluster):
    r = drill(cluster, "kill-hot-ce")
    assert r["target"] == "ce.BTCUSDT.hot0" and r["action"] == "SIGKILL"
    assert r["restarted_s"] is not None and r["new_pid"] != r["pid"]
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_all_hot_ce_promotes_the_warm_replica(cluster):
    r = drill(cluster, "kill-all-hot-ce")
    assert r["targets"] == ["ce.BTCUSDT.hot0", "ce.BTCUSDT.hot1"], r
    assert r["action"] == "SIGKILL of every hot replica, then PROMOTE of ce.BTCUSDT.warm0"
    p = r["promoted"]
    assert p["name"] == "ce.BTCUSDT.warm0" and "error" not in p, p
    assert set(r["new_pids"]) == set(r["targets"]), r
    assert not set(r["new_pids"].values()) & set(r["pids"].values()), r
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_te_promotes_the_warm_tradingengine(cluster):
    # the load's accounts (3001, 3003) are on shard 1 of 2: its orders go through te1
    r = drill(cluster, "kill-te")
    assert r["targets"] == ["te1.hot0", "te1.hot1"] and r["stream"] == "in.te.1", r
    p = r["promoted"]
    assert p["name"] == "te1.warm0" and "error" not in p, p
    assert set(r["new_pids"]) == set(r["targets"]), r
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_sequencer_the_standby_takes_over_with_a_new_epoch(cluster):
    r = drill(cluster, "kill-sequencer")
    assert r["target"] == "sequencer.BTCUSDT" and r["restarted_s"] is not None, r
    assert r["epoch_after"] > r["epoch_before"], r
    # the standby (same endpoints, one lock) took over; the killed master, restarted by the
    # supervisor, waits for the lock as the new standby
    assert r["took_over"] == "sequencer.BTCUSDT.standby", r
    assert r["took_over_pid"] == r["standby_pid"] != r["pid"], r
    assert r["standby_again"] is True and r["new_pid"] not in (r["pid"], r["took_over_pid"]), r
    assert r["took_over_s"] <= r["recovered_s"], r
    check(r)

    def states() -> dict | None:
        doc = json.loads(seqex("status", "--data", cluster, "--json", timeout=60).stdout)
        by = {e["process"]: e for e in doc["processes"]}
        pair = by["sequencer.BTCUSDT"], by["sequencer.BTCUSDT.standby"]
        return by if pair[0]["pid"] == r["new_pid"] and pair[0]["state"] == "standby" \
            and pair[1]["state"] == "up" else None

    by = wait_until(states, 60, "status: the restarted master as the standby")
    assert by["sequencer.BTCUSDT.standby"]["status"]["epoch"] >= r["epoch_after"]
    assert by["sequencer.BTCUSDT"]["status"] is None
    table = seqex("status", "--data", cluster, timeout=60).stdout
    assert any(line.startswith("sequencer.BTCUSDT ") and "standby (pid" in line
               for line in table.splitlines()), table
    # the next drill strikes the master of now, the former standby, and the other takes over
    r2 = drill(cluster, "kill-sequencer")
    assert r2["target"] == "sequencer.BTCUSDT.standby", r2
    assert r2["took_over"] == "sequencer.BTCUSDT" and r2["took_over_pid"] == r["new_pid"], r2
    assert r2["standby_again"] is True and r2["epoch_after"] > r["epoch_after"], r2
    check(r2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_replicator(cluster):
    r = drill(cluster, "kill-replicator")
    assert r["target"] == "replicator2" and r["restarted_s"] is not None
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_kill_gateway_clients_resume_their_sessions(cluster):
    # the load goes through the gateway: two SDK clients (gateway/client.py), users made and
    # funded by the drill; the gateway is SIGKILLed, the supervisor restarts it, and each
    # client logs on into its session again and resends what was not applied, same SeqNos
    r = drill(cluster, "kill-gateway")
    assert r["target"] == "gateway0" and r["action"] == "SIGKILL", r
    assert r["restarted_s"] is not None and r["new_pid"] not in (None, r["pid"]), r
    # the clients saw the connection go at once; service came back after the restart
    assert r["detected_s"] <= r["restarted_s"] <= r["recovered_s"], r
    assert r["restarted_s"] <= r["resumed_s"], r
    assert len(r["sessions"]) == 2, r["sessions"]
    for s in r["sessions"]:
        assert s["same_session"] and s["session_id_after"] == s["session_id"], s
        assert s["logons"] >= 2 and s["new_session_after"] is False, s
    o = r["orders"]
    # orders sent while it was down waited in the outboxes and went out on the new logon
    assert o["sent_during_outage"] > 0 and o["resent_after_logon"] > 0, o
    assert o["not_applied_reports"] == 0, o
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_drill_while_clients_trade_keeps_every_book_balanced(cluster, tmp_path):
    # the demo's robot trades BTCUSDT through the gateway around the mark; the drill's load
    # trades at the mark through the gateway too, risk-checked like the robot's (each of its
    # orders accepted or rejected by its TradingEngine: check()), so the two trade with each
    # other and the books balance, during the drill and at rest
    from crossengine import codec as ce
    from deploy.drill import GW_ACCOUNT_BASE, _furthest
    from deploy.supervisor import read_state
    topo, _ = read_state(cluster)
    start = _furthest(topo, "out.ce.BTCUSDT", 1, lambda rec, c: None)[0]
    with open(tmp_path / "demo.log", "w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "deploy.cli", "demo", "--plain", "--data",
                                 cluster, "--rate", "100", "--users", "4"], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": REPO})
    try:
        def trading() -> bool:
            text = (tmp_path / "demo.log").read_text()
            return bool(re.search(r"trades/s [1-9]", text)) or demo.poll() is not None
        wait_until(trading, 180, "the demo's robot trading")
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
        r = drill(cluster, "kill-hot-ce", "--after", "5")
        check(r)
        assert r["load"] == "200 orders/s on BTCUSDT through gateway0 from drill-gw-a, " \
            "drill-gw-b", r["load"]
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(60)
    drill_accounts = {GW_ACCOUNT_BASE, GW_ACCOUNT_BASE + 2}

    def count(rec, counts: dict) -> None:
        try:
            events = ce.decode_events(bytes(rec[6]))
        except ValueError:
            return
        for ev in events:
            if ev[0] == ce.EV_TRADE and len({ev[4], ev[5]} & drill_accounts) == 1:
                counts["with_clients"] = counts.get("with_clients", 0) + 1
    mixed = _furthest(topo, "out.ce.BTCUSDT", start + 1, count)[1]
    # the drill's orders met the robot's: the audit above covered such trades
    assert mixed.get("with_clients", 0) > 0, mixed
    # at rest (no one trading), every engine's clearing positions net to zero per symbol and
    # their clearing money to zero: each trade has a TradingEngine on both sides
    from deploy.audit import audit
    deadline = time.monotonic() + 120
    while not (r := audit(topo, every=1000)).at_rest and time.monotonic() < deadline:
        time.sleep(0.5)     # records still in flight: rebuild again
    assert r.at_rest, f"clearing between engines not at rest: positions {r.clearing_net()} " \
        f"(symbol: lots), money {r.clearing_money}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_demo_run_opens_new_sessions_and_is_answered(cluster):
    # the robot's SessionIDs came from its seed (default 1): a second `seqex demo` on the same
    # cluster resumed the first run's sessions and sent SeqNos from 1 again, which the gateway
    # drops as already applied, so its first orders (as many as the first run sent) went
    # nowhere and nothing said so
    final = re.compile(r"seqex demo: (\d+) orders sent, (\d+) acknowledged")
    for run in range(2):
        out = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--plain", "--data",
                              cluster, "--seconds", "10", "--rate", "60", "--users", "3"],
                             cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert out.returncode == 0, out.stdout + out.stderr
        m = final.search(out.stdout)
        assert m, out.stdout
        sent, acked = int(m[1]), int(m[2])
        assert sent > 200 and acked >= sent // 2, (run, out.stdout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_freeze_is_detected_by_heartbeat(cluster):
    r = drill(cluster, "freeze", "--freeze-s", "5")
    assert r["target"] == "ce.BTCUSDT.hot1" and r["action"].startswith("SIGSTOP")
    # FROZEN: silent for longer than --frozen-after (3 s) since its last answer to the
    # supervisor's heartbeat (a round PINGs every process in turn, so that answer may be a
    # second or two old at the strike); seen before the SIGCONT at 5 s
    assert 0 < r["detected_s"] <= 5.0, r
    assert r["recovered_s"] >= 5.0
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_freeze_of_the_gateway_recovers_when_it_answers_again(cluster):
    # a frozen gateway answers its probe at once after SIGCONT but its clients only once it
    # has worked off what they sent meanwhile: recovery is the first answer to an order sent
    # after the strike (it was the probe: recovered 5.1 s, first answer 9.1 s)
    r = drill(cluster, "freeze", "--target", "gateway0", "--freeze-s", "4")
    assert r["target"] == "gateway0" and r["role"] == "gateway", r
    assert r["recovered_s"] >= 4.0 and r["resumed_s"] is not None, r
    assert r["resumed_s"] <= r["recovered_s"], r
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_disk_full_on_a_replicator(cluster):
    if not os.path.ismount(os.path.join(cluster, "replicator2")):
        pytest.skip("no tmpfs under replicator2 (mounting needs root)")
    r = drill(cluster, "disk-full", "--full-s", "3")
    assert r["target"] == "replicator2" and r["action"].startswith("its data directory"), r
    # it said so (PING disk_full), stayed full 3 s while its peers kept the quorum (the load's
    # orders were acknowledged all along), and caught up once there was room again
    assert r["detected_s"] is not None and r["recovered_s"] >= r["detected_s"] + 3, r
    assert r["restarted_s"] is None
    check(r)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drill_outcomes_are_in_the_replicators_metrics(cluster):
    from deploy.metrics import DRILLS_FILE, scrape
    drill(cluster, "kill-hot-ce", "--before", "1", "--after", "1")
    runs: dict = {}
    with open(os.path.join(cluster, DRILLS_FILE)) as f:
        for line in f:
            d = json.loads(line)
            key = (d["drill"], "ok" if d["ok"] else "failed")
            runs[key] = runs.get(key, 0) + 1
    status = json.loads(seqex("status", "--json", "--data", cluster, timeout=60).stdout)
    rep = next(p for p in status["processes"] if p["process"] == "replicator0")
    got = scrape(rep["metrics"])
    served = {(dict(labels)["drill"], dict(labels)["outcome"]): v
              for (name, labels), v in got.items() if name == "seqex_drills_total"}
    assert served == runs and runs[("kill-hot-ce", "ok")] >= 1, (served, runs)
    assert got[("seqex_drill_last_ok", (("drill", "kill-hot-ce"),))] == 1


@pytest.mark.slow
def test_a_bad_drill_target_is_one_line(cluster):
    assert "not a replicator" in one_line_error(
        seqex("drill", "kill-replicator", "--target", "ce.BTCUSDT.hot0", "--data", cluster))
    assert "not a TradingEngine replica" in one_line_error(
        seqex("drill", "kill-te", "--target", "ce.BTCUSDT.warm0", "--data", cluster))
    assert "not a gateway" in one_line_error(
        seqex("drill", "kill-gateway", "--target", "ce.BTCUSDT.hot0", "--data", cluster))
    assert "no process 'nope'" in one_line_error(
        seqex("drill", "freeze", "--target", "nope", "--data", cluster))


@pytest.mark.slow
def test_the_market_data_publisher_serves_its_metrics(cluster):
    # marketdata0 on the metrics address the topology gave it, as every other process
    from deploy.metrics import scrape
    status = json.loads(seqex("status", "--json", "--data", cluster, timeout=60).stdout)
    md = next(p for p in status["processes"] if p["process"] == "marketdata0")
    got: dict = {}

    def caught_up() -> bool:
        got.clear()
        got.update(scrape(md["metrics"]))
        return got.get(("seqex_marketdata_caught_up", (("process", "marketdata0"),))) == 1
    wait_until(caught_up, 60, "the publisher caught up")
    assert got[("seqex_up", (("process", "marketdata0"), ("role", "marketdata")))] == 1
    applied = {dict(k)["stream"]: v for (n, k), v in got.items()
               if n == "seqex_marketdata_applied_seq"}
    assert set(applied) == {"out.ce.BTCUSDT", "out.ce.ETHUSDT"}, applied
    for feed in ("binary", "websocket"):
        assert ("seqex_marketdata_clients", (("feed", feed), ("process", "marketdata0"))) in got


CE_ONLY = """\
[cluster]
tick_ms = 100

[[replicator]]
name = "replicator0"

[[replicator]]
name = "replicator1"

[[replicator]]
name = "replicator2"

[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = "0.5"
lot_size = "0.001"
mark_start = "50000"
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_drill_on_a_cluster_without_an_order_path(tmp_path):
    # a CrossEngine-only topology (no [trading]: no gateway, no TradingEngine): the load goes
    # straight into in.ce.BTCUSDT, read back from the in stream by source seq; there are no
    # books to audit, and the drill passes on what it can check
    topo = tmp_path / "ce-only.toml"
    topo.write_text(CE_ONLY)
    data = str(tmp_path / "data")
    with Group(str(tmp_path / "logs")) as group:
        up = group.spawn("up", ["up", "--topology", str(topo), "--data", data, "--base-port",
                                str(free_port_block(40)), "--ready-timeout", "180"])
        wait_until(lambda: "seqex is up" in up.log() or not up.alive, 300, "seqex up")
        assert up.alive, up.log()
        try:
            r = drill(data, "kill-hot-ce")
            print(json.dumps({k: v for k, v in r.items() if k != "hashes"}))
            assert r["load"] == "200 orders/s into in.ce.BTCUSDT as account 1 (no gateway)", r
            o = r["orders"]
            assert o["sent"] > 100 and o["acknowledged"] == o["sent"], o
            assert o["lost"] == 0 and o["applied_twice"] == 0, o
            assert set(r["hashes"]) == {"in.ce.BTCUSDT"} and r["hashes"]["in.ce.BTCUSDT"]["equal"]
            assert r["rebuild"]["in.ce.BTCUSDT"]["hash_equal"], r["rebuild"]
            assert r["audit"] == {"ok": True, "skipped": "no TradingEngine in this topology"}
            assert r["ok"], r
            text = seqex("drill", "freeze", "--freeze-s", "4", "--data", data, timeout=400)
            assert text.returncode == 0, text.stdout + text.stderr
            assert "global audit: none (no TradingEngine in this topology)" in text.stdout, \
                text.stdout
        finally:
            out = seqex("down", "--data", data, timeout=120)
            assert out.returncode == 0, out.stderr
            up.wait(60)
