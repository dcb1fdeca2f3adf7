"""The binary market-data feed's session layer against PROTOCOL.md §1, §3, §4.8 and §6, driven
over 127.0.0.1 by frames packed by hand from the page (no gateway.wire on the client side):
a newer schema version logs on, a heartbeat interval out of range gets LogonReject(4), the
LogonAck echoes the SessionID, a silent client gets TestRequest then Logout(1), a client that
answers stays, and an MDReqID that names a live subscription of another instrument gets
MarketDataRequestReject(1). No timing is asserted: each test waits on a condition."""
from __future__ import annotations

import asyncio
import struct

from gateway.marketdata.publisher import Publisher

CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001"},
                    {"symbol": "ETHUSDT", "symbol_id": 2, "tick": "0.05", "lot": "0.01"}]}
DEADLINE_S = 20
PREFIX = struct.Struct("<HHHHHH")          # frameLength, 0xEB50, blockLength, template, 1, ver


def frame(template: int, fmt: str, *fields, version: int = 1) -> bytes:
    block = struct.pack(fmt, *fields)
    return PREFIX.pack(12 + len(block), 0xEB50, len(block), template, 1, version) + block


def logon(session_id: int = 0, hb_ms: int = 1000, version: int = 1) -> bytes:
    return frame(1, "<QQQIHBB16s32s", session_id, 0, 0, hb_ms, 0, 0, 0, b"md", b"",
                 version=version)


def md_request(md_req_id: int, security_id: int, kind: bytes = b"1", streams: int = 3) -> bytes:
    return frame(300, "<QIcBB", md_req_id, security_id, kind, 0, streams)


class Peer:
    def __init__(self, r, w):
        self.r, self.w, self.buf = r, w, b""

    async def next(self):
        """(template, block bytes), or None at EOF."""
        while True:
            if len(self.buf) >= 12:
                n, _enc, bl, tid, _sch, _ver = PREFIX.unpack_from(self.buf)
                if len(self.buf) >= n:
                    block, self.buf = self.buf[12:12 + bl], self.buf[n:]
                    return tid, block
            chunk = await asyncio.wait_for(self.r.read(1 << 16), DEADLINE_S)
            if not chunk:
                return None
            self.buf += chunk

    async def until(self, tid: int):
        while True:
            got = await self.next()
            assert got is not None, f"closed while waiting for template {tid}"
            if got[0] == tid:
                return got[1]


async def _with_feed(body, **attrs):
    pub = Publisher(CONF)
    await pub.start(follow=False)
    for k, v in attrs.items():
        setattr(pub.binary, k, v)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
        try:
            return await asyncio.wait_for(body(Peer(r, w), pub), DEADLINE_S * 2)
        finally:
            w.close()
    finally:
        await pub.close()


def test_a_newer_schema_version_logs_on_and_the_ack_echoes_the_session_id():
    """§1: receivers accept a newer sender (blockLength >= v1); only a version below 1 is
    LogonReject(7)."""
    async def body(p, _pub):
        p.w.write(logon(session_id=77, version=2))
        ack = await p.until(2)
        return struct.unpack_from("<Q", ack)[0]
    assert asyncio.run(_with_feed(body)) == 77

    async def old(p, _pub):
        p.w.write(logon(version=0))
        rej = await p.until(3)
        return rej[8], await p.next()
    reason, after = asyncio.run(_with_feed(old))
    assert reason == 7 and after is None


def test_a_heartbeat_interval_out_of_range_is_refused():
    """§4.8: intervals outside 100 ms .. 30 s are refused: LogonReject(4), then close. The
    limits themselves log on."""
    for hb, ok in ((99, False), (0, False), (30_001, False), (100, True), (30_000, True)):
        async def body(p, _pub, hb=hb):
            p.w.write(logon(hb_ms=hb))
            got = await p.next()
            if got[0] == 3:
                return 3, got[1][8], await p.next()
            return got[0], None, None
        tid, reason, after = asyncio.run(_with_feed(body))
        assert (tid == 2) if ok else (tid, reason, after) == (3, 4, None), hb


def test_a_silent_client_gets_a_test_request_then_logout_1_and_one_that_answers_stays():
    """§4.8: after 1.5 x the client's interval without input, TestRequest; after another
    interval, Logout(1) and close. A client answering with Heartbeat(TestReqID) stays."""
    async def silent(p, pub):
        p.w.write(logon(hb_ms=100))
        await p.until(2)
        await p.until(6)
        logout = await p.until(4)
        return logout[0], await p.next(), pub.binary.stats["heartbeat_timeouts"]
    reason, after, timeouts = asyncio.run(_with_feed(silent))
    assert reason == 1 and after is None and timeouts == 1

    async def answering(p, pub):
        p.w.write(logon(hb_ms=100))
        await p.until(2)
        for _ in range(3):
            test_req_id = struct.unpack("<Q", await p.until(6))[0]
            assert test_req_id
            p.w.write(frame(5, "<QQQ", test_req_id, 0, 0))
        return pub.binary.stats["heartbeat_timeouts"], len(pub.binary.conns)
    assert asyncio.run(_with_feed(answering)) == (0, 1)


def test_an_mdreqid_of_a_live_subscription_to_another_instrument_is_a_duplicate():
    """§3 MarketDataRequestReject reason 1: MDReqID 5 subscribes BTCUSDT; MDReqID 5 for
    ETHUSDT is rejected (1); MDReqID 5 for BTCUSDT again is a fresh snapshot; after an
    unsubscribe, 5 is free for ETHUSDT."""
    async def body(p, _pub):
        p.w.write(logon(hb_ms=30_000))
        await p.until(2)
        p.w.write(md_request(5, 1))
        snap = await p.until(303)
        assert struct.unpack_from("<QQQIB", snap)[2:4] == (5, 1)
        p.w.write(md_request(5, 2))
        rej = struct.unpack("<QIB", await p.until(301))
        p.w.write(md_request(5, 1))
        again = struct.unpack_from("<QQQIB", await p.until(303))[2:4]
        p.w.write(md_request(5, 1, b"2") + md_request(5, 2))
        freed = struct.unpack_from("<QQQIB", await p.until(303))[2:4]
        return rej, again, freed
    rej, again, freed = asyncio.run(_with_feed(body))
    assert rej == (5, 2, 1)
    assert again == (5, 1) and freed == (5, 2)


def test_a_wrong_password_flood_does_not_lock_a_verified_user_out_of_the_feed(tmp_path,
                                                                              monkeypatch):
    """docs/security.md "Client logon", on the feed as on the gateway (gateway/auth.py): a
    password scrypt accepted before passes without scrypt; one address's wrong passwords hold
    at most 8 checks and 64 places in the queue, the rest are refused at once (reason 6)."""
    import threading

    from gateway import accounts as acc
    from gateway import wire
    path = str(tmp_path / "accounts.json")
    acc.add_user(path, "alice", "pw-alice", [2], n=1 << 10)
    gate = threading.Event()
    real = acc.Accounts.verify

    def verify(self, name, password):
        if password != b"pw-alice":
            gate.wait(DEADLINE_S)            # every wrong password held in its scrypt check
        return real(self, name, password)
    monkeypatch.setattr(acc.Accounts, "verify", verify)

    def logon_as(password: bytes) -> bytes:
        return frame(1, "<QQQIHBB16s32s", 0, 0, 0, 1000, 0, 0, 0, b"alice", password)

    async def until_reject(peer: Peer) -> int:
        return (await peer.until(wire.LOGON_REJECT))[8]

    async def body(p, pub):
        feed = pub.binary
        p.w.write(logon_as(b"pw-alice"))
        await p.until(wire.LOGON_ACK)         # scrypt accepts: remembered
        flood = []
        for n in range(100):
            r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
            w.write(logon_as(f"wrong{n}".encode()))
            flood.append((Peer(r, w), w))
        for _ in range(DEADLINE_S * 200):
            if feed.stats["auth_busy"] == 28:
                break
            await asyncio.sleep(0.005)
        assert (feed.auth.running, len(feed.auth.queue), feed.stats["auth_busy"]) == (8, 64, 28)
        r, w = await asyncio.open_connection("127.0.0.1", pub.feed_port)
        again = Peer(r, w)
        w.write(logon_as(b"pw-alice"))       # every check held: accepted without one
        await again.until(wire.LOGON_ACK)
        assert feed.stats["auth_cached"] == 1 and feed.auth.running == 8
        w.close()
        gate.set()
        reasons = [await until_reject(f) for f, _w in flood]
        assert sorted(set(reasons)) == [wire.LOGON_REJECT_BAD_CREDENTIALS,
                                        wire.LOGON_REJECT_NOT_OPEN]
        assert reasons.count(wire.LOGON_REJECT_NOT_OPEN) == 28
        assert feed.stats["auth_failures"] == 72
        for _f, fw in flood:
            fw.close()
    asyncio.run(_with_feed(body, accounts_path=path))


def test_a_streams_bit_the_page_does_not_define_is_rejected():
    """§3 MarketDataRequest Streams: bit0 book, bit1 trades. Streams 4 (or 7) was taken as
    both; it is MarketDataRequestReject 4 (unsupported subscription), and the connection
    stays usable: Streams 2 then subscribes trades alone."""
    async def body(p, _pub):
        p.w.write(logon(hb_ms=30_000))
        await p.until(2)
        rejects = []
        for md_req_id, streams in ((6, 4), (7, 7), (8, 0x80)):
            p.w.write(md_request(md_req_id, 1, streams=streams))
            rejects.append(struct.unpack("<QIB", await p.until(301)))
        p.w.write(md_request(9, 1, streams=2))
        snap = struct.unpack_from("<QQQIB", await p.until(303))[2:4]
        return rejects, snap
    rejects, snap = asyncio.run(_with_feed(body))
    assert rejects == [(6, 1, 4), (7, 1, 4), (8, 1, 4)]
    assert snap == (9, 1)
