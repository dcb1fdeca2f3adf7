"""`seqex account deposit|withdraw` and the demo deposits against a real TradingEngine shard
(in.te.0 -> a TradingEngine replica -> out.te.0 on 127.0.0.1): a deposit is applied once and
its balance printed in USDT; the same transfer id again moves nothing; a withdrawal beyond
the balance is refused with its reason; the demo users' deposits, repeated after a "restart",
are answered as repeats and deposit nothing twice."""
from __future__ import annotations

import json
import os

import pytest

from deploy import topology, trading
from deploy.cli import main
from deploy.local import LogCluster
from deploy.procs import tcp
from mq.control import ping, wait_until
from tests.fakeup import fake_up
from tests.process.test_replicas import start_replica


@pytest.mark.timeout(300)
def test_deposits_and_withdrawals_go_through_the_log_once(tmp_path, capsys):
    tmp = str(tmp_path)
    te = topology.load().by_name("te0.hot0")          # the default topology's specs
    specs = json.loads(te.args[te.args.index("--engine-config") + 1])["specs"]
    config = json.dumps({"specs": specs, "shard": 0, "n_shards": 1})
    with LogCluster(tmp, stream="in.te.0", replicators=1, policy="first") as cluster:
        cluster.start()
        m_in, m_pub = tcp(), tcp()
        cluster.group.spawn("mirror", ["mirror", "--stream", "out.te.0", "--inputs", m_in,
                                       "--pub", m_pub, "--policy", "first",
                                       "--replicator", cluster.rep_addrs[0]])
        wait_until(lambda: ping(m_in), 30, "the mirror")
        control = tcp()
        start_replica(cluster, "te0.hot0", "hot", m_in, tmp, control,
                      ("--engine", "tradingengine", "--engine-config", config))
        wait_until(lambda: ping(control), 60, "the TradingEngine replica")
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        shard = {"shard": 0, "in": "in.te.0", "out": "out.te.0", "producers": cluster.prod_addr,
                 "pub": cluster.pub_addr, "out_pub": m_pub, "replicators": cluster.rep_addrs}
        topo = topology.Topology(data, [], {}, {
            "shards": [shard], "n_shards": 1, "instruments": [], "demo_accounts": True,
            "accounts": os.path.join(data, "accounts.json")})
        fake_up(data, json.loads(topo.to_json()))

        def account(*args):
            rc = main(["--insecure", "account", *args, "--data", data])
            cap = capsys.readouterr()
            return rc, (cap.out + cap.err).strip()

        assert account("deposit", "2", "1000.5", "--transfer-id", "7") == (
            0, "deposit 7 on account 2 done: balance 1,000.50 USDT")
        assert account("deposit", "2", "1000.5", "--transfer-id", "7") == (
            0, "deposit 7 on account 2: nothing changed, the shard answered transfer id 7 "
               "before (a retry of that transfer, which the first answer settled; for a new "
               "one give another --transfer-id)")
        rc, out = account("withdraw", "2", "5000", "--transfer-id", "8")
        assert (rc, out.split(",")[0]) == (
            2, "withdrawal 8 on account 2 refused: the withdrawal exceeds the available balance")
        rc, out = account("withdraw", "2", "0.5")
        assert rc == 0 and out.endswith("done: balance 1,000.00 USDT")

        made = trading.ensure_demo_users(topo)
        assert set(made) == {"alice", "bob"}
        lines: list[str] = []
        trading.demo_deposits(topo, lines.append)
        assert lines[0] == "  demo: alice: deposit 1 on account 2 done: balance 101,000.00 USDT"
        assert len(lines) == 4 and all("done: balance 100,000.00 USDT" in x for x in lines[1:])
        trading.demo_deposits(topo, lines.append)          # done: not again
        assert len(lines) == 4
        doc = json.load(open(trading.demo_path(data)))
        doc["deposited"] = False                           # as if it died before noting it
        trading._write_demo(data, doc)
        trading.demo_deposits(topo, lines.append)
        assert len(lines) == 8 and all("answered transfer id" in x for x in lines[4:])
        cluster.stop()
