"""bench/bench_md.py at a small size: it runs, both fan-outs deliver every update to every
subscriber with no silent gap, and it prints its figure line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_md_smoke():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_md.py"), "--ws", "20",
                        "--bin", "4", "--records", "40", "--rate", "40", "--workers", "2"],
                       capture_output=True, text=True, timeout=580, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("marketdata: 20 WebSocket + 4 binary subscribers") and "hash " in line
    assert "silent gaps 0, behind at the end 0" in line
