"""A sequencer given SIGTERM while it is still taking over its stream (no replicator
answers, so it cannot reach a quorum) exits at once with status 0, having sequenced nothing;
it used to go on trying for its 60 s recovery deadline."""
from __future__ import annotations

import signal
import time

import pytest

from deploy.procs import Group, tcp
from mq.control import wait_until


@pytest.mark.timeout(180)
def test_sequencer_stopped_while_taking_over_exits_at_once(tmp_path):
    with Group(str(tmp_path)) as group:
        seq = group.spawn("sequencer", [
            "sequencer", "--stream", "in.x", "--producers", tcp(), "--pub", tcp(),
            "--policy", "quorum", "--replicator", tcp(), "--replicator", tcp()])
        # in its recovery loop, asking replicators that are not there
        wait_until(lambda: not seq.alive or "taking over the stream" in seq.log(), 60,
                   "sequencer recovering")
        assert seq.alive, seq.log()
        t0 = time.monotonic()
        seq.popen.send_signal(signal.SIGTERM)
        assert seq.popen.wait(60) == 0, seq.log()
        assert time.monotonic() - t0 < 20, "stopped only at the recovery's deadline"
        assert "sequencer ready" not in seq.log()
