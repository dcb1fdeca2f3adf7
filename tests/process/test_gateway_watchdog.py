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
from tests.process.test_order_path_faults import (
    SYMBOLS,
    Session,
    _clordids,
    _sids,
    check_sessions,
    default_cluster,
)
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


@pytest.mark.timeout(900)
def test_a_gateway_whose_index_file_cannot_be_written_starts_and_serves(tmp_path):
    """A directory where the gateway's index file should be (an operator's slip; a full disk at
    start is the same path): SIGKILLed while a session trades, the gateway starts again without
    a checkpoint, reading out.te.N from seq 1, and the session resumes with every server
    message once. Before, each start exited with status 2 and the supervisor gave up on it."""
    with default_cluster(tmp_path, None) as c:
        tick, mark = SYMBOLS[1]
        s = Session(c, "alice", next(_sids), 2)
        s.connect()
        for k in range(10):
            s.nos(next(_clordids), 1, b"1", (mark - 1000 - k) * tick, 1)
        wait_until(lambda: s.drain(0.1) and s.last_seen >= 10, 120, "ten acks")
        path = os.path.join(c["data"], "gateway0", "journal.index")
        os.replace(path, path + ".moved")
        os.mkdir(path)
        pid = gateway_pid(c["data"], 0)
        os.kill(pid, signal.SIGKILL)
        for k in range(10):                 # sent into the gap; resent after the Logon
            try:
                s.nos(next(_clordids), 1, b"1", (mark - 1020 - k) * tick, 1)
            except OSError:
                break
        s.reconnect()
        for k in range(10):
            s.nos(next(_clordids), 1, b"1", (mark - 1040 - k) * tick, 1)
        wait_until(lambda: s.drain(0.1) and len(set(s.requests) - s.answered()) == 0, 120,
                   "every order answered")
        check_sessions(c, [s])
        with open(os.path.join(c["data"], "logs", "gateway0.log")) as f:
            assert "cannot be written" in f.read()
        assert gateway_pid(c["data"], 0) != pid and "giving up" not in c["up"].log()
        s.close()
