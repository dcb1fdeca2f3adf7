"""deploy/topology.py, the order path (docs/order-path.md): the default topology plans two
symbols, two TradingEngine shards, the gateway and the simulated oracle, with the source ids
and routes of order-path §1-§2 on every upstream; the contract-spec keys are checked like the
others, and the specs the plan gives the TradingEngine are valid ContractSpecs."""
from __future__ import annotations

import json

import pytest

from deploy import keys, topology
from deploy.topology import TopologyError
from tradingengine.engine import spec_from_dict


def arg(p, flag):
    return p.args[p.args.index(flag) + 1]


def args(p, flag):
    return [p.args[i + 1] for i, a in enumerate(p.args) if a == flag]


def upstream(text):
    return dict(part.split("=", 1) for part in text.split(","))


def test_the_default_topology_plans_the_order_path_on_consecutive_ports():
    topo = topology.load()
    names = [p.name for p in topo.procs]
    reps = [p.name for p in topo.procs if p.role == "replicator"]
    assert reps == [f"replicator{i}" for i in range(len(reps))] and len(reps) >= 2
    assert names == [
        *reps,
        "sequencer.BTCUSDT", "sequencer.BTCUSDT.standby", "mirror.BTCUSDT", "mirror.BTCUSDT.standby", "ce.BTCUSDT.hot0", "ce.BTCUSDT.hot1",
        "ce.BTCUSDT.warm0",
        "sequencer.ETHUSDT", "sequencer.ETHUSDT.standby", "mirror.ETHUSDT", "mirror.ETHUSDT.standby", "ce.ETHUSDT.hot0", "ce.ETHUSDT.hot1",
        "ce.ETHUSDT.warm0",
        "sequencer.te0", "sequencer.te0.standby", "mirror.te0", "mirror.te0.standby", "te0.hot0", "te0.hot1", "te0.warm0",
        "sequencer.te1", "sequencer.te1.standby", "mirror.te1", "mirror.te1.standby", "te1.hot0", "te1.hot1", "te1.warm0",
        "gateway0", "oracle0",
        "sequencer.liq", "sequencer.liq.standby", "mirror.liq", "mirror.liq.standby", "liq.hot0", "liq.warm0", "marketdata0"]
    ports = []
    for p in topo.procs:
        for a in (p.control, *args(p, "--pub"), *args(p, "--producers"), *args(p, "--inputs"),
                  p.extra.get("listen", p.control), p.extra.get("http", p.control)):
            ports.append(int(a.rsplit(":", 1)[1]))
    ports = sorted(set(ports))
    assert ports == list(range(7100, 7100 + len(ports)))
    assert topo.symbols["BTCUSDT"]["symbol_id"] == 1 and topo.symbols["ETHUSDT"]["symbol_id"] == 2


def test_in_te_takes_each_symbols_results_routed_to_its_shard():
    topo = topology.load()
    for n in (0, 1):
        seq = topo.by_name(f"sequencer.te{n}")
        assert arg(seq, "--stream") == f"in.te.{n}"
        ups = [upstream(u) for u in args(seq, "--upstream")]
        assert [(u["stream"], int(u["source"]), u["route"]) for u in ups] == [
            ("out.ce.BTCUSDT", 0x7000_0001, hex(1 << n)),
            ("out.ce.ETHUSDT", 0x7000_0002, hex(1 << n)),
            ("out.liq", 0x7600_0000, hex(1 << n))]
        assert ups[0]["pub"] == topo.symbols["BTCUSDT"]["out_pub"]
        assert ups[0]["replicators"].split("|") == topo.replicator_addrs()
        assert arg(topo.by_name(f"mirror.te{n}"), "--stream") == f"out.te.{n}"


def test_in_ce_takes_every_shards_commands_routed_by_symbol_bit():
    topo = topology.load()
    te_pub = {n: arg(topo.by_name(f"mirror.te{n}"), "--pub") for n in (0, 1)}
    liq_pub = arg(topo.by_name("mirror.liq"), "--pub")
    for sym, sid in (("BTCUSDT", 1), ("ETHUSDT", 2)):
        ups = [upstream(u) for u in args(topo.by_name(f"sequencer.{sym}"), "--upstream")]
        assert [(u["stream"], int(u["source"]), u["route"], u["pub"]) for u in ups] == [
            ("out.te.0", 0x7300_0000, hex(1 << sid), te_pub[0]),
            ("out.te.1", 0x7300_0001, hex(1 << sid), te_pub[1]),
            ("out.liq", 0x7600_0000, hex(1 << sid), liq_pub)]
        for p in topo.procs:
            if p.role.startswith("replica-") and p.stream == f"in.ce.{sym}":
                conf = json.loads(arg(p, "--engine-config"))
                assert conf["te_sources"] == [0x7300_0000, 0x7300_0001]
                assert conf["n_shards"] == 2 and conf["symbol_id"] == sid
                assert conf["liq_sources"] == [0x7600_0000]


def test_tradingengine_replicas_two_hot_one_warm_with_their_configuration():
    topo = topology.load()
    for n in (0, 1):
        reps = [p for p in topo.procs if p.stream == f"in.te.{n}" and p.role != "sequencer"]
        assert [(p.name, p.role) for p in reps] == [
            (f"te{n}.hot0", "replica-hot"), (f"te{n}.hot1", "replica-hot"),
            (f"te{n}.warm0", "replica-warm")]
        for p in reps:
            assert arg(p, "--engine") == "tradingengine"
            assert arg(p, "--mirror") == arg(topo.by_name(f"mirror.te{n}"), "--inputs")
            conf = json.loads(arg(p, "--engine-config"))
            assert (conf["shard"], conf["n_shards"]) == (n, 2)
            assert conf["ce_sources"] == {str(0x7000_0001): 1, str(0x7000_0002): 2}
            assert conf["oracle_sources"] == [0x7100_0000]
            assert conf["gateway_sources"] == [0x7200_0000]
            assert conf["liq_sources"] == [0x7600_0000]
            specs = [spec_from_dict(s) for s in conf["specs"]]
            assert [s.symbol for s in specs] == [1, 2]
            btc = specs[0]
            # 0.5 USDT per tick x 0.001 BTC per lot = 0.0005 USDT = 50000 minor units
            assert (btc.value, btc.tick, btc.lot) == (50_000, 50_000_000, 100_000)
            assert btc.max_qty * btc.max_price * btc.value < 1 << 62


def test_the_gateway_and_the_oracle_get_their_configuration_and_sources():
    topo = topology.load()
    gw, orc = topo.by_name("gateway0"), topo.by_name("oracle0")
    assert gw.args[0] == "gateway" and gw.args[1] == "--config"
    g = json.loads(gw.args[2])
    # exactly the keys `seqex gateway --config` takes (gateway/server.py parse_settings)
    assert set(g) == {"index", "listen", "accounts", "shards", "specs", "max_depth",
                      "journal_cache_bytes", "index_file"}
    assert g["journal_cache_bytes"] == 128 << 20
    assert g["index_file"] == f"{topo.data_dir}/gateway0/journal.index"
    assert g["index"] == 0 and "tcp://" + g["listen"] == gw.control == gw.extra["listen"]
    assert gw.extra == {"sources": [0x7200_0000], "listen": gw.control, "probe": "tcp",
                        "metrics": gw.extra["metrics"]}   # deploy/metrics.py
    assert g["accounts"] == f"{topo.data_dir}/accounts.json"
    assert g["shards"] == [
        {"in": arg(topo.by_name(f"sequencer.te{n}"), "--producers"),
         "pub": arg(topo.by_name(f"mirror.te{n}"), "--pub"),
         "replicators": topo.replicator_addrs()} for n in (0, 1)]
    assert g["specs"] == [
        {"symbol_id": 1, "name": "BTCUSDT", "tick": "0.5", "lot": "0.001"},
        {"symbol_id": 2, "name": "ETHUSDT", "tick": "0.05", "lot": "0.01"}]
    assert orc.args[:2] == ["oracle", "--config"]
    o = json.loads(orc.args[2])
    assert (o["source"], o["control"]) == (0x7100_0000, orc.control)
    assert [s["in"] for s in o["shards"]] == ["in.te.0", "in.te.1", "in.liq"]
    assert [(s["symbol_id"], s["start_ticks"]) for s in o["symbols"]] == [(1, 100_000),
                                                                          (2, 60_000)]
    assert topo.trading["gateway"] == g["listen"] and topo.trading["demo_accounts"] is True
    # the plan survives the state file (seqex.json) that the client verbs read
    again = topology.Topology.from_json(topo.to_json())
    assert again.trading == topo.trading and again.by_name("gateway0").extra == gw.extra


def test_in_liq_takes_what_concerns_the_liqengine_and_the_marks():
    """docs/liqengine.md §1-2: out.te.N and out.ce.SYM by route bit 63, under their own source
    ids; the marks from the oracle; one hot and one warm LiqEngine replica."""
    topo = topology.load()
    seq = topo.by_name("sequencer.liq")
    assert arg(seq, "--stream") == "in.liq"
    ups = [upstream(u) for u in args(seq, "--upstream")]
    bit63 = hex(1 << 63)
    assert [(u["stream"], int(u["source"]), u["route"]) for u in ups] == [
        ("out.te.0", 0x7400_0000, bit63), ("out.te.1", 0x7400_0001, bit63),
        ("out.ce.BTCUSDT", 0x7500_0001, bit63), ("out.ce.ETHUSDT", 0x7500_0002, bit63)]
    assert arg(topo.by_name("mirror.liq"), "--stream") == "out.liq"
    reps = [p for p in topo.procs if p.stream == "in.liq" and p.role.startswith("replica-")]
    assert [(p.name, p.role) for p in reps] == [("liq.hot0", "replica-hot"),
                                                ("liq.warm0", "replica-warm")]
    for p in reps:
        assert arg(p, "--engine") == "liqengine"
        conf = json.loads(arg(p, "--engine-config"))
        assert conf["n_shards"] == 2 and conf["oracle_sources"] == [0x7100_0000]
        assert conf["te_sources"] == {str(0x7400_0000): 0, str(0x7400_0001): 1}
        assert conf["ce_sources"] == {str(0x7500_0001): 1, str(0x7500_0002): 2}
        assert [s["symbol"] for s in conf["specs"]] == [1, 2]
    assert topo.trading["liq"]["insurance_fund"] == 50_000 * 10**8


def test_without_the_liqengine_nothing_names_it(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(topology.DEFAULT.replace("liq = true", "liq = false"))
    topo = topology.load(str(path))
    assert not [p for p in topo.procs if "liq" in p.name] and "liq" not in topo.trading
    for p in topo.procs:
        assert "out.liq" not in " ".join(p.args) and "liq_sources" not in " ".join(p.args)


def test_the_gateway_and_the_oracle_may_write_only_their_source_ids(tmp_path):
    topo = topology.load(data_dir=str(tmp_path / "d"))
    keys_dir = keys.generate(topo)
    trust = keys.policy(topo, keys_dir)
    by_name = {p.name: p for p in trust.peers.values()}
    assert by_name["gateway0"].sources == frozenset([0x7200_0000])
    assert by_name["oracle0"].sources == frozenset([0x7100_0000])
    assert by_name["te0.hot0"].sources == frozenset()
    assert topo.by_name("gateway0").control not in trust.servers   # not a ZeroMQ socket
    assert topo.by_name("oracle0").control in trust.servers


REP = '[[replicator]]\nname = "r0"\n'
SYM = '[[symbol]]\nname = "X"\ntick_size = "0.5"\nlot_size = "0.001"\n'


def error(tmp_path, text):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(TopologyError) as exc:
        topology.load(str(path))
    return str(exc.value).replace(str(path), "t.toml")


@pytest.mark.parametrize("extra, trading, want", [
    ("", "shards = 0\n", "trading.shards: must be in 1 .. 63, got 0"),
    ("", "shards = 65\n", "trading.shards: must be in 1 .. 63"),
    ("", "oracle = \"real\"\n", "trading.oracle: must be one of 'simulated', 'off'"),
    ("", "gateway = 17\n", "trading.gateway: must be true, false or a number of gateways"),
    ("", "gateway = \"2\"\n", "trading.gateway: must be true, false or a number of gateways"),
    ("", "shard = 2\n", "trading.shard: unknown key"),
    ("max_leverage = 0\n", "", "symbol[0].max_leverage: must be in 1 .. 10000"),
    ("taker_fee_ppm = -1\n", "", "symbol[0].taker_fee_ppm: must be in 0 .. 1000000"),
    ("maker_fee_ppm = -600\n", "", "symbol[0].maker_fee_ppm: a rebate (-600) larger than"),
    ("band_ppm = 0\n", "", "symbol[0].band_ppm: must be in 1 .. 999999"),
    ("funding_interval_s = 0\n", "", "symbol[0].funding_interval_s: must be in 1 .."),
    ("max_price = \"100.25\"\n", "", "symbol[0].max_price: must be a whole number of ticks"),
    ("mark_start = \"0.2\"\n", "", "symbol[0].mark_start: must be a whole number of ticks"),
    ("tiers = []\n", "", "symbol[0].tiers: must be a list of tables"),
    ("tiers = [{limit = \"10\", mmr_ppm = 20000, max_leverage = 100}]\n", "",
     "a tier's initial margin (1/100) must exceed its maintenance rate (20000 ppm)"),
    ("tiers = [{limit = \"10\", mmr = 1}]\n", "", "unknown key 'mmr' in a tier"),
    ("tiers = [{limit = \"10\"}, {limit = \"5\"}]\n", "", "tier limits must ascend"),
])
def test_a_bad_trading_key_is_named(tmp_path, extra, trading, want):
    assert want in error(tmp_path, REP + SYM + extra + "[trading]\n" + trading)


def test_sizes_of_a_traded_symbol_need_whole_minor_units(tmp_path):
    text = REP + '[[symbol]]\nname = "X"\ntick_size = "0.000000001"\n[trading]\n'
    assert "symbol[0].tick_size: a traded symbol's tick_size has at most 8 decimal" in \
        error(tmp_path, text)
    text = REP + '[[symbol]]\nname = "X"\ntick_size = "0.00001"\nlot_size = "0.0001"\n[trading]\n'
    assert "tick_size x lot_size must be a whole number of 1e-8 USDT" in error(tmp_path, text)


def test_tiers_are_continuous_and_the_largest_max_price_fits_int64(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(REP + SYM + 'tiers = [{limit = "1000", mmr_ppm = 5000}, '
                    '{limit = "2000", mmr_ppm = 10000, max_leverage = 50}]\n'
                    'max_leverage = 100\n[trading]\nshards = 1\n')
    spec = topology.load(str(path)).symbols["X"]["spec"]
    t0, t1 = spec["tiers"]
    # at the first limit both tiers ask the same maintenance margin
    assert t0["limit"] * t0["mmr_ppm"] // 10**6 - t0["mm_amount"] == \
        t0["limit"] * t1["mmr_ppm"] // 10**6 - t1["mm_amount"]
    assert spec["max_qty"] * spec["max_price"] * spec["value"] < 1 << 62
    spec_from_dict({k: v for k, v in spec.items() if k != "mark_start_ticks"})


def test_the_gateway_takes_the_planned_configuration():
    """Holds once gateway/server.py (branch gateway) is here: its own parser accepts the plan."""
    server = pytest.importorskip("gateway.server")
    topo = topology.load()
    settings = server.parse_settings(json.loads(topo.by_name("gateway0").args[2]))
    assert f"tcp://{settings.host}:{settings.port}" == topo.by_name("gateway0").control
    assert len(settings.shards) == 2


def test_the_gateway_is_probed_by_a_frame_not_just_a_connection():
    """A listener that is not a PROTOCOL.md speaker (another program on the port) does not
    count as the gateway: the probe sends a Heartbeat and needs a framed answer."""
    import socket
    import threading

    from deploy.supervisor import probe
    from gateway import wire
    gw = topology.load().by_name("gateway0")
    for answer, want in ((wire.encode(wire.LOGOUT, 2, b"logon first"),
                          {"state": "accepting clients"}), (b"HTTP/1.1 400\r\n", None)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            gw.control = f"tcp://127.0.0.1:{s.getsockname()[1]}"

            def serve(s=s, answer=answer):
                conn, _ = s.accept()
                with conn:
                    conn.recv(64)
                    conn.sendall(answer)
            t = threading.Thread(target=serve)
            t.start()
            assert probe(gw, timeout_s=5) == want
            t.join(5)
    assert probe(gw, timeout_s=0.2) is None


def test_a_rebuild_finds_every_engine_stream_s_configuration_in_the_topology():
    """`seqex replay in.te.N --rebuild` on a running cluster: the TradingEngine shard's
    configuration is its replicas' (it used to be refused: only in.ce.SYM was found)."""
    from deploy.cli import _replica_config
    topo = topology.load()
    for n in (0, 1):
        conf = _replica_config(topo, f"in.te.{n}", "tradingengine")
        assert conf == json.loads(arg(topo.by_name(f"te{n}.hot0"), "--engine-config"))
        assert conf["shard"] == n
    assert _replica_config(topo, "in.ce.BTCUSDT", "crossengine") == \
        topo.symbols["BTCUSDT"]["engine"]
    assert _replica_config(topo, "in.te.9", "tradingengine") is None
    assert _replica_config(topo, "in.te.0", "crossengine") is None


def test_every_engine_replica_runs_with_the_whole_configuration_it_is_given():
    """What the topology writes into each replica's --engine-config is what its engine runs
    with: the registry (deploy/engines.py) once dropped the TradingEngine's liq_sources, so on
    a cluster the LiqEngine's Adls were ignored and handoffs stayed in the shard. Each source
    key must reach the engine, and a key the registry does not know is refused."""
    import json

    import pytest

    from deploy.engines import make
    topo = topology.load()
    seen = set()
    for p in topo.procs:
        if "--engine-config" not in p.args:
            continue
        name = p.args[p.args.index("--engine") + 1]
        config = json.loads(p.args[p.args.index("--engine-config") + 1])
        engine, _restore = make(name, config)
        for key in ("ce_sources", "oracle_sources", "gateway_sources", "liq_sources",
                    "te_sources"):
            if config.get(key):
                got = getattr(engine, key)
                want = config[key]
                if isinstance(want, dict):
                    want = {int(k, 0): v for k, v in want.items()}
                    got = dict(got)
                else:
                    want, got = sorted(want), sorted(got or ())
                assert got == want, (p.name, key, got, want)
                seen.add((name, key))
        with pytest.raises(ValueError, match="unknown key"):
            make(name, {**config, "liq_source": [1]})
    assert ("tradingengine", "liq_sources") in seen and ("crossengine", "liq_sources") in seen
    assert ("liqengine", "te_sources") in seen


def test_gateway_n_plans_n_gateways_each_with_its_own_source_and_port(tmp_path):
    """`gateway = 2`: gateway0 and gateway1, indexes 0 and 1, each on its own port, each key
    allowed its own source id only; every shard takes session records from both. (There was
    room for one: a second gateway started by hand was refused by the log and the engines.)"""
    server = pytest.importorskip("gateway.server")
    path = tmp_path / "t.toml"
    path.write_text(topology.DEFAULT.replace("gateway = true", "gateway = 2"))
    topo = topology.load(str(path), data_dir=str(tmp_path / "d"))
    gws = [topo.by_name(f"gateway{g}") for g in range(2)]
    confs = [server.parse_settings(json.loads(g.args[2])) for g in gws]
    assert [c.cfg.index for c in confs] == [0, 1]
    assert len({(c.host, c.port) for c in confs}) == 2
    assert topo.trading["gateways"] == [g.control[len("tcp://"):] for g in gws]
    assert topo.trading["gateway"] == topo.trading["gateways"][0]
    tes = [p for p in topo.procs if p.role.startswith("replica-") and p.name.startswith("te")]
    assert len(tes) == 6
    for p in tes:
        conf = json.loads(p.args[p.args.index("--engine-config") + 1])
        assert conf["gateway_sources"] == [0x7200_0000, 0x7200_0001]
    trust = keys.policy(topo, keys.generate(topo))
    by_name = {p.name: p for p in trust.peers.values()}
    assert by_name["gateway0"].sources == frozenset([0x7200_0000])
    assert by_name["gateway1"].sources == frozenset([0x7200_0001])
    path.write_text(topology.DEFAULT.replace("gateway = true", "gateway = false"))
    topo = topology.load(str(path))
    assert not [p for p in topo.procs if p.role == "gateway"] and "gateway" not in topo.trading
