"""gateway/client.py, the client SDK, against a scripted fake server (an asyncio server in the
test that follows PROTOCOL.md §4's session rules and can hold back or swallow chosen messages
and cut the connection). It proves, from the client's side: §4's reconnect walkthrough (the
outbox is resent from LogonAck.NextExpectedSeqNo with the resend flag, what was applied is
dropped, the replay is PossDup), duplicates dropped by server SeqNo, persistence before each
send and across a client restart (a new object reading the file), heartbeats both ways, a
final LogonReject, and Decimal prices and quantities converted with the instrument's tick/lot."""
from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest

from gateway import client as sdk
from gateway import wire

SPECS = {"BTCUSDT": (1, "0.5", "0.001")}
N = wire.U64_NULL


class FakeServer:
    """A one-user application server keeping PROTOCOL.md §4's sequence rules."""

    def __init__(self, password: str = "pw", hb_ms: int = 1000):
        self.password = password
        self.hb_ms = hb_ms
        self.sessions: dict[int, dict] = {}
        self.logons: list[tuple[int, int, int]] = []     # (SessionID, NextExpected, NextSeqNo)
        self.received: list[tuple[int, int, int]] = []   # (SeqNo, ClOrdID, Flags) as they came
        self.tifs: list[tuple[int, bytes]] = []  # (templateId, TimeInForce) of orders, replaces
        self.applied: list[int] = []                     # client SeqNos applied
        self.fills: set[int] = set()       # ClOrdIDs that also get a trade report
        self.hold: set[int] = set()        # server SeqNos journaled but not sent
        self.swallow: set[int] = set()     # client SeqNos read, not applied, then cut
        self.apply_then_cut: set[int] = set()   # client SeqNos applied, output held, then cut
        self.replay_all = False            # replay from 1 whatever the client asks
        self.on_receive = None             # called with (SeqNo, ClOrdID) before applying
        self.heartbeats: list[tuple[int, int, int]] = []
        self.test_requests = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.logon_delay_s = 0.0           # the logon goes through the log: it takes time
        self.not_open = 0                  # so many logons refused "not open" (6) first

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    def er(self, seq: int, cl: int, exec_type: bytes, last_qty: int = 0, leaves: int = 0,
           cum: int = 0, flags: int = 0) -> tuple[int, bytes]:
        last_px = 4_999_950_000_000 if exec_type == wire.EXEC_TYPE_TRADE else wire.PRICE_NULL
        frame = wire.encode(wire.EXECUTION_REPORT, seq, 1, cl, N, 1000 + cl, seq,
                            5_000_000_000_000, 10, last_px, last_qty, leaves, cum, 1, 2,
                            exec_type, b"0", b"1", b"2", b"1", 0,
                            2 if last_qty else 0, flags)
        return wire.EXECUTION_REPORT, frame[wire.PREFIX_SIZE:]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        sess = None
        buf = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                pos = 0
                while True:
                    frame, end = wire.read_frame(buf, pos)
                    if frame is None:
                        break
                    pos = end
                    m = wire.decode(frame)
                    tid = frame.template_id
                    if tid == wire.LOGON:
                        if self.not_open:
                            self.not_open -= 1
                            writer.write(wire.encode(wire.LOGON_REJECT, m.SessionID, 6,
                                                     b"trading engine not answering"))
                            await writer.drain()
                            writer.close()
                            return
                        if wire.text(m.Password) != self.password:
                            writer.write(wire.encode(wire.LOGON_REJECT, m.SessionID, 1, b"bad credentials"))
                            await writer.drain()
                            writer.close()
                            return
                        self.logons.append((m.SessionID, m.NextExpectedSeqNo, m.NextSeqNo))
                        await asyncio.sleep(self.logon_delay_s)
                        new = m.SessionID not in self.sessions
                        sess = self.sessions.setdefault(m.SessionID,
                                                        {"ne": 1, "journal": []})
                        h = len(sess["journal"])
                        writer.write(wire.encode(wire.LOGON_ACK, m.SessionID, sess["ne"], h + 1,
                                                 self.hb_ms, 100, 0, 0,
                                                 wire.FLAG_NEW_SESSION if new else 0, 20261202))
                        start = 1 if self.replay_all else m.NextExpectedSeqNo
                        if 1 <= start <= h:
                            writer.write(wire.encode(wire.RETRANSMISSION, start, h - start + 1))
                            for t, block in sess["journal"][start - 1:]:
                                writer.write(wire.frame_from_block(t, block, wire.FLAG_POSS_DUP))
                    elif tid == wire.HEARTBEAT:
                        self.heartbeats.append((m.TestReqID, m.NextSeqNo, m.NextExpectedSeqNo))
                    elif tid == wire.LOGOUT:
                        writer.write(wire.encode(wire.LOGOUT, 0, b""))
                        await writer.drain()
                        writer.close()
                        return
                    elif tid in (wire.NEW_ORDER_SINGLE, wire.ORDER_CANCEL_REQUEST,
                                 wire.ORDER_CANCEL_REPLACE_REQUEST):
                        if not await self.on_client(sess, m, tid, writer):
                            writer.close()
                            return
                await writer.drain()
                del buf[:pos]
        except (ConnectionError, asyncio.CancelledError):
            return

    async def on_client(self, sess, m, tid, writer) -> bool:
        self.received.append((m.SeqNo, m.ClOrdID, m.Flags))
        if tid != wire.ORDER_CANCEL_REQUEST:
            self.tifs.append((tid, m.TimeInForce))
        if self.on_receive:
            self.on_receive(m.SeqNo, m.ClOrdID)
        if m.SeqNo in self.swallow:
            self.swallow.discard(m.SeqNo)
            return False
        if m.SeqNo < sess["ne"]:
            return True                                   # duplicate: dropped silently
        out = []
        j = sess["journal"]
        if m.SeqNo > sess["ne"]:
            frame = wire.encode(wire.NOT_APPLIED, len(j) + 1, sess["ne"], m.SeqNo - sess["ne"])
            j.append((wire.NOT_APPLIED, frame[wire.PREFIX_SIZE:]))
            out.append(len(j))
        sess["ne"] = m.SeqNo + 1
        self.applied.append(m.SeqNo)
        if tid == wire.NEW_ORDER_SINGLE:
            j.append(self.er(len(j) + 1, m.ClOrdID, wire.EXEC_TYPE_NEW, leaves=10))
            out.append(len(j))
            if m.ClOrdID in self.fills:
                j.append(self.er(len(j) + 1, m.ClOrdID, wire.EXEC_TYPE_TRADE, 4, 6, 4))
                out.append(len(j))
        else:
            kind = (wire.EXEC_TYPE_REPLACED if tid == wire.ORDER_CANCEL_REPLACE_REQUEST
                    else wire.EXEC_TYPE_CANCELED)
            j.append(self.er(len(j) + 1, m.ClOrdID, kind, leaves=10))
            out.append(len(j))
        if m.SeqNo in self.apply_then_cut:
            self.apply_then_cut.discard(m.SeqNo)
            return False
        for seq in out:
            if seq not in self.hold:
                writer.write(wire.frame_from_block(*j[seq - 1]))
        return True


async def reports(c: sdk.Client, n: int) -> list:
    return [await c.next_report(timeout_s=10) for _ in range(n)]


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def make(port, path, **kw) -> sdk.Client:
    return sdk.Client("127.0.0.1", port, "alice", kw.pop("password", "pw"), str(path), SPECS,
                      **kw)


def test_reconnect_walkthrough_resends_the_unapplied_order_with_the_resend_flag(tmp_path):
    """PROTOCOL.md §4: NOS 1..5 sent, server messages 1..5 received; the connection drops
    while NOS 5 is in flight; the server applied 1..4 and issued #6, which the client never
    saw. Logon(S, 6, 6) -> LogonAck(5, 7) -> Retransmission(6, 1), #6 PossDup -> NOS 5 resent
    with the resend flag -> #7."""
    async def main():
        srv = FakeServer()
        port = await srv.start()
        srv.fills = {3, 4}           # NOS 3 -> #3 #4, NOS 4 -> #5 #6
        srv.hold = {6}
        srv.swallow = {5}
        c = make(port, tmp_path / "s.json")
        await c.connect()
        for _ in range(4):
            await c.new_order("BTCUSDT", "buy", "0.010", "50000")
        got = await reports(c, 5)
        assert [r.seq for r in got] == [1, 2, 3, 4, 5]
        assert await c.new_order("BTCUSDT", "buy", "0.010", "50000") == 5
        r6 = await c.next_report(timeout_s=10)
        r7 = await c.next_report(timeout_s=10)
        assert srv.logons[1] == (c.session_id, 6, 6)
        assert (r6.seq, r6.poss_dup, r6.cl_ord_id, r6.exec_type) == (6, True, 4, "trade")
        assert (r7.seq, r7.poss_dup, r7.cl_ord_id, r7.exec_type) == (7, False, 5, "new")
        assert [(s, f) for s, _cl, f in srv.received if s == 5] == [(5, 0), (5, 1)]
        assert srv.applied == [1, 2, 3, 4, 5]
        assert c.stats["duplicates"] == 0 and c.stats["resent"] == 1
        c.processed()
        assert c.state.outbox == []
        await c.close()
        await srv.stop()
    run(main())


def test_an_order_applied_just_before_the_drop_is_not_resent(tmp_path):
    """The walkthrough's other branch: NOS 5 applied before the drop, so LogonAck says 6, the
    replay holds its ack, and nothing is resent (a resend would be dropped anyway)."""
    async def main():
        srv = FakeServer()
        port = await srv.start()
        srv.apply_then_cut = {2}
        c = make(port, tmp_path / "s.json")
        await c.connect()
        await c.new_order("BTCUSDT", "sell", "0.001", "50000.5")
        assert (await c.next_report(timeout_s=10)).seq == 1
        await c.new_order("BTCUSDT", "sell", "0.001", "50000.5")
        r = await c.next_report(timeout_s=10)
        assert (r.seq, r.poss_dup, r.cl_ord_id) == (2, True, 2)
        assert srv.logons[1][1:] == (2, 3)
        assert [s for s, _cl, _f in srv.received] == [1, 2]
        assert c.stats["resent"] == 0 and c.state.outbox == []
        await c.close()
        await srv.stop()
    run(main())


def test_a_replay_of_what_was_processed_is_dropped_by_server_seqno(tmp_path):
    async def main():
        srv = FakeServer()
        port = await srv.start()
        c = make(port, tmp_path / "s.json")
        await c.connect()
        for _ in range(3):
            await c.new_order("BTCUSDT", "buy", "1", "100")
        assert [r.seq for r in await reports(c, 3)] == [1, 2, 3]
        srv.replay_all = True        # a server that replays everything on the next Logon
        for w in srv.writers:
            w.close()
        await c.new_order("BTCUSDT", "buy", "1", "100")
        r = await c.next_report(timeout_s=10)
        assert (r.seq, r.cl_ord_id, r.poss_dup) == (4, 4, False)
        assert c.stats["duplicates"] == 3
        await c.close()
        await srv.stop()
    run(main())


def test_the_session_survives_a_client_restart_through_its_file(tmp_path):
    """A client persists before it sends; a new Client object on the same file (a restarted
    process) logs on with the same SessionID and numbers and resends the unapplied order."""
    async def main():
        srv = FakeServer()
        port = await srv.start()
        path = tmp_path / "s.json"
        seen_in_file = []

        def on_receive(seq, cl):
            # what a restarted process would read: the snapshot and its log
            d = sdk.SessionState.load(str(path))
            seen_in_file.append(seq in [s for s, _t, _b in d.outbox] or seq < d.next_seq)
        srv.on_receive = on_receive
        a = make(port, path, reconnect=False)
        await a.connect()
        sid = a.session_id
        await a.new_order("BTCUSDT", "buy", "0.002", "49999.5")
        assert (await a.next_report(timeout_s=10)).seq == 1
        a.processed()
        srv.swallow = {2}
        await a.new_order("BTCUSDT", "buy", "0.002", "49999.5")
        with pytest.raises(sdk.SessionError):
            await a.next_report(timeout_s=10)      # connection gone, no reconnect
        await a.close(logout=False)
        d = sdk.SessionState.load(str(path))
        assert (d.session_id, d.next_seq, d.last_seen) == (sid, 3, 1)
        assert [s for s, _t, _b in d.outbox] == [2]

        b = make(port, path)                       # "the restarted process"
        await b.connect()
        assert srv.logons[-1] == (sid, 2, 3)
        r = await b.next_report(timeout_s=10)
        assert (r.seq, r.cl_ord_id, r.poss_dup) == (2, 2, False)
        assert srv.received[-1] == (2, 2, wire.FLAG_POSS_DUP)
        assert await b.new_order("BTCUSDT", "sell", "0.002", "49999.5") == 3
        assert (await b.next_report(timeout_s=10)).cl_ord_id == 3
        assert srv.received[-1][:2] == (3, 3)
        assert all(seen_in_file)
        await b.close()
        await srv.stop()
    run(main())


def _nos_block(seq: int, cl: int) -> bytes:
    return wire.encode(wire.NEW_ORDER_SINGLE, seq, 0, cl, 100_000_000, 1, 1, 1, b"1", b"2",
                       b"1", 0)[wire.PREFIX_SIZE:]


def test_the_session_file_is_a_snapshot_and_an_append_only_log(tmp_path):
    """Each change is one line of <file>.log (no rewrite of the outbox per send); reading
    applies the log to the snapshot, idempotently; a torn last line is ignored and a damaged
    one before it refuses the file; the log is folded into a snapshot once long enough; a file
    moved away starts a new session whatever its old log says."""
    path = str(tmp_path / "s.json")
    st = sdk.SessionState.load(path, "alice")
    assert st.created
    for i in range(1, 6):
        st.next_seq, st.next_cl_ord_id = i + 1, i + 1
        st.outbox.append((i, wire.NEW_ORDER_SINGLE, _nos_block(i, i)))
        st.note_sent()
    snapshot = open(path, "rb").read()
    st.applied_below(3)
    st.note_applied(3)
    st.last_seen = 7
    st.note_seen()
    assert open(path, "rb").read() == snapshot          # not rewritten
    assert len(open(st.log_path, "rb").read().splitlines()) == 6
    st.close()

    def read():
        r = sdk.SessionState.load(path, "alice")
        return (r.session_id, r.next_seq, r.next_cl_ord_id, r.last_seen,
                [e[0] for e in r.outbox])
    want = (st.session_id, 6, 6, 7, [3, 4, 5])
    assert read() == want
    log = open(st.log_path, "rb").read()
    with open(st.log_path, "ab") as f:                   # a crash mid-write
        f.write(b'["o",6,100,"0a')
    assert read() == want
    with open(st.log_path, "wb") as f:                   # the log twice: nothing changes
        f.write(log + log)
    assert read() == want
    with open(st.log_path, "wb") as f:
        f.write(b"[nonsense\n" + log)
    with pytest.raises(sdk.SessionError, match="damaged"):
        sdk.SessionState.load(path, "alice")
    with open(st.log_path, "wb") as f:
        f.write(log)
    # folded into a snapshot when long: the file alone then says it all
    r = sdk.SessionState.load(path, "alice")
    r.COMPACT_LINES = 8
    for _ in range(8):
        r.last_seen += 1
        r.note_seen()
    r.close()
    # (6 lines read + 6 more reach 8 and 4 x the outbox's 3: folded; then 2 lines)
    assert open(r.log_path, "rb").read() == b'["s",14]\n["s",15]\n'
    assert read() == (st.session_id, 6, 6, 15, [3, 4, 5])
    # moved away: a new session; its first snapshot empties the stale log
    os.rename(path, path + ".old")
    n = sdk.SessionState.load(path, "alice")
    assert n.created and n.outbox == [] and n.session_id != st.session_id
    n.last_seen = 1
    n.note_seen()
    n.close()
    assert sdk.SessionState.load(path, "alice").session_id == n.session_id


def test_a_torn_log_line_is_cut_off_and_a_full_disk_leaves_no_torn_line(tmp_path,
                                                                        monkeypatch):
    """A crash (or a full disk) mid-write leaves a torn last line: reading cuts it off, so the
    next line does not merge with it and the file stays readable. A write the disk takes only
    part of raises, leaves the log as it was, and the message is not sent nor kept in the
    outbox (a retry of the caller's would have placed it twice)."""
    path = str(tmp_path / "s.json")
    st = sdk.SessionState.load(path, "alice")
    for i in range(1, 4):
        st.next_seq, st.next_cl_ord_id = i + 1, i + 1
        st.outbox.append((i, wire.NEW_ORDER_SINGLE, _nos_block(i, i)))
        st.note_sent()
    st.close()
    whole = open(st.log_path, "rb").read()
    with open(st.log_path, "wb") as f:
        f.write(whole[:-20])                                  # the third line torn
    r = sdk.SessionState.load(path, "alice")
    assert [e[0] for e in r.outbox] == [1, 2] and r.next_seq == 3
    assert open(st.log_path, "rb").read() == whole[:whole.rindex(b"\n", 0, -1) + 1]
    r.next_seq, r.next_cl_ord_id = 4, 4
    r.outbox.append((3, wire.NEW_ORDER_SINGLE, _nos_block(3, 3)))
    r.note_sent()
    r.close()
    assert [e[0] for e in sdk.SessionState.load(path, "alice").outbox] == [1, 2, 3]

    c = make(1, path)                                       # (never connected)
    real = os.write
    monkeypatch.setattr(sdk.os, "write", lambda fd, b: real(fd, b[:10]))
    size = os.path.getsize(st.log_path)
    with pytest.raises(OSError):
        c._send_sequenced(wire.NEW_ORDER_SINGLE, lambda seq, cl: wire.encode(
            wire.NEW_ORDER_SINGLE, seq, 0, cl, 100_000_000, 1, 1, 1, b"1", b"2", b"1", 0))
    monkeypatch.setattr(sdk.os, "write", real)
    assert os.path.getsize(st.log_path) == size
    assert (c.state.next_seq, c.state.next_cl_ord_id, [e[0] for e in c.state.outbox]) == \
        (4, 4, [1, 2, 3])
    c.state.close()
    assert [e[0] for e in sdk.SessionState.load(path, "alice").outbox] == [1, 2, 3]


def test_a_session_file_behind_the_server_is_final(tmp_path):
    """LogonAck says the server applied SeqNos the file never sent (an older copy of it): the
    client stops with a SessionError instead of reusing those SeqNos and ClOrdIDs, which the
    server would drop as duplicates without a word."""
    async def main():
        srv = FakeServer()
        port = await srv.start()
        path = tmp_path / "s.json"
        a = make(port, path)
        await a.connect()
        for _ in range(3):
            await a.new_order("BTCUSDT", "buy", "0.002", "49999.5")
        for _ in range(3):
            await a.next_report(timeout_s=10)
        await a.close()
        st = sdk.SessionState.load(str(path), "alice")
        st.next_seq = st.next_cl_ord_id = 2                 # the file rolled back
        st.outbox = []
        st.save()
        b = make(port, path, reconnect=False)
        with pytest.raises(sdk.SessionError, match="behind the server"):
            await b.connect()
        await b.close(logout=False)
        await srv.stop()
    run(main())


def test_a_session_file_in_use_by_another_process_is_refused(tmp_path):
    """One process per session: a second process's Client on the same file is refused with a
    SessionError (both sent under the same SeqNos and ClOrdIDs); once the first closes its
    Client, the file is free."""
    import subprocess
    import sys
    path = str(tmp_path / "s.json")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from gateway import client as c; c.lock_session(sys.argv[1]); print('held', "
         "flush=True); time.sleep(60)", path,
         os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(sdk.SessionError, match="in use by another process"):
            make(1, path)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    c = make(1, path)                        # the holder gone: free again
    run(c.close(logout=False))


def test_heartbeats_both_ways_and_a_test_request_is_answered(tmp_path):
    async def main():
        srv = FakeServer(hb_ms=200)
        port = await srv.start()
        c = make(port, tmp_path / "s.json", heartbeat_ms=100)
        await c.connect()
        srv.writers[-1].write(wire.encode(wire.TEST_REQUEST, 77))
        for _ in range(200):
            if any(t == 77 for t, _a, _b in srv.heartbeats) and len(srv.heartbeats) > 2:
                break
            await asyncio.sleep(0.01)
        assert any(t == 77 for t, _a, _b in srv.heartbeats)
        assert len(srv.heartbeats) > 2 and srv.heartbeats[0][1:] == (1, 1)
        await c.close()
        await srv.stop()
    run(main())


def test_a_silent_server_is_left_and_logged_on_to_again(tmp_path):
    async def main():
        srv = FakeServer(hb_ms=100)
        port = await srv.start()
        c = make(port, tmp_path / "s.json", heartbeat_ms=100)
        await c.connect()                 # the fake never heartbeats: the client leaves it
        for _ in range(500):
            if len(srv.logons) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(srv.logons) >= 2 and srv.logons[1][0] == c.session_id
        await c.close()
        await srv.stop()
    run(main())


def test_bad_credentials_are_final(tmp_path):
    async def main():
        srv = FakeServer()
        port = await srv.start()
        c = make(port, tmp_path / "s.json", password="wrong")
        with pytest.raises(sdk.SessionError, match="bad credentials"):
            await c.connect()
        await c.close()
        await srv.stop()
    run(main())


def test_reports_carry_decimals_in_the_contracts_units(tmp_path):
    async def main():
        srv = FakeServer()
        srv.fills = {1}
        port = await srv.start()
        c = make(port, tmp_path / "s.json")
        await c.connect()
        await c.new_order("BTCUSDT", "buy", "0.010", "50000")
        new, fill = await reports(c, 2)
        assert new.price == Decimal("50000.0") and new.qty == Decimal("0.010")
        assert (fill.last_px, fill.last_qty, fill.leaves_qty) == (
            Decimal("49999.5"), Decimal("0.004"), Decimal("0.006"))
        line = sdk.describe("alice", fill, c.instruments)
        assert line == ("alice: BTCUSDT buy 0.01 @ 50000.00 [order 1] filled 0.004 @ "
                        "49999.50 (taker), 0.006 left")
        await c.close()
        await srv.stop()
    run(main())


@pytest.mark.parametrize("qty, price, want", [
    ("0.0005", "100", "not a positive multiple of the lot 0.001"),
    ("0.001", "100.25", "not a positive multiple of the tick 0.5"),
    (0.5, "100", "not a float"),
    ("1", "abc", "is not a number"),
    ("-1", "100", "not a positive multiple of the lot"),
])
def test_off_grid_values_are_refused_before_anything_is_sent(tmp_path, qty, price, want):
    async def main():
        c = make(1, tmp_path / "s.json", reconnect=False)
        with pytest.raises(ValueError, match=want):
            await c.new_order("BTCUSDT", "buy", qty, price)
        with pytest.raises(ValueError, match="unknown symbol"):
            await c.new_order("NOPE", "buy", "1", "1")
        assert c.state.next_seq == 1 and c.state.outbox == []
    run(main())


def test_a_slow_logon_is_waited_for(tmp_path):
    """The LogonAck waits for the TradingEngine's SessionState through the log; the client
    must not take that silence for a dead server (it once closed after 2.5 s)."""
    async def main():
        srv = FakeServer()
        srv.logon_delay_s = 3.0
        port = await srv.start()
        c = make(port, tmp_path / "s.json", connect_timeout_s=10)
        await c.connect()
        assert len(srv.logons) == 1
        await c.close()
        await srv.stop()
    run(main())


def test_an_amend_is_told_with_the_orders_old_and_new_id():
    inst = {"BTCUSDT": sdk.Instrument.of("BTCUSDT", SPECS["BTCUSDT"])}
    base = dict(seq=3, transact_time_ns=0, order_id=7, exec_id=3, symbol="BTCUSDT",
                security_id=1, account=2, ord_status="new", side="buy", tif="gtc",
                last_px=None, last_qty=Decimal(0), cum_qty=Decimal(0), reason=0,
                liquidity=None, poss_dup=True)
    amended = sdk.ExecutionReport(cl_ord_id=2, orig_cl_ord_id=1, exec_type="replaced",
                                  ord_type="limit", price=Decimal("49990"), qty=Decimal("0.02"),
                                  leaves_qty=Decimal("0.016"), **base)
    assert sdk.describe("alice", amended, inst) == (
        "alice: BTCUSDT buy 0.02 @ 49990.00 [order 2, was 1] amended, 0.016 left")
    market = sdk.ExecutionReport(cl_ord_id=4, orig_cl_ord_id=None, exec_type="new",
                                 ord_type="market", price=None, qty=Decimal("0.004"),
                                 leaves_qty=Decimal("0.004"), **base)
    assert sdk.describe("bob", market, inst) == (
        "bob: BTCUSDT buy 0.004 @ market [order 4] accepted")
    for tif, said in (("ioc", "accepted"), ("fok", "accepted"), ("day", "accepted, resting")):
        limit = sdk.ExecutionReport(cl_ord_id=5, orig_cl_ord_id=None, exec_type="new",
                                    ord_type="limit", price=Decimal("50000"),
                                    qty=Decimal("0.004"), leaves_qty=Decimal("0.004"),
                                    **dict(base, tif=tif))
        assert sdk.describe("bob", limit, inst) == (
            f"bob: BTCUSDT buy 0.004 @ 50000.00 [order 5] {said}"), tif


def test_an_unfillable_fill_or_kill_reads_as_killed_not_as_a_margin_limit():
    """An FOK that cannot fill in full comes back Expired with Reason 3 (IOC/FOK remainder,
    PROTOCOL.md), not as a reject: the line says it was not filled, nothing about margin; a
    reject with OrdRejReason 3 still reads as a limit."""
    inst = {"BTCUSDT": sdk.Instrument.of("BTCUSDT", SPECS["BTCUSDT"])}
    base = dict(seq=3, transact_time_ns=0, order_id=7, exec_id=3, symbol="BTCUSDT",
                security_id=1, account=2, side="buy", last_px=None,
                last_qty=Decimal(0), cum_qty=Decimal(0), reason=3, liquidity=None,
                poss_dup=False, cl_ord_id=5, orig_cl_ord_id=None,
                ord_type="limit", price=Decimal("40000"), qty=Decimal("0.001"),
                leaves_qty=Decimal(0), tif="fok")
    fok = sdk.ExecutionReport(exec_type="expired", ord_status="expired", **base)
    assert sdk.describe("alice", fok, inst) == (
        "alice: BTCUSDT buy 0.001 @ 40000.00 [order 5] expired (IOC/FOK: not filled at once), "
        "0 filled")
    rej = sdk.ExecutionReport(exec_type="rejected", ord_status="rejected", **base)
    # OrdRejReason 3 is the price band as much as margin (the engine's 2011 and 2012): the
    # words said only 'margin or risk', so a post-only order outside the band read as margin
    assert sdk.describe("alice", rej, inst).endswith(
        "rejected (exceeds a limit: price outside the band around the mark, margin, a risk "
        "limit, or the book or account full; the reject does not say which)")
    # OrdRejReason 0 (a post-only that would take, a reduce-only that would increase, a stop
    # that would fire at once) read as 'exchange option'
    post = sdk.ExecutionReport(exec_type="rejected", ord_status="rejected",
                               **{**base, "reason": 0})
    assert sdk.describe("alice", post, inst).endswith(
        "rejected (an order option refused it: post-only that would have traded at once, "
        "reduce-only that would increase the position, or a stop that would fire at once)")


def test_a_cancel_reject_names_the_order_and_says_why_it_is_too_late():
    base = dict(seq=9, transact_time_ns=0, cl_ord_id=12, symbol="BTCUSDT",
                response_to="cancel", poss_dup=False)
    late = sdk.CancelReject(orig_cl_ord_id=5, order_id=41, ord_status="filled", reason=0,
                            **base)
    assert sdk.describe("alice", late) == (
        "alice: BTCUSDT cancel of order 5 refused (too late: it is filled)")
    by_id = sdk.CancelReject(orig_cl_ord_id=None, order_id=41, ord_status="rejected",
                             reason=1, **base)
    assert sdk.describe("alice", by_id) == (
        "alice: BTCUSDT cancel of order id 41 refused (unknown order)")
