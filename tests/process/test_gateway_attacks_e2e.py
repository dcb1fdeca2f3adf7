"""A hostile client against `seqex up` (the default topology, real processes): crafted
order-entry messages (a SeqNo of 2^64-1, an unknown template, prices and quantities at the
limits of their types, another user's account, a broken frame) get their rejects, and the
exchange goes on: the same user trades on a new session, another user's orders cross. Floods of
wrong-password feed Logons and of idle connections (to the gateway and to a replica's metrics
port) held open while clients trade keep no one out."""
from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest

from deploy.procs import Group
from mq.control import wait_until
from tests.process.test_cli import seqex
from tests.process.test_cluster import pids_of
from tests.process.test_trade_on_it import free_block_below_ephemeral
from tests.protoclient import ENCODING, PREFIX, ProtoClient, nos

pytest.importorskip("gateway.server", reason="the gateway process (branch gateway)")

U64 = (1 << 64) - 1
E8 = 10**8


def md_logon(password: str) -> bytes:
    """PROTOCOL.md §6: the feed's Logon (SessionID 0), as alice."""
    block = struct.pack("<QQQIHBB16s32s", 0, 0, 0, 1000, 0, 0, 0, b"alice", password.encode())
    return PREFIX.pack(12 + len(block), ENCODING, len(block), 1, 1, 1) + block


def feed_logon(host: str, port: int, password: str) -> int:
    """The template of the feed's answer to alice's Logon (2 LogonAck, 3 LogonReject, 4)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(md_logon(password))
        head = b""
        while len(head) < 12:
            chunk = sock.recv(12 - len(head))
            assert chunk, "the feed closed the connection"
            head += chunk
        return PREFIX.unpack(head)[3]


def answer(cl):
    return cl.until(lambda m: m.template in (10, 200, 201, 202, 203, 4))[-1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crafted_messages_do_not_stop_the_exchange(tmp_path):
    from deploy.supervisor import read_state
    from deploy.trading import demo_passwords
    data = str(tmp_path / "data")
    with Group(str(tmp_path / "logs")) as group:
        up = group.spawn("up", ["up", "--data", data, "--base-port",
                                str(free_block_below_ephemeral()), "--ready-timeout", "180"])
        wait_until(lambda: "demo: bob: deposit 4" in up.log() or not up.alive, 300,
                   "seqex up and the demo deposits")
        assert up.alive, up.log()
        topo, _pid = read_state(data)
        host, _, port = topo.trading["gateway"].rpartition(":")
        pw = demo_passwords(data)
        sec = topo.trading["instruments"][0]["security_id"]
        price = 50_000 * E8

        cl = ProtoClient(host, int(port), timeout=30)
        try:
            assert cl.logon("alice", pw["alice"], session=901).template == 2
            cl.send(*nos(1, 1, -(1 << 63), 1, sec, b"1", account=2))       # null price, limit
            assert answer(cl).template == 200
            cl.send(*nos(2, 2, price, U64, sec, b"1", account=2))          # qty 2^64-1
            assert answer(cl).template == 200
            cl.send(*nos(3, 3, price, 1, sec, b"1", account=3))            # bob's account
            r = answer(cl)
            assert r.template == 203 and r.fields[5] == 6
            cl.send_raw(PREFIX.pack(20, ENCODING, 8, 150, 1, 1) + (4).to_bytes(8, "little"))
            r = answer(cl)
            assert r.template == 203 and r.fields[5] == 3
            cl.send(*nos(U64, 5, price, 1, sec, b"1", account=2))          # SeqNo 2^64-1
            r = answer(cl)
            assert r.template == 4 and r.fields[0] == 2                      # Logout(2)
        finally:
            cl.close()
        # the session resumes with nothing of SeqNo 2^64-1 consumed; a broken frame is
        # Logout(2) too; the exchange still trades
        cl = ProtoClient(host, int(port), timeout=30)
        try:
            ack = cl.logon("alice", pw["alice"], session=901)
            assert ack.template == 2 and ack.fields[1] == 5, ack
            cl.send_raw(PREFIX.pack(64, ENCODING, 53, 100, 1, 1) + bytes(52))  # broken frame
            r = answer(cl)
            assert r.template == 4 and r.fields[0] == 2
        finally:
            cl.close()
        out = seqex("client", "--data", data, "--user", "alice", "buy", "BTCUSDT", "0.01", "@",
                    "50000", timeout=120)
        assert out.returncode == 0 and "accepted, resting" in out.stdout, out
        out = seqex("client", "--data", data, "--user", "bob", "sell", "BTCUSDT", "0.004",
                    timeout=120)
        assert out.returncode == 0 and "filled" in out.stdout and \
            out.stdout.rstrip().endswith("(taker), done"), out

        # The binary market-data feed: 600 wrong-password Logons from one address, held open
        # while orders trade, do not keep out a user who logged on to the feed before (they
        # used to: every valid Logon waited behind the flood's scrypt checks until its logon
        # timer ran out); gateway/auth.py, docs/security.md.
        feed_host, _, feed_port = topo.marketdata["feed"].rpartition(":")
        assert feed_logon(feed_host, int(feed_port), pw["alice"]) == 2       # LogonAck
        flood = []
        try:
            for n in range(600):
                sock = socket.create_connection((feed_host, int(feed_port)), timeout=30)
                sock.sendall(md_logon(f"wrong{n}"))
                flood.append(sock)
            out = seqex("client", "--data", data, "--user", "alice", "buy", "BTCUSDT",
                        "0.002", "@", "49000", timeout=120)
            assert out.returncode == 0 and "accepted, resting" in out.stdout, out
            t0 = time.monotonic()
            assert feed_logon(feed_host, int(feed_port), pw["alice"]) == 2
            assert time.monotonic() - t0 < 3, "alice's Logon waited behind the flood"
        finally:
            for sock in flood:
                sock.close()

        # Idle connections: 1,100 TCP connections to the gateway (its max_connections is
        # 1,000) and 200 to the metrics port of a hot TradingEngine replica, none sending a
        # byte, held open while alice trades: the gateway makes room for her, the replica
        # keeps at most 8 handler threads and still answers scrapes (docs/security.md).
        import json

        from deploy import metrics
        doc = json.loads(seqex("status", "--data", data, "--json").stdout)
        hot = next(p for p in doc["processes"] if p["process"] == "te0.hot0")
        m_host, _, m_port = hot["metrics"].rpartition(":")

        def threads(pid: int) -> int:
            with open(f"/proc/{pid}/status") as f:
                return int(next(x for x in f if x.startswith("Threads:")).split()[1])

        base_threads = threads(hot["pid"])
        idle = []
        try:
            for _ in range(1_100):
                idle.append(socket.create_connection((host, int(port)), timeout=30))
            for _ in range(200):
                idle.append(socket.create_connection((m_host, int(m_port)), timeout=30))
            out = seqex("client", "--data", data, "--user", "alice", "buy", "BTCUSDT",
                        "0.002", "@", "48000", timeout=120)
            assert out.returncode == 0 and "accepted, resting" in out.stdout, out
            got = metrics.scrape(hot["metrics"], timeout_s=10.0)
            assert got[("seqex_up", (("process", "te0.hot0"), ("role", "replica")))] == 1
            wait_until(lambda: threads(hot["pid"]) <= base_threads + metrics.METRICS_MAX_OPEN,
                       30, "the replica's metrics threads back to at most 8 more")
        finally:
            for sock in idle:
                sock.close()

        # `seqex keys` on this cluster (started with --base-port) makes its policy for the
        # cluster's own ports: the tools still reach it, and a killed replica restarts with
        # its keys (the policy of the default ports locked both out)
        assert seqex("keys", "--data", data).returncode == 0
        assert seqex("status", "--data", data).returncode == 0
        warm = [p for p in pids_of(data) if "--key te0.warm0 " in
                open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()]
        assert len(warm) == 1
        os.kill(warm[0], signal.SIGKILL)
        wait_until(lambda: "restarting te0.warm0" in up.log(), 60, "te0.warm0's restart")
        wait_until(lambda: "te0.warm0" in (st := seqex("status", "--data", data)).stdout
                   and st.returncode == 0 and "DOWN" not in st.stdout, 120,
                   "every process up again after te0.warm0's restart")
        assert "restarting in" not in up.log().split("restarting te0.warm0")[-1], up.log()
        assert up.alive, up.log()
