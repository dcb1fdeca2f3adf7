"""`seqex demo --plain | head`: the reader goes away while the robot trades. The demo must stop
the cluster it started (its goodbye line's BrokenPipeError came before the stop, and the 40
processes kept running)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from deploy.procs import free_port_block
from mq.control import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINE = re.compile(r"orders/s \d+ acked/s (\d+)")


def running(data: str) -> bool:
    return subprocess.run(["pgrep", "-f", data], capture_output=True).returncode == 0


def test_a_demo_whose_reader_goes_away_stops_the_cluster_it_started(tmp_path):
    data = str(tmp_path / "data")
    demo = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "demo", "--plain", "--data", data, "--base-port",
         str(free_port_block(60)), "--seconds", "300", "--rate", "200", "--users", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO}, text=True)
    try:
        seen = []
        for line in demo.stdout:           # until the robot's orders are being acknowledged
            seen.append(line)
            m = LINE.match(line)
            if m and int(m.group(1)) > 0:
                break
        else:
            raise AssertionError("the demo ended before trading:\n" + "".join(seen[-20:]))
        assert running(data)
        demo.stdout.close()                # the reader goes away, as `| head` does
        assert demo.wait(240) in (0, 1), "the demo did not end"
        wait_until(lambda: not running(data), 180, "the cluster the demo started to stop")
        assert not os.path.exists(os.path.join(data, "seqex.json"))
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        subprocess.run([sys.executable, "-m", "deploy.cli", "down", "--data", data],
                       capture_output=True, timeout=120, cwd=REPO)
