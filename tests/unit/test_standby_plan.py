"""The default topology's hot standby masters (deploy/topology.py _add_standbys): a second
process per sequencer and mirror, on one lock per stream; ``[cluster] standby = false`` gives
none; a bad value is refused with one line."""
import os
import signal

import pytest

from deploy import keys, topology

REP = '[[replicator]]\nname = "r0"\n[[symbol]]\nname = "BTCUSDT"\n'


def _load(tmp_path, text: str) -> topology.Topology:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return topology.load(str(path), str(tmp_path / "data"))


def _lock(spec) -> str | None:
    a = spec.args
    return a[a.index("--standby-lock") + 1] if "--standby-lock" in a else None


def test_the_default_topology_has_a_standby_per_sequencer_and_mirror(tmp_path):
    data = str(tmp_path / "data")
    topo = topology.load(None, data)
    masters = [p for p in topo.procs if p.role in ("sequencer", "mirror")
               and not p.extra.get("standby_of")]
    standbys = [p for p in topo.procs if p.extra.get("standby_of")]
    assert len(masters) == 10 and len(standbys) == 10
    assert len(topo.procs) == 40
    names = [p.name for p in topo.procs]
    for m in masters:
        sb = topo.by_name(f"{m.name}.standby")
        assert names.index(sb.name) == names.index(m.name) + 1   # started right after it
        lock = os.path.join(os.path.abspath(data), "locks", f"{m.stream}.lock")
        assert _lock(m) == _lock(sb) == lock
        assert m.args[-2:] == ["--standby-lock", lock]
        assert sb.args == m.args and sb.args is not m.args
        assert (sb.role, sb.host, sb.control, sb.stream, sb.cpu) == \
            (m.role, m.host, m.control, m.stream, m.cpu)
        assert sb.extra["standby_of"] == m.name and keys.key_name(sb) == m.name
        assert sb.extra["metrics"] == m.extra["metrics"]
    # one lock per stream, and nothing else waits on one
    assert len({_lock(m) for m in masters}) == 10
    assert all(_lock(p) is None for p in topo.procs if p.role not in ("sequencer", "mirror"))
    # the upstreams the order path adds to a CrossEngine's sequencer are its standby's too
    seq = topo.by_name("sequencer.BTCUSDT")
    assert "--upstream" in seq.args and topo.by_name("sequencer.BTCUSDT.standby").args == seq.args


def test_the_standby_survives_a_round_trip_through_the_state_file(tmp_path):
    topo = topology.load(None, str(tmp_path))
    back = topology.Topology.from_json(topo.to_json())
    assert back.by_name("mirror.te0.standby").extra["standby_of"] == "mirror.te0"
    assert [p.args for p in back.procs] == [p.args for p in topo.procs]


def test_standby_false_plans_no_standby(tmp_path):
    topo = _load(tmp_path, "[cluster]\nstandby = false\n" + REP)
    assert [p.name for p in topo.procs] == [
        "r0", "sequencer.BTCUSDT", "mirror.BTCUSDT", "ce.BTCUSDT.hot0", "ce.BTCUSDT.hot1",
        "ce.BTCUSDT.warm0"]
    assert not any("--standby-lock" in p.args for p in topo.procs)


def test_standby_true_is_the_default(tmp_path):
    on = _load(tmp_path, "[cluster]\nstandby = true\n" + REP)
    default = _load(tmp_path, REP)
    assert [p.name for p in on.procs] == [p.name for p in default.procs]
    assert "sequencer.BTCUSDT.standby" in [p.name for p in on.procs]


@pytest.mark.parametrize("value", ['"yes"', "1", '"false"', "[]"])
def test_a_bad_standby_is_refused_in_one_line(tmp_path, value):
    with pytest.raises(topology.TopologyError) as exc:
        _load(tmp_path, f"[cluster]\nstandby = {value}\n" + REP)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 't.toml'}:2: cluster.standby: must be true or false")


def test_the_lock_names_its_holder_and_a_live_pid_without_it_is_a_standby(tmp_path):
    """supervisor.hold_master_lock / master_lock_holder / waiting_standby, and what `seqex
    status --json` makes of them: a master's live pid that does not hold the stream's lock is
    its standby (it binds nothing, so it answers no PING); the holder is probed as usual; a
    dead pid is DOWN, whoever answers on the shared control endpoint."""
    import subprocess
    import sys
    import time

    from deploy import metrics, supervisor
    from deploy.procs import free_port_block
    topo = topology.load(None, str(tmp_path), free_port_block(64))
    primary, standby = topo.by_name("sequencer.BTCUSDT"), topo.by_name("sequencer.BTCUSDT.standby")
    lock = _lock(primary)
    assert supervisor.master_lock_holder(lock) is None          # no file yet
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from deploy.supervisor import hold_master_lock; "
        f"hold_master_lock({lock!r}); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        assert os.path.isdir(os.path.dirname(lock))
        assert supervisor.master_lock_holder(lock) == holder.pid
        assert not supervisor.waiting_standby(primary, holder.pid)
        assert supervisor.waiting_standby(standby, os.getpid())
        assert supervisor.master_state(standby, os.getpid()) == "standby"
        assert supervisor.master_state(primary, holder.pid) is None      # probe it
        # a second process blocks on the lock until the holder dies (SIGKILL)
        waiter = subprocess.Popen([sys.executable, "-c", (
            "from deploy.supervisor import hold_master_lock; "
            f"hold_master_lock({lock!r}); print('took', flush=True)")],
            stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)   # long enough for a lock that does not block to be taken
        assert waiter.poll() is None and supervisor.master_lock_holder(lock) == holder.pid
        beats = {primary.name: {"pid": holder.pid, "answered_at": time.time()},
                 standby.name: {"pid": os.getpid(), "answered_at": time.time()}}
        doc = metrics.status_doc(topo, {}, beats, 3.0)
        by = {p["process"]: p for p in doc["processes"]}
        assert by[standby.name]["state"] == "standby" and by[standby.name]["status"] is None
        assert doc["standby"] == 1 and doc["up"] == 1      # the standby counts as up
        pair = topology.Topology(topo.data_dir, [primary, standby], topo.symbols)
        rows = supervisor.status_rows(pair, {}, beats)
        assert any(r[0] == standby.name and r[-1].startswith("standby (pid") for r in rows)
        # A standby stopped by a signal (SIGSTOP) cannot take the lock if its master dies:
        # FROZEN, with the operator's next step (it was "standby", answered "now").
        os.kill(waiter.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 20
            while not supervisor.stopped_by_signal(waiter.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert supervisor.master_state(standby, waiter.pid) == "frozen standby"
            beats[standby.name] = {"pid": waiter.pid, "answered_at": time.time()}
            doc = metrics.status_doc(topo, {}, beats, 3.0)
            st = {p["process"]: p for p in doc["processes"]}[standby.name]
            assert st["state"] == "FROZEN" and f"kill -CONT {waiter.pid}" in st["advice"], st
            assert doc["standby"] == 0 and doc["up"] == 0     # (the primary is no server)
            advice: list[str] = []
            rows = supervisor.status_rows(pair, {}, beats, advice)
            assert any(r[0] == standby.name and r[-1] == f"FROZEN standby (pid {waiter.pid})"
                       for r in rows), rows
            assert advice and "would not take over" in advice[0], advice
        finally:
            os.kill(waiter.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()
        assert waiter.stdout.readline().strip() == "took"
        assert waiter.wait(10) == 0
        assert supervisor.master_state(primary, holder.pid) == "down"
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
