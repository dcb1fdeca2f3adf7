"""The order-entry gateway against the letter of PROTOCOL.md, second round: each test drives a
real Gateway over 127.0.0.1 with LocalCore behind it (real TradingEngine and CrossEngines, in
the test's own event loop), from a client whose frames are packed with PROTOCOL.md §2's
`struct` formats copied by hand (no gateway.wire on the client side).

* §4.7: a Retransmission introduces its batch: the Count messages that follow it are the
  replayed ones; live messages may come between batches, never inside one.
* §4.5 / §4.9: after LogonAck come the Retransmission and the replay, then live messages; a
  Logout the client sent meanwhile is answered after the replay, and the answer is the last
  thing the gateway sends.
* §4.3: the duplicate-ClOrdID guard is per session: two sessions on one account may each use
  a ClOrdID, and a cancel by OrigClOrdID finds the session's own order.
* §4.9 from the SDK's side: gateway/client.py's close() waits for the Logout's answer; and
  on the market-data feed, the client's Logout is answered and the client closes, and the
  feed's shutdown Logout(6) waits for the client's answer, which gateway/mdclient.py gives.
* Held as they are (they conform; these pin them end to end): §4's reconnect walkthrough
  number for number, §4.10's cancel-on-disconnect modes, grace period and disarming, and
  §4.3 / §4.12's SeqNo rules (rejects consume, duplicates dropped, NotApplied on a gap).
No timing is asserted; every wait is a condition with a generous deadline."""
from __future__ import annotations

import asyncio
import dataclasses
import struct

import pytest

from gateway import server as gs
from gateway.accounts import Accounts, make_user
from gateway.local_core import LocalCore
from tests.tradingvenue import two_specs
from tests.unit.test_gateway_conformance import run, wait_for
from tradingengine import codec as tc

DEADLINE_S = 30
E8 = 10**8
TICK = 1_000_000                    # 0.01
PREFIX = struct.Struct("<HHHHHH")   # frameLength, encodingType 0xEB50, blockLength, templateId,
#                                     schemaId 1, version 1
BLOCKS = {1: "<QQQIHBB16s32s", 2: "<QQQIIHBBI", 3: "<QB32s", 4: "<B32s", 5: "<QQQ", 6: "<Q",
          7: "<QI", 8: "<QI", 9: "<QIB", 10: "<QQI", 100: "<QQQqQIIcccB",
          101: "<QQQQQIcB", 200: "<QQQQQQqQqQQQIIcccccBBB", 201: "<QQQQQIccBB",
          202: "<QQQIIccBB", 203: "<QQQQHBB32s"}
SEQUENCED = (10, 200, 201, 202, 203)
FLAGS_AT = {200: 21, 201: 9, 202: 8, 203: 6}     # index of Flags among the unpacked fields


NULL = (1 << 64) - 1


def frame(template: int, *fields) -> bytes:
    block = struct.pack(BLOCKS[template], *fields)
    return PREFIX.pack(12 + len(block), 0xEB50, len(block), template, 1, 1) + block


def nos(seq: int, clordid: int, price: int = 100 * E8, account: int = 2) -> bytes:
    """Buy 1 lot of SecurityID 1, Limit GTC."""
    return frame(100, seq, 0, clordid, price, 1, 1, account, b"1", b"2", b"1", 0)


def unknown(seq: int, template: int = 150) -> bytes:
    """A well-framed request of a template the gateway does not know (§4.12): its first 8
    bytes are its SeqNo."""
    return PREFIX.pack(20, 0xEB50, 8, template, 1, 1) + struct.pack("<Q", seq)


class Peer:
    def __init__(self, r, w):
        self.r, self.w, self.buf = r, w, b""

    @classmethod
    async def connect(cls, port: int) -> Peer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def logon_frame(self, session_id: int, next_expected: int = 0, next_seq: int = 1,
                    cod: int = 0, cod_ms: int = 0) -> bytes:
        return frame(1, session_id, next_expected, next_seq, 30_000, cod_ms, cod, 0, b"alice",
                     b"pw-a")

    async def next(self, heartbeats: bool = False):
        """(template, fields) of the next frame but Heartbeats (unless asked), or None at EOF
        / reset."""
        while True:
            if len(self.buf) >= 12:
                n, enc, _bl, tid, schema, _ver = PREFIX.unpack_from(self.buf)
                assert enc == 0xEB50 and schema == 1
                if len(self.buf) >= n:
                    raw, self.buf = self.buf[:n], self.buf[n:]
                    fmt = BLOCKS.get(tid)
                    if tid == 5 and not heartbeats:
                        continue
                    return tid, struct.unpack_from(fmt, raw, 12) if fmt else ()
            try:
                chunk = await asyncio.wait_for(self.r.read(1 << 16), DEADLINE_S)
            except ConnectionError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    async def until(self, pred) -> list:
        got = []
        while True:
            m = await self.next()
            assert m is not None, f"closed after {[g[0] for g in got]}"
            got.append(m)
            if pred(m):
                return got


def seq_of(m) -> int:
    return m[1][0]


def possdup(m) -> bool:
    return m[0] in FLAGS_AT and bool(m[1][FLAGS_AT[m[0]]] & 1)


async def venue(cfg: gs.Config | None = None, clock=None):
    """A Gateway on 127.0.0.1 in front of a LocalCore of one shard; alice trades accounts 2
    and 4 (funded), SecurityID 1 is marked at 100.00."""
    specs = [dataclasses.replace(s, tick=TICK) for s in two_specs()]
    core = LocalCore(specs, n_shards=1, **({"clock": clock} if clock else {}))
    alice = make_user("alice", 1, "pw-a", [2, 4], n=1024)
    gw = gs.Gateway(core, Accounts({"alice": alice}), cfg or gs.Config())
    _host, port = await gw.start()
    for account in (2, 4):
        core.operator(0, tc.DEPOSIT, tc.transfer(account, account, 10**13))
    core.oracle(tc.MARK_PRICE, tc.mark_price(1, 10_000))
    return gw, core, port


async def session_with(port: int, session_id: int, n: int) -> None:
    """Log on, have the server issue n messages (BusinessReject 3 to unknown templates: no
    round trip through a CrossEngine), log out, close."""
    c = await Peer.connect(port)
    c.w.write(c.logon_frame(session_id))
    assert (await c.next())[0] == 2
    c.w.write(b"".join(unknown(i) for i in range(1, n + 1)))
    await c.until(lambda m: m[0] == 203 and seq_of(m) == n)
    c.w.write(frame(4, 0, b""))
    await c.until(lambda m: m[0] == 4)
    c.w.close()


def batches(got: list) -> tuple[list, list]:
    """Split what followed a RetransmitRequest into its batches [(from, count, [SeqNo...])]
    (each Retransmission and the `count` sequenced messages right behind it, which must all
    be PossDup) and the live SeqNos outside them."""
    out, live, i = [], [], 0
    while i < len(got):
        tid, fields = got[i]
        i += 1
        if tid == 8:
            first, count = fields
            replayed = [m for m in got[i:i + count]]
            assert all(m[0] in SEQUENCED and possdup(m) for m in replayed), \
                f"batch ({first}, {count}) holds {[(m[0], possdup(m)) for m in replayed]}"
            out.append((first, count, [seq_of(m) for m in replayed]))
            i += count
        elif tid in SEQUENCED:
            assert not possdup(got[i - 1])
            live.append(seq_of(got[i - 1]))
    return out, live


@pytest.mark.parametrize("batch", [1000, 100])
def test_live_messages_never_come_inside_a_retransmitted_batch(batch):
    """§4.7: "the server paces replay and may interleave live messages (each batch is
    introduced by Retransmission, as in FIXP)". A client reads Retransmission(from, count)
    and takes the next `count` sequenced messages as the replay, so a live message may come
    between batches but not inside one (a NotApplied has no PossDup flag to tell them
    apart). 300 messages replayed in one batch of up to 1000 or three of 100, while the
    answer to a message sent right behind the RetransmitRequest goes live."""
    async def main():
        gw, _core, port = await venue(gs.Config(retransmit_batch=batch))
        try:
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(5))
            assert (await c.next())[0] == 2
            n = 300
            c.w.write(b"".join(unknown(i) for i in range(1, n + 1)))
            await c.until(lambda m: m[0] == 203 and seq_of(m) == n)
            c.w.write(frame(7, 1, n) + unknown(n + 1))
            got = await c.until(lambda m: m[0] in SEQUENCED and seq_of(m) == n)
            if not any(m[0] in SEQUENCED and seq_of(m) == n + 1 for m in got):
                got += await c.until(lambda m: m[0] in SEQUENCED and seq_of(m) == n + 1)
            assert got[0][0] == 8
            done, live = batches(got)
            step = min(batch, n)
            assert [(f, k) for f, k, _s in done] == [(a, step) for a in range(1, n + 1, step)]
            assert [s for _f, _k, seqs in done for s in seqs] == list(range(1, n + 1))
            assert live == [n + 1]
        finally:
            await gw.close()
    run(main())


def test_a_logout_sent_behind_the_logon_is_answered_after_the_replay():
    """§4.5: LogonAck, then Retransmission(n, H - n + 1) and the replay, then live; §4.9: the
    other side answers Logout. A client that sends Logout right behind its Logon (sync and
    leave) gets LogonAck, the whole replay, then Logout(0), and nothing after the Logout."""
    async def main():
        gw, _core, port = await venue()
        try:
            n = 5
            await session_with(port, 6, n)
            await wait_for(lambda: not gw.conns)
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(6, next_expected=1) + frame(4, 0, b"bye"))
            got = []
            while (m := await c.next()) is not None:
                got.append(m)
                if m[0] == 4:
                    c.w.close()          # the initiator closes once answered
            assert [m[0] for m in got] == [2, 8] + [203] * n + [4], [m[0] for m in got]
            assert got[1][1] == (1, n) and got[-1][1][0] == 0
            assert [seq_of(m) for m in got[2:-1]] == list(range(1, n + 1))
            assert all(possdup(m) for m in got[2:-1])
        finally:
            await gw.close()
    run(main())


def test_heartbeats_answering_test_requests_wait_for_the_logon_replay():
    """§4.5: after LogonAck, the Retransmission and the replay, and "nothing interleaves". A
    client that sends TestRequests right behind its Logon gets each Heartbeat (echoing its
    TestReqID) after the replay: they were written at once, between LogonAck and the
    Retransmission and inside the replay, which a client counting the frames after the
    Retransmission misreads."""
    async def main():
        gw, _core, port = await venue()
        try:
            n, k = 600, 40                          # the replay goes out in batches of 256
            await session_with(port, 6, n)
            await wait_for(lambda: not gw.conns)
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(6, next_expected=1)
                      + b"".join(frame(6, 1000 + i) for i in range(k)))
            got = []
            while len([m for m in got if m[0] == 5 and m[1][0]]) < k:
                m = await c.next(heartbeats=True)
                assert m is not None
                got.append(m)
            tids = [m[0] for m in got if m[0] != 5 or m[1][0]]   # idle Heartbeats aside
            assert tids == [2, 8] + [203] * n + [5] * k, tids
            assert [m[1][0] for m in got if m[0] == 5 and m[1][0]] == \
                list(range(1000, 1000 + k))
            assert {m[1][1] for m in got if m[0] == 5} == {n + 1}   # NextSeqNo: H + 1
        finally:
            await gw.close()
    run(main())


def test_the_duplicate_clordid_guard_is_per_session():
    """Two sessions of alice on account 2 each start their ClOrdIDs at 1 (as §4.1's fresh
    SessionID per day invites): the second session's ClOrdID 1 is new in that session and
    must be accepted while the first session's order 1 rests."""
    async def main():
        gw, _core, port = await venue()
        try:
            a = await Peer.connect(port)
            a.w.write(a.logon_frame(7))
            assert (await a.next())[0] == 2
            a.w.write(nos(1, 1))
            er = (await a.until(lambda m: m[0] == 200))[-1][1]
            assert er[14] == b"0"                          # ExecType New: it rests
            b = await Peer.connect(port)
            b.w.write(b.logon_frame(8))
            assert (await b.next())[0] == 2
            b.w.write(nos(1, 1))
            er = (await b.until(lambda m: m[0] == 200))[-1][1]
            assert (er[14], er[19]) == (b"0", 0), (er[14], er[19])   # not '8' reason 6
            b_order = er[4]
            b.w.write(nos(2, 1))                           # reused in session b: refused
            er = (await b.until(lambda m: m[0] == 200))[-1][1]
            assert (er[14], er[19]) == (b"8", 6)
            # a cancel by OrigClOrdID 1 in session b cancels b's order, not a's
            b.w.write(frame(101, 3, 0, 5, 1, NULL, 1, b"1", 0))
            er = (await b.until(lambda m: m[0] == 200))[-1][1]
            assert er[14] == b"4" and er[4] == b_order
            a.w.write(frame(101, 2, 0, 6, 1, NULL, 1, b"1", 0))
            er = (await a.until(lambda m: m[0] == 200))[-1][1]
            assert er[14] == b"4" and er[4] != b_order
        finally:
            await gw.close()
    run(main())


def nos_flags(seq: int, clordid: int, tif: bytes, flags: int = 0) -> bytes:
    """Buy 1 lot of SecurityID 1 at 100.00 on account 2."""
    return frame(100, seq, 0, clordid, 100 * E8, 1, 1, 2, b"1", b"2", tif, flags)


def test_the_reconnect_walkthrough_of_section_4_as_written():
    """§4's walkthrough, number for number: NOS 1..4 applied, server messages 1..6 issued
    (the first two orders are IOC with nothing to meet: New and Expired each; 6 is the ack of
    NOS 4), the client saw 1..5 and never sent NOS 5. Logon(S, 6, 6) → LogonAck(5, 7) →
    Retransmission(6, 1), ExecutionReport #6 PossDup → NOS 5 resent → ExecutionReport #7."""
    async def main():
        gw, _core, port = await venue()
        try:
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(9))
            assert (await c.next())[0] == 2
            c.w.write(nos_flags(1, 1, b"3") + nos_flags(2, 2, b"3") + nos_flags(3, 3, b"1")
                      + nos_flags(4, 4, b"1"))
            got = await c.until(lambda m: m[0] == 200 and seq_of(m) == 6)
            assert [(seq_of(m), m[1][2], m[1][14]) for m in got] == [
                (1, 1, b"0"), (2, 1, b"C"), (3, 2, b"0"), (4, 2, b"C"), (5, 3, b"0"),
                (6, 4, b"0")]
            c.w.close()
            await wait_for(lambda: not gw.conns)
            d = await Peer.connect(port)
            d.w.write(d.logon_frame(9, next_expected=6, next_seq=6))
            ack = await d.next()
            assert ack[0] == 2 and ack[1][:3] == (9, 5, 7) and not ack[1][7] & 8
            assert await d.next() == (8, (6, 1))
            er = await d.next()
            assert (er[0], seq_of(er), er[1][2], possdup(er)) == (200, 6, 4, True)
            d.w.write(nos_flags(5, 5, b"1", flags=1))
            er = await d.next()
            assert (er[0], seq_of(er), er[1][2], er[1][14], possdup(er)) == \
                (200, 7, 5, b"0", False)
        finally:
            await gw.close()
    run(main())


@pytest.mark.parametrize("mode, how, cancelled", [
    (0, "disconnect", False), (1, "disconnect", True), (1, "logout", True),
    (2, "disconnect", True), (2, "logout", False)])
def test_cancel_on_disconnect_modes(mode, how, cancelled):
    """§4.10: 0 off, 1 on disconnect or logout, 2 on unexpected disconnect only, after
    CodTimeoutMs (500 here): nothing before the grace period ends, then ExecutionReport '4'
    reason 2, which the next Logon replays."""
    async def main():
        now = [1_800_000_000 * 10**9]
        gw, core, port = await venue(clock=lambda: now[0])
        try:
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(10, cod=mode, cod_ms=500))
            ack = await c.next()
            assert ack[0] == 2 and ack[1][5:7] == (500, mode)
            c.w.write(nos_flags(1, 1, b"1"))
            assert (await c.next())[0] == 200
            if how == "logout":
                c.w.write(frame(4, 0, b""))
                assert (await c.next())[0] == 4
            c.w.close()
            await wait_for(lambda: not gw.conns and not any(gw.queues))
            now[0] += 499_000_000
            core.tick()
            assert gw.next_server_seq((1, 10)) == 2             # still in the grace period
            now[0] += 2_000_000
            core.tick()
            d = await Peer.connect(port)
            d.w.write(d.logon_frame(10, next_expected=2))
            ack = await d.next()
            assert ack[0] == 2
            if not cancelled:
                assert ack[1][2] == 2                            # nothing issued
                return
            assert ack[1][2] == 3 and await d.next() == (8, (2, 1))
            er = await d.next()
            assert (er[0], er[1][2], er[1][14], er[1][19], possdup(er)) == \
                (200, 1, b"4", 2, True)
        finally:
            await gw.close()
    run(main())


async def cod_venue(cod: int, cod_ms: int):
    """A venue on a clock the test moves (now[0]), and session 11 logged on with
    cancel-on-disconnect mode cod and grace cod_ms, its NOS 1 acknowledged."""
    now = [1_800_000_000 * 10**9]
    gw, core, port = await venue(clock=lambda: now[0])
    try:
        c = await Peer.connect(port)
        c.w.write(c.logon_frame(11, cod=cod, cod_ms=cod_ms))
        assert (await c.next())[0] == 2
        c.w.write(nos_flags(1, 1, b"1"))
        assert (await c.next())[0] == 200
    except BaseException:
        await gw.close()
        raise
    return gw, core, port, c, now


def test_a_logon_within_the_grace_period_disarms_cancel_on_disconnect():
    """§4.10: "a reconnect within the window disarms it"."""
    async def main():
        gw, core, port, c, now = await cod_venue(2, 500)
        try:
            c.w.close()
            await wait_for(lambda: not gw.conns and not any(gw.queues))
            now[0] += 100_000_000
            d = await Peer.connect(port)
            d.w.write(d.logon_frame(11, next_expected=2))
            assert (await d.next())[0] == 2
            now[0] += 10 * 10**9
            core.tick()
            d.w.write(unknown(2))                       # its BusinessReject is the next
            m = await d.next()                          # server message: no cancel came first
            assert (m[0], seq_of(m), m[1][2]) == (203, 2, 2)
        finally:
            await gw.close()
    run(main())


def test_the_sdk_closes_only_once_its_logout_is_answered(tmp_path):
    """§4.9 from the client's side: "Either side sends Logout(reason, text), the other answers
    Logout, the initiator closes." gateway/client.py's close() sends Logout and must read on
    until the answer (here an ExecutionReport comes before it, as live messages may), and
    only then close. A server written from the page (hand-packed frames) checks both."""
    from gateway import client as sdk

    async def main():
        seen = asyncio.get_running_loop().create_future()

        async def server(r, w):
            p = Peer(r, w)
            sid = (await p.until(lambda m: m[0] == 1))[-1][1][0]
            w.write(frame(2, sid, 1, 1, 1000, 1000, 0, 0, 8, 20260101))
            await p.until(lambda m: m[0] == 4)
            w.write(frame(200, 1, 0, 7, (1 << 64) - 1, 1, 1, 50 * E8, 1, -(1 << 63), 0, 1, 0,
                          1, 2, b"0", b"0", b"1", b"2", b"1", 0, 0, 0))
            w.write(frame(4, 0, b"logout"))
            seen.set_result(await p.next())               # the initiator's close: EOF
            w.close()

        srv = await asyncio.start_server(server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = sdk.Client("127.0.0.1", port, "bob", "pw-bob", str(tmp_path / "s.json"),
                       {"BTCUSDT": (1, "0.5", "0.001")}, reconnect=False)
        try:
            await c.connect()
            await c.close()
            eof = await asyncio.wait_for(seen, DEADLINE_S)
        finally:
            srv.close()
            await srv.wait_closed()
        return c, eof
    c, eof = run(main())
    assert eof is None
    assert c.received_upto == 1 and [type(r).__name__ for r in c.queue] == \
        ["ExecutionReport", "Logout"]


def test_sequence_rules_and_rejects_consume_the_seqno():
    """§4.3 and §4.12 end to end: an unknown template 100-199 is BusinessReject(3) with its
    first 8 bytes as RefSeqNo; a field out of range (Side 'X') is ExecutionReport '8'; both
    consume their SeqNo (the next message needs no NotApplied); a duplicate SeqNo is dropped
    silently; a gap gets NotApplied(nextExpected, count) before the message is applied; a
    framing error (schemaId 2) gets Logout(2) and the close."""
    async def main():
        gw, _core, port = await venue()
        try:
            c = await Peer.connect(port)
            c.w.write(c.logon_frame(12))
            assert (await c.next())[0] == 2
            c.w.write(unknown(1, template=199) + frame(100, 2, 0, 2, 100 * E8, 1, 1, 2, b"X",
                                                       b"2", b"1", 0) + nos(3, 3))
            br, rej, new = await c.next(), await c.next(), await c.next()
            assert br[0] == 203 and br[1][:1] + br[1][2:6] == (1, 1, (1 << 64) - 1, 199, 3)
            assert rej[0] == 200 and (seq_of(rej), rej[1][2], rej[1][14]) == (2, 2, b"8")
            assert new[0] == 200 and (seq_of(new), new[1][2], new[1][14]) == (3, 3, b"0")
            c.w.write(nos(3, 33) + nos(6, 6))                # a duplicate, then a gap of 2
            na, er = await c.next(), await c.next()
            assert na == (10, (4, 4, 2))
            assert er[0] == 200 and (seq_of(er), er[1][2]) == (5, 6)
            c.w.write(PREFIX.pack(20, 0xEB50, 8, 6, 2, 1) + bytes(8))
            bye = await c.next()
            assert bye[0] == 4 and bye[1][0] == 2
            assert await c.next() is None
        finally:
            await gw.close()
    run(main())


def test_the_market_data_feed_answers_a_logout_and_lets_the_client_close():
    """§4.9 on the market-data stream (§6: same framing, same Logon): the client's Logout is
    answered Logout(0) and the initiator, the client, closes; the feed does not close first
    (within a window well inside its grace period, nothing more comes, not even EOF)."""
    from gateway.marketdata.publisher import Publisher
    conf = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
            "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}

    async def main():
        pub = Publisher(conf)
        await pub.start(follow=False)
        try:
            p = await Peer.connect(pub.feed_port)
            p.w.write(frame(1, 0, 0, 0, 30_000, 0, 0, 0, b"md", b""))
            assert (await p.next())[0] == 2
            p.w.write(frame(4, 0, b"bye"))
            while (m := await p.next()) is not None and m[0] != 4:
                pass
            assert m is not None and m[1][0] == 0
            with pytest.raises(asyncio.TimeoutError):        # still open: we close
                await asyncio.wait_for(p.next(), 0.3)
            p.w.write_eof()                          # our close; the feed closes too
            assert await p.next() is None
            p.w.close()
        finally:
            await pub.close()
    run(main())


def test_the_market_data_feeds_shutdown_logout_waits_for_the_answer():
    """§4.9 the other way round on the market-data stream: at shutdown the feed sends
    Logout(6), the client answers, the feed (the initiator) closes; until the answer (or the
    grace period, long here) the connection stays open."""
    from gateway.marketdata.publisher import Publisher
    conf = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
            "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}

    async def main():
        pub = Publisher(conf)
        await pub.start(follow=False)
        pub.binary.shutdown_grace_s = DEADLINE_S
        closing = None
        try:
            p = await Peer.connect(pub.feed_port)
            p.w.write(frame(1, 0, 0, 0, 30_000, 0, 0, 0, b"md", b""))
            assert (await p.next())[0] == 2
            closing = asyncio.ensure_future(pub.close())
            while (m := await p.next()) is not None and m[0] != 4:
                pass
            assert m is not None and m[1][0] == 6
            assert not closing.done()
            p.w.write(frame(4, 0, b"ok"))
            assert await p.next() is None                   # the feed closed once answered
            await closing
            p.w.close()
        finally:
            if closing is None:
                await pub.close()
    run(main())


def test_the_market_data_sdk_answers_the_feeds_logout():
    """§4.9 for gateway/mdclient.py: the feed's shutdown Logout(6) is answered, so the feed
    closes at once rather than at the end of its grace period (long here)."""
    from gateway.marketdata.publisher import Publisher
    from gateway.mdclient import MarketDataClient
    conf = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
            "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}

    async def main():
        pub = Publisher(conf)
        await pub.start(follow=False)
        pub.binary.shutdown_grace_s = 3 * DEADLINE_S
        md = MarketDataClient("127.0.0.1", pub.feed_port, reconnect=False)
        try:
            await md.connect()
            await wait_for(lambda: len(pub.binary.conns) == 1)
            await asyncio.wait_for(pub.close(), 10)   # answered long before the grace
        finally:
            await md.close()
    run(main())


def test_logout_5_with_cancel_on_disconnect_armed_cancels_at_once():
    """§4.9 + §4.10: mode 1 cancels on logout; a Logout(5) finalizes the session, so no Logon
    can come back within the grace period to disarm it: the order is cancelled at once, with
    the clock standing still (before, the finalize dropped the armed cancel and the order
    rested for good)."""
    async def main():
        gw, core, port, c, now = await cod_venue(1, 5_000)
        try:
            assert core.shards[0].orders
            c.w.write(frame(4, 5, b""))
            assert (await c.next())[0] == 4
            c.w.close()
            await wait_for(lambda: not core.shards[0].orders)
            d = await Peer.connect(port)
            d.w.write(d.logon_frame(11))
            assert (await d.next())[0] == 3                  # LogonReject: finalized
        finally:
            await gw.close()
    run(main())
