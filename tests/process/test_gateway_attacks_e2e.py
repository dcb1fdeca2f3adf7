"""A hostile client against `seqex up` (the default topology, real processes): crafted
order-entry messages (a SeqNo of 2^64-1, an unknown template, prices and quantities at the
limits of their types, another user's account, a broken frame) get their rejects, and the
exchange goes on: the same user trades on a new session, another user's orders cross."""
from __future__ import annotations

import pytest

from deploy.procs import Group
from mq.control import wait_until
from tests.process.test_cli import seqex
from tests.process.test_trade_on_it import free_block_below_ephemeral
from tests.protoclient import ENCODING, PREFIX, ProtoClient, nos

pytest.importorskip("gateway.server", reason="the gateway process (branch gateway)")

U64 = (1 << 64) - 1
E8 = 10**8


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
        assert up.alive, up.log()
