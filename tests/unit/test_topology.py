"""deploy/topology.py: a topology is checked whole before anything starts. Each bad key is
named with its file and line; the limits (ports, ids, quantities) are tested at the edge and
one past it; a valid file plans the same processes and addresses on every host."""
from __future__ import annotations

import pytest

from deploy import topology
from deploy.topology import MAX_QTY_LOTS, TopologyError


def load_text(tmp_path, text: str, **kw) -> topology.Topology:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return topology.load(str(path), **kw)


def error(tmp_path, text: str, **kw) -> str:
    with pytest.raises(TopologyError) as exc:
        load_text(tmp_path, text, **kw)
    return str(exc.value).replace(str(tmp_path / "t.toml"), "t.toml")


REP = '[[replicator]]\nname = "r0"\n'


CE_ONLY = REP.replace("r0", "replicator0") + '[[replicator]]\nname = "replicator1"\n' \
    '[[replicator]]\nname = "replicator2"\n[[symbol]]\nname = "BTCUSDT"\n'


def test_a_topology_without_trading_plans_the_crossengine_only(tmp_path):
    topo = load_text(tmp_path, CE_ONLY)
    assert [p.name for p in topo.procs] == [
        "replicator0", "replicator1", "replicator2", "sequencer.BTCUSDT",
        "sequencer.BTCUSDT.standby", "mirror.BTCUSDT", "mirror.BTCUSDT.standby",
        "ce.BTCUSDT.hot0", "ce.BTCUSDT.hot1", "ce.BTCUSDT.warm0"]
    assert topo.procs[0].control == "tcp://127.0.0.1:7100"
    sym = topo.symbols["BTCUSDT"]
    assert (sym["tick_size"], sym["lot_size"], sym["symbol_id"]) == ("1", "1", 1)
    assert sym["engine"] == {"symbol_id": 1, "tick_size": 1, "min_qty": 1, "max_qty": 1_000_000}
    assert topo.symbol_of_stream("out.ce.BTCUSDT") is sym
    assert topo.symbol_of_stream("in.ce.NOPE") is None
    assert topo.trading is None
    assert "--upstream" not in topo.by_name("sequencer.BTCUSDT").args


@pytest.mark.parametrize("text, want", [
    ('[cluster]\nbase_port = "abc"\n' + REP, "t.toml:2: cluster.base_port: must be an integer"),
    ('[cluster]\nbase_port = true\n' + REP, "t.toml:2: cluster.base_port: must be an integer"),
    ('[cluster]\nbase_port = 70000\n' + REP, "t.toml:2: cluster.base_port: must be in 1 .. 65535"),
    ('[cluster]\nbase_port = 0\n' + REP, "cluster.base_port: must be in 1 .. 65535, got 0"),
    ('[cluster]\nbase_port = 7100\n', "a topology needs at least one [[replicator]]"),
    ('[[replicator]]\ndurability = "os"\n', "t.toml:1: replicator[0]: needs a name"),
    ('[[replicator]]\nname = ""\n', "t.toml:2: replicator[0].name: must be 1 to 32"),
    ('[[replicator]]\nname = "a/b"\n', "replicator[0].name: must be 1 to 32"),
    (REP + 'durability = "sometimes"\n',
     "t.toml:3: replicator[0].durability: must be one of 'os', 'fsync', got 'sometimes'"),
    (REP + 'host = "far"\n', "t.toml:3: replicator[0].host: unknown host 'far'"),
    (REP + REP, "t.toml:4: replicator[1].name: 'r0' is used twice"),
    (REP + 'durabilty = "os"\n', "t.toml:3: replicator[0].durabilty: unknown key"),
    ('[clustr]\n' + REP, "t.toml:1: clustr: unknown key"),
    ('[cluster]\ncores = [0, -1]\n' + REP, "cluster.cores: must be a list of core numbers"),
    ('[cluster]\ntick_ms = 0\n' + REP, "cluster.tick_ms: must be in 1 .. 3600000"),
    ('[hosts]\n' + REP, "hosts: must be a table"),
    ('[hosts]\nlocal = 5\n' + REP, "hosts.local: must be an address"),
    (REP + '[[symbol]]\nname = "X"\nhot = "two"\n', "t.toml:5: symbol[0].hot: must be an int"),
    (REP + '[[symbol]]\nname = "X"\nhot = 0\n', "symbol[0].hot: must be in 1 .. 16"),
    (REP + '[[symbol]]\nname = "X.Y"\n', "t.toml:4: symbol[0].name: must be 1 to 32"),
    (REP + '[[symbol]]\nsymbol_id = 3\n', "t.toml:3: symbol[0]: needs a name"),
    (REP + '[[symbol]]\nname = "X"\nsymbol_id = 0\n', "symbol[0].symbol_id: must be in 1 .."),
    (REP + '[[symbol]]\nname = "X"\nsymbol_id = 4294967296\n', "symbol[0].symbol_id"),
    # the CrossEngine refuses 2**24 and up (order ids are symbol_id << 40 | n): it crashed
    # every replica at start instead of one line here
    (REP + '[[symbol]]\nname = "X"\nsymbol_id = 16777216\n',
     "symbol[0].symbol_id: must be in 1 .. 16777215, got 16777216"),
    # route bit symbol_id % 64 == 63 is the LiqEngine's
    (REP + '[[symbol]]\nname = "X"\nsymbol_id = 127\nmark_start = "100"\n[trading]\n',
     "symbol[0].symbol_id: 127 routes by bit 63 (symbol_id % 64), which is the LiqEngine's"),
    (REP + '[[symbol]]\nname = "X"\n[[symbol]]\nname = "X"\n', "symbol[1].name: 'X' is used"),
    (REP + '[[symbol]]\nname = "X"\n[[symbol]]\nname = "Y"\nsymbol_id = 1\n',
     "symbol[1].symbol_id: 1 is used twice"),
    (REP + '[[symbol]]\nname = "X"\ntick_size = "-1"\n', "symbol[0].tick_size: must be a pos"),
    (REP + '[[symbol]]\nname = "X"\ntick_size = "abc"\n', "symbol[0].tick_size: must be a pos"),
    (REP + '[[symbol]]\nname = "X"\nlot_size = 0\n', "symbol[0].lot_size: must be a positive"),
    (REP + '[[symbol]]\nname = "X"\nmin_qty = 5\nmax_qty = 4\n',
     "symbol[0].max_qty: must be at least min_qty (5), got 4"),
    (REP + f'[[symbol]]\nname = "X"\nmax_qty = {MAX_QTY_LOTS + 1}\n', "symbol[0].max_qty"),
    (REP + '[[symbol]]\nname = "X"\nin_policy = "none"\n', "symbol[0].in_policy: must be one"),
    (REP + '[[symbol]]\nname = "X"\nout_policy = "most"\n', "symbol[0].out_policy: must be"),
    ('[cluster]\nbase_port = 65530\n' + REP + '[[symbol]]\nname = "X"\n',
     "t.toml:2: cluster.base_port: 65530 + the 8 ports of the plan runs past 65535"),
])
def test_a_bad_key_is_named_with_its_line(tmp_path, text, want):
    assert want in error(tmp_path, text)


def test_every_problem_is_counted_and_the_first_is_named(tmp_path):
    msg = error(tmp_path, '[cluster]\nbase_port = "x"\ntick_ms = -1\n[[replicator]]\n')
    assert msg.startswith("t.toml:2: cluster.base_port") and msg.endswith("(and 2 more problems)")


def test_the_port_range_at_the_edge_and_one_past_it(tmp_path):
    text = REP + '[[symbol]]\nname = "X"\n'      # 1 + 4 + 2 + 1 = 8 ports
    topo = load_text(tmp_path, text, base_port=65535 - 7)
    assert topo.procs[-1].control.endswith(":65535")
    assert "--base-port 65529: the plan needs 8 ports" in error(tmp_path, text,
                                                                base_port=65535 - 6)
    assert "--base-port must be a port in 1 .. 65535" in error(tmp_path, text, base_port=70000)


def test_missing_unreadable_and_corrupt_files(tmp_path):
    with pytest.raises(TopologyError, match="no such topology file"):
        topology.load(str(tmp_path / "missing.toml"))
    with pytest.raises(TopologyError, match="cannot read it"):
        topology.load(str(tmp_path))
    (tmp_path / "bad.toml").write_bytes(b"[cluster\n")
    with pytest.raises(TopologyError, match=r"not valid TOML: .*line 1"):
        topology.load(str(tmp_path / "bad.toml"))


def test_decimal_sizes_are_kept_exactly_and_the_engine_counts_ticks(tmp_path):
    topo = load_text(tmp_path, REP + '[[symbol]]\nname = "X"\ntick_size = 0.1\n'
                     'lot_size = "0.00100"\nwarm = 0\n')
    sym = topo.symbols["X"]
    assert (sym["tick_size"], sym["lot_size"]) == ("0.1", "0.00100")
    assert sym["engine"]["tick_size"] == 1
    # with no warm replica the hot ones share the first hot replica's snapshots
    assert all("hot0" in p.args[p.args.index("--shared-snapshots") + 1]
               for p in topo.procs if p.role.startswith("replica-"))
