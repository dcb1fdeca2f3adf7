"""The order path over TCP in one process: a client written from PROTOCOL.md alone
(tests/protoclient.py) → the gateway → LocalCore (real TradingEngine shards and CrossEngines).

What a trading firm's own client sees: logon, orders that cross, the execution reports of
both sides with PROTOCOL.md's bytes, and PROTOCOL.md §4's reconnect walkthrough.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from gateway import accounts as acc
from gateway.local_core import LocalCore
from gateway.server import Config, Gateway
from tests.protoclient import ProtoClient, nos
from tests.tradingvenue import two_specs
from tradingengine import codec as c

E8 = 10**8
TICK = 1_000_000          # 0.01 per tick: price 100.00 is 10,000 ticks


class Cluster:
    """A gateway on 127.0.0.1 over a LocalCore, on an event loop of its own thread."""

    def __init__(self, tmp_path, n_shards: int = 2):
        specs = [dataclasses.replace(s, tick=TICK) for s in two_specs()]
        self.core = LocalCore(specs, n_shards=n_shards)
        path = tmp_path / "accounts.json"
        # alice: accounts 2, 4 (shard 0); bob: 3, 5 (shard 1) — a cheap scrypt for tests
        acc.add_user(path, "alice", "pw-a", [2, 4], n_shards=n_shards, n=1024)
        acc.add_user(path, "bob", "pw-b", [3, 5], n_shards=n_shards, n=1024)
        self.users = acc.load(path, n_shards)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gw = Gateway(self.core, self.users, Config(heartbeat_ms=1000))
        self.host, self.port = self.call(self.gw.start("127.0.0.1", 0))
        for account in (2, 3, 4, 5):
            self.call_sync(self.core.operator, self.core.shard_of(account), c.DEPOSIT,
                           c.transfer(account, account, 10**13))
        self.call_sync(self.core.oracle, c.MARK_PRICE, c.mark_price(1, 10_000))
        self.call_sync(self.core.oracle, c.MARK_PRICE, c.mark_price(2, 50_000))

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_sync(self, fn, *args):
        """fn(*args) on the loop's thread, where the core applies records (reading the
        engines from another thread races with them)."""
        async def run():
            return fn(*args)
        return self.call(run())

    def client(self) -> ProtoClient:
        return ProtoClient(self.host, self.port)

    def close(self) -> None:
        try:
            self.call(self.gw.close())
            self.call(self.core.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def cluster(tmp_path):
    cl = Cluster(tmp_path)
    yield cl
    cl.close()


def is_er(exec_type: bytes, clordid: int | None = None):
    def pred(m):
        if m.template != 200:
            return False
        er = m.named()
        return er["exec_type"] == exec_type and (clordid is None or er["clordid"] == clordid)
    return pred


def test_two_clients_trade_and_both_get_their_reports(cluster):
    alice, bob = cluster.client(), cluster.client()
    try:
        ack = alice.logon("alice", "pw-a", session=11)
        assert ack.template == 2, ack
        assert ack.fields[1:3] == (1, 1) and ack.fields[7] & 8     # new session
        assert bob.logon("bob", "pw-b", session=21).template == 2
        # alice rests a buy of 5 lots at 100.00 on account 2; bob sells 3 into it (account 3)
        alice.send(*nos(1, 1001, 100 * E8, 5, 1, b"1", account=2))
        new = alice.until(is_er(b"0", 1001))[-1].named()
        assert (new["seq"], new["leaves_qty"], new["price"], new["account"]) == (1, 5, 100 * E8, 2)
        bob.send(*nos(1, 2001, 100 * E8, 3, 1, b"2", account=3))
        fill_b = bob.until(is_er(b"F", 2001))[-1].named()
        assert (fill_b["last_px"], fill_b["last_qty"], fill_b["leaves_qty"]) == (100 * E8, 3, 0)
        assert fill_b["liquidity"] == 2 and fill_b["ord_status"] == b"2"
        fill_a = alice.until(is_er(b"F", 1001))[-1].named()
        assert (fill_a["last_qty"], fill_a["cum_qty"], fill_a["leaves_qty"]) == (3, 3, 2)
        assert fill_a["liquidity"] == 1 and fill_a["ord_status"] == b"1"
        assert fill_a["seq"] == 2                         # the session's second server message
        # both shards balance, the audit included
        cluster.call_sync(lambda: [te.check_invariants() for te in cluster.core.shards])
    finally:
        alice.close()
        bob.close()


def test_wrong_password_is_rejected_before_any_session_state(cluster):
    cl = cluster.client()
    try:
        rej = cl.logon("alice", "wrong", session=11)
        assert rej.template == 3 and rej.fields[1] == 1
    finally:
        cl.close()
    # the session was never created: a right logon later finds a new session
    cl = cluster.client()
    try:
        ack = cl.logon("alice", "pw-a", session=11)
        assert ack.template == 2 and ack.fields[7] & 8
    finally:
        cl.close()


def test_protocol_reconnect_walkthrough(cluster):
    """PROTOCOL.md §4: NOS 1..4 applied, NOS 5 never sent on the first connection; the client
    saw server messages up to 2 of the 4 acks; on Logon(NextExpectedSeqNo=3) the gateway says
    NextExpectedSeqNo=5 and replays 3..4 with PossDup; NOS 5 resent is applied once."""
    cl = cluster.client()
    try:
        assert cl.logon("alice", "pw-a", session=77).template == 2
        for i in range(1, 5):
            cl.send(*nos(i, 500 + i, (90 + i) * E8, 1, 1, b"1", account=2))
        acks = cl.until(is_er(b"0", 504))
        assert [m.named()["seq"] for m in acks if m.template == 200] == [1, 2, 3, 4]
    finally:
        cl.close()
    cl = cluster.client()
    try:
        ack = cl.logon("alice", "pw-a", session=77, next_expected=3, next_seq=5)
        assert ack.template == 2, ack
        assert ack.fields[1] == 5 and ack.fields[2] == 5 and not ack.fields[7] & 8
        rt = cl.recv()
        assert rt.template == 8 and rt.fields == (3, 2)
        replay = [cl.recv(), cl.recv()]
        assert [m.named()["seq"] for m in replay] == [3, 4]
        assert all(m.named()["flags"] & 1 for m in replay)           # PossDup
        assert [m.named()["clordid"] for m in replay] == [503, 504]
        cl.send(*nos(5, 505, 95 * E8, 1, 1, b"1", account=2, flags=1))
        live = cl.until(is_er(b"0", 505))[-1].named()
        assert live["seq"] == 5 and not live["flags"] & 1
        # a duplicate resend of 5 is dropped silently: the next message answers NOS 6
        cl.send(*nos(5, 505, 95 * E8, 1, 1, b"1", account=2, flags=1))
        cl.send(*nos(6, 506, 96 * E8, 1, 1, b"1", account=2))
        nxt = cl.until(lambda m: m.template in (200, 10, 203))[-1].named()
        assert nxt["seq"] == 6 and nxt["clordid"] == 506 and nxt["exec_type"] == b"0"
    finally:
        cl.close()
