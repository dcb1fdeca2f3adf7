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


@pytest.mark.timeout(300)
def test_a_sigkilled_oracle_resumes_its_walk_where_it_stood(tmp_path):
    """The oracle is SIGKILLed while it writes marks every 50 ms and started again with the same
    configuration: its first marks go on from the last ones in the log (within one step), on a
    path of their own. It went back to start_ticks and wrote the same path again, so every mark
    jumped at once (by up to half its value after a long run)."""
    step_ppm = 20_000
    with LogCluster(str(tmp_path), stream="in.te.0", replicators=1, policy="first") as c:
        c.start()
        control = tcp()
        conf = {"control": control, "interval_ms": 50, "seed": 9, "mark": "index",
                "step_ppm": step_ppm, "state": str(tmp_path / "oracle0" / "walk.json"),
                "shards": [{"in": "in.te.0", "producers": c.prod_addr}],
                "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "start_ticks": 100_000}]}
        proc = c.group.spawn("oracle0", ["oracle", "--config", json.dumps(conf)])
        wait_until(lambda: ping(control), 60, "the oracle's control endpoint")

        def marks():
            return [codec.MARK_PRICE_S.unpack(bytes(r[6]))[1]
                    for f in replay(c.rep_addrs[0], "in.te.0") for r in decode(f)
                    if r[5] == codec.MARK_PRICE]
        wait_until(lambda: len(marks()) >= 40, 60, "40 marks in the log")
        proc.kill()
        wait_until(lambda: (st := c.status()) and st.get("committed") == st.get("last"), 60,
                   "the log to commit what the oracle sent")
        before = marks()
        proc.start()
        after = wait_until(lambda: len(m := marks()) >= len(before) + 20 and m, 60,
                           "20 marks after the restart")[len(before):]
        log = proc.log()
    fresh = oracle.Walk(1, 100_000, 1 << 62, step_ppm, 9)
    path = [fresh.step() for _ in range(len(before) + len(after))]
    assert before == path[:len(before)]
    size = max(1, before[-1] * step_ppm // 1_000_000)
    assert abs(after[0] - before[-1]) <= size, (before[-3:], after[:3])
    assert after != path[:len(after)]               # not the walk from its start again
    assert "the walk resumed where it stood" in log, log
