"""A frozen gateway (SIGSTOP) under `seqex up`: the supervisor kills it once it has been stopped
for --gateway-watchdog seconds and starts it again, and that start releases its sessions. Before,
a session bound at a frozen gateway stayed bound for as long as the freeze lasted and its
cancel-on-disconnect never fired: the engines hear of a lost connection only from the gateway
that held it, and a stopped process sends nothing (docs/gateway.md)."""
from __future__ import annotations

import os
import signal

import pytest

from deploy.metrics import scrape
from mq.control import wait_until
from tests.process.test_order_path_faults import default_cluster
from tests.process.test_two_gateways import (
    a_cod_session_with_a_resting_order,
    gateway_pid,
    resumes_with_the_cancel,
)

pytest.importorskip("gateway.server", reason="the gateway process")


@pytest.mark.timeout(900)
def test_a_frozen_gateway_is_killed_and_its_sessions_cancel_on_disconnect(tmp_path):
    with default_cluster(tmp_path, None, ("--gateway-watchdog", "4")) as c:
        first, sid = a_cod_session_with_a_resting_order(c)
        frozen = gateway_pid(c["data"], 0)
        os.kill(frozen, signal.SIGSTOP)
        wait_until(lambda: f"gateway0 (pid {frozen}) has been stopped (SIGSTOP) for"
                   in c["up"].log(), 120, "the supervisor to kill the stopped gateway")
        first.close()
        resumes_with_the_cancel(c, sid)
        assert gateway_pid(c["data"], 0) != frozen
        # the new gateway's metrics: its index file (docs/gateway.md, the index on disk)
        gw = c["topo"].by_name("gateway0")
        wait_until(lambda: scrape(gw.extra["metrics"]).get(
            ("seqex_gateway_index_writes_total", (("process", "gateway0"),)), 0) >= 1, 60,
            "a checkpoint of the new gateway's index")
        got = scrape(gw.extra["metrics"])
        assert got[("seqex_gateway_index_bytes", (("process", "gateway0"),))] > 0, got
        assert got[("seqex_gateway_index_write_failures_total", (("process", "gateway0"),))] == 0
