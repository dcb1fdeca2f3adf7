"""LocalCore: the order path in one process (gateway/local_core.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import struct

from gateway.local_core import LocalCore
from tests.tradingvenue import two_specs
from tradingengine import codec as c

NOS = struct.Struct("<QQQqQIIcccB")
ER = struct.Struct("<QQQQQQqQqQQQIIcccccBBB")
E8 = 10**8
TICK = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


def make(n_shards: int):
    specs = [dataclasses.replace(s, tick=TICK) for s in two_specs()]
    core = LocalCore(specs, n_shards=n_shards, clock=Clock())
    seen: list[tuple[int, int, int, bytes]] = []
    core.subscribe(lambda shard, seq, ts, payload: seen.append((shard, seq, ts, payload)))
    asyncio.run(core.start())
    for account in (1, 2):
        core.operator(core.shard_of(account), c.DEPOSIT, c.transfer(account, account, 10**12))
    core.oracle(c.MARK_PRICE, c.mark_price(1, 10_000))
    return core, seen


def session_ers(seen, user):
    out = []
    for _shard, _seq, _ts, payload in seen:
        for e in c.decode_events(payload):
            if e[0] == c.SESSION_MESSAGE and e[1] == user and e[3] == 200:
                out.append(ER.unpack(e[4]))     # PROTOCOL.md's own format
    return out


def logon_and_order(core, user, account, clordid, side, price, qty):
    shard = core.shard_of(account)
    asyncio.run(core.send(shard, c.SESSION_LOGON, c.session_logon(user, 1, user, account)))
    block = NOS.pack(1, 0, clordid, price, qty, 1, 0, side, b"2", b"1", 0)
    asyncio.run(core.send(shard, c.CLIENT_MESSAGE, c.client_message(user, 1, 100, block)))


def check(core, n_shards):
    assert [core.depth(n) for n in range(n_shards)] == [0] * n_shards
    for te in core.shards:
        te.check_invariants()           # the audit included


def test_a_new_order_crosses_a_resting_order_and_both_sides_get_their_reports():
    core, seen = make(1)
    logon_and_order(core, 7, 1, 11, b"2", 100 * E8, 5)
    logon_and_order(core, 8, 2, 22, b"1", 101 * E8, 3)
    maker, taker = session_ers(seen, 7), session_ers(seen, 8)
    assert [(e[14], e[15]) for e in maker] == [(b"0", b"0"), (b"F", b"1")]
    assert [(e[14], e[15]) for e in taker] == [(b"0", b"0"), (b"F", b"2")]
    assert maker[1][8:10] == (100 * E8, 3) and taker[1][8:10] == (100 * E8, 3)
    assert (maker[1][20], taker[1][20]) == (1, 2)
    assert [e[0] for e in taker] == [1, 2]
    te = core.shards[0]
    assert te.accounts[1].positions[1].size == -3 and te.accounts[2].positions[1].size == 3
    # out.te.0 in order, one record per input record
    assert [s[1] for s in seen] == list(range(1, len(seen) + 1))
    check(core, 1)


def test_a_trade_across_two_shards_reaches_both():
    core, seen = make(2)
    logon_and_order(core, 7, 1, 11, b"2", 100 * E8, 5)      # account 1: shard 1
    logon_and_order(core, 8, 2, 22, b"1", 100 * E8, 4)      # account 2: shard 0
    maker, taker = session_ers(seen, 7), session_ers(seen, 8)
    assert maker[-1][14:16] == (b"F", b"1") and taker[-1][14:16] == (b"F", b"2")
    assert {s[0] for s in seen if any(u == 7 for u, *_ in c.session_messages(s[3]))} == {1}
    s0, s1 = core.shards
    assert s1.accounts[1].positions[1].size == -4 and s0.accounts[2].positions[1].size == 4
    assert s0.clearing.positions[1].size == -4 and s1.clearing.positions[1].size == 4
    for n in (0, 1):
        assert [s[1] for s in seen if s[0] == n] == list(range(1, core.te_seq[n] + 1))
    check(core, 2)


def test_tick_fires_cancel_on_disconnect_through_the_crossengine():
    core, seen = make(1)
    asyncio.run(core.send(0, c.SESSION_LOGON, c.session_logon(7, 1, 5, 1, cod_mode=2,
                                                              cod_timeout_ms=100)))
    block = NOS.pack(1, 0, 11, 100 * E8, 5, 1, 0, b"2", b"2", b"1", 0)
    asyncio.run(core.send(0, c.CLIENT_MESSAGE, c.client_message(7, 1, 100, block)))
    asyncio.run(core.send(0, c.SESSION_END, c.session_end(7, 1, 5, c.END_DISCONNECT)))
    core.tick(core.ts_ns + 200_000_000)
    assert session_ers(seen, 7)[-1][14] == b"4" and session_ers(seen, 7)[-1][19] == 2
    assert not core.shards[0].orders and len(core.ces[1]) == 0
    asyncio.run(core.close())
