"""README's "Trade on it", as a newcomer does it: `seqex up` (the default topology: two
symbols, two TradingEngine shards, CrossEngines, the gateway, the simulated oracle, with keys)
then `seqex client` from another terminal. alice's resting buy trades with bob's market sell
(another shard): bob sees his fill at once, alice sees hers on her next invocation, exactly
once; a user created on the running cluster logs on at once; the gateway, SIGKILLed, is
restarted by the supervisor and alice's session resumes with nothing lost or doubled."""
from __future__ import annotations

import os
import signal

import pytest

from deploy.procs import Group, free_port_block
from mq.control import wait_until
from tests.process.test_cli import seqex
from tests.process.test_cluster import pids_of

pytest.importorskip("gateway.server", reason="the gateway process (branch gateway)")


free_block_below_ephemeral = free_port_block


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trade_on_the_default_topology(tmp_path):
    data = str(tmp_path / "data")

    def client(*args):
        out = seqex("client", "--data", data, *args, timeout=120)
        assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
        return out

    with Group(str(tmp_path / "logs")) as group:
        up = group.spawn("up", ["up", "--data", data, "--base-port", str(free_block_below_ephemeral()),
                                "--ready-timeout", "180"])
        wait_until(lambda: "demo: bob: deposit 4" in up.log() or not up.alive, 300,
                   "seqex up and the demo deposits")
        assert up.alive, up.log()
        log = up.log()
        assert "alice  password " in log and "simulated random walk" in log.lower() or \
            "SIMULATED" in log
        assert log.count("done: balance 100,000.00 USDT") == 4, log

        out = client("--user", "alice", "buy", "BTCUSDT", "0.01", "@", "50000")
        assert out.returncode == 0 and out.stdout.strip() == \
            "alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] accepted, resting", out
        # the resting order's margin shows at once (a replica's live figures, not the last
        # AccountStatus of the log, which an order does not write); --account: that one alone
        out = client("--user", "alice", "--account", "2", "positions")
        lines = out.stdout.splitlines()
        assert out.returncode == 0 and len(lines) == 1 and lines[0].startswith(
            "alice: account 2: balance 100,000.00 USDT, available 99,9"), out.stdout
        assert "(orders 0.00," not in lines[0] and lines[0].endswith("positions 0.00)"), lines
        out = client("--user", "alice", "--account", "3", "positions")
        assert out.returncode == 2 and "account 3 is not alice's" in out.stdout + out.stderr
        out = client("--user", "bob", "sell", "BTCUSDT", "0.004")
        assert out.returncode == 0 and \
            "[order 1] filled 0.004 @ 50000.00 (taker), done" in out.stdout, out
        out = client("--user", "alice", "watch", "--wait", "3")
        fills = [x for x in out.stdout.splitlines() if "filled" in x]
        assert fills == ["alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] filled 0.004 @ "
                         "50000.00 (maker), 0.006 left"], out.stdout
        out = client("--user", "alice", "watch", "--wait", "2")   # not twice
        assert "filled" not in out.stdout, out.stdout
        out = client("--user", "alice", "positions")
        assert out.returncode == 0 and "alice: account 2: BTCUSDT long 0.004 @ 50,000.00 entry" \
            in out.stdout, out.stdout
        out = client("--user", "bob", "positions")
        assert "bob: account 3: BTCUSDT short 0.004 @ 50,000.00 entry" in out.stdout, out.stdout

        out = seqex("account", "create", "carol", "--accounts", "6,8", "--password",
                    "carol-pw", "--data", data)
        assert out.returncode == 0 and "re-reads the accounts file" in out.stdout, out
        wait_until(lambda: client("--user", "carol", "--password", "carol-pw", "watch",
                                  "--wait", "0").returncode == 0, 60, "carol's logon")

        # SIGKILL the gateway: the supervisor restarts it; the session resumes from the log
        gw = [p for p in pids_of(data) if "gateway --config" in
              open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()]
        assert len(gw) == 1
        os.kill(gw[0], signal.SIGKILL)
        wait_until(lambda: "restarting gateway0" in up.log(), 60, "the gateway's restart")
        out = wait_until(lambda: (o := client("--user", "alice", "cancel", "BTCUSDT", "1"))
                         .returncode == 0 and o, 120, "alice's cancel after the restart")
        assert "[order 2, was 1] canceled (on request), 0.004 filled" in out.stdout, out.stdout
        out = client("--user", "alice", "cancel", "BTCUSDT", "1")      # again: too late
        assert out.returncode == 2 and "alice: BTCUSDT cancel of order 1 refused (too late: " \
            "it is canceled)" in out.stdout, out.stdout

        down = seqex("down", "--data", data)
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(120) == 0
        assert pids_of(data) == [], "processes left behind after seqex down"
