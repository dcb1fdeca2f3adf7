"""bench/bench_e2e.py --quick: the whole default topology, a few hundred crossing orders through
the gateway, and the raw floor; every order is acked and filled, nothing is left running."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.process.test_cluster import pids_of

pytest.importorskip("gateway.server", reason="the gateway process")
BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench_e2e.py")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_e2e_quick(tmp_path):
    out_json = tmp_path / "e2e.json"
    out = subprocess.run([sys.executable, BENCH, "--quick", "--json",
                          str(out_json)], capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    d = json.loads(out_json.read_text())
    (floor,), (run,) = d["floor"], d["seqex"]
    assert floor["acked"] == floor["orders"] > 0
    assert run["acked"] == run["orders"] == run["fills"] * 2 and run["rejects"] == 0, run
    assert {"tradingengine", "crossengine", "gateway", "sequencer", "mirror",
            "replicator"} <= set(run["cpu"])
    assert "result: fills 400 of 400 orders at 200/s" in out.stdout, out.stdout
    assert pids_of("seqex-bench-e2e-") == []
