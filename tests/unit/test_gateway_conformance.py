"""The order-entry gateway against the letter of PROTOCOL.md, where an earlier reading of it
departed: each test drives a real Gateway over 127.0.0.1 (FakeCore behind it) with frames
packed by hand from the page's tables (`struct` formats copied from §2, no gateway.wire on the
client side), so a regression in the gateway's codec cannot hide one in its behaviour.

* §4.11: the throttle's token bucket is per *session*: logging on again does not refill it.
* §3 Logout reason 7: a slow consumer is told Logout(7) before it is closed.
* §4.9: a Logout the server initiates (5 end of session, 6 shutdown) is answered by the
  client's Logout, and then the server closes.
No timing is asserted: the gateway's clock is frozen where rates matter, and every wait is a
condition with a generous deadline."""
from __future__ import annotations

import asyncio
import socket
import struct

from gateway import server as gs
from gateway.accounts import Accounts, make_user
from tests.gateway_fakes import FakeCore

DEADLINE_S = 30
PREFIX = struct.Struct("<HHHHHH")   # frameLength, encodingType 0xEB50, blockLength, templateId,
#                                     schemaId 1, version 1
BLOCKS = {1: "<QQQIHBB16s32s", 2: "<QQQIIHBBI", 3: "<QB32s", 4: "<B32s", 5: "<QQQ", 6: "<Q",
          8: "<QI", 9: "<QIB", 10: "<QQI", 100: "<QQQqQIIcccB", 200: "<QQQQQQqQqQQQIIcccccBBB",
          203: "<QQQQHBB32s"}


def frame(template: int, *fields) -> bytes:
    block = struct.pack(BLOCKS[template], *fields)
    return PREFIX.pack(12 + len(block), 0xEB50, len(block), template, 1, 1) + block


def nos(seq: int, clordid: int) -> bytes:
    """PROTOCOL.md §3's worked example: 100 lots at 10.25, Buy Limit GTC."""
    return frame(100, seq, 0, clordid, 1025000000, 100, 3, 0, b"1", b"2", b"1", 0)


def users(bob_rate: int = 2) -> Accounts:
    bob = make_user("bob", 9, "pw-bob", [5], max_msgs_per_sec=bob_rate, n=1024)
    return Accounts({"bob": bob})


class Peer:
    def __init__(self, r, w):
        self.r, self.w, self.buf = r, w, b""

    @classmethod
    async def connect(cls, port: int) -> Peer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @classmethod
    async def logged_out(cls, port: int, session_id: int) -> Peer:
        """A connection that logged on, sent Logout(0) and got its answer Logout(0); open."""
        peer = await cls.connect(port)
        peer.logon(session_id=session_id)
        await peer.until(2)
        peer.w.write(frame(4, 0, b""))
        assert (await peer.until(4))[0] == 0
        return peer

    def logon(self, session_id: int = 1, hb_ms: int = 30_000) -> None:
        self.w.write(frame(1, session_id, 0, 1, hb_ms, 0, 0, 0, b"bob", b"pw-bob"))

    async def next(self):
        """(template, fields) of the next frame, or None at EOF / reset."""
        while True:
            if len(self.buf) >= 12:
                n, enc, bl, tid, schema, _ver = PREFIX.unpack_from(self.buf)
                assert enc == 0xEB50 and schema == 1
                if len(self.buf) >= n:
                    raw, self.buf = self.buf[:n], self.buf[n:]
                    fmt = BLOCKS.get(tid)
                    return tid, struct.unpack_from(fmt, raw, 12) if fmt else ()
            try:
                chunk = await asyncio.wait_for(self.r.read(1 << 16), DEADLINE_S)
            except ConnectionError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    async def until(self, tid: int):
        while True:
            got = await self.next()
            assert got is not None, f"closed while waiting for template {tid}"
            if got[0] == tid:
                return got[1]


async def wait_for(pred, timeout: float = DEADLINE_S) -> None:
    for _ in range(int(timeout / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, DEADLINE_S * 2)
    return asyncio.run(bounded())


def test_the_throttle_bucket_is_per_session_not_per_connection():
    """bob may send 2 a second. With the clock frozen he sends 2 (both applied), logs out,
    logs on to the same session and sends a 3rd: still over the rate, so it is consumed and
    answered BusinessReject(8). A new SessionID has its own bucket."""
    async def main():
        now = [1000.0]
        gw = gs.Gateway(FakeCore(), users(), gs.Config(), clock=lambda: now[0])
        _host, port = await gw.start()
        try:
            c = await Peer.connect(port)
            c.logon()
            ack = await c.until(2)
            assert ack[4] == 2                               # MaxMsgsPerSec
            c.w.write(nos(1, 11) + nos(2, 12))
            assert (await c.until(200))[2] == 11 and (await c.until(200))[2] == 12
            c.w.write(frame(4, 0, b"bye"))
            assert (await c.until(4))[0] == 0
            c.w.close()
            await wait_for(lambda: not gw.live and not gw.conns)
            d = await Peer.connect(port)
            d.logon()
            ack = await d.until(2)
            assert ack[1] == 3                               # NextExpectedSeqNo
            d.w.write(nos(3, 13))
            br = await d.until(203)
            assert (br[2], br[4], br[5]) == (3, 100, 8)      # RefSeqNo, template, throttled
            e = await Peer.connect(port)
            e.logon(session_id=2)
            await e.until(2)
            e.w.write(nos(1, 21))
            assert (await e.until(200))[2] == 21
        finally:
            await gw.close()
    run(main())


def test_a_slow_consumer_gets_logout_7_before_the_close():
    """§3 Logout reason 7 (slow consumer): a client that lets more than max_output_bytes
    pile up is told so (the Logout follows what was queued, so a client that reads on sees
    it), then closed."""
    async def main():
        core = FakeCore()
        gw = gs.Gateway(core, users(), gs.Config(max_output_bytes=256 << 10))
        _host, port = await gw.start()
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            c = Peer(*await asyncio.open_connection(sock=sock, limit=1 << 30))
            c.logon()
            await c.until(2)
            c.r._transport.pause_reading()        # read nothing until the gateway gives up
            for _ in range(200):                  # 2000 ExecutionReports at a time
                core.push(9, 1, 2000)
                await asyncio.sleep(0.01)
                if gw.stats["slow_consumers"]:
                    break
            assert gw.stats["slow_consumers"] == 1
            c.r._transport.resume_reading()
            last = None
            while (m := await c.next()) is not None:
                last = m
            assert last == (4, (7, b"slow consumer".ljust(32, b"\0")))
        finally:
            await gw.close()
    run(main())


def test_logout_6_at_shutdown_waits_for_the_clients_answer():
    """§4.9: either side sends Logout, the other answers Logout, the initiator closes. At
    shutdown the gateway sends Logout(6) and keeps the connection until the client answers
    (shutdown_grace_s is long here, so only the answer can end it); then the client sees
    EOF, a clean close rather than a reset of its answer."""
    async def main():
        core = FakeCore()
        gw = gs.Gateway(core, users(), gs.Config(shutdown_grace_s=DEADLINE_S))
        _host, port = await gw.start()
        c = await Peer.connect(port)
        c.logon()
        await c.until(2)
        closing = asyncio.ensure_future(gw.close())
        reason = (await c.until(4))[0]
        still_open = len(gw.conns) == 1 and not closing.done()
        c.w.write(frame(4, 0, b"ok"))
        eof = await c.next()
        await closing
        ends = [gs.SESSION_END_S.unpack(p)[3] for _k, p in core.kinds(gs.KIND_SESSION_END)]
        return reason, still_open, eof, ends
    reason, still_open, eof, ends = run(main())
    assert reason == 6 and still_open and eof is None
    # answered, it is a logout: §4.10's mode 2 ("unexpected disconnect only") keeps the orders
    assert ends == [gs.END_LOGOUT]


def test_an_unanswered_logout_6_at_shutdown_is_a_disconnect():
    """A client that never answers the shutdown's Logout(6) is cut off at the grace period's
    end: to the engine that is a disconnect (cancel-on-disconnect mode 2 acts)."""
    async def main():
        core = FakeCore()
        gw = gs.Gateway(core, users(), gs.Config(shutdown_grace_s=0.2))
        _host, port = await gw.start()
        c = await Peer.connect(port)
        c.logon()
        await c.until(2)
        await gw.close()
        return [gs.SESSION_END_S.unpack(p)[3] for _k, p in core.kinds(gs.KIND_SESSION_END)]
    assert run(main()) == [gs.END_DISCONNECT]


def test_the_sdk_answers_a_logout_the_server_initiated(tmp_path):
    """§4.9 from the other side: gateway/client.py, sent Logout(6) by a server written from
    the page (hand-packed LogonAck and Logout), answers with a Logout of its own."""
    from gateway import client as sdk

    async def main():
        answered = asyncio.get_running_loop().create_future()
        go = asyncio.Event()

        async def server(r, w):
            p = Peer(r, w)
            sid = (await p.until(1))[0]
            w.write(frame(2, sid, 1, 1, 1000, 1000, 0, 0, 8, 20260101))
            await go.wait()                      # the SDK's connect() has returned
            w.write(frame(4, 6, b"shutting down"))
            got = await p.next()
            while got is not None and got[0] != 4:
                got = await p.next()
            answered.set_result(got)
            w.close()

        srv = await asyncio.start_server(server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = sdk.Client("127.0.0.1", port, "bob", "pw-bob", str(tmp_path / "s.json"),
                       {"BTCUSDT": (1, "0.5", "0.001")}, reconnect=False)
        try:
            await c.connect()
            go.set()
            got = await asyncio.wait_for(answered, DEADLINE_S)
        finally:
            await c.close(logout=False)
            srv.close()
        return got
    got = run(main())
    assert got is not None and got[0] == 4 and got[1][0] == 0


def test_an_answered_logout_unbinds_the_session_before_the_client_closes():
    """§4.9 "Logout unbinds the transport": once the server has answered the client's Logout,
    a Logon of that session from another connection resumes it, even while the first
    connection is still open (the client may close it late). It was refused LogonReject(2),
    bound elsewhere, until the old socket closed."""
    async def main():
        core = FakeCore()
        gw = gs.Gateway(core, users(), gs.Config(logout_grace_s=30.0))
        _host, port = await gw.start()
        try:
            a = await Peer.logged_out(port, session_id=1)                 # answered; a stays open
            b = await Peer.connect(port)
            b.logon(session_id=1)
            got = await b.next()
            assert got is not None and got[0] == 2, got      # LogonAck, not LogonReject(2)
            assert len(gw.conns) == 2
            ends = [gs.SESSION_END_S.unpack(p)[3] for _k, p in core.kinds(gs.KIND_SESSION_END)]
            assert ends == [gs.END_LOGOUT]
            a.w.close()
            await wait_for(lambda: len(gw.conns) == 1)
            ends = [gs.SESSION_END_S.unpack(p)[3] for _k, p in core.kinds(gs.KIND_SESSION_END)]
            assert ends == [gs.END_LOGOUT]                    # the late close changes nothing
            assert gw.live[(9, 1)] is next(iter(gw.conns))
        finally:
            await gw.close()
    run(main())


def test_a_clients_logout_5_finalizes_the_session():
    """§4.9 "Only reason 5 finalizes" (§3: Logout is 'both' ways; FIXP's FinishedSending may
    come from either side): the client's Logout(5) is answered Logout(5), the engine is told
    to finalize after a plain logout (so cancel-on-disconnect mode 1 acts), and a later
    Logon with that SessionID gets LogonReject(3). A Logout(0) leaves it resumable."""
    async def main():
        core = FakeCore()
        gw = gs.Gateway(core, users(), gs.Config())
        _host, port = await gw.start()
        try:
            a = await Peer.logged_out(port, session_id=1)
            a.w.close()
            await wait_for(lambda: not gw.conns)
            b = await Peer.connect(port)
            b.logon(session_id=1)
            await b.until(2)                                 # resumable after Logout(0)
            b.w.write(frame(4, 5, b"done for the day"))
            assert (await b.until(4))[0] == 5
            b.w.close()
            await wait_for(lambda: not gw.conns)
            ends = [gs.SESSION_END_S.unpack(p)[3] for _k, p in core.kinds(gs.KIND_SESSION_END)]
            assert ends == [gs.END_LOGOUT, gs.END_LOGOUT, gs.END_FINALIZE]
            c = await Peer.connect(port)
            c.logon(session_id=1)
            rej = await c.until(3)
            assert rej[1] == 3 and await c.next() is None
        finally:
            await gw.close()
    run(main())
