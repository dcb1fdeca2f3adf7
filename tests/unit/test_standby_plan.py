"""The default topology's hot standby masters (deploy/topology.py _add_standbys): a second
process per sequencer and mirror, on one lock per stream; ``[cluster] standby = false`` gives
none; a bad value is refused with one line."""
import os

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
