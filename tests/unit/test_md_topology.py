"""The market-data publisher in the topology and on the command line."""
from __future__ import annotations

import json

import pytest

from deploy import cli, topology
from gateway.marketdata.publisher import read_config

SMALL = """
[[replicator]]
name = "r0"
[[symbol]]
name = "BTCUSDT"
tick_size = "0.5"
lot_size = "0.001"
"""


def test_the_default_topology_runs_a_publisher_on_its_port_block():
    topo = topology.load(base_port=20_000)
    md = topo.by_name("marketdata0")
    conf = read_config(md.args[md.args.index("--config") + 1])
    ports = sorted(int(a.rsplit(":", 1)[1]) for p in topo.procs
                   for a in (p.control, p.extra.get("http", p.control)))
    assert conf["feed"] == md.control[len("tcp://"):] and conf["feed"].startswith("127.0.0.1:")
    assert int(conf["http"].rsplit(":", 1)[1]) == max(ports)   # the last two of the block
    assert [s["symbol"] for s in conf["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    assert conf["symbols"][0]["pub"] == topo.symbols["BTCUSDT"]["out_pub"]
    assert conf["replicators"] == topo.replicator_addrs()
    assert md.extra["probe"] == "tcp" and topo.marketdata["http"] == conf["http"]
    assert topology.Topology.from_json(topo.to_json()).marketdata == topo.marketdata


def test_a_topology_without_the_table_has_no_publisher(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(SMALL)
    assert not any(p.role == "marketdata" for p in topology.load(str(f)).procs)
    f.write_text(SMALL + "[marketdata]\n")
    assert [p.name for p in topology.load(str(f)).procs][-1] == "marketdata0"
    f.write_text(SMALL + "[marketdata]\nport = 5\n")
    with pytest.raises(topology.TopologyError, match="marketdata"):
        topology.load(str(f))


@pytest.mark.parametrize("conf, problem", [
    ("[]", "JSON object"),
    ('{"feed": "x", "http": "127.0.0.1:1", "symbols": []}', "feed must be HOST:PORT"),
    ('{"feed": "h:1", "http": "h:2", "symbols": []}', "symbols must be a non-empty list"),
    ('{"feed": "h:1", "http": "h:2", "symbols": [{"symbol": "X", "symbol_id": 1, '
     '"tick": "0.000000001", "lot": "1"}]}', "multiple of 1e-8"),
])
def test_a_bad_configuration_is_one_line(conf, problem, capsys):
    assert cli.main(["--insecure", "marketdata", "--config", conf]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and err[0].startswith("seqex marketdata: ")


def test_config_reads_a_file(tmp_path):
    f = tmp_path / "md.json"
    conf = {"feed": "127.0.0.1:1", "http": "127.0.0.1:2", "symbols": [
        {"symbol": "X", "symbol_id": 1, "tick": "0.5", "lot": "1"}]}
    f.write_text(json.dumps(conf))
    assert read_config(str(f))["symbols"][0]["symbol"] == "X"
