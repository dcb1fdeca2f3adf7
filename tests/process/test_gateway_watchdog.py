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
    default_cluster,
    journal,
)
from tests.process.test_two_gateways import gateway_pid
from tests.protoclient import ProtoClient

pytest.importorskip("gateway.server", reason="the gateway process")


@pytest.mark.timeout(900)
def test_a_frozen_gateway_is_killed_and_its_sessions_cancel_on_disconnect(tmp_path):
    with default_cluster(tmp_path, None, ("--gateway-watchdog", "4")) as c:
        tick, mark = SYMBOLS[1]
        sid = next(_sids)
        pw = c["users"]["alice"].encode()
        first = ProtoClient(*c["gw"], timeout=60)
        first.send(1, sid, 1, 1, 10_000, 500, 2, 0, b"alice", pw)   # cancel on disconnect
        m = first.recv(skip=(5, 6))
        assert m.template == 2, m
        first.send(100, 1, 0, next(_clordids), (mark - 1500) * tick, 1, 1, 2, b"1", b"2",
                   b"1", 0)
        m = first.recv(skip=(5, 6))
        assert m.template == 200 and m.raw[12 + 104:12 + 105] == b"0", m   # New
        frozen = gateway_pid(c["data"], 0)
        os.kill(frozen, signal.SIGSTOP)
        wait_until(lambda: f"gateway0 (pid {frozen}) has been stopped (SIGSTOP) for"
                   in c["up"].log(), 120, "the supervisor to kill the stopped gateway")
        wait_until(lambda: len(journal(c).get(sid, {})) >= 2, 120, "the cancel on disconnect")
        assert gateway_pid(c["data"], 0) != frozen
        first.close()
        s = Session(c, "alice", sid, 2)
        s.last_seen, s.next_seq = 1, 2
        ack = s.connect(deadline_s=90)
        assert ack[2] == 3, ack                       # the cancel: server SeqNo 2
        (possdup, raw, replayed), = s.got[2]
        assert raw[6:8] == (200).to_bytes(2, "little") and raw[12 + 104:12 + 105] == b"4"
        assert possdup and replayed and raw[12 + 109] == 2   # reason 2: cancel on disconnect
        s.close()
        # the new gateway's metrics: its index file (docs/gateway.md, the index on disk)
        gw = c["topo"].by_name("gateway0")
        wait_until(lambda: scrape(gw.extra["metrics"]).get(
            ("seqex_gateway_index_writes_total", (("process", "gateway0"),)), 0) >= 1, 60,
            "a checkpoint of the new gateway's index")
        got = scrape(gw.extra["metrics"])
        assert got[("seqex_gateway_index_bytes", (("process", "gateway0"),))] > 0, got
        assert got[("seqex_gateway_index_write_failures_total", (("process", "gateway0"),))] == 0
