"""The gateway's session layer (PROTOCOL.md §4, docs/order-path.md §4) over real TCP on
127.0.0.1, against a fake Core that emulates the TradingEngine's sessions: authentication
before anything reaches the core, logon outcomes, replay with PossDup before live, heartbeats
and timeouts, the Logout exchange, retransmit rules, throttle and shed flags, framing errors,
and the bounds (connection cap, idle-before-logon, paused reads, slow consumers)."""
from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from gateway import server as gs
from gateway import wire
from gateway.accounts import Accounts, make_user
from tests.gateway_fakes import FakeCore

DEADLINE_S = 30


def users(**rates):
    alice = make_user("alice", 7, "pw-alice", [4, 8], max_msgs_per_sec=rates.get("alice", 1000),
                      n=1024)
    bob = make_user("bob", 9, "pw-bob", [5], max_msgs_per_sec=rates.get("bob", 2), n=1024)
    return Accounts({"alice": alice, "bob": bob})


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, DEADLINE_S)
    return asyncio.run(bounded())


class Client:
    """A test client speaking raw frames."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port, source="127.0.0.1"):
        """source: the client's address (any 127.x.y.z is this host: another peer)."""
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(r, w)

    def send(self, tid, *fields, **kw):
        self.w.write(wire.encode(tid, *fields, **kw))

    def raw(self, data: bytes):
        self.w.write(data)

    async def recv(self, timeout=5.0):
        """(template id, decoded fields, frame) of the next frame; None at EOF."""
        head = await asyncio.wait_for(self._exact(4), timeout)
        if head is None:
            return None
        length = struct.unpack_from("<H", head)[0]
        rest = await asyncio.wait_for(self._exact(length - 4), timeout)
        frame, _ = wire.read_frame(head + rest, 0)
        return frame.template_id, wire.decode(frame), frame

    async def _exact(self, n):
        try:
            return await self.r.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def expect(self, tid, timeout=5.0, skip=(wire.HEARTBEAT,)):
        while True:
            got = await self.recv(timeout)
            assert got is not None, f"closed while waiting for template {tid}"
            if got[0] in skip and tid not in skip:
                continue
            assert got[0] == tid, f"expected {tid}, got {got[0]} {got[1]}"
            return got[1]

    async def until(self, pred, timeout=5.0):
        """The first frame for which pred(template id, fields) holds, skipping the others."""
        while True:
            got = await self.recv(timeout)
            assert got is not None, "closed while waiting"
            if pred(got[0], got[1]):
                return got[1]

    async def closed(self, timeout=5.0):
        """True once the server closed the connection (frames before EOF are skipped)."""
        while True:
            got = await self.recv(timeout)
            if got is None:
                return True

    async def logon(self, user="alice", password="pw-alice", session=1, next_expected=0,
                    next_seq=1, hb_ms=1000, cod=0, cod_ms=0, version=1):
        frame = wire.encode(wire.LOGON, session, next_expected, next_seq, hb_ms, cod_ms, cod,
                            0, user.encode(), password.encode(), version=version)
        self.raw(frame)

    def nos(self, seq, clordid, flags=0):
        self.send(100, seq, 0, clordid, 1025000000, 1, 3, 0, b"1", b"2", b"1", flags)

    def close(self):
        self.w.close()


async def started(cfg=None, core=None, accts=None, **kw):
    core = core or FakeCore()
    cfg = cfg or gs.Config(heartbeat_ms=1000, **kw)
    gw = gs.Gateway(core, accts or users(), cfg)
    _host, port = await gw.start()
    return gw, core, port


async def wait_for(pred, timeout=5.0):
    for _ in range(int(timeout / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_start_sends_gateway_start_and_logon_binds_a_new_session():
    async def main():
        gw, core, port = await started(cfg=gs.Config(index=3))
        assert core.kinds() == [(82, struct.pack("<I", 3))]
        c = await Client.connect(port)
        await c.logon(session=42, cod=1, cod_ms=250)
        ack = await c.expect(wire.LOGON_ACK)
        assert (ack.SessionID, ack.NextExpectedSeqNo, ack.NextSeqNo) == (42, 1, 1)
        assert ack.Flags & wire.FLAG_NEW_SESSION and ack.MaxMsgsPerSec == 1000
        assert (ack.CodTimeoutMs, ack.CancelOnDisconnect, ack.TradingDate) == (250, 1, 20251202)
        (_k, logon), = core.kinds(80)
        user, sid, conn, default, cod, cod_ms, n = gs.SESSION_LOGON_S.unpack_from(logon)
        assert (user, sid, conn >> 48, conn & 0xFFFF, default, cod, cod_ms, n) == \
            (7, 42, 3, 1, 4, 1, 250, 2)
        assert struct.unpack_from("<II", logon, gs.SESSION_LOGON_S.size) == (4, 8)
        c.nos(1, 555)
        er = await c.expect(wire.EXECUTION_REPORT)
        assert (er.SeqNo, er.ClOrdID, er.Flags) == (1, 555, 0)
        (_k, cm), = core.kinds(83)
        assert gs.CLIENT_MESSAGE_S.unpack_from(cm) == (7, 42, 0, 100)
        assert len(cm) == gs.CLIENT_MESSAGE_S.size + 52
        c.close()
        await wait_for(lambda: core.kinds(81))
        assert gs.SESSION_END_S.unpack(core.kinds(81)[0][1]) == (7, 42, conn, gs.END_DISCONNECT)
        await gw.close()
    run(main())


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("mallory", "pw-alice"),
                                            ("alice", ""), ("\xff\xfe", "x"),
                                            # §1: char[N] is the value, then NUL padding:
                                            # bytes after the first NUL are not padding
                                            ("alice\x00zz", "pw-alice"),
                                            ("alice", "pw-alice\x00zz")])
def test_bad_credentials_reach_nothing(user, password):
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(user=user, password=password, session=1)
        rej = await c.expect(wire.LOGON_REJECT)
        assert rej.Reason == wire.LOGON_REJECT_BAD_CREDENTIALS
        assert await c.closed()
        assert [k for k, _ in core.kinds()] == [82]  # nothing but GatewayStart
        await gw.close()
    run(main())


def test_logon_rejects_after_auth():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(hb_ms=99)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_HEARTBEAT_RANGE
        c = await Client.connect(port)
        await c.logon(hb_ms=30001)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_HEARTBEAT_RANGE
        c = await Client.connect(port)
        await c.logon(version=0)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == \
            wire.LOGON_REJECT_UNSUPPORTED_VERSION
        assert [k for k, _ in core.kinds()] == [82]
        # a session with H = 0: asking for server message 2 is beyond H + 1
        c = await Client.connect(port)
        await c.logon(session=5, next_expected=2)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_SEQ_BEYOND
        assert await c.closed()
        await wait_for(lambda: core.kinds(81))  # the engine bound it: unbound again
        await gw.close()
    run(main())


def test_second_logon_on_a_bound_session_and_finalized():
    async def main():
        gw, core, port = await started()
        a = await Client.connect(port)
        await a.logon(session=9)
        await a.expect(wire.LOGON_ACK)
        b = await Client.connect(port)
        await b.logon(session=9)
        assert (await b.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_SESSION_BOUND
        assert await b.closed()
        a.nos(1, 1)
        await a.expect(wire.EXECUTION_REPORT)  # the first connection is unaffected
        assert len(core.kinds(81)) == 0  # the refused one did not unbind the session
        core.sessions[(7, 9)]["finalized"] = True
        a.close()
        c = await Client.connect(port)
        await c.logon(session=9)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == \
            wire.LOGON_REJECT_SESSION_FINALIZED
        await gw.close()
    run(main())


def test_resume_replays_with_possdup_before_live():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(session=77)
        await c.expect(wire.LOGON_ACK)
        for i in range(1, 4):
            c.nos(i, 100 + i)
        for i in range(1, 4):
            assert (await c.expect(wire.EXECUTION_REPORT)).SeqNo == i
        c.close()
        await wait_for(lambda: core.sessions[(7, 77)]["conn"] is None)
        c = await Client.connect(port)
        await c.logon(session=77, next_expected=2, next_seq=4)
        ack = await c.expect(wire.LOGON_ACK)
        assert (ack.NextExpectedSeqNo, ack.NextSeqNo, ack.Flags) == (4, 4, 0)
        rt = await c.expect(wire.RETRANSMISSION)
        assert (rt.FromSeqNo, rt.Count) == (2, 2)
        for i in (2, 3):
            er = await c.expect(wire.EXECUTION_REPORT)
            assert (er.SeqNo, er.ClOrdID, er.Flags) == (i, 100 + i, wire.FLAG_POSS_DUP)
        c.nos(3, 103, wire.FLAG_POSS_DUP)  # a resend of an applied one: dropped by the engine
        c.nos(6, 106)                       # skips 4 and 5
        na = await c.expect(wire.NOT_APPLIED)
        assert (na.SeqNo, na.FromSeqNo, na.Count) == (4, 4, 2)
        er = await c.expect(wire.EXECUTION_REPORT)
        assert (er.SeqNo, er.ClOrdID, er.Flags) == (5, 106, 0)
        await gw.close()
    run(main())


def test_a_seqno_jump_notapplied_cannot_state_is_refused_before_it_is_applied():
    """NotApplied.Count is a u32: a SeqNo more than 2^32 - 1 past the next expected one (from
    what was passed on, not only what is known applied), or 2^64 - 1 (nothing could be
    expected after it), gets Logout(2) and reaches no engine; the session resumes from the
    SeqNo its LogonAck gives."""
    async def main():
        gw, core, port = await started()
        c = await logged_on(gw, port, session=5)
        c.nos(1, 101)
        c.nos(2 + 0xFFFF_FFFF, 102)         # from 2: a gap of exactly 2^32 - 1, stated
        assert (await c.expect(wire.EXECUTION_REPORT)).ClOrdID == 101
        na = await c.expect(wire.NOT_APPLIED)
        assert (na.FromSeqNo, na.Count) == (2, 0xFFFF_FFFF)
        assert (await c.expect(wire.EXECUTION_REPORT)).ClOrdID == 102
        c.nos(2 ** 64 - 1, 103)
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_PROTOCOL_ERROR and lo.Text.startswith(b"SeqNo 2^64-1")
        c.close()
        await wait_for(lambda: core.sessions[(7, 5)]["conn"] is None)
        c = await Client.connect(port)
        await c.logon(session=5, next_expected=0, next_seq=2 ** 32 + 2)
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.NextExpectedSeqNo == 2 ** 32 + 2
        c.nos(2 ** 32 + 2 + 2 ** 32, 104)   # a gap of 2^32: refused
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_PROTOCOL_ERROR and lo.Text.startswith(b"SeqNo jump")
        head = gs.CLIENT_MESSAGE_S.size + 16     # a NewOrderSingle's ClOrdID
        assert [struct.unpack_from("<Q", p, head)[0]
                for _k, p in core.kinds(gs.KIND_CLIENT_MESSAGE)] == [101, 102]
        await gw.close()
    run(main())


def test_live_messages_wait_for_the_logon_replay():
    """Messages the engine issues while the replay is being written come after it, in order."""
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(session=3)
        await c.expect(wire.LOGON_ACK)
        core.push(7, 3, 2000)
        for _i in range(2000):
            await c.expect(wire.EXECUTION_REPORT)
        c.close()
        await wait_for(lambda: core.sessions[(7, 3)]["conn"] is None)
        c = await Client.connect(port)
        await c.logon(session=3, next_expected=1)
        await c.expect(wire.LOGON_ACK)
        await wait_for(lambda: (7, 3) in gw.live)
        core.push(7, 3, 5)  # live, while the replay of 2000 is under way
        rt = await c.expect(wire.RETRANSMISSION)
        assert (rt.FromSeqNo, rt.Count) == (1, 2000)
        seqs = []
        for _ in range(2005):
            er = await c.expect(wire.EXECUTION_REPORT)
            seqs.append((er.SeqNo, er.Flags))
        assert seqs == [(i, 1) for i in range(1, 2001)] + [(i, 0) for i in range(2001, 2006)]
        await gw.close()
    run(main())


def test_heartbeat_testrequest_and_timeout():
    async def main():
        gw, core, port = await started(cfg=gs.Config(heartbeat_ms=100))
        c = await Client.connect(port)
        await c.logon(hb_ms=200)
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.HeartbeatIntervalMs == 100
        c.send(wire.TEST_REQUEST, 4242)
        await c.until(lambda tid, m: tid == wire.HEARTBEAT and m.TestReqID == 4242)
        c.nos(1, 1)
        await c.until(lambda tid, m: tid == wire.EXECUTION_REPORT)
        # the server's own heartbeat says how far it applied and issued
        hb = await c.until(lambda tid, m: tid == wire.HEARTBEAT and m.TestReqID == 0)
        assert (hb.NextSeqNo, hb.NextExpectedSeqNo) == (2, 2)
        # silent client: TestRequest after 1.5 x 200 ms, Logout(1) one interval later
        got = []
        while True:
            m = await c.recv()
            if m is None:
                break
            got.append(m[0])
            if m[0] == wire.LOGOUT:
                assert m[1].Reason == wire.LOGOUT_HEARTBEAT_TIMEOUT
        assert wire.TEST_REQUEST in got and got[-1] == wire.LOGOUT
        await wait_for(lambda: core.kinds(81))
        assert gs.SESSION_END_S.unpack(core.kinds(81)[0][1])[3] == gs.END_DISCONNECT
        await gw.close()
    run(main())


def test_logout_exchange():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        c.send(wire.LOGOUT, 0, b"bye")
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_NORMAL
        c.close()
        await wait_for(lambda: core.kinds(81))
        assert gs.SESSION_END_S.unpack(core.kinds(81)[0][1])[3] == gs.END_LOGOUT
        # a client that answers nothing is closed after the grace period
        gw.cfg.logout_grace_s = 0.2
        c = await Client.connect(port)
        await c.logon(session=2)
        await c.expect(wire.LOGON_ACK)
        c.send(wire.LOGOUT, 0, b"")
        await c.expect(wire.LOGOUT)
        assert await c.closed()
        # A client's Logout(1) "heartbeat timeout" (the gateway looked dead to it, §4.8) was an
        # orderly logout (SessionEnd 0): cancel-on-disconnect mode 2 never acted when the
        # client was the side that found the link dead. It is a disconnect (SessionEnd 1);
        # so are 2, 3, 4 and 7; 0 and 6 stay orderly.
        for session, reason, want in ((3, wire.LOGOUT_HEARTBEAT_TIMEOUT, gs.END_DISCONNECT),
                                      (4, wire.LOGOUT_PROTOCOL_ERROR, gs.END_DISCONNECT),
                                      (5, wire.LOGOUT_SLOW_CONSUMER, gs.END_DISCONNECT),
                                      (6, wire.LOGOUT_ADMIN, gs.END_LOGOUT)):
            n = len(core.kinds(81))
            c = await Client.connect(port)
            await c.logon(session=session)
            await c.expect(wire.LOGON_ACK)
            c.send(wire.LOGOUT, reason, b"heartbeat timeout")
            await c.expect(wire.LOGOUT)
            c.close()
            await wait_for(lambda n=n: len(core.kinds(81)) > n)
            end = gs.SESSION_END_S.unpack(core.kinds(81)[n][1])
            assert (end[1], end[3]) == (session, want), (reason, end)
        await gw.close()
    run(main())


def test_a_logout_is_answered_once_the_shard_applied_its_session_end():
    """The answer to a client's Logout comes after the shard applied the SessionEnd, so a
    Logon the client then sends at another gateway is sequenced after it and finds the
    session free (it could overtake the SessionEnd and get LogonReject 2). A shard that
    does not apply it within ANSWER_WAIT_S does not hold the answer longer."""
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        core.hold = True                     # the shard applies nothing for now
        c.send(wire.LOGOUT, 0, b"bye")
        await wait_for(lambda: core.kinds(81))   # the SessionEnd went to the shard
        await asyncio.sleep(0.3)
        assert c.r._buffer == b"" and core.sessions[(7, 1)]["conn"] is not None
        core.release()
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_NORMAL and core.sessions[(7, 1)]["conn"] is None
        assert not gw.answers_waiting
        # a shard that stays silent: the answer goes at ANSWER_WAIT_S all the same
        c = await Client.connect(port)
        await c.logon(session=2)
        await c.expect(wire.LOGON_ACK)
        core.hold = True
        t0 = asyncio.get_running_loop().time()
        c.send(wire.LOGOUT, 0, b"")
        await c.expect(wire.LOGOUT, timeout=5.0)
        waited = asyncio.get_running_loop().time() - t0
        assert gs.ANSWER_WAIT_S * 0.9 <= waited < gs.ANSWER_WAIT_S + 2.0, waited
        assert await c.closed()
        core.release()
        await gw.close()
    run(main())


async def forty_reports(core, port, n: int = 40) -> Client:
    """alice logged on, with server messages 1..n (ExecutionReports) received."""
    c = await Client.connect(port)
    await c.logon()
    await c.expect(wire.LOGON_ACK)
    core.push(7, 1, n)
    for _ in range(n):
        await c.expect(wire.EXECUTION_REPORT)
    return c


def test_retransmit_rules():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_retransmit=50, retransmit_batch=1))
        c = await forty_reports(core, port)
        c.send(wire.RETRANSMIT_REQUEST, 3, 2)
        for a in (3, 4):  # batches of one, each introduced by Retransmission
            rt = await c.expect(wire.RETRANSMISSION)
            assert (rt.FromSeqNo, rt.Count) == (a, 1)
            er = await c.expect(wire.EXECUTION_REPORT)
            assert (er.SeqNo, er.Flags) == (a, wire.FLAG_POSS_DUP)
        for req, reason in [((0, 1), wire.RETRANSMIT_REJECT_OUT_OF_RANGE),
                            ((39, 3), wire.RETRANSMIT_REJECT_OUT_OF_RANGE),
                            ((1, 0), wire.RETRANSMIT_REJECT_OUT_OF_RANGE),
                            ((1, 51), wire.RETRANSMIT_REJECT_OVER_LIMIT)]:
            c.send(wire.RETRANSMIT_REQUEST, *req)
            rj = await c.expect(wire.RETRANSMIT_REJECT)
            assert (rj.FromSeqNo, rj.Count, rj.Reason) == (*req, reason)
        # two in one write: the second finds the first in flight
        c.raw(wire.encode(wire.RETRANSMIT_REQUEST, 1, 40) + wire.encode(wire.RETRANSMIT_REQUEST, 1, 1))
        seen = []
        while len([s for s in seen if s[0] == wire.EXECUTION_REPORT]) < 40:
            tid, m, _ = await c.recv()
            seen.append((tid, m))
        rejects = [m for tid, m in seen if tid == wire.RETRANSMIT_REJECT]
        assert [r.Reason for r in rejects] == [wire.RETRANSMIT_REJECT_IN_PROGRESS]
        assert [m.SeqNo for tid, m in seen if tid == wire.EXECUTION_REPORT] == list(range(1, 41))
        await gw.close()
    run(main())


def test_the_journal_holds_the_newest_messages_and_reads_the_rest_back_from_the_log():
    """Memory holds an index of every server message (8 bytes each) and at most
    journal_cache_bytes of the messages themselves; a replay of older ones reads them back
    from out.te.N, byte for byte what was sent live. A log that does not answer ends the
    connection with a Logout instead of a replay with holes; the next connection gets it."""
    async def main():
        gw, core, port = await started(cfg=gs.Config(journal_cache_bytes=2000))
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        for _ in range(4):    # four out.te records of ten messages
            core.push(7, 1, 10)
        for _ in range(40):
            await c.expect(wire.EXECUTION_REPORT)
        live = {}
        c.send(wire.RETRANSMIT_REQUEST, 1, 40)
        assert (await c.expect(wire.RETRANSMISSION)).Count == 40
        for s in range(1, 41):
            er = await c.expect(wire.EXECUTION_REPORT)
            assert (er.SeqNo, er.Flags) == (s, wire.FLAG_POSS_DUP)
            live[s] = er
        held = gw.journal[(7, 1)].blocks
        assert 0 < len(held) < 40 and max(held) == 40 and gw.cached_bytes <= 2000
        assert gw.stats["journal_reads"] >= 1 and gw.stats["journal_read_failures"] == 0
        assert sum(len(j.blocks) for j in gw.journal.values()) == len(held)
        # the log silent: the replay ends in a Logout, nothing with a hole goes out (not
        # even the Retransmission: it is written once its first messages are read)
        core.fetch_fails = True
        c.send(wire.RETRANSMIT_REQUEST, 1, 5)
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_ADMIN and b"log" in lo.Text
        assert gw.stats["journal_read_failures"] == 1
        core.fetch_fails = False
        c = await Client.connect(port)
        await c.logon(next_expected=1)
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.NextSeqNo == 41
        assert (await c.expect(wire.RETRANSMISSION)).Count == 40
        got = [await c.expect(wire.EXECUTION_REPORT) for _ in range(40)]
        assert [g.SeqNo for g in got] == list(range(1, 41))
        assert got == [live[s] for s in range(1, 41)]
        await gw.close()
    run(main())


def test_a_logout_in_the_same_write_as_a_retransmit_request_comes_after_its_answer():
    """§4.7: a RetransmitRequest is answered (Retransmission and its messages, or a reject);
    a Logout read in the same TCP segment was answered at once, and the replay, whose task
    had not started, then sent nothing: the answer depended on how the bytes were split."""
    async def main():
        gw, core, port = await started()
        c = await forty_reports(core, port)
        c.raw(wire.encode(wire.RETRANSMIT_REQUEST, 1, 40) + wire.encode(wire.LOGOUT, 0, b""))
        rt = await c.expect(wire.RETRANSMISSION)
        assert (rt.FromSeqNo, rt.Count) == (1, 40)
        for seq in range(1, 41):
            er = await c.expect(wire.EXECUTION_REPORT)
            assert (er.SeqNo, er.Flags) == (seq, wire.FLAG_POSS_DUP)
        assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_NORMAL
        await gw.close()
    run(main())


def test_test_requests_over_the_rate_are_not_answered_and_abuse_ends_the_session():
    """§4.11: each TestRequest was answered by a Heartbeat whatever the rate: a client made
    the gateway write one frame per frame it sent, without limit. Over the session's rate a
    TestRequest costs its token and gets no answer; persistent abuse is Logout(4)."""
    async def main():
        gw, core, port = await started(cfg=gs.Config(throttle_abuse_s=2))
        c = await Client.connect(port)
        await c.logon(user="bob", password="pw-bob")          # 2 messages a second
        await c.expect(wire.LOGON_ACK)
        c.raw(b"".join(wire.encode(wire.TEST_REQUEST, 100 + i) for i in range(10)))
        await wait_for(lambda: gw.stats["throttled"] == 8)
        answered = []
        while len(answered) < 2:
            tid, m, _ = await c.recv()
            if tid == wire.HEARTBEAT and m.TestReqID:
                answered.append(m.TestReqID)
        assert answered == [100, 101]
        for i in range(40):                                  # 10 a second, over the rate
            c.send(wire.TEST_REQUEST, 200 + i)
            await asyncio.sleep(0.1)
            if gw.stats["logouts_sent"]:
                break
        lo = await c.until(lambda tid, m: tid == wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_THROTTLE_ABUSE
        assert await c.closed()
        await gw.close()
    run(main())


def test_too_many_bad_retransmit_requests_logout_3():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_retransmit_rejects=3))
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        for _ in range(3):
            c.send(wire.RETRANSMIT_REQUEST, 5, 1)
        for _ in range(3):
            await c.expect(wire.RETRANSMIT_REJECT)
        assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_RETRANSMIT_VIOLATION
        assert await c.closed()
        await gw.close()
    run(main())


def test_throttle_flag_then_abuse_logout():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(user="bob", password="pw-bob")
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.MaxMsgsPerSec == 2
        for i in range(1, 4):
            c.nos(i, i)
        got = [await c.expect(wire.EXECUTION_REPORT), await c.expect(wire.EXECUTION_REPORT)]
        assert [g.ClOrdID for g in got] == [1, 2]
        br = await c.expect(wire.BUSINESS_REJECT)
        assert (br.RefSeqNo, br.BusinessRejectReason) == (3, wire.BUSINESS_REJECT_THROTTLED)
        flags = [gs.CLIENT_MESSAGE_S.unpack_from(p)[2] for _k, p in core.kinds(83)]
        assert flags == [0, 0, gs.GW_FLAG_THROTTLED]
        await gw.close()
    run(main())


def test_persistent_throttle_abuse_logout_4():
    async def main():
        gw, core, port = await started(cfg=gs.Config(throttle_abuse_s=2))
        c = await Client.connect(port)
        await c.logon(user="bob", password="pw-bob")
        await c.expect(wire.LOGON_ACK)
        seq = 0
        for _ in range(40):  # 10 a second for up to 4 s, over the rate of 2
            seq += 1
            c.nos(seq, seq)
            await asyncio.sleep(0.1)
            if gw.stats["logouts_sent"]:
                break
        assert await c.closed()
        assert gw.stats["logouts_sent"] == 1
        await gw.close()
    run(main())


def test_shed_when_deep_but_cancels_go_through():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_depth=10))
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        core.extra_depth = 11
        c.nos(1, 1)
        c.send(101, 2, 0, 2, 1, wire.U64_NULL, 3, b"1", 0)          # cancel
        c.send(103, 3, 0, 3, wire.U32_NULL, b"7", b"0", 0)          # mass cancel
        c.send(102, 4, 0, 4, 1, wire.U64_NULL, 1, 1, 3, b"1", b"2", b"1", 0)  # replace
        br = await c.expect(wire.BUSINESS_REJECT)
        assert (br.RefSeqNo, br.BusinessRejectReason, wire.text(br.Text)) == \
            (1, wire.BUSINESS_REJECT_NOT_AVAILABLE, "overloaded")
        flags = {gs.CLIENT_MESSAGE_S.unpack_from(p)[3]: gs.CLIENT_MESSAGE_S.unpack_from(p)[2]
                 for _k, p in core.kinds(83)}
        assert flags == {100: gs.GW_FLAG_SHED, 101: 0, 103: 0, 102: gs.GW_FLAG_SHED}
        core.extra_depth = 0
        c.nos(5, 5)
        while True:
            tid, m, _ = await c.recv()
            if tid == wire.EXECUTION_REPORT and m.ClOrdID == 5:
                break
        await gw.close()
    run(main())


def test_unknown_client_template_goes_as_eight_bytes():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        c.raw(struct.pack("<HHHHHH", 12 + 10, 0xEB50, 10, 150, 1, 1) + struct.pack("<QH", 1, 9))
        br = await c.expect(wire.BUSINESS_REJECT)
        assert (br.RefSeqNo, br.RefTemplateID, br.BusinessRejectReason) == \
            (1, 150, wire.BUSINESS_REJECT_UNSUPPORTED_MESSAGE)
        (_k, cm), = core.kinds(83)
        assert len(cm) == gs.CLIENT_MESSAGE_S.size + 8
        await gw.close()
    run(main())


BAD_FRAMES = {
    "encoding": struct.pack("<HHHHHH", 20, 0xCAFE, 8, 6, 1, 1) + bytes(8),
    "schema": struct.pack("<HHHHHH", 20, 0xEB50, 8, 6, 2, 1) + bytes(8),
    "short frame": struct.pack("<HHHHHH", 8, 0xEB50, 0, 6, 1, 1),
    "block beyond frame": struct.pack("<HHHHHH", 20, 0xEB50, 9, 6, 1, 1) + bytes(8),
    "short known block": struct.pack("<HHHHHH", 20, 0xEB50, 8, 100, 1, 1) + bytes(8),
    "short unknown block": struct.pack("<HHHHHH", 16, 0xEB50, 4, 150, 1, 1) + bytes(4),
    "session template": wire.encode(wire.LOGON_ACK, *([0] * 9)),
    "unknown session template": struct.pack("<HHHHHH", 12, 0xEB50, 0, 50, 1, 1),
    "market data": wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, b"1", 0, 1),
    "second logon": wire.encode(wire.LOGON, 1, 0, 1, 1000, 0, 0, 0, b"alice", b"pw-alice"),
    "response template": wire.encode(203, *([0] * 7), b""),
    "http": b"GET / HTTP/1.1\r\n\r\n",
}


def test_the_supervisors_probe_is_answered_and_not_counted_as_a_protocol_error():
    """The supervisor sends a Heartbeat before any Logon once a second (speaks_protocol): it
    gets Logout(2) "logon first" as any early frame does, counted as a probe; any other early
    frame is a client's protocol error."""
    from deploy.supervisor import speaks_protocol

    async def main():
        gw, _core, port = await started()
        loop = asyncio.get_running_loop()
        for _ in range(3):
            assert await loop.run_in_executor(None, speaks_protocol, f"tcp://127.0.0.1:{port}",
                                              2.0)
        assert (gw.stats["probes"], gw.stats["protocol_errors"]) == (3, 0)
        c = await Client.connect(port)
        c.send(wire.TEST_REQUEST, 4242)
        lo = await c.expect(wire.LOGOUT)
        assert (lo.Reason, wire.text(lo.Text)) == (wire.LOGOUT_PROTOCOL_ERROR, "logon first")
        assert (gw.stats["probes"], gw.stats["protocol_errors"]) == (3, 1)
        await gw.close()
    run(main())


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_framing_errors_logout_2_and_close(name):
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        c.raw(BAD_FRAMES[name])
        lo = await c.expect(wire.LOGOUT)
        assert lo.Reason == wire.LOGOUT_PROTOCOL_ERROR
        if name == "market data":
            assert wire.text(lo.Text) == "market data not on this port"
        assert await c.closed()
        assert not core.kinds(83)
        await gw.close()
    run(main())


@pytest.mark.parametrize("before_logon", [False, True])
def test_a_client_that_sends_on_still_reads_the_logout(before_logon):
    """The Logout (or LogonReject) is the last frame, then a half-close: the client's input is
    read and dropped until it closes. Closed with input unread, the socket made the kernel
    answer the client's next bytes with a reset, and a client that went on sending lost the
    Logout still unread in its buffer: it saw a reset, not why."""
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        if before_logon:
            c.raw(wire.encode(wire.LOGON, 1, 0, 1, 1000, 0, 0, 0, b"alice", b"wrong"))
            want = wire.LOGON_REJECT
        else:
            await c.logon()
            await c.expect(wire.LOGON_ACK)
            c.raw(BAD_FRAMES["http"])
            want = wire.LOGOUT
        for i in range(40):     # goes on sending, reading nothing, for 0.4 s
            c.raw(wire.encode(wire.HEARTBEAT, 0, 2 + i, 1) * 4)
            try:
                await c.w.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.01)
        await c.expect(want)
        assert await c.closed()
        c.w.close()
        await wait_for(lambda: not gw.conns)
        await gw.close()
    run(main())


@pytest.mark.parametrize("first", [wire.encode(wire.HEARTBEAT, 0, 1, 1),
                                   wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, b"1", 0, 1),
                                   b"\x00" * 12])
def test_before_logon_only_a_logon(first):
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        c.raw(first)
        assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_PROTOCOL_ERROR
        assert await c.closed()
        await gw.close()
    run(main())


def test_connection_cap_and_idle_before_logon():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_connections=3, logon_timeout_s=1.0))
        held = [await Client.connect(port) for _ in range(3)]
        await wait_for(lambda: len(gw.conns) == 3)
        # full of connections that sent nothing: a new one closes the oldest of them and logs
        # on (idle connections reopened faster than the logon timeout expired them kept
        # every user out; a flood of them locked the gateway)
        c = await Client.connect(port)
        assert await held[0].closed()
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        assert gw.stats["evicted_connections"] == 1 and gw.stats["refused_connections"] == 0
        # a slow sender that never completes a Logon: dripped bytes do not keep it alive
        logon = wire.encode(wire.LOGON, 1, 0, 1, 1000, 0, 0, 0, b"alice", b"pw-alice")
        try:
            for b in logon[:60]:  # 1.5 s of drip, past the 1 s allowed
                held[1].raw(bytes([b]))
                await held[1].w.drain()
                await asyncio.sleep(0.025)
        except ConnectionError:
            pass
        for h in held[1:]:
            assert await h.closed(timeout=5)
        assert gw.stats["logon_timeouts"] == 2
        # every connection logged on: a new one is refused, none is closed for it
        others = []
        for session in (2, 3):
            o = await Client.connect(port)
            await o.logon(session=session)
            await o.expect(wire.LOGON_ACK)
            others.append(o)
        extra = await Client.connect(port)
        assert await extra.closed()
        assert gw.stats["refused_connections"] == 1 and gw.stats["evicted_connections"] == 1
        assert len(gw.live) == 3
        await gw.close()
    run(main())


def test_input_is_bounded_while_the_logon_waits():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_input_bytes=64 * 1024))
        core.hold = True
        c = await Client.connect(port)
        await c.logon()
        hb = wire.encode(wire.HEARTBEAT, 0, 1, 1) * 10_000  # 360 kB
        for _ in range(20):
            c.raw(hb)
        await wait_for(lambda: core.kinds(80))
        await asyncio.sleep(0.3)
        conn = next(iter(gw.conns))
        assert not conn.reading and len(conn.buf) < 64 * 1024 + 300_000
        core.release()
        await c.expect(wire.LOGON_ACK)
        await wait_for(lambda: conn.reading and not conn.buf)
        c.nos(1, 1)
        await c.expect(wire.EXECUTION_REPORT)
        await gw.close()
    run(main())


def test_core_not_answering_the_logon():
    async def main():
        gw, core, port = await started(cfg=gs.Config(core_timeout_s=0.3))
        core.hold = True
        c = await Client.connect(port)
        await c.logon()
        assert (await c.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_NOT_OPEN
        assert await c.closed()
        assert [k for k, _ in core.kinds()] == [82, 80, 81]  # unbound, in case it bound
        await gw.close()
    run(main())


def test_slow_consumer_is_closed():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_output_bytes=256 * 1024))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        r, w = await asyncio.open_connection(sock=sock)
        c = Client(r, w)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        for _ in range(20):  # never read: 20 x 2000 ExecutionReports = 5 MB
            core.push(7, 1, 2000)
            await asyncio.sleep(0.01)
            if gw.stats["slow_consumers"]:
                break
        assert gw.stats["slow_consumers"] == 1
        await wait_for(lambda: not gw.conns)
        await wait_for(lambda: core.kinds(81))
        await gw.close()
    run(main())


def test_close_logs_everyone_out():
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        await gw.close()
        assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_ADMIN
        assert await c.closed()
    run(main())


def test_a_logout_answer_that_ends_a_broken_link_stays_a_disconnect():
    """The gateway's Logout(6) (shutting down) answered by a client's Logout(1), which crossed
    it: the client ends a link it found broken, a disconnect (SessionEnd 1) as when its
    Logout(1) comes first; an answer Logout(0) is the orderly end (SessionEnd 0)."""
    async def main():
        ends = []
        for session, answer in ((21, wire.LOGOUT_HEARTBEAT_TIMEOUT), (22, wire.LOGOUT_NORMAL)):
            gw, core, port = await started()
            c = await Client.connect(port)
            await c.logon(session=session)
            await c.expect(wire.LOGON_ACK)
            closing = asyncio.ensure_future(gw.close())
            assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_ADMIN
            c.send(wire.LOGOUT, answer, b"")
            await closing
            await wait_for(lambda core=core: core.kinds(81))
            ends.append(gs.SESSION_END_S.unpack(core.kinds(81)[-1][1])[3])
        assert ends == [gs.END_DISCONNECT, gs.END_LOGOUT], ends
    run(main())


def test_session_events_walks_other_events():
    from tests.gateway_fakes import ACCOUNT_EVENT
    st = gs.SESSION_STATE_S.pack(13, 1, 2, 3, 4, 5, 1)
    block = wire.encode(10, 5, 3, 2)[12:]
    msg = gs.SESSION_MESSAGE_S.pack(14, 1, 2, 10) + block
    ce = struct.pack("<BIHH", 1, 7, 32, 3) + b"\x0d\x0e\x0d"  # a CE_COMMAND holding 13/14 bytes
    payload = ACCOUNT_EVENT.pack(4, 13, 14, 13, 14, 13) + ce + st + msg
    assert gs.session_events(payload) == [(13, 1, 2, 3, 4, 5, 1), (14, 1, 2, 10, block)]
    assert gs.session_events(ACCOUNT_EVENT.pack(4, 1, 2, 3, 4, 5)) == []
    with pytest.raises(ValueError):
        gs.session_events(st[:-1])
    with pytest.raises(ValueError):
        gs.session_events(gs.SESSION_MESSAGE_S.pack(14, 1, 2, 99) + bytes(20))


def test_runs_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        c.nos(1, 9)
        assert (await c.expect(wire.EXECUTION_REPORT)).ClOrdID == 9
        await gw.close()
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), DEADLINE_S))
    finally:
        loop.close()


def test_connection_flood_leaves_nothing_behind():
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_connections=10, logon_timeout_s=2.0))
        clients = await asyncio.gather(*[Client.connect(port) for _ in range(100)])
        for c in clients:
            assert await c.closed(timeout=5)
        await wait_for(lambda: not gw.conns)
        # at the limit each new idle connection closed the oldest idle one
        assert gw.stats["evicted_connections"] >= 90
        assert gw.stats["connections"] == 100 and not gw.silent
        assert not gw.pending and not gw.live
        await gw.close()
    run(main())


def test_finalized_session_gets_logout_5():
    """The engine finalizes a bound session (SessionEnd reason 2, e.g. from the operator at
    end of day) and says so with SessionState(finalized, its conn_id): Logout(5), and a later
    Logon is refused with 3."""
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon(session=11)
        await c.expect(wire.LOGON_ACK)
        c.nos(1, 1)
        await c.expect(wire.EXECUTION_REPORT)
        conn_id = core.sessions[(7, 11)]["conn"]
        await core.send(0, gs.KIND_SESSION_END, gs.SESSION_END_S.pack(7, 11, 0, gs.END_FINALIZE))
        assert (await c.expect(wire.LOGOUT)).Reason == wire.LOGOUT_END_OF_SESSION
        assert await c.closed()
        assert (7, 11) not in gw.journal and conn_id
        c = await Client.connect(port)
        await c.logon(session=11)
        assert (await c.expect(wire.LOGON_REJECT)).Reason == \
            wire.LOGON_REJECT_SESSION_FINALIZED
        await gw.close()
    run(main())


def test_a_stalled_log_pauses_reading_not_memory():
    """While core.send does not return, at most max_queued records wait per shard; the
    connection stops being read, and everything goes through, in order, once it resumes."""
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_queued=10))
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        core.gate = asyncio.Event()
        for i in range(1, 201):
            c.nos(i, i)
        conn = next(iter(gw.conns))
        await wait_for(lambda: not conn.reading)
        await asyncio.sleep(0.2)
        assert len(gw.queues[0]) <= 11 and conn in gw.paused
        core.gate.set()
        got = [(await c.expect(wire.EXECUTION_REPORT)).ClOrdID for _ in range(200)]
        assert got == list(range(1, 201))
        assert conn.reading and not gw.paused
        await gw.close()
    run(main())


def test_a_connection_not_read_because_the_log_stalls_is_not_silent():
    """The gateway stops reading a connection while its shard's queue is full (above); the
    client's Heartbeats then wait in the socket, and the gateway judged it silent on input it
    had chosen not to read: TestRequest after 1.5 of the client's intervals, Logout(1) after
    2.5, the session unbound, while the client heartbeated every 0.2 s (an adversary's
    spec-only client, during another client's IOC flood). Its silence counts only while it
    is read."""
    async def main():
        gw, core, port = await started(cfg=gs.Config(max_queued=10))
        c = await Client.connect(port)
        await c.logon(hb_ms=400)
        await c.expect(wire.LOGON_ACK)
        core.gate = asyncio.Event()
        for i in range(1, 31):
            c.nos(i, i)
        conn = next(iter(gw.conns))
        await wait_for(lambda: not conn.reading)
        seen = []

        async def reader():
            while True:
                got = await c.recv(timeout=10)
                if got is None:
                    return
                seen.append(got[0])
        task = asyncio.create_task(reader())
        for _ in range(10):                     # 2 s: five of the client's intervals
            c.send(wire.HEARTBEAT, 0, 31, 1)
            await asyncio.sleep(0.2)
        assert wire.LOGOUT not in seen and wire.TEST_REQUEST not in seen, seen
        assert gw.stats["heartbeat_timeouts"] == 0
        assert not conn.reading and conn in gw.paused
        core.gate.set()
        await wait_for(lambda: seen.count(wire.EXECUTION_REPORT) == 30)
        assert conn.state == gs.LIVE
        task.cancel()
        await gw.close()
    run(main())


# -- the credential check: verified passwords, the scrypt slots and their queue ---------------

class GatedAccounts(Accounts):
    """Accounts whose scrypt check waits for `gate` (a threading.Event) in its worker thread:
    the tests hold checks in flight as long as they need, without timing anything."""

    def __init__(self, accts: Accounts):
        super().__init__(accts.users)
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.started = 0   # checks a worker thread began

    def verify(self, name, password):
        with self.lock:
            self.started += 1
        self.gate.wait(DEADLINE_S)
        return super().verify(name, password)


AUTH_CFG = dict(max_auth_pending=4, max_auth_per_peer=2, max_auth_queued=16,
                max_auth_queued_per_peer=6)


async def rejected(c):
    rej = await c.expect(wire.LOGON_REJECT)
    assert await c.closed()
    return rej.Reason


async def logged_on(gw, port, session, user="alice", password="pw-alice", source="127.0.0.1"):
    c = await Client.connect(port, source)
    await c.logon(user=user, password=password, session=session)
    ack = await c.expect(wire.LOGON_ACK)
    assert ack.SessionID == session
    return c


def test_verified_cache_keys_the_password_to_the_users_hash():
    from gateway.accounts import VerifiedCache
    accts = users()
    cache = VerifiedCache()
    alice = accts.users["alice"]
    tag = cache.tag("alice", b"pw-alice")
    assert cache.lookup(accts, "alice", tag) is None  # nothing verified yet
    cache.remember(alice, tag)
    assert cache.lookup(accts, "alice", tag) is alice
    assert cache.lookup(accts, "alice", cache.tag("alice", b"pw-alicf")) is None
    assert cache.lookup(accts, "bob", cache.tag("bob", b"pw-alice")) is None
    assert cache.lookup(accts, "mallory", cache.tag("mallory", b"x")) is None
    assert VerifiedCache().tag("alice", b"pw-alice") != tag  # a key of its own per instance
    # the same user with another password: the entry no longer answers, retain drops it
    changed = Accounts({"alice": make_user("alice", 7, "pw-new", [4, 8], n=1024),
                        "bob": accts.users["bob"]})
    assert cache.lookup(changed, "alice", tag) is None
    assert cache.retain(accts) == 0 and "alice" in cache
    assert cache.retain(changed) == 1 and "alice" not in cache and len(cache) == 0


def test_wrong_password_flood_does_not_lock_out_a_user_who_logged_on_before():
    """More wrong-password Logons from one peer than every scrypt cap: the peer takes its
    max_auth_per_peer slots and max_auth_queued_per_peer places in the queue, the rest get
    LogonReject(6) at once (the queue's bound); a user who logged on before is recognised
    without scrypt while every check is held; a user never seen before waits in the queue
    and gets through once it drains; nothing of the flood reaches the core."""
    async def main():
        new_user = make_user("carol", 11, "pw-carol", [6], n=1024)
        accts = GatedAccounts(Accounts(dict(users().users, carol=new_user)))
        accts.gate.set()
        gw, core, port = await started(cfg=gs.Config(**AUTH_CFG), accts=accts)
        try:
            c = await logged_on(gw, port, session=1)  # scrypt accepts: remembered
            c.close()
            assert accts.started == 1
            accts.gate.clear()
            flood = [await Client.connect(port) for _ in range(12)]
            for n, f in enumerate(flood, 1):  # one at a time: which ones are refused is known
                await f.logon(password=f"wrong{n}", session=99)  # each its own check
                await wait_for(lambda n=n: gw.auth.running + len(gw.auth.queue) +
                               gw.stats["auth_busy"] == n)
            # 2 checks in flight (the peer's cap), 6 queued (its bound), 4 refused at once
            for f in flood[8:]:
                assert await rejected(f) == wire.LOGON_REJECT_NOT_OPEN
            await wait_for(lambda: accts.started == 3 and len(gw.auth.queue) == 6)
            assert gw.auth.running_by == {"127.0.0.1": 2} and gw.stats["auth_busy"] == 4
            # alice again, every scrypt check held: accepted without one, without a slot
            c = await logged_on(gw, port, session=2)
            assert accts.started == 3 and gw.auth.running == 2 and gw.stats["auth_cached"] == 1
            # bob, never seen, from the flood's peer: its queue is full, so reason 6
            b = await Client.connect(port)
            await b.logon(user="bob", password="pw-bob", session=3)
            assert await rejected(b) == wire.LOGON_REJECT_NOT_OPEN
            # from another peer bob goes straight to a slot of his own peer's, past the queue
            b = await Client.connect(port, "127.0.0.2")
            await b.logon(user="bob", password="pw-bob", session=3)
            await wait_for(lambda: gw.auth.running_by.get("127.0.0.2") == 1)
            # and a third peer's never-seen user waits in the queue once every slot is taken
            gw.auth.max_pending = 3
            carol = await Client.connect(port, "127.0.0.3")
            await carol.logon(user="carol", password="pw-carol", session=4)
            await wait_for(lambda: len(gw.auth.queue) == 7)
            assert gw.auth.queue[-1].peer == "127.0.0.3"
            accts.gate.set()
            for f in flood[:8]:
                assert await rejected(f) == wire.LOGON_REJECT_BAD_CREDENTIALS
            assert (await b.expect(wire.LOGON_ACK)).SessionID == 3
            assert (await carol.expect(wire.LOGON_ACK)).SessionID == 4
            await wait_for(lambda: not gw.auth.queue and not gw.auth.running)
            assert gw.stats["auth_failures"] == 8 and not gw.auth.running_by
            assert not gw.auth.queued_by
            # the flood reached nothing: the core saw only the three logons that passed
            assert sorted(gs.SESSION_LOGON_S.unpack_from(p)[1] for _k, p in core.kinds(80)) == \
                [1, 2, 3, 4]
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_a_logon_waiting_for_its_check_is_not_told_no_logon():
    """The no-logon timer (logon_timeout_s from accept) is for connections that sent no
    Logon; a Logon queued or in scrypt is bounded by auth_timeout_s from its arrival instead,
    and answered LogonReject(6) "busy: try again" past it (the timers are driven directly,
    with a `now` past each bound)."""
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(logon_timeout_s=5.0, auth_timeout_s=30.0,
                                                     max_auth_per_peer=1), accts=accts)
        try:
            running = await Client.connect(port)
            await running.logon(session=1)
            await wait_for(lambda: accts.started == 1)
            queued = await Client.connect(port)
            await queued.logon(user="bob", password="pw-bob", session=2)
            idle = await Client.connect(port)  # sends nothing
            await wait_for(lambda: len(gw.auth.queue) == 1 and len(gw.conns) == 3)
            by_auth = {c.auth_check.state if c.auth_check else None: c for c in gw.conns}
            assert set(by_auth) == {"running", "queued", None}
            conns = [by_auth["running"], by_auth["queued"], by_auth[None]]
            later = gw.clock() + 10.0  # past logon_timeout_s from accept, within auth_timeout_s
            for conn in conns:
                conn.tick(later)
            assert [c.state for c in conns[:2]] == [gs.LOGGING_ON, gs.LOGGING_ON]
            logout = await idle.expect(wire.LOGOUT)
            assert logout.Reason == wire.LOGOUT_HEARTBEAT_TIMEOUT
            assert logout.Text.rstrip(b"\0") == b"no logon"
            assert gw.stats["logon_timeouts"] == 1
            much_later = gw.clock() + 31.0
            for conn in conns[:2]:
                conn.tick(much_later)
            for c in (running, queued):
                rej = await c.expect(wire.LOGON_REJECT)
                assert rej.Reason == wire.LOGON_REJECT_NOT_OPEN
                assert rej.Text.rstrip(b"\0") == b"busy: try again"
            assert gw.stats["auth_timeouts"] == 2 and gw.stats["logon_timeouts"] == 1
            await wait_for(lambda: not gw.auth.queue and not gw.auth.queued_by)
            # the running check, started, cannot be cancelled: it stays (a Logon with the same
            # credentials may still join it), the queued one is gone
            assert [c.state for c in gw.auth.checks.values()] == ["running"]
            # the abandoned check still holds its slot until its thread is done with it
            assert gw.auth.running == 1
            accts.gate.set()
            await wait_for(lambda: gw.auth.running == 0 and not gw.conns)
            assert accts.started == 1  # the queued one never ran
            assert [k for k, _ in core.kinds()] == [82]
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_a_closed_connection_frees_its_place_but_not_a_running_slot():
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(max_auth_pending=1), accts=accts)
        try:
            a = await Client.connect(port)
            await a.logon(password="wrong1", session=1)
            await wait_for(lambda: accts.started == 1)
            b = await Client.connect(port)
            await b.logon(password="wrong2", session=2)
            await wait_for(lambda: len(gw.auth.queue) == 1)
            a.close()
            b.close()
            await wait_for(lambda: not gw.conns)
            assert not gw.auth.queue and not gw.auth.queued_by
            assert gw.auth.running == 1  # scrypt is still running in its thread
            c = await Client.connect(port)
            await c.logon(session=3)
            await wait_for(lambda: len(gw.auth.queue) == 1)
            accts.gate.set()
            await c.expect(wire.LOGON_ACK)
            assert accts.started == 2 and gw.auth.running == 0
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_logons_with_the_same_credentials_share_one_check():
    """Many simultaneous Logons with the same credentials (a user's sessions reconnecting
    together, or one wrong password sent many times): one scrypt check answers them all, and
    they take one place in the caps, so none is refused as busy while it runs."""
    async def main():
        accts = GatedAccounts(users())
        gw, core, port = await started(cfg=gs.Config(max_auth_pending=1, max_auth_queued=1),
                                       accts=accts)
        try:
            right = [await Client.connect(port) for _ in range(20)]
            for n, c in enumerate(right, 1):
                await c.logon(session=n)
            await wait_for(lambda: accts.started == 1 and gw.stats["auth_joined"] == 19)
            wrong = [await Client.connect(port) for _ in range(20)]
            for c in wrong:
                await c.logon(user="bob", password="guess", session=1)
            await wait_for(lambda: gw.stats["auth_joined"] == 19 + 19)
            assert len(gw.auth.checks) == 2 and gw.auth.running == 1 and len(gw.auth.queue) == 1
            # the queue is full: other credentials are refused, but not the ones joining
            other = await Client.connect(port)
            await other.logon(user="bob", password="pw-bob", session=2)
            assert await rejected(other) == wire.LOGON_REJECT_NOT_OPEN
            accts.gate.set()
            for n, c in enumerate(right, 1):
                assert (await c.expect(wire.LOGON_ACK)).SessionID == n
            for c in wrong:
                assert await rejected(c) == wire.LOGON_REJECT_BAD_CREDENTIALS
            assert accts.started == 2 and gw.stats["auth_failures"] == 20
            assert not gw.auth.checks and not gw.auth.queue and gw.auth.running == 0
            await gw.close()
        finally:
            accts.gate.set()
    run(main())


def test_the_verified_password_is_forgotten_when_the_users_hash_changes():
    async def main():
        accts = users()
        gw, core, port = await started(accts=accts)
        (await logged_on(gw, port, session=1)).close()
        (await logged_on(gw, port, session=2, user="bob", password="pw-bob")).close()
        (await logged_on(gw, port, session=3)).close()
        assert gw.stats["auth_scrypt"] == 2 and gw.stats["auth_cached"] == 1
        new = Accounts({"alice": make_user("alice", 7, "pw-new", [4, 8], n=1024),
                        "bob": accts.users["bob"]})
        gw.reload_accounts(new)
        assert "alice" not in gw.auth.verified and "bob" in gw.auth.verified
        c = await Client.connect(port)
        await c.logon(session=4)  # the old password: to scrypt, refused
        assert await rejected(c) == wire.LOGON_REJECT_BAD_CREDENTIALS
        assert gw.stats["auth_scrypt"] == 3
        (await logged_on(gw, port, session=5, password="pw-new")).close()
        (await logged_on(gw, port, session=6, user="bob", password="pw-bob")).close()
        assert gw.stats["auth_scrypt"] == 4 and gw.stats["auth_cached"] == 2
        await gw.close()
    run(main())


def test_the_credential_check_bounds_are_settings():
    doc = {"index": 0, "listen": "127.0.0.1:9100", "accounts": "/tmp/a.json",
           "shards": [{"in": "tcp://h:1", "pub": "tcp://h:2", "replicators": ["tcp://h:3"]}],
           "max_auth_pending": 32, "max_auth_per_peer": 4, "max_auth_queued": 100,
           "max_auth_queued_per_peer": 10, "auth_timeout_s": 12.5}
    cfg = gs.parse_settings(doc).cfg
    assert (cfg.max_auth_pending, cfg.max_auth_per_peer, cfg.max_auth_queued,
            cfg.max_auth_queued_per_peer, cfg.auth_timeout_s) == (32, 4, 100, 10, 12.5)
    for bad in ({"max_auth_per_peer": 0}, {"max_auth_queued": -1}, {"auth_timeout_s": 0}):
        with pytest.raises(ValueError, match="max_auth|auth_timeout"):
            gs.parse_settings(dict(doc, **bad))


@pytest.mark.parametrize("reset", [True, False])
def test_a_logon_right_after_the_old_connection_ended_resumes(reset):
    """A client whose connection was reset (or closed) logs on again at once. Had the gateway
    not read that end yet (its reading paused, or the new connection's events first in the
    turn), the engine saw the new SessionLogon before the old SessionEnd and refused it as
    bound elsewhere (LogonReject 2): an independent client got that in 6 of 10 tries against a
    cluster. The gateway now looks at the old socket and ends it first."""
    async def main():
        gw, core, port = await started()
        a = await Client.connect(port)
        await a.logon(session=5)
        await a.expect(wire.LOGON_ACK)
        a.nos(1, 11)
        await a.expect(wire.EXECUTION_REPORT)
        old = gw.live[(7, 5)]
        old.transport.pause_reading()        # the gateway does not read its end
        if reset:
            a.w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    struct.pack("ii", 1, 0))
        a.w.transport.abort() if reset else a.w.close()
        b = await Client.connect(port)
        await b.logon(session=5, next_expected=2, next_seq=2)
        ack = await b.expect(wire.LOGON_ACK)
        assert (ack.NextExpectedSeqNo, ack.NextSeqNo) == (2, 2)
        assert len(core.kinds(81)) == 1 and gw.live[(7, 5)] is not old   # its SessionEnd
        b.nos(2, 12)
        assert (await b.expect(wire.EXECUTION_REPORT)).ClOrdID == 12
        await gw.close()
    run(main())


def test_a_close_behind_unread_input_is_read_before_the_session_moves():
    """A connection closed behind input the gateway has not read (an order, a Logout(5)) is
    not ended by a Logon elsewhere: that input would be lost with it. The new Logon is refused
    (bound elsewhere) until the loop has read the input and the close; then it resumes with the
    order counted as applied."""
    async def main():
        gw, core, port = await started()
        a = await Client.connect(port)
        await a.logon(session=6)
        await a.expect(wire.LOGON_ACK)
        old = gw.live[(7, 6)]
        old.transport.pause_reading()
        a.nos(1, 21)                         # not read by the gateway yet
        await a.w.drain()
        a.w.close()
        await wait_for(lambda: old.peer_gone() is False and _rdhup(old))
        b = await Client.connect(port)
        await b.logon(session=6, next_expected=1, next_seq=1)
        assert (await b.expect(wire.LOGON_REJECT)).Reason == wire.LOGON_REJECT_SESSION_BOUND
        old.transport.resume_reading()       # the loop reads the order, then the close
        await wait_for(lambda: core.sessions[(7, 6)]["conn"] is None)
        c = await Client.connect(port)
        await c.logon(session=6, next_expected=1, next_seq=2)
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.NextExpectedSeqNo == 2            # the order was applied
        await gw.close()
    run(main())


def _rdhup(conn) -> bool:
    """The peer's FIN has arrived at the connection's socket."""
    import select
    p = select.poll()
    p.register(conn.transport.get_extra_info("socket").fileno(), select.POLLRDHUP)
    return bool(p.poll(0))


def test_a_busy_connection_forgets_its_applied_messages_without_heartbeats():
    """The gateway remembers each client message it passed on until the shard applied it (so
    that a Heartbeat can say NextExpectedSeqNo). A connection that gets a report every second
    is never sent a Heartbeat: that memory must still be let go of on the timer, not only
    when a Heartbeat is due (it grew one entry per order for the connection's life)."""
    async def main():
        gw, core, port = await started()
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        for i in range(1, 51):
            c.nos(i, i)
            await c.expect(wire.EXECUTION_REPORT)
        conn = next(iter(gw.conns))
        await wait_for(lambda: gw.applied_index(0) >= gw.enqueued[0])
        assert len(conn.inflight) == 50
        conn.tick(conn.last_sent)       # no Heartbeat is due
        assert not conn.inflight and conn.client_next == 51
        await gw.close()
    run(main())


def test_a_replay_waiting_on_the_log_keeps_heartbeating():
    """§4.8: the server sends a Heartbeat whenever it has sent nothing for its interval. A
    replay whose messages are read back from the log can wait seconds (replicators frozen:
    one whole try each); the server was silent meanwhile, and a client following §4.8 sent
    TestRequest after 1.5 intervals, whose answer waited behind the replay, and logged out
    after 2.5. Now Heartbeats go while the read waits, before the Retransmission that
    introduces the messages (its first messages are read before it is written)."""
    async def main():
        gw, core, port = await started(cfg=gs.Config(heartbeat_ms=500, journal_cache_bytes=500))
        c = await Client.connect(port)
        await c.logon(hb_ms=30000)      # (the client's own interval: it sends nothing)
        await c.expect(wire.LOGON_ACK)
        for _ in range(3):
            core.push(7, 1, 10)
        live = [await c.expect(wire.EXECUTION_REPORT) for _ in range(30)]
        c.close()
        core.fetch_delay_s = 1.6    # each read back: more than 1.5 of the server's intervals
        loop = asyncio.get_running_loop()
        for request in ("logon", "retransmit"):
            c = await Client.connect(port)
            await c.logon(hb_ms=30000, next_expected=1 if request == "logon" else 0)
            await c.expect(wire.LOGON_ACK)
            if request == "retransmit":
                c.send(wire.RETRANSMIT_REQUEST, 1, 30)
            frames, last, gap = [], loop.time(), 0.0
            while len([f for f in frames if f[0] == wire.EXECUTION_REPORT]) < 30:
                got = await c.recv(timeout=10)
                assert got is not None, (request, frames)
                tid, m, _ = got
                now = loop.time()
                gap, last = max(gap, now - last), now
                frames.append((tid, m))
            tids = [t for t, _ in frames]
            assert tids[0] == wire.HEARTBEAT, tids          # sent while the first read waited
            start = tids.index(wire.RETRANSMISSION)
            assert set(tids[:start]) == {wire.HEARTBEAT}
            assert frames[start][1].Count == 30
            reports = [m for t, m in frames if t == wire.EXECUTION_REPORT]
            assert [r.SeqNo for r in reports] == list(range(1, 31))
            assert all(r.Flags == wire.FLAG_POSS_DUP for r in reports)
            assert [r._replace(Flags=0) for r in reports] == [r._replace(Flags=0) for r in live]
            assert gap < 0.75 * 1.5, f"silent for {gap:.2f} s while the replay read the log"
            assert gw.stats["journal_reads"] >= 1 and gw.stats["heartbeat_timeouts"] == 0
            c.close()
        await gw.close()
    run(main())
