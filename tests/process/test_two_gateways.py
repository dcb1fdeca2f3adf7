"""Two gateways on one cluster (`[trading] gateway = 2`), as real processes: a session's state
is the TradingEngine's, so a client may log on at either gateway and resume there.

* A session bound at gateway0 is refused at gateway1 (LogonReject 2, bound elsewhere), and its
  connection at gateway0 goes on.
* Dropped at gateway0 with requests unread, it resumes at gateway1: LogonAck's numbers,
  Retransmission + PossDup replay, a resend of what was not applied.
* Logged out at one gateway and on at the other as soon as the Logout's answer is in, ten
  times: every Logon taken at once.
* gateway0 SIGKILLed while the session trades at gateway1: nothing of it is disturbed.

Afterwards every request was answered and applied once, every server SeqNo received exactly once
(replays only with PossDup, equal byte for byte to the out.te.N journal), and every hot replica's
state hash equals a rebuild from the log. (Before, the topology had room for one gateway only: a
second one started by hand died with a traceback, its source id unknown to the policy and the
engines.)
"""
from __future__ import annotations

import os
import signal

import pytest

from deploy.topology import DEFAULT
from mq.control import wait_until
from tests.process.test_cluster import pids_of
from tests.process.test_order_path_faults import (
    SYMBOLS,
    Session,
    _clordids,
    _sids,
    check_hashes,
    check_sessions,
    default_cluster,
    journal,
)
from tests.protoclient import ProtoClient

pytest.importorskip("gateway.server", reason="the gateway process")


def gateway_pid(data: str, index: int) -> int:
    def cmdline(pid: int) -> str:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    pids = [p for p in pids_of(data)
            if "gateway --config" in cmdline(p) and f'"index": {index},' in cmdline(p)]
    assert len(pids) == 1, (index, pids)
    return pids[0]


@pytest.mark.timeout(900)
def test_a_session_moves_between_two_gateways_and_survives_one(tmp_path):
    text = DEFAULT.replace("gateway = true", "gateway = 2", 1)
    assert text != DEFAULT
    with default_cluster(tmp_path, text) as c:
        gws = [tuple(g.rsplit(":", 1)) for g in c["topo"].trading["gateways"]]
        assert len(gws) == 2
        at = [{**c, "gw": (h, int(p))} for h, p in gws]
        tick, mark = SYMBOLS[1]
        s = Session(at[0], "alice", next(_sids), 2)
        ack = s.connect()
        assert ack[1:3] == (1, 1), ack
        for k in range(5):
            s.nos(next(_clordids), 1, b"1", (mark - 1000 - k) * tick, 1)
        wait_until(lambda: s.drain(0.1) and s.last_seen >= 5, 120, "five acks at gateway0")

        # bound at gateway0: refused at gateway1, and gateway0's connection goes on
        other = ProtoClient(*at[1]["gw"], timeout=60)
        other.send(1, s.sid, s.last_seen + 1, s.next_seq, 10_000, 0, 0, 0, b"alice",
                   s.pw.encode())
        m = other.recv(skip=(5, 6))
        assert m.template == 3 and m.fields[1] == 2, m
        other.close()
        s.nos(next(_clordids), 1, b"1", (mark - 1010) * tick, 1)
        wait_until(lambda: s.drain(0.1) and s.last_seen >= 6, 120, "an ack at gateway0")

        # dropped at gateway0 with requests unread: resumes at gateway1
        for k in range(5):
            s.nos(next(_clordids), 1, b"1", (mark - 1020 - k) * tick, 1)
        s.c.close()
        s.c = None
        s.cl = at[1]
        seen = s.last_seen
        wait_until(lambda: len(journal(c).get(s.sid, {})) >= 11, 120, "the five applied")
        ack = s.connect()
        assert ack[1] == 12 and ack[2] == 12, ack
        assert s.last_seen == 11 and all(r[0][0] for q, r in s.got.items() if q > seen)

        # logged out at one gateway, on again at the other the moment the answer is in: the
        # answer waits for the SessionEnd to be applied, so the Logon finds the session free
        # (it was refused "bound elsewhere" now and then when it overtook the SessionEnd)
        for k in range(10):
            s.drain(0.05)
            s.c.send(4, 0, b"")
            for m in s.c.until(lambda m: m.template == 4, timeout=30):
                if m.template in (10, 200, 201, 202, 203):
                    s._take(m)
            s.c.close()
            s.c = None
            s.cl = at[k % 2]                 # gateway0, gateway1, gateway0, ...
            n = len(s.attempts)
            s.connect()
            assert s.attempts[n][0] == 2, s.attempts[n:]

        # gateway0 killed while the session trades at gateway1
        os.kill(gateway_pid(c["data"], 0), signal.SIGKILL)
        for k in range(10):
            s.nos(next(_clordids), 1, b"1", (mark - 1040 - k) * tick, 1)
        wait_until(lambda: s.drain(0.1) and s.last_seen >= 21, 120, "ten acks at gateway1")
        assert s.reconnects == 0
        check_sessions(at[1], [s])
        check_hashes(c)
        s.close()


@pytest.mark.timeout(900)
def test_a_gateway_given_up_on_releases_its_sessions_to_the_others(tmp_path):
    """A session bound at a gateway that is not coming back (the supervisor gave up on it) was
    refused at every other gateway (LogonReject 2, "bound elsewhere") for as long as it was
    down, and its cancel-on-disconnect never fired: the engines hear of a lost connection only
    from the gateway that held it. The supervisor now sends that gateway's GatewayStart from
    the operator: the session ends as a disconnect, its cancel-on-disconnect cancels its order,
    and it resumes at the other gateway, the cancel in the replay."""
    text = DEFAULT.replace("gateway = true", "gateway = 2", 1)
    with default_cluster(tmp_path, text, ("--max-restarts", "0")) as c:
        gws = [tuple(g.rsplit(":", 1)) for g in c["topo"].trading["gateways"]]
        at = [{**c, "gw": (h, int(p))} for h, p in gws]
        first, sid = a_cod_session_with_a_resting_order(at[0])
        os.kill(gateway_pid(c["data"], 0), signal.SIGKILL)
        wait_until(lambda: "gateway0's sessions released" in c["up"].log(), 180,
                   "the supervisor to give up on gateway0 and release its sessions")
        first.close()
        resumes_with_the_cancel(at[1], sid)


def a_cod_session_with_a_resting_order(cl) -> tuple[ProtoClient, int]:
    """alice's new session with cancel-on-disconnect (any disconnect, 500 ms) and one resting
    buy, acknowledged: (its connection, its session id)."""
    tick, mark = SYMBOLS[1]
    sid = next(_sids)
    c = ProtoClient(*cl["gw"], timeout=60)
    c.send(1, sid, 1, 1, 10_000, 500, 2, 0, b"alice", cl["users"]["alice"].encode())
    m = c.recv(skip=(5, 6))
    assert m.template == 2, m
    c.send(100, 1, 0, next(_clordids), (mark - 1500) * tick, 1, 1, 2, b"1", b"2", b"1", 0)
    m = c.recv(skip=(5, 6))
    assert m.template == 200 and m.raw[12 + 104:12 + 105] == b"0", m   # New
    return c, sid


def resumes_with_the_cancel(cl, sid: int) -> None:
    """The session's cancel-on-disconnect cancelled its order (server SeqNo 2, reason 2), and
    the session resumes at cl's gateway with the cancel replayed (PossDup)."""
    # (a Logon within the 500 ms grace would disarm it, as PROTOCOL.md §4.10 says)
    wait_until(lambda: len(journal(cl).get(sid, {})) >= 2, 120, "the cancel on disconnect")
    s = Session(cl, "alice", sid, 2)
    s.last_seen, s.next_seq = 1, 2
    ack = s.connect(deadline_s=90)
    assert ack[2] == 3, ack                       # the cancel: server SeqNo 2
    (possdup, raw, replayed), = s.got[2]
    assert raw[6:8] == (200).to_bytes(2, "little") and raw[12 + 104:12 + 105] == b"4"
    assert possdup and replayed and raw[12 + 109] == 2   # reason 2: cancel on disconnect
    s.close()
