"""The oracle process on a real in.te.0 stream: it writes MarkPrice records (kind 73) as source
0x7100_0000, one per symbol per interval, the walk of its seed; it says "simulated random
walk" in its log and its status; SIGTERM stops it."""
from __future__ import annotations

import json

import pytest

from deploy import oracle
from deploy.local import LogCluster
from deploy.procs import tcp
from mq.control import ping, replay, wait_until
from mq.record import decode
from tradingengine import codec


@pytest.mark.timeout(300)
def test_oracle_writes_seeded_marks_into_in_te(tmp_path):
    with LogCluster(str(tmp_path), stream="in.te.0", replicators=1, policy="first") as c:
        c.start()
        control = tcp()
        conf = {"control": control, "interval_ms": 50, "seed": 9, "mark": "index",
                "shards": [{"in": "in.te.0", "producers": c.prod_addr}],
                "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "start_ticks": 100_000},
                            {"symbol": "ETHUSDT", "symbol_id": 2, "start_ticks": 60_000}]}
        proc = c.group.spawn("oracle0", ["oracle", "--config", json.dumps(conf)])
        st = wait_until(lambda: ping(control), 60, "the oracle's control endpoint")
        assert st["state"] == "simulated random walk"
        wait_until(lambda: (ping(control) or {}).get("sent", 0) >= 20, 60, "20 marks")

        def marks():
            return [r for f in replay(c.rep_addrs[0], "in.te.0") for r in decode(f)
                    if r[5] == codec.MARK_PRICE]
        got = wait_until(lambda: len(m := marks()) >= 20 and m, 60, "20 marks in the log")
        proc.stop()
        assert proc.popen.returncode == 0, proc.log()
        assert "of a SIMULATED index (simulated random walk" in proc.log()
    assert {r[2] for r in got} == {0x7100_0000}
    walks = [oracle.Walk(1, 100_000, 1 << 62, 500, 9), oracle.Walk(2, 60_000, 1 << 62, 500, 9)]
    want = []
    while len(want) < len(got):
        want += [(w.symbol_id, w.step()) for w in walks]
    assert [codec.MARK_PRICE_S.unpack(bytes(r[6])) for r in got] == want[:len(got)]
