"""`seqex demo` as a person sees it: the default cluster started, the robot trading through the
gateway, and the dashboard in a real terminal (tmux), read twice with capture-pane: its totals
move, the processes are listed, and the trades show in the contract's units."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from deploy.procs import free_port_block
from mq.control import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTALS = re.compile(r"(\d+) sent (\d+) acked (\d+) trades (\d+) rejected")


SOCKET = f"seqex-test-{os.getpid()}"       # a tmux server of its own: its own window size


def tmux(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, **kw)


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


def test_the_dashboard_moves_while_the_robot_trades(tmp_path):
    data = str(tmp_path / "data")
    session = f"seqex-demo-{os.getpid()}"
    port = free_port_block(60)
    # the pane's size, not a COLUMNS/LINES inherited from whoever runs the tests
    cmd = (f"cd {REPO} && env -u COLUMNS -u LINES {sys.executable} -m deploy.cli demo --data {data} --base-port {port} "
           f"--seconds 240 --rate 100 --users 8; sleep 600")
    tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "90", cmd, check=True)
    tmux("resize-window", "-t", session, "-x", "200", "-y", "90")
    try:
        def totals():
            m = TOTALS.search(capture(session))
            return m and tuple(int(x) for x in m.groups())
        try:
            # the first acknowledgements, and the process table (probed in the background)
            first = wait_until(lambda: (t := totals()) and t[1] > 0 and
                               "gateway0" in capture(session) and t, 420,
                               "the dashboard's first acknowledgements and its process table")
        except TimeoutError:
            log = os.path.join(data, "up.log")
            up = open(log).read()[-3000:] if os.path.exists(log) else "(no up.log)"
            raise AssertionError(f"screen:\n{capture(session)}\nup.log:\n{up}") from None
        screen = capture(session)
        (tmp_path / "dashboard-1.txt").write_text(screen)
        assert "processes" in screen and "gateway0" in screen and "BTCUSDT" in screen
        assert "SIMULATED" in screen
        later = wait_until(lambda: (t := totals()) and t[0] > first[0] + 200 and
                           t[1] > first[1] + 100 and t, 120, "the totals to move")
        screen = capture(session)
        (tmp_path / "dashboard-2.txt").write_text(screen)
        assert later[2] >= first[2] and later[3] == 0, screen
        # trades show with the contract's price (thousands separators, two decimals)
        assert re.search(r"(BTCUSDT|ETHUSDT)\s+│\s+(buy|sell)\s+│\s+[\d,]+\.\d\d", screen), screen
        assert "Traceback" not in screen
    finally:
        tmux("kill-server")
        # the demo's cluster is a child of the killed pane: stop whatever it left
        subprocess.run([sys.executable, "-m", "deploy.cli", "down", "--data", data],
                       capture_output=True, timeout=120)
        wait_until(lambda: not os.path.exists(os.path.join(data, "seqex.pid")) or
                   subprocess.run(["pgrep", "-f", data], capture_output=True).returncode != 0,
                   120, "the demo's cluster to stop")
