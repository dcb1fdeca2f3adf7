"""Metrics, JSON logs and systemd units: what an operator's tools read, checked without a
cluster. The exporter turns a PING answer into Prometheus families (served for real over HTTP
on 127.0.0.1 and parsed back), the topology gives every process one metrics address after its
own ports, a JSON log line carries process, stream and seq, and the units run the plan's exact
command lines with systemd's quoting."""
import json
import logging
import shlex
import threading

import pytest

from deploy import logjson, metrics, systemd, topology
from deploy.procs import free_port, free_port_block
from mq.control import wait_until

SEQUENCER = {"role": "sequencer", "stream": "in.ce.BTCUSDT", "epoch": 3, "last": 120,
             "committed": 118, "uncommitted_bytes": 400, "sequenced": 120, "frames": 17,
             "duplicates": 2, "replicators": [{"addr": "tcp://127.0.0.1:1", "acked": 118},
                                              {"addr": "tcp://127.0.0.1:2", "acked": 100}],
             "upstreams": {"out.te.0": {"source": 7, "next": 55, "taken": 54}},
             "refusals": {"k1": {"not_master": 2}, "k2": {"not_master": 1}}}


def _samples(status, role="sequencer", stream="in.ce.BTCUSDT"):
    out = {}
    for fam in metrics.families(status, "p", role, stream):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_sequencer_status_becomes_seq_commit_lag_and_counters():
    s = _samples(SEQUENCER)
    base = (("process", "p"), ("stream", "in.ce.BTCUSDT"))
    assert s[("seqex_up", (("process", "p"), ("role", "sequencer")))] == 1
    assert s[("seqex_stream_last_seq", base)] == 120
    assert s[("seqex_stream_commit_seq", base)] == 118
    assert s[("seqex_stream_epoch", base)] == 3
    lag = {dict(k[1])["replicator"]: v for k, v in s.items()
           if k[0] == "seqex_stream_replication_lag_records"}
    assert lag == {"tcp://127.0.0.1:1": 2, "tcp://127.0.0.1:2": 20}
    assert s[("seqex_sequencer_upstream_next_seq", (*base[:1], *base[1:],
                                                    ("upstream", "out.te.0")))] == 55
    assert s[("seqex_sequencer_sequenced_total", base)] == 120       # a counter
    assert s[("seqex_sequencer_uncommitted_bytes", base)] == 400     # a gauge
    assert s[("seqex_auth_refusals_total", (("process", "p"), ("reason", "not_master")))] == 3


def test_a_process_that_does_not_answer_is_up_0_and_nothing_else():
    s = _samples(None)
    assert s == {("seqex_up", (("process", "p"), ("role", "sequencer"))): 0}


def test_replica_snapshot_age_and_role():
    s = _samples({"role": "replica", "replica_role": "warm", "seq": 500, "lag": 4, "rate": 90,
                  "snapshot_seq": 300, "snapshot_age_s": 1.5, "applied": 500},
                 role="replica", stream="in.te.0")
    base = (("process", "p"), ("stream", "in.te.0"))
    assert s[("seqex_replica_applied_seq", base)] == 500
    assert s[("seqex_replica_lag_records", base)] == 4
    assert s[("seqex_replica_snapshot_age_records", base)] == 200
    assert s[("seqex_replica_snapshot_age_seconds", base)] == 1.5
    assert s[("seqex_replica_hot", base)] == 0
    assert s[("seqex_replica_applied_total", base)] == 500


def test_metrics_are_served_over_http_and_a_failing_status_reads_as_down():
    port = free_port()
    answers = [SEQUENCER]
    server, thread = metrics.serve(f"127.0.0.1:{port}", lambda: answers[0], "seq0",
                                   "sequencer", "in.ce.BTCUSDT")
    try:
        got = metrics.scrape(f"127.0.0.1:{port}")
        assert got[("seqex_stream_commit_seq", (("process", "seq0"),
                                                ("stream", "in.ce.BTCUSDT")))] == 118
        answers[0] = None
        got = metrics.scrape(f"127.0.0.1:{port}")
        assert got[("seqex_up", (("process", "seq0"), ("role", "sequencer")))] == 0
    finally:
        server.shutdown()
        server.server_close()


def test_every_process_gets_one_metrics_address_after_the_plans_ports():
    topo = topology.load(None, "/tmp/x", 20000)
    used = set(metrics.plan_ports(topo))
    # a standby master shares its primary's address: whichever is master serves it
    mains = [p for p in topo.procs if not p.extra.get("standby_of")]
    for p in topo.procs:
        if p.extra.get("standby_of"):
            assert p.extra["metrics"] == topo.by_name(p.extra["standby_of"]).extra["metrics"]
    addrs = [p.extra["metrics"] for p in mains]
    ports = [int(a.rpartition(":")[2]) for a in addrs]
    assert len(set(ports)) == len(mains) == 30
    assert min(ports) == max(used) + 1 and not used & set(ports)
    assert all(a.startswith("127.0.0.1:") for a in addrs)


def test_a_plan_at_the_top_of_the_port_range_has_its_metrics_ports_below_it():
    topo = topology.load(None, "/tmp/x", 65535 - 40)   # the default plan's 41 ports
    ports = [int(p.extra["metrics"].rpartition(":")[2]) for p in topo.procs]
    assert max(ports) == 65535 - 41
    assert len(set(ports)) == len([p for p in topo.procs if not p.extra.get("standby_of")])
    with pytest.raises(topology.TopologyError, match="the plan needs 41 ports"):
        topology.load(None, "/tmp/x", 65535 - 39)


MULTI = """
[cluster]
base_port = 21000
[hosts]
a = "127.0.0.2"
b = "127.0.0.3"
[[replicator]]
name = "r0"
host = "a"
[[replicator]]
name = "r1"
host = "b"
[[symbol]]
name = "BTC"
host = "b"
"""


def test_metrics_bind_each_process_hosts_address(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(MULTI)
    topo = topology.load(str(path), str(tmp_path))
    for p in topo.procs:
        want = "127.0.0.2" if p.host == "a" else "127.0.0.3"
        assert p.extra["metrics"].startswith(want + ":"), p


def test_json_log_lines_carry_process_stream_and_seq():
    fmt = logjson.JsonFormatter("sequencer.BTC", "sequencer", "in.ce.BTC")
    rec = logging.LogRecord("seqex.master", logging.INFO, __file__, 1,
                            "%s: epoch 2 resumes after seq %d", ("in.ce.BTC", 77), None)
    line = json.loads(fmt.format(rec))
    assert line["process"] == "sequencer.BTC" and line["stream"] == "in.ce.BTC"
    assert line["seq"] == 77 and line["level"] == "info"
    assert line["msg"] == "in.ce.BTC: epoch 2 resumes after seq 77"
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "no number here", (), None)
    rec.seq = 5
    assert json.loads(fmt.format(rec))["seq"] == 5
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "nothing", (), None)
    assert "seq" not in json.loads(fmt.format(rec))


def _exec_words(line: str) -> list[str]:
    """An ExecStart= value read back as systemd does (C-style double quotes, $$ and %%)."""
    return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(line)]


def test_systemd_units_run_the_plans_command_lines(tmp_path):
    topo = topology.load(None, str(tmp_path), 22000)
    files = systemd.units(topo, "local", ["/usr/bin/seqex"])
    assert len(files) == len(topo.procs) + 1 and "seqex-local.target" in files
    for spec in topo.procs:
        text = files[f"seqex-{spec.name}.service"]
        exec_line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
        assert _exec_words(exec_line[len("ExecStart="):]) == ["/usr/bin/seqex", *spec.args]
        assert f"Environment=SEQEX_METRICS={spec.extra['metrics']}" in text
        assert "Restart=always" in text and f"Environment=SEQEX_PROCESS={spec.name}" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in files["seqex-gateway0.service"]
    # the replicators first: nothing is ordered before them
    assert "After=" not in files["seqex-replicator0.service"]
    assert "After=seqex-replicator0.service" in files["seqex-sequencer.BTCUSDT.service"]


def test_systemd_quoting_doubles_percent_and_dollar():
    assert systemd.quote("plain-arg") == "plain-arg"
    assert systemd.quote('{"a": "50%"}') == '"{\\"a\\": \\"50%%\\"}"'
    assert systemd.quote("$HOME") == '"$$HOME"'


def test_systemd_for_a_host_without_processes_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(MULTI.replace('b = "127.0.0.3"', 'b = "127.0.0.3"\nc = "127.0.0.4"'))
    topo = topology.load(str(path), str(tmp_path))
    with pytest.raises(ValueError, match="--host c: no process"):
        systemd.units(topo, "c", ["seqex"])
    assert {n for n in systemd.units(topo, "a", ["seqex"])} == {"seqex-r0.service",
                                                                 "seqex-a.target"}


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser reads every unit without a warning (its ExecStart= quoting of
    the JSON configurations included)."""
    import shutil
    import subprocess
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    topo = topology.load(None, str(tmp_path / "data"), 22000)
    files = systemd.units(topo, "local", [shutil.which("true") or "/bin/true"])
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run([tool, "verify", *sorted(str(tmp_path / n) for n in files)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out


def test_status_json_of_a_cluster_whose_processes_do_not_answer(tmp_path):
    """`seqex status --json` names every process with its plan and addresses; one that does
    not answer is DOWN (no live pid), GAVE UP (the supervisor said so, with why), or FROZEN
    (its pid lives, silent for longer than frozen_after_s), with the operator's next step."""
    import os
    import time
    topo = topology.load(None, str(tmp_path), free_port_block(64))
    beats = {"replicator1": {"pid": os.getpid(), "answered_at": time.time() - 10.0}}
    doc = metrics.status_doc(topo, {"replicator2": "died 9 times"}, beats, 3.0)
    assert doc["total"] == len(topo.procs) and doc["up"] == 0
    by = {p["process"]: p for p in doc["processes"]}
    assert by["replicator0"]["state"] == "DOWN" and by["replicator0"]["status"] is None
    assert by["replicator1"]["state"] == "FROZEN" and "kill -KILL" in by["replicator1"]["advice"]
    assert by["replicator2"]["state"] == "GAVE UP" and by["replicator2"]["advice"] == \
        "died 9 times"
    assert by["gateway0"]["metrics"] == topo.by_name("gateway0").extra["metrics"]
    json.dumps(doc)   # all of it is JSON


def test_a_process_that_has_not_answered_since_it_started_is_starting_not_frozen(tmp_path):
    """A replicator checks its LMDB file and catches up from its peers before it answers its
    first PING, which takes minutes on a large file or a busy machine. Until it has answered
    once (and for at most STARTING_MAX_S), `seqex status` calls it STARTING, without the advice
    to kill it (which would only start the check over); a pid that answered once and went
    silent, or one stopped by a signal, is FROZEN as before."""
    import os
    import time

    from deploy import supervisor
    topo = topology.load(None, str(tmp_path), free_port_block(64))
    now = time.time()
    me = os.getpid()
    beats = {"replicator0": {"pid": me, "answered_at": now - 40.0, "started_at": now - 40.0,
                             "answered": False},
             "replicator1": {"pid": me, "answered_at": now - 40.0, "started_at": now - 400.0,
                             "answered": True},
             "replicator2": {"pid": me, "answered_at": now - 2000.0,
                             "started_at": now - 2000.0, "answered": False}}
    by = {p["process"]: p for p in metrics.status_doc(topo, {}, beats, 3.0)["processes"]}
    assert by["replicator0"]["state"] == "STARTING", by["replicator0"]
    assert "not frozen" in by["replicator0"]["advice"] and "kill" not in \
        by["replicator0"]["advice"]
    assert by["replicator1"]["state"] == "FROZEN" and "kill -KILL" in by["replicator1"]["advice"]
    assert by["replicator2"]["state"] == "FROZEN"   # beyond STARTING_MAX_S
    advice: list[str] = []
    rows = {r[0]: r for r in supervisor.status_rows(topo, {}, beats, advice, 3.0)[1:]}
    assert rows["replicator0"][-1] == f"STARTING (pid {me})"
    assert rows["replicator1"][-1] == f"FROZEN (pid {me})"
    assert any(a.startswith("replicator0 is STARTING: pid") for a in advice), advice


def test_the_three_host_topology_spreads_replicators_and_gives_each_host_its_units(tmp_path):
    """deploy/topologies/three-hosts.toml: one replicator per host (quorum survives any one
    host), every process bound to its host's loopback address, and a unit per process."""
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "topologies",
                        "three-hosts.toml")
    topo = topology.load(path, str(tmp_path))
    addr = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
    assert sorted(p.host for p in topo.procs if p.role == "replicator") == ["a", "b", "c"]
    for p in topo.procs:
        assert p.control.startswith(f"tcp://{addr[p.host]}:"), p
        assert p.extra["metrics"].startswith(f"{addr[p.host]}:"), p
    counts = {h: len(systemd.units(topo, h, ["seqex"])) - 1 for h in addr}
    # a: the order path and the LiqEngine; a standby master per sequencer and mirror
    assert counts == {"a": 23, "b": 8, "c": 8}


def test_drill_outcomes_are_served_from_the_drills_file(tmp_path):
    from deploy.drill import record_outcome
    data = tmp_path / "data"
    data.mkdir()
    report = {"drill": "kill-te", "target": "te1.hot0, te1.hot1", "ok": True,
              "at": "2026-01-01T00:00:00.000000Z", "at_unix": 1767225600.0, "detected_s": 0.5,
              "restarted_s": 0.8, "recovered_s": 5.1, "resumed_s": 0.1,
              "orders": {"lost": 0, "applied_twice": 0}}
    record_outcome(str(data), report)
    record_outcome(str(data), {**report, "ok": False, "recovered_s": None})
    record_outcome(str(data), {**report, "drill": "freeze"})
    (data / metrics.DRILLS_FILE).open("a").write("not json\n")
    port = free_port()
    # a replicator's exporter serves the drills of its cluster's data directory
    server, _thread = metrics.serve(f"127.0.0.1:{port}", lambda: None, "replicator0",
                                    "replicator", "", str(data / metrics.DRILLS_FILE))
    try:
        got = metrics.scrape(f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
    assert got[("seqex_drills_total", (("drill", "kill-te"), ("outcome", "ok")))] == 1
    assert got[("seqex_drills_total", (("drill", "kill-te"), ("outcome", "failed")))] == 1
    assert got[("seqex_drills_total", (("drill", "freeze"), ("outcome", "ok")))] == 1
    assert got[("seqex_drill_last_ok", (("drill", "kill-te"),))] == 0
    assert got[("seqex_drill_last_seconds", (("drill", "kill-te"), ("phase", "detected")))] \
        == 0.5
    assert ("seqex_drill_last_seconds", (("drill", "kill-te"), ("phase", "recovered"))) \
        not in got
    assert got[("seqex_drill_last_orders", (("drill", "freeze"), ("what", "lost")))] == 0
    assert got[("seqex_drill_last_timestamp_seconds", (("drill", "freeze"),))] == 1767225600.0


def test_no_drills_file_is_no_drill_yet(tmp_path):
    fams = list(metrics.DrillCollector(str(tmp_path / "none.jsonl")).collect())
    assert [f.name for f in fams][0] == "seqex_drills" and not fams[0].samples


def test_idle_connections_to_the_metrics_port_hold_no_thread_or_descriptor_for_long():
    """Every engine process serves /metrics from its own threads: connections that send
    nothing must not pile up threads and file descriptors in it (an attacker's, or a
    half-open scraper's). At METRICS_MAX_OPEN the oldest is shut down; a scrape still works."""
    import socket
    port = free_port()
    threads_before = threading.active_count()
    server, _thread = metrics.serve(f"127.0.0.1:{port}", lambda: SEQUENCER, "seq0",
                                    "sequencer", "in.ce.BTCUSDT")
    idle = []
    try:
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        got = metrics.scrape(f"127.0.0.1:{port}", timeout_s=5.0)
        assert got[("seqex_stream_commit_seq", (("process", "seq0"),
                                                ("stream", "in.ce.BTCUSDT")))] == 118
        # the server's thread and at most METRICS_MAX_OPEN handlers
        wait_until(lambda: threading.active_count() - threads_before
                   <= 1 + metrics.METRICS_MAX_OPEN, 10, "the idle connections' threads to end")
        closed = 0   # the ones shut down read end-of-file at once
        for s in idle[:80]:
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == 80
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


def test_connections_that_time_out_on_the_metrics_port_write_no_traceback(monkeypatch, capfd):
    """socketserver printed a traceback into the process's log for every connection that
    timed out mid-request: half-open connections grew an engine's log without bound. They are
    now closed and counted, silently; a scrape still works."""
    import socket
    monkeypatch.setattr(metrics, "METRICS_TIMEOUT_S", 0.2)
    port = free_port()
    server, _thread = metrics.serve(f"127.0.0.1:{port}", lambda: SEQUENCER, "seq0",
                                    "sequencer", "in.ce.BTCUSDT")
    half = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metr")      # a request line that never ends
            half.append(s)
        def closed(sock) -> bool:   # the server closes a connection whose read timed out
            sock.settimeout(0.05)
            try:
                return sock.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True
        wait_until(lambda: all(closed(s) for s in half), 20,
                   "the half-open connections to time out")
        assert metrics.scrape(f"127.0.0.1:{port}", timeout_s=5.0)
    finally:
        for s in half:
            s.close()
        server.shutdown()
        server.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_a_flood_of_idle_connections_does_not_cut_off_a_scrape_being_answered():
    """At METRICS_MAX_OPEN open connections the exporter shuts one down for each new one. It
    shut the oldest, so a flood of idle connections cut off the scrapes being answered (9 of
    20 failed in a review's flood). It now shuts the oldest that has not sent a whole request."""
    import socket
    started, release = threading.Event(), threading.Event()

    def slow_status():   # the scrape's request is parsed: hold it until the flood is in
        started.set()
        release.wait(10)
        return SEQUENCER
    port = free_port()
    server, _thread = metrics.serve(f"127.0.0.1:{port}", slow_status, "seq0", "sequencer",
                                    "in.ce.BTCUSDT")
    idle, got = [], []
    try:
        for _ in range(metrics.METRICS_MAX_OPEN - 1):   # older than the scrape
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: len(server.open) == metrics.METRICS_MAX_OPEN - 1, 10, "them open")
        scrape = threading.Thread(target=lambda: got.append(
            metrics.scrape(f"127.0.0.1:{port}", timeout_s=20)))
        scrape.start()
        assert started.wait(10)
        for _ in range(3 * metrics.METRICS_MAX_OPEN):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: server.evicted >= 3 * metrics.METRICS_MAX_OPEN, 10,
                   "the flood's evictions")
        release.set()
        scrape.join(20)
        assert got and got[0][("seqex_stream_commit_seq", (("process", "seq0"),
                                                           ("stream", "in.ce.BTCUSDT")))] == 118
    finally:
        release.set()
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()
