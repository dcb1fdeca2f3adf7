"""deploy/supervisor.py without processes: the data directory lock admits one supervisor,
the state file is replaced atomically, restarts back off exponentially and stop after
max_restarts quick deaths in a row with the reason, and a stale or damaged state file reads
as "not up" with the next step."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from deploy import supervisor as sv
from deploy import topology
from deploy.procs import Proc, free_port_block


def test_backoff_doubles_from_the_base_up_to_the_cap():
    assert [sv.backoff_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert sv.backoff_s(1, base_s=0.1) == 0.1 and sv.backoff_s(3, base_s=0.1) == 0.4


def test_the_data_directory_admits_one_supervisor(tmp_path):
    fd = sv.lock_data_dir(str(tmp_path))
    try:
        with pytest.raises(sv.SupervisorError, match=rf"already up in {tmp_path} "
                                                     rf"\(supervisor pid {os.getpid()}\)"):
            sv.lock_data_dir(str(tmp_path))
    finally:
        os.close(fd)
    os.close(sv.lock_data_dir(str(tmp_path)))  # free again once released


def test_the_state_file_is_replaced_whole(tmp_path):
    path = str(tmp_path / "seqex.json")
    sv.write_atomically(path, "old")
    sv.write_atomically(path, "new")
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["seqex.json"]


def test_port_in_use_sees_a_listener_but_not_another_hosts_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert sv.port_in_use(f"tcp://127.0.0.1:{port}")
    assert not sv.port_in_use(f"tcp://127.0.0.1:{port}")
    assert not sv.port_in_use("tcp://192.0.2.1:7000")   # not this machine's: not checked here
    assert not sv.port_in_use("ipc:///tmp/x")


class FakeProc:
    """A process that is dead whenever the test says so."""

    def __init__(self, log_path: str):
        self.alive = True
        self.starts = 0
        self.log_path = log_path

        class P:
            returncode = 2
            pid = 0
        self.popen = P()

    def start(self) -> None:
        self.starts += 1
        self.alive = True

    def stop(self) -> None:
        self.stops = getattr(self, "stops", 0) + 1
        self.alive = False


def test_restarts_back_off_and_give_up_with_the_reason(tmp_path, monkeypatch, capsys):
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo, max_restarts=3, backoff_base_s=0.5)
    log = tmp_path / "x.log"
    log.write_text("starting\nzmq.error.ZMQError: Address already in use\n")
    proc = FakeProc(str(log))
    sup.procs = {"ce.BTCUSDT.hot1": proc}
    now = [1000.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])
    sup.started_at["ce.BTCUSDT.hot1"] = now[0]
    waits = []
    for _ in range(3):
        proc.alive = False
        sup.check()                                  # found dead: schedules the restart
        waits.append(sup.due_at["ce.BTCUSDT.hot1"] - now[0])
        now[0] += waits[-1] - 0.01
        sup.check()
        assert not proc.alive, "restarted before its backoff ran out"
        now[0] += 0.01
        sup.check()
        assert proc.alive
    assert waits == [0.5, 1.0, 2.0] and sup.restarts["ce.BTCUSDT.hot1"] == 3
    proc.alive = False
    sup.check()
    assert "ce.BTCUSDT.hot1" in sup.gave_up and not proc.alive
    why = sup.gave_up["ce.BTCUSDT.hot1"]
    assert "died 4 times in a row" in why and "Address already in use" in why
    now[0] += 3600
    sup.check()
    assert proc.starts == 3, "restarted after giving up"
    out = capsys.readouterr().out
    assert "restarting in 0.5 s (failure 1 of 3)" in out and "giving up on it" in out
    state = json.loads(open(tmp_path / "seqex.json").read())
    assert state["gave_up"] == sup.gave_up and state["supervisor"] == os.getpid()


def test_a_process_that_ran_long_enough_starts_its_backoff_over(tmp_path, monkeypatch):
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo, max_restarts=2)
    proc = FakeProc(str(tmp_path / "none.log"))
    sup.procs = {"p": proc}
    now = [0.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])
    sup.started_at["p"] = 0.0
    for _ in range(5):   # dies every time after a stable run: never given up on
        now[0] += sv.STABLE_S + 1
        proc.alive = False
        sup.check()
        assert sup.failures["p"] == 1
        now[0] += 0.5
        sup.check()
        assert proc.alive
    assert not sup.gave_up


def test_read_state_names_what_is_wrong(tmp_path):
    with pytest.raises(sv.NotUp, match="no seqex.json"):
        sv.read_state(str(tmp_path))
    topo = topology.load(data_dir=str(tmp_path))
    state = json.loads(topo.to_json())
    path = tmp_path / "seqex.json"
    path.write_text(json.dumps({**state, "supervisor": 2 ** 22 + 7}))   # no such pid
    with pytest.raises(sv.NotUp, match="is gone or does not hold .*seqex.json is stale"):
        sv.read_state(str(tmp_path))
    assert sv.read_state(str(tmp_path), check_alive=False)[1] == 2 ** 22 + 7
    # a live pid that does not hold the directory's lock (a copied file, a reused pid) is
    # not this directory's supervisor
    path.write_text(json.dumps({**state, "supervisor": os.getpid()}))
    with pytest.raises(sv.NotUp, match="does not hold"):
        sv.read_state(str(tmp_path))
    fd = sv.pid_lock(str(tmp_path / sv.LOCK_FILE), 0o644)
    try:
        assert sv.read_state(str(tmp_path))[0].symbols == topo.symbols
    finally:
        os.close(fd)
    path.write_text("{torn")
    with pytest.raises(sv.NotUp, match="is damaged"):
        sv.read_state(str(tmp_path))
    # the right keys with the wrong types: damaged, not an error in a verb later
    for bad in ({"symbols": []}, {"trading": "x"}, {"procs": {}}, {"data_dir": 3}):
        path.write_text(json.dumps({**state, **bad, "supervisor": os.getpid()}))
        with pytest.raises(sv.NotUp, match="is damaged"):
            sv.read_state(str(tmp_path))


def test_down_clears_a_stale_state_file(tmp_path, capsys):
    topo = topology.load(data_dir=str(tmp_path))
    (tmp_path / "seqex.json").write_text(json.dumps({**json.loads(topo.to_json()),
                                                      "supervisor": 2 ** 22 + 7}))
    assert sv.down(str(tmp_path)) == 0
    assert not (tmp_path / "seqex.json").exists() and "was gone" in capsys.readouterr().out


def test_down_never_signals_a_pid_that_does_not_hold_the_directory(tmp_path, capsys):
    """A state file naming a live process that does not hold DIR/seqex.lock (copied from
    another directory, or its pid reused): down removes the file and signals no one."""
    import subprocess
    import sys
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        topo = topology.load(data_dir=str(tmp_path))
        (tmp_path / "seqex.json").write_text(json.dumps({**json.loads(topo.to_json()),
                                                          "supervisor": other.pid}))
        assert sv.down(str(tmp_path)) == 0
        assert "was gone" in capsys.readouterr().out
        assert not (tmp_path / "seqex.json").exists()
        assert other.poll() is None, "down signalled a process that is not the supervisor"
    finally:
        other.kill()
        other.wait()


def test_down_stops_a_supervisor_that_is_still_starting(tmp_path, capsys):
    """No seqex.json yet, but the lock names the supervisor: down stops it."""
    import subprocess
    import sys
    import time
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom deploy.supervisor import lock_data_dir\n"
        f"lock_data_dir({str(tmp_path)!r})\nopen({str(ready)!r}, 'w').close()\n"
        "time.sleep(120)\n")], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sv.lock_holder(str(tmp_path)) == holder.pid
        assert sv.down(str(tmp_path)) == 0
        assert holder.wait(30) == -15 and "seqex is down" in capsys.readouterr().out
        assert sv.lock_holder(str(tmp_path)) is None
        with pytest.raises(sv.NotUp):
            sv.down(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()


def test_sighup_reaches_the_gateways_only(tmp_path, capsys):
    """`seqex account create` on a running cluster: the supervisor forwards SIGHUP to its
    gateways, which re-read the accounts file; no other process gets it."""
    import signal as signal_

    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo)
    sent = {}

    class P:
        def __init__(self, name):
            self.alive = True
            self.popen = type("popen", (), {"send_signal": lambda _s, sig, n=name:
                                            sent.setdefault(n, []).append(sig)})()
    sup.procs = {name: P(name) for name in ("gateway0", "oracle0", "te0.hot0")}
    sup.forward_sighup()
    assert sent == {"gateway0": [signal_.SIGHUP]}
    assert "gateway0: re-reading the accounts file" in capsys.readouterr().out


def test_a_clean_stop_after_a_stable_run_is_not_called_a_failure(tmp_path, monkeypatch, capsys):
    # `seqex stop ADDR` drains a process and it exits 0: the supervisor restarts it and said
    # "failure 1 of 8"; a status 0 within STABLE_S of its start still counts as one
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo, max_restarts=2)
    proc = FakeProc(str(tmp_path / "none.log"))
    proc.popen.returncode = 0
    sup.procs = {"p": proc}
    now = [0.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])
    sup.started_at["p"] = 0.0
    now[0] = sv.STABLE_S + 1
    proc.alive = False
    sup.check()
    out = capsys.readouterr().out
    assert "exited with status 0" in out and "(stopped)" in out and "failure" not in out, out
    now[0] = sup.due_at["p"]
    sup.check()
    assert proc.alive and proc.starts == 1
    proc.alive = False                         # status 0 again, at once: a loop, counted
    sup.check()
    assert "(failure 1 of 2)" in capsys.readouterr().out


def test_the_gateway_watchdogs_kills_never_make_the_supervisor_give_up(tmp_path, monkeypatch,
                                                                       capsys):
    """A gateway stopped again right after each start is killed by the watchdog each time,
    within STABLE_S of its start: those kills are not quick deaths, so the supervisor never
    gives up on it (and its sessions are released at each start); a real crash still counts."""
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo, max_restarts=2)
    proc = FakeProc(str(tmp_path / "none.log"))
    proc.popen.returncode = -9
    proc.popen.pid = 4242
    sup.procs = {"gateway0": proc}
    now = [0.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])
    for _ in range(5):
        sup.started_at["gateway0"] = now[0]
        now[0] += 5.0
        sup.watchdog_killed["gateway0"] = proc.popen.pid
        proc.alive = False
        sup.check()
        assert sup.failures["gateway0"] == 0 and "gateway0" not in sup.gave_up
        now[0] = sup.due_at["gateway0"]
        sup.check()
        assert proc.alive
    assert "(the gateway watchdog's kill)" in capsys.readouterr().out
    sup.watchdog_killed.clear()
    proc.alive = False                                  # a crash of its own: counted
    sup.check()
    assert sup.failures["gateway0"] == 1


def test_the_default_topology_starts_in_waves_each_after_what_it_needs():
    """Replicators, then every master, then the standbys (so that each master holds its lock
    first), then the replicas, then gateways, oracles and publishers; plan order within a
    wave, and every process exactly once."""
    topo = topology.load(None, "/tmp/unused", 7100)
    waves = sv.start_waves(topo.procs)
    roles = [{spec.role for spec in wave} for wave in waves]
    assert roles == [{"replicator"}, {"sequencer", "mirror"}, {"sequencer", "mirror"},
                     {"replica-hot", "replica-warm"}, {"gateway", "oracle", "marketdata"}]
    assert all(not s.extra.get("standby_of") for s in waves[1])
    assert all(s.extra.get("standby_of") for s in waves[2])
    flat = [spec.name for wave in waves for spec in wave]
    assert sorted(flat) == sorted(spec.name for spec in topo.procs)
    order = {spec.name: i for i, spec in enumerate(topo.procs)}
    for wave in waves:
        assert [order[s.name] for s in wave] == sorted(order[s.name] for s in wave)


class FakeGroup:
    def __init__(self, log_path: str):
        self.log_path = log_path
        self.spawned: list[str] = []

    def spawn(self, name, args, cpu=None, env=None):
        self.spawned.append(name)
        assert env[sv.DATA_ENV] and env["SEQEX_PROCESS"] == name
        return FakeProc(self.log_path)


def _wave_supervisor(tmp_path, monkeypatch, answers):
    """A Supervisor over the default topology's replicas whose probe answers as answers(name,
    elapsed_s) says; processes are fakes."""
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo)
    log = tmp_path / "x.log"
    log.write_text("boot\nValueError: bad snapshot\n")
    sup.group = FakeGroup(str(log))
    t0 = time.monotonic()
    monkeypatch.setattr(sv, "probe", lambda spec, timeout_s=0.5: (
        time.sleep(0.01), answers(sup, spec.name, time.monotonic() - t0))[1])
    wave = [s for s in topo.procs if s.role.startswith("replica-")]
    return sup, wave


def test_a_wave_waits_for_each_of_its_processes_and_gives_each_answer_more_time(
        tmp_path, monkeypatch, capsys):
    """Processes answering 0.3 s apart with a 0.5 s timeout: the wave lasts longer than the
    timeout, and succeeds, because each answer restarts the clock."""
    names = []

    def answers(sup, name, elapsed):
        if name not in names and elapsed > 0.3 * (len(names) + 1):
            order = [s.name for s in sup.topo.procs if s.role.startswith("replica-")]
            if order[len(names)] == name:
                names.append(name)
        return {"state": "up"} if name in names else None
    sup, wave = _wave_supervisor(tmp_path, monkeypatch, answers)
    started = time.monotonic()
    sup._start_wave(wave, timeout_s=0.5)
    assert time.monotonic() - started > 0.3 * len(wave) > 0.5
    assert sup.group.spawned == [s.name for s in wave] and names == sup.group.spawned
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == names


def test_a_wave_stops_at_once_when_one_of_it_exits_or_none_answers(tmp_path, monkeypatch):
    sup, wave = _wave_supervisor(tmp_path, monkeypatch, lambda sup, name, elapsed: None)
    victim = wave[2].name

    def die_soon(sup, name, elapsed):
        if name == victim and elapsed > 0.2:
            sup.procs[name].alive = False
        return None
    monkeypatch.setattr(sv, "probe", lambda spec, timeout_s=0.5: (
        time.sleep(0.01), die_soon(sup, spec.name, time.monotonic() - t0))[1])
    t0 = time.monotonic()
    with pytest.raises(sv.SupervisorError, match=rf"{victim} exited with status 2 while "
                                                 r"starting: ValueError: bad snapshot"):
        sup._start_wave(wave, timeout_s=60)
    assert time.monotonic() - t0 < 10, "the wave went on waiting after one of it exited"
    sup, wave = _wave_supervisor(tmp_path, monkeypatch, lambda sup, name, elapsed: None)
    with pytest.raises(sv.SupervisorError, match=r"did not answer on tcp://.* in 0.3 s"):
        sup._start_wave(wave, timeout_s=0.3)


def test_up_refuses_a_data_directory_whose_logs_were_written_under_another_engine_config(
        tmp_path):
    """An engine's configuration is part of its state (its snapshots hold it): with the
    topology's self_trade changed on a venue's data directory, replicas restored from
    snapshots kept the old mode and one replaying the log ran the new one, and the mirror
    reported divergences (a live-cluster check). `seqex up` records each engine stream's
    configuration at its first start and refuses a change, in one line, before it starts or
    writes anything; a stream new to the topology is recorded."""
    import subprocess
    import sys
    data = str(tmp_path / "data")
    base = free_port_block(80)
    sv.check_engine_configs(topology.load(None, data, base))
    recorded = json.loads((tmp_path / "data" / sv.ENGINES_FILE).read_text())
    assert recorded["in.te.0"]["engine"] == "tradingengine" and "in.ce.BTCUSDT" in recorded
    sv.check_engine_configs(topology.load(None, data, base + 1000))   # ports are not state
    conf = tmp_path / "t.toml"
    conf.write_text(topology.DEFAULT.replace('self_trade = "allow"',
                                             'self_trade = "cancel_oldest"'))
    with pytest.raises(sv.SupervisorError, match=r"in\.te\.0: .*self_trade: \(none\) -> 2"):
        sv.check_engine_configs(topology.load(str(conf), data, base))
    before = sorted(os.listdir(data))
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "up", "--topology", str(conf),
                          "--data", data, "--base-port", str(base)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Set it back" in lines[0] and "Traceback" not in out.stderr, out
    # no keys, no processes, nothing written (but the lock every `up` takes first)
    assert sorted(set(os.listdir(data)) - {"seqex.lock"}) == before
    # a stream the first start did not have is added
    del recorded["in.liq"]
    (tmp_path / "data" / sv.ENGINES_FILE).write_text(json.dumps(recorded))
    sv.check_engine_configs(topology.load(None, data, base))
    assert "in.liq" in json.loads((tmp_path / "data" / sv.ENGINES_FILE).read_text())


def test_up_stopped_while_starting_exits_128_plus_the_signal(tmp_path, monkeypatch, capsys):
    """Ctrl-C of `seqex up` before the cluster was up printed "stopped." and exited 0, as a
    stop of a running cluster does: it did not do what was asked. Now 130 (143 for SIGTERM)
    after a line that says so; a stop once it is up is still 0."""
    import signal
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for signum, want in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            topo = topology.load(data_dir=str(tmp_path / str(signum)))
            sup = sv.Supervisor(topo)
            monkeypatch.setattr(sup, "preflight", lambda: None)
            monkeypatch.setattr(sup, "_start_wave",
                                lambda _wave, _t, s=signum: os.kill(os.getpid(), s))
            sup.up(1)
            assert sup.exit_status() == want
            out = capsys.readouterr().out
            assert f"stopped before the cluster was up ({signal.Signals(signum).name})" in out
        # up, then Ctrl-C: how it stops, 0
        topo = topology.load(data_dir=str(tmp_path / "up"))
        sup = sv.Supervisor(topo)
        monkeypatch.setattr(sup, "preflight", lambda: None)
        monkeypatch.setattr(sup, "_start_wave", lambda _wave, _t: None)
        monkeypatch.setattr(sup, "banner", lambda: None)
        monkeypatch.setattr(sup, "check", lambda: os.kill(os.getpid(), signal.SIGINT))
        sup.up(1)
        assert sup.exit_status() == 0 and capsys.readouterr().out.endswith("stopped.\n")
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_a_gateway_given_up_on_is_released_in_every_shard_even_one_away_at_first(monkeypatch,
                                                                                  capsys):
    """The release of a given-up gateway's sessions (GatewayStart from the operator) was tried
    once: a shard whose sequencer was away at that moment never got it, and its sessions stayed
    bound to the dead gateway (the message said "not released", hiding that the other shard
    had it). Now every shard not yet done is tried again, backing off, until all are."""
    import threading
    import types

    from deploy import supervisor as sv
    from deploy import topology as tp
    from deploy import trading
    topo = tp.load(data_dir="/nonexistent")
    calls: list[list[str]] = []
    finished = threading.Event()

    def release(data_dir, topo_, g, timeout_s=30.0, done=None):
        calls.append(list(done))
        for sh in topo_.trading["shards"]:
            if sh["in"] in done:
                continue
            if sh["in"] == "in.te.1" and len(calls) < 3:
                raise TimeoutError("the sequencer of in.te.1 does not answer")
            done.append(sh["in"])
        finished.set()
        return done
    monkeypatch.setattr(trading, "release_gateway", release)
    monkeypatch.setattr(sv, "probe", lambda spec, *a, **k: None)
    monkeypatch.setattr(sv.time, "sleep", lambda s: None)
    sup = types.SimpleNamespace(topo=topo, running=True, gave_up={"gateway0": "died"})
    sv.Supervisor._release_gateway(sup, "gateway0")
    assert finished.wait(10)
    deadline = time.monotonic() + 10
    out = ""
    while "sessions released" not in out and time.monotonic() < deadline:
        out += capsys.readouterr().out
        time.sleep(0.01)
    assert calls == [[], ["in.te.0"], ["in.te.0"]]          # in.te.0 once, in.te.1 again
    assert out.count("not yet released in in.te.1") == 2 and "(released in in.te.0)" in out
    assert "gateway0's sessions released" in out


def test_a_release_stops_when_the_gateway_answers_again(monkeypatch, capsys):
    import types

    from deploy import supervisor as sv
    from deploy import topology as tp
    from deploy import trading
    topo = tp.load(data_dir="/nonexistent")
    calls = []

    def release(data_dir, topo_, g, timeout_s=30.0, done=None):
        calls.append(g)
        raise TimeoutError("away")
    monkeypatch.setattr(trading, "release_gateway", release)
    monkeypatch.setattr(sv, "probe", lambda spec, *a, **k: {"role": "gateway"})
    monkeypatch.setattr(sv.time, "sleep", lambda s: None)
    sup = types.SimpleNamespace(topo=topo, running=True, gave_up={"gateway0": "died"})
    t0 = time.monotonic()
    sv.Supervisor._release_gateway(sup, "gateway0")
    while "answers again" not in capsys.readouterr().out:
        assert time.monotonic() - t0 < 10
        time.sleep(0.01)
    assert calls == [0]


def test_the_gateway_watchdog_kills_only_a_process_stopped_the_whole_period():
    """A gateway stopped by a signal (SIGSTOP) in every round for gateway_watchdog_s is killed
    once; a busy process (running, or full and refusing connections: the supervisor's probe
    fails for it too) never is, and a stop that ends starts the count again."""
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from deploy.supervisor import Supervisor, pid_state
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        sup = SimpleNamespace(gateway_watchdog_s=0.3, stopped_since={}, watchdog_killed={})
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            Supervisor._watchdog(sup, "gateway0", busy.pid)
            Supervisor._watchdog(sup, "gateway1", idle.pid)
            time.sleep(0.05)
        assert busy.poll() is None and idle.poll() is None and not sup.watchdog_killed
        os.kill(idle.pid, signal.SIGSTOP)
        for _ in range(200):
            if pid_state(idle.pid) == "T":
                break
            time.sleep(0.01)
        Supervisor._watchdog(sup, "gateway1", idle.pid)
        time.sleep(0.1)
        os.kill(idle.pid, signal.SIGCONT)           # stopped briefly: the count starts over
        time.sleep(0.05)
        Supervisor._watchdog(sup, "gateway1", idle.pid)
        assert "gateway1" not in sup.stopped_since
        os.kill(idle.pid, signal.SIGSTOP)
        end = time.monotonic() + 10
        while idle.poll() is None and time.monotonic() < end:
            Supervisor._watchdog(sup, "gateway1", idle.pid)
            time.sleep(0.05)
        assert idle.returncode == -signal.SIGKILL and sup.watchdog_killed == {"gateway1": idle.pid}
        sup.gateway_watchdog_s = 0                  # off
        stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        os.kill(stopped.pid, signal.SIGSTOP)
        for _ in range(20):
            Supervisor._watchdog(sup, "gateway2", stopped.pid)
            time.sleep(0.05)
        assert stopped.poll() is None
        stopped.kill()
        stopped.wait()
    finally:
        for p in (busy, idle):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_restart_requests_revive_a_process_given_up_on_and_restart_a_running_one(
        tmp_path, monkeypatch, capsys):
    """`seqex restart` leaves a request file; the supervisor takes each once, in order: a
    process given up on starts at once with its quick deaths at zero (and is no longer given
    up on in the state file), a running one is stopped and started, not counted as a failure;
    a name it does not run, or a damaged file, is said and skipped."""
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo, max_restarts=1)
    dead, live = FakeProc(str(tmp_path / "a.log")), FakeProc(str(tmp_path / "b.log"))
    sup.procs = {"ce.BTCUSDT.hot1": dead, "te0.warm0": live}
    now = [0.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])
    for _ in range(2):                            # two quick deaths: given up on
        sup.started_at["ce.BTCUSDT.hot1"] = now[0]
        dead.alive = False
        sup.check()
        now[0] = sup.due_at.get("ce.BTCUSDT.hot1", now[0])
        sup.check()
    assert "ce.BTCUSDT.hot1" in sup.gave_up and not dead.alive and dead.starts == 1
    folder = tmp_path / sv.RESTART_DIR
    folder.mkdir()
    (folder / "1.json").write_text(json.dumps({"names": ["ce.BTCUSDT.hot1", "nobody"]}))
    (folder / "2.json").write_text("{not json")
    (folder / "3.json").write_text(json.dumps({"names": ["te0.warm0"]}))
    (folder / "4.json").mkdir()                  # not a request: left alone, said once
    os.mkfifo(folder / "5.json")                 # blocked the supervision when opened
    (folder / "6.json").write_text("[" * 30_000 + "]" * 30_000)   # a RecursionError
    (folder / "7.json").write_text(json.dumps({"names": ["x" * 70_000]}))   # too big
    (folder / "8.json").write_text(json.dumps({"names": ["te0.warm0"]}))    # not removable
    remove = os.remove

    def refuse(path, *a, **kw):
        if str(path).endswith("8.json"):
            raise PermissionError(1, "Operation not permitted")
        return remove(path, *a, **kw)
    monkeypatch.setattr(sv.os, "remove", refuse)
    sup.take_restart_requests()
    deadline = time.time() + 10
    while sup.restarting and time.time() < deadline:
        time.sleep(0.01)
    assert not sup.restarting
    sup.check()                                   # the starts are the round's, on its thread
    assert sorted(os.listdir(folder)) == ["4.json", "5.json", "8.json"]
    assert dead.alive and dead.starts == 2 and "ce.BTCUSDT.hot1" not in sup.gave_up
    assert sup.failures["ce.BTCUSDT.hot1"] == 0
    assert live.stops == 1 and live.alive and live.starts == 1
    state = json.loads(open(tmp_path / "seqex.json").read())
    assert state["gave_up"] == {}
    out = capsys.readouterr().out
    assert "restarting ce.BTCUSDT.hot1 (given up on; asked by the operator" in out
    assert "restarting te0.warm0 (running; asked by the operator" in out
    assert "restart of nobody asked: no such process here" in out
    assert "a restart request 2.json not taken" in out
    assert "a restart request 6.json not taken: RecursionError" in out
    assert "a restart request 7.json not taken: ValueError" in out
    assert "a restart request 4.json not taken: not a regular file" in out
    assert "a restart request 5.json not taken: not a regular file" in out
    assert "a restart request 8.json not taken: cannot be removed" in out
    for _ in range(3):                            # taken once: nothing more happens, and
        sup.take_restart_requests()               # what is not taken is said once
        sup.check()
    assert dead.starts == 2 and live.starts == 1 and live.stops == 1
    assert capsys.readouterr().out == ""


def test_a_restart_directory_that_is_a_link_is_not_read(tmp_path, capsys):
    """Taken requests are removed: restart.d linked to another directory had that directory's
    .json files removed (an adversary pointed it at one holding config.json)."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"names": ["te0.warm0"]}))
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(other, data / sv.RESTART_DIR)
    sup = sv.Supervisor(topology.load(data_dir=str(data)))
    sup.procs = {"te0.warm0": FakeProc(str(tmp_path / "x.log"))}
    sup.clear_restart_requests()
    sup.take_restart_requests()
    assert os.listdir(other) == ["config.json"] and sup.procs["te0.warm0"].starts == 0
    assert "restart.d not taken: not a directory" in capsys.readouterr().out


class SleepProc(Proc):
    """A real child (sleep), stopped and killed as deploy.procs.Proc does."""

    def __init__(self):
        self.popen = None
        self.starts = 0
        self.log_path = os.devnull

    def start(self):
        import subprocess
        # a child of a thread gets its parent-death signal when that thread ends
        # (PR_SET_PDEATHSIG, deploy/procs.py): children start on the supervisor's own thread
        assert threading.current_thread() is threading.main_thread()
        self.popen = subprocess.Popen(["sleep", "100"])
        self.starts += 1


def test_a_restart_of_a_stopped_process_kills_it_and_holds_up_no_round(tmp_path):
    """A process stopped by a signal cannot act on SIGTERM: the restart waited 10 s for it, per
    name, inside the supervision round, which restarted nothing else meanwhile (an adversary).
    Now it is killed at once, on a thread of its own, and the round starts it again on the
    supervisor's thread (started on that short-lived thread, children died of SIGTERM when it
    ended: PR_SET_PDEATHSIG belongs to the thread)."""
    topo = topology.load(data_dir=str(tmp_path))
    sup = sv.Supervisor(topo)
    procs = {n: SleepProc() for n in ("te0.warm0", "te1.warm0")}
    for p in procs.values():
        p.start()
    sup.procs = dict(procs)
    try:
        for p in procs.values():
            os.kill(p.popen.pid, signal.SIGSTOP)
            while sv.pid_state(p.popen.pid) != "T":
                time.sleep(0.01)
        old = {n: p.popen.pid for n, p in procs.items()}
        t0 = time.monotonic()
        for n in procs:
            sup.restart(n)
        took = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while sup.restarting and time.monotonic() < deadline:
            time.sleep(0.01)
        sup.check()                                # then the round starts them
        assert took < 1.0 and time.monotonic() - t0 < 5.0
        assert all(p.alive and p.starts == 2 and p.popen.pid != old[n]
                   for n, p in procs.items())
    finally:
        for p in procs.values():
            p.kill()
