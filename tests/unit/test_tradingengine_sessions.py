"""Sessions in the TradingEngine (docs/order-path.md §3, PROTOCOL.md §4): logon and resume,
client SeqNo rules, the PROTOCOL.md messages each order gets, cancel-on-disconnect, bounds.

The expected blocks are packed here with PROTOCOL.md's own struct formats (chars as 'c'), not
with tradingengine/codec.py's, so that the two are checked against each other.
"""
from __future__ import annotations

import dataclasses
import struct

import pytest

from tests.tradingvenue import _CE_NEW, SECOND, Venue, two_specs
from tradingengine import codec as c
from tradingengine.engine import PENDING_CANCEL, TradingEngine
from tradingengine.reference import interpreted

NOS = struct.Struct("<QQQqQIIcccB")
OCR = struct.Struct("<QQQQQIcB")
OCRR = struct.Struct("<QQQQQqQIcccB")
OMCR = struct.Struct("<QQQIccB")
ER = struct.Struct("<QQQQQQqQqQQQIIcccccBBB")
OCJ = struct.Struct("<QQQQQIccBB")
OMCRPT = struct.Struct("<QQQIIccBB")
BR = struct.Struct("<QQQQHBB32s")
NA = struct.Struct("<QQI")
BLOCKS = {10: NA, 200: ER, 201: OCJ, 202: OMCRPT, 203: BR}
NULL = (1 << 64) - 1
NULL_PX = -(1 << 63)
TICK = 1_000_000            # 0.01 in 1e-8 units
E8 = 10**8


def specs():
    return [dataclasses.replace(s, tick=TICK) for s in two_specs()]


class Harness:
    """A shard with its CrossEngines, and the sessions' messages as PROTOCOL.md decodes them."""

    def __init__(self, engine=TradingEngine, shadows=(), shard=0, n_shards=1,
                 accounts=(1, 2, 3), auto=True) -> None:
        self.v = Venue(specs(), shard=shard, n_shards=n_shards, shadows=shadows, engine=engine,
                       auto=auto)
        for account in accounts:
            self.v.deposit(account, 10**12)
        self.v.mark(1, 10_000)
        self.v.mark(2, 50_000)
        self.seq: dict[tuple, int] = {}

    def apply(self, kind, payload, dt_ns=1_000):
        return self.v.apply(kind, payload, dt_ns)

    def logon(self, user, sid, conn=7, accounts=None, default=None, cod=0, cod_ms=0):
        accounts = accounts or [user]
        ev = self.apply(c.SESSION_LOGON, c.session_logon(user, sid, conn, default or accounts[0],
                                                         accounts, cod, cod_ms))
        states = [e for e in ev if e[0] == c.SESSION_STATE]
        assert len(states) == 1, ev
        return states[0][1:]

    def send(self, user, sid, template, block, flags=0, dt_ns=1_000):
        ev = self.apply(c.CLIENT_MESSAGE, c.client_message(user, sid, template, block, flags),
                        dt_ns)
        return msgs(ev)

    def nos(self, user, sid, seq, clordid, side=b"1", price=100 * E8, qty=5, secid=1,
            account=0, ord_type=b"2", tif=b"1", flags=0):
        return self.send(user, sid, 100, NOS.pack(seq, 0, clordid, price, qty, secid, account,
                                                  side, ord_type, tif, flags))


def msgs(events, user=None, sid=None):
    """[(user, sid, template, fields)] of the SessionMessages in events."""
    out = []
    for e in events:
        if e[0] == c.SESSION_MESSAGE and (user is None or (e[1], e[2]) == (user, sid)):
            assert len(e[4]) == BLOCKS[e[3]].size
            out.append((e[1], e[2], e[3], BLOCKS[e[3]].unpack(e[4])))
    return out


def ers(ms, exec_type=None):
    return [m[3] for m in ms if m[2] == 200 and (exec_type is None or m[3][14] == exec_type)]


def test_logon_creates_resumes_and_refuses_a_session_bound_elsewhere():
    h = Harness()
    assert h.logon(1, 55, conn=7) == (1, 55, 7, 1, 1, c.SESSION_NEW)
    assert h.logon(1, 55, conn=8) == (1, 55, 8, 1, 1, c.SESSION_BOUND_ELSEWHERE)
    h.apply(c.SESSION_END, c.session_end(1, 55, 8, c.END_LOGOUT))     # not its connection
    assert h.v.te.sessions[(1, 55)].bound
    h.apply(c.SESSION_END, c.session_end(1, 55, 7, c.END_LOGOUT))
    assert h.logon(1, 55, conn=8) == (1, 55, 8, 1, 1, c.SESSION_RESUMED)


def test_a_new_order_gets_a_protocol_execution_report_new():
    h = Harness()
    h.logon(1, 5)
    ms = h.nos(1, 5, 1, 777, price=101 * E8, qty=9)
    o = next(iter(h.v.te.orders.values()))
    (er,) = ers(ms)
    ts = h.v.ts_ns          # the CrossEngine's answer is the last record applied
    assert er == (1, ts, 777, NULL, o.order_id, er[5], 10100 * TICK, 9, NULL_PX, 0, 9, 0, 1, 1,
                  b"0", b"0", b"1", b"2", b"1", 0, 0, 0)
    assert o.sess == (1, 5) and o.price == 10100
    # the engine's own events are still there
    assert [e for e in h.v.te.orders.values()][0].client_order_id == 777


def test_a_trade_reports_to_both_sessions_with_last_price_quantity_and_liquidity():
    h = Harness()
    h.logon(1, 5)
    h.logon(2, 6)
    h.nos(1, 5, 1, 10, side=b"2", price=100 * E8, qty=5)
    ms = h.nos(2, 6, 1, 20, side=b"1", price=101 * E8, qty=3)
    maker = ers([m for m in ms if m[0] == 1], b"F")
    taker = ers([m for m in ms if m[0] == 2], b"F")
    assert len(maker) == len(taker) == 1
    assert maker[0][7:12] == (5, 100 * E8, 3, 2, 3) and maker[0][15] == b"1"
    assert maker[0][20] == 1 and taker[0][20] == 2          # maker added, taker removed
    assert taker[0][7:12] == (3, 100 * E8, 3, 0, 3) and taker[0][15] == b"2"
    assert taker[0][0] == 2                                  # ER New was 1
    assert maker[0][5] != taker[0][5]                        # ExecIDs unique
    assert h.v.position(1).size == -3 and h.v.position(2).size == 3
    h.v.te.audit()


def test_order_ids_and_exec_ids_are_unique_across_shards():
    """Each shard numbers its orders and reports on its own, deterministically; a client that
    trades on accounts of two shards (or compares notes with another) never sees one OrderID or
    ExecID twice. OrderID: shard + 1 + k x n_shards; ExecID: (seq, rank) x n_shards + shard."""
    order_ids, exec_ids = {}, {}
    for shard in (0, 1):
        a, b = 2 + shard, 4 + shard            # this shard's accounts (account % 2 == shard)
        h = Harness(shard=shard, n_shards=2, accounts=(a, b))
        h.logon(a, 5)
        h.logon(b, 6)
        ms = h.nos(a, 5, 1, 10, side=b"2", price=100 * E8, qty=5)
        ms += h.nos(b, 6, 1, 20, side=b"1", price=101 * E8, qty=3)
        ms += h.nos(b, 6, 2, 21, side=b"1", price=99 * E8, qty=1)
        reports = ers(ms)
        assert {er[14] for er in reports} == {b"0", b"F"}
        order_ids[shard] = {er[4] for er in reports}
        exec_ids[shard] = [er[5] for er in reports]
        assert order_ids[shard] == {o.order_id for o in h.v.te.orders.values()} | {
            er[4] for er in reports if er[15] == b"2"}
        assert len(order_ids[shard]) == 3
        assert all((oid - 1) % 2 == shard for oid in order_ids[shard])
        assert len(set(exec_ids[shard])) == len(exec_ids[shard])
        h.v.te.audit()
    assert not order_ids[0] & order_ids[1]
    assert not set(exec_ids[0]) & set(exec_ids[1])


def test_a_sharded_snapshot_numbers_on_as_a_replay_and_an_old_one_is_refused():
    """A shard of two, restored, numbers its next order as the engine that wrote the snapshot
    would. Every engine writes version 9 (10 with the LiqEngine); an older one (5 / 6 of one
    shard, 7 / 8 of several: written before sessions kept their finished orders, and a 5 / 6
    of several shards before OrderIDs were numbered across the venue) is refused, so that its
    replica replays its log."""
    import msgpack
    h = Harness(shard=1, n_shards=2, accounts=(3, 5))
    h.logon(3, 5)
    h.nos(3, 5, 1, 10, side=b"2", price=100 * E8, qty=5)
    h.nos(3, 5, 2, 11, side=b"2", price=101 * E8, qty=5)
    data = h.v.te.snapshot()
    state = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert state[0] == 9 and state[6] == h.v.te.next_order_id == 6   # ids 2, 4: next 6
    back = TradingEngine.restore(data)
    assert back.next_order_id == 6 and back.state_hash() == h.v.te.state_hash()
    sessions_before = [row[:13] for row in state[21]]         # as 5 / 6 / 7 / 8 wrote them
    for version in (5, 6, 7, 8):
        old = msgpack.packb([version, *state[1:21], sessions_before, *state[22:]],
                            use_bin_type=True)
        with pytest.raises(ValueError, match="numbered its orders from 1" if version < 7
                           else "before sessions kept their finished orders"):
            TradingEngine.restore(old)
    # one without a ClOrdID used restores exactly (no session can have finished an order)
    fresh = Harness(shard=1, n_shards=2, accounts=(3, 5))
    fresh.logon(3, 5)
    state = msgpack.unpackb(fresh.v.te.snapshot(), raw=False, strict_map_key=False)
    old = msgpack.packb([7, *state[1:21], [row[:13] for row in state[21]], *state[22:]],
                        use_bin_type=True)
    assert TradingEngine.restore(old).state_hash() == fresh.v.te.state_hash()
    one = Harness()
    assert msgpack.unpackb(one.v.te.snapshot(), raw=False, strict_map_key=False)[0] == 9
    assert TradingEngine.restore(one.v.te.snapshot()).state_hash() == one.v.te.state_hash()


def test_an_exec_id_past_its_range_wraps_rather_than_halting_the_shard():
    h = Harness(shard=1, n_shards=2, accounts=(3, 5))
    h.logon(3, 5)
    h.v.seq = (1 << 44) // 2 + 5            # ((seq << 20) | rank) * 2 + 1 is past 2^64
    (er,) = ers(h.nos(3, 5, 1, 10, side=b"2", price=100 * E8, qty=5))
    assert er[14] == b"0" and 0 <= er[5] < 1 << 64


def test_client_seqno_rules_and_the_reconnect_walkthrough():
    h = Harness()
    h.logon(1, 9, conn=1)
    for n in range(1, 5):
        (er,) = ers(h.nos(1, 9, n, 100 + n))
        assert er[0] == n
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))
    # LogonAck numbers: nextExpected 5 (NOS 1..4 applied), NextSeqNo 5 (server 1..4 issued)
    assert h.logon(1, 9, conn=2) == (1, 9, 2, 5, 5, c.SESSION_RESUMED)
    assert ers(h.nos(1, 9, 5, 105))[0][0] == 5               # the resend of NOS 5 applies
    assert h.nos(1, 9, 5, 105) == []                          # a repeat: dropped silently
    assert h.nos(1, 9, 3, 999) == []
    assert h.v.te.duplicates_dropped == 2
    ms = h.nos(1, 9, 8, 108)                                  # 6 and 7 abandoned
    assert ms[0][2:] == (10, (6, 6, 2))                       # NotApplied(6, 2), SeqNo 6
    assert ers(ms)[0][0] == 7 and ers(ms)[0][2] == 108
    assert h.v.te.sessions[(1, 9)].next_expected == 9
    assert h.nos(1, 9, 7, 107) == []                          # never applied later


def test_a_resume_is_answered_once_what_it_counts_as_applied_is_answered():
    """PROTOCOL.md §4's walkthrough: had NOS 5 been applied just before the drop, LogonAck
    would say NextExpectedSeqNo=6 and the replay would contain its ack. The engine applies an
    order when it is sequenced, and its ExecutionReport New comes with the CrossEngine's
    answer: the SessionState of a resume waits for the answers to the session's new orders,
    cancels and replaces (its NextSeqNo then counts them), at most LOGON_HOLD_NS. (A client
    reconnecting at once got LogonAck NextExpectedSeqNo=6 with the ack not in the replay: it
    came live after it, in 12 of 30 tries of an independent client.) Compiled, interpreted
    and a restore from a snapshot while the logon is held give the same bytes."""
    from tradingengine.engine import LOGON_HOLD_NS
    h = Harness(shadows=(interpreted(),), auto=False)
    h.logon(1, 9, conn=1)
    for n in range(1, 5):
        h.nos(1, 9, n, 100 + n, price=(90 + n) * E8)
        h.v.deliver()
    assert h.v.te.sessions[(1, 9)].next_seq == 5       # four ExecutionReports New
    h.nos(1, 9, 5, 105, price=95 * E8)                  # applied; its answer on its way
    h.send(1, 9, 101, OCR.pack(6, 0, 106, 101, NULL, 1, b"1", 0))   # a cancel of NOS 1 too
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))
    ev = h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 2, 1, [1], 0, 0))
    assert [e for e in ev if e[0] == c.SESSION_STATE] == []          # held
    snap, at = h.v.te.snapshot(), len(h.v.log)
    restored = TradingEngine.restore(snap)
    assert restored.snapshot() == snap and restored.held == {(1, 9): None}
    ev = h.v.deliver(1)                                  # NOS 5's New: the cancel still waits
    assert [er[0] for er in ers(msgs(ev), b"0")] == [5]
    assert [e for e in ev if e[0] == c.SESSION_STATE] == []
    ev = h.v.deliver(1)                                  # NOS 1's Canceled
    assert [er[0] for er in ers(msgs(ev), b"4")] == [6]
    states = [e[1:] for e in ev if e[0] == c.SESSION_STATE]
    assert states == [(1, 9, 2, 7, 7, c.SESSION_RESUMED)]   # the replay ends at server 6
    assert h.v.te.held == {}
    # the same records on the engine restored while the logon was held: the same events
    for seq, ts, kind, payload in h.v.log[at:]:
        last = restored.apply(seq, ts, kind, payload)
    assert c.decode_events(last) == ev
    assert restored.snapshot() == h.v.te.snapshot()
    # a CrossEngine that never answers holds the logon no longer than LOGON_HOLD_NS
    h.nos(1, 9, 7, 107, price=96 * E8)
    h.apply(c.SESSION_END, c.session_end(1, 9, 2, c.END_DISCONNECT))
    ev = h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 3, 1, [1], 0, 0))
    assert [e for e in ev if e[0] == c.SESSION_STATE] == []
    assert [e for e in h.apply(c.KIND_TICK, b"", LOGON_HOLD_NS // 2)
            if e[0] == c.SESSION_STATE] == []
    ev = h.apply(c.KIND_TICK, b"", LOGON_HOLD_NS // 2)
    assert [e[1:] for e in ev if e[0] == c.SESSION_STATE] == [(1, 9, 3, 8, 7, c.SESSION_RESUMED)]
    # a connection that goes while its logon is held takes the hold with it
    h.v.deliver()
    h.nos(1, 9, 8, 108, price=97 * E8)
    h.apply(c.SESSION_END, c.session_end(1, 9, 3, c.END_DISCONNECT))
    h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 4, 1, [1], 0, 0))
    h.apply(c.SESSION_END, c.session_end(1, 9, 4, c.END_DISCONNECT))
    assert h.v.te.held == {} and h.v.te.sessions[(1, 9)].held is None
    ev = h.v.deliver()
    assert [e for e in ev if e[0] == c.SESSION_STATE] == []
    # a new session (nothing of it in flight) and a resume with nothing in flight: at once
    assert h.logon(1, 9, conn=5)[-1] == c.SESSION_RESUMED


def test_a_held_resume_times_out_on_a_busy_stream_and_looks_only_at_what_waited():
    """(An adversary's review of the hold.) The time limit holds on any record: a stream busy
    with other records has no Ticks, and a held logon with its CrossEngine silent waited 20 s
    of marks (the gateway gave up with LogonReject 6 after 10 s). A message of the session
    applied while held (a gateway that passed it on) is waited for too. And a check looks at
    the orders that waited, not every order of the session's accounts: 20 held sessions of a
    64-account user with 12,736 orders cost 7.4 ms per CrossEngine record."""
    from tradingengine.engine import LOGON_HOLD_NS
    h = Harness(shadows=(interpreted(),), auto=False)
    h.logon(1, 9, conn=1)
    h.nos(1, 9, 1, 101, price=91 * E8)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))
    assert [e for e in h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 2, 1, [1], 0, 0))
            if e[0] == c.SESSION_STATE] == []
    assert h.v.te.sessions[(1, 9)].held[4] == [h.v.te.sessions[(1, 9)].held[4][0]]
    got = []
    for i in range(40):                                  # a mark every 100 ms, no Tick
        got += [(i, e[1:]) for e in h.v.mark(1, 10_000 + i % 3, dt_ns=100_000_000)
                if e[0] == c.SESSION_STATE]
    step = LOGON_HOLD_NS // 100_000_000
    assert got == [(step - 1, (1, 9, 2, 2, 1, c.SESSION_RESUMED))]   # at 2 s, on a mark
    assert h.v.te.held == {}
    h.v.deliver()                                        # the ack comes live after all
    # a message of the session applied while held is waited for as well
    h.nos(1, 9, 2, 102, price=92 * E8)
    h.apply(c.SESSION_END, c.session_end(1, 9, 2, c.END_DISCONNECT))
    h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 3, 1, [1], 0, 0))
    h.nos(1, 9, 3, 103, price=93 * E8)
    ev = h.v.deliver(1)                                  # NOS 2's ack: NOS 3's still waits
    assert [e for e in ev if e[0] == c.SESSION_STATE] == []
    ev = h.v.deliver(1)
    assert [e[1:] for e in ev if e[0] == c.SESSION_STATE] == [(1, 9, 3, 4, 4, c.SESSION_RESUMED)]


def test_a_seqno_jump_beyond_a_u32_and_the_last_seqno():
    """order-path.md §4: NotApplied.Count says at most 2^32 - 1; after SeqNo 2^64 - 1 nothing
    is left to expect (never 0), its resend is a duplicate, and the session still logs on,
    snapshots and restores. (Found by tests/stateful/test_session_model.py: the engine raised
    on a client's jump of 2^32 or more.)"""
    h = Harness()
    h.logon(1, 9, conn=1)
    ms = h.nos(1, 9, 1 + 2**32, 101)
    assert ms[0][2:] == (10, (1, 1, 2**32 - 1))               # NotApplied(1, 2^32 - 1)
    assert ers(ms)[0][2] == 101
    ms = h.nos(1, 9, NULL, 102)
    assert ms[0][2:] == (10, (3, 2 + 2**32, 2**32 - 1))
    assert ers(ms)[0][2] == 102
    assert h.nos(1, 9, NULL, 102) == [] and h.nos(1, 9, NULL, 103) == []   # duplicates
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))
    assert h.logon(1, 9, conn=2) == (1, 9, 2, NULL, 5, c.SESSION_RESUMED)
    back = TradingEngine.restore(h.v.te.snapshot())
    assert back.state_hash() == h.v.te.state_hash()
    assert back.sessions[(1, 9)].next_expected == h.v.te.sessions[(1, 9)].next_expected
    assert h.nos(1, 9, NULL, 104) == []


def test_a_logon_asking_beyond_the_server_next_seqno_changes_nothing():
    """PROTOCOL.md §4.5: NextExpectedSeqNo > H + 1 is refused (LogonReject 5). The SessionLogon
    carries it, so the engine refuses before binding: a pending cancel-on-disconnect stays
    armed and the refused Logon's own mode is not taken. (Found by
    tests/stateful/test_session_model.py: the refused Logon used to bind, then its SessionEnd
    fired the refused Logon's cancel-on-disconnect.)"""
    h = Harness()
    h.logon(1, 9, conn=1)
    h.nos(1, 9, 1, 101)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))
    ev = h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 2, 1, [1], c.COD_ON_DISCONNECT, 0,
                                                  next_expected=3))
    assert [e[1:] for e in ev if e[0] == c.SESSION_STATE] == [(1, 9, 2, 2, 2, c.SESSION_BEYOND)]
    sess = h.v.te.sessions[(1, 9)]
    assert not sess.bound and sess.conn_id == 1 and sess.cod_mode == 0
    h.apply(c.SESSION_END, c.session_end(1, 9, 2, c.END_DISCONNECT))   # not its connection
    h.apply(c.KIND_TICK, b"", SECOND)
    assert len(h.v.te.orders) == 1                                        # nothing cancelled
    # an unknown session asking beyond 1 is not created
    ev = h.apply(c.SESSION_LOGON, c.session_logon(1, 10, 3, 1, [1], next_expected=2))
    assert [e[1:] for e in ev if e[0] == c.SESSION_STATE] == [(1, 10, 3, 1, 1, c.SESSION_BEYOND)]
    assert (1, 10) not in h.v.te.sessions
    # armed cancel-on-disconnect stays armed through a refused Logon
    h.logon(1, 9, conn=4, cod=c.COD_ON_DISCONNECT, cod_ms=1000)
    h.apply(c.SESSION_END, c.session_end(1, 9, 4, c.END_DISCONNECT))
    h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 5, 1, [1], 0, 0, next_expected=9))
    h.apply(c.KIND_TICK, b"", 2 * SECOND)
    assert not h.v.te.orders
    # within H + 1 it binds as before
    assert h.logon(1, 9, conn=6) == (1, 9, 6, 2, 3, c.SESSION_RESUMED)


def test_gateway_flags_unknown_templates_and_unauthorised_accounts_consume_the_seqno():
    h = Harness()
    h.logon(1, 9, accounts=[1, 3])
    block = NOS.pack(1, 0, 50, 100 * E8, 1, 1, 0, b"1", b"2", b"1", 0)
    (m,) = h.send(1, 9, 100, block, flags=c.GW_THROTTLED)
    assert m[2] == 203 and m[3][2:6] == (1, 50, 100, 8)
    (m,) = h.send(1, 9, 100, NOS.pack(2, 0, 51, 100 * E8, 1, 1, 0, b"1", b"2", b"1", 0),
                  flags=c.GW_SHED)
    assert m[3][5] == 4 and m[3][7].rstrip(b"\0") == b"overloaded"
    (m,) = h.send(1, 9, 150, struct.pack("<Q", 3))
    assert m[3][2:6] == (3, NULL, 150, 3)
    (m,) = h.nos(1, 9, 4, 52, account=2)                    # account 2 is not the user's
    assert m[3][2:6] == (4, 52, 100, 6)
    (er,) = ers(h.nos(1, 9, 5, 53, account=3))              # account 3 is
    assert er[13] == 3 and er[14] == b"0"
    assert h.v.te.sessions[(1, 9)].next_expected == 6
    assert [m[3][0] for m in h.nos(1, 9, 5, 54)] == []


def test_field_errors_and_clordid_reuse_are_rejected_with_fix_reasons():
    h = Harness()
    h.logon(1, 9)
    (er,) = ers(h.nos(1, 9, 1, 60, price=100 * E8 + 1))     # not a whole tick
    assert er[14:16] == (b"8", b"8") and er[19] == 18 and er[4] == NULL
    (er,) = ers(h.nos(1, 9, 2, 61, qty=0))
    assert er[19] == 13
    (er,) = ers(h.nos(1, 9, 3, 62, secid=99))
    assert er[19] == 1
    (er,) = ers(h.nos(1, 9, 4, 63, tif=b"6"))                # GTD: not supported
    assert er[19] == 11
    (er,) = ers(h.nos(1, 9, 5, 61))                           # 61 was used (and rejected)
    assert er[19] == 6
    ers(h.nos(1, 9, 6, 64))
    (m,) = h.send(1, 9, 101, OCR.pack(7, 0, 64, 64, NULL, 1, b"1", 0))   # reuses 64
    assert m[2] == 201 and m[3][2] == 64 and m[3][7:9] == (b"1", 6)


def test_cancel_by_orig_clordid_or_order_id_and_cancel_rejects():
    h = Harness()
    h.logon(1, 9)
    ms70 = h.nos(1, 9, 1, 70)
    h.nos(1, 9, 2, 71)
    (er,) = ers(h.send(1, 9, 101, OCR.pack(3, 0, 72, 70, NULL, 1, b"1", 0)), b"4")
    assert er[2:4] == (72, 70) and er[15] == b"4" and er[19] == 0 and er[10] == 0
    oid = next(o.order_id for o in h.v.te.orders.values() if o.client_order_id == 71)
    (er,) = ers(h.send(1, 9, 101, OCR.pack(4, 0, 73, NULL, oid, 1, b"1", 0)), b"4")
    assert er[2:5] == (73, 71, oid)
    o70 = next(m[3][4] for m in ms70 if m[2] == 200)
    (m,) = h.send(1, 9, 101, OCR.pack(5, 0, 74, 70, NULL, 1, b"1", 0))     # cancelled: too late
    assert m[2] == 201 and m[3][2:5] == (74, 70, o70) and m[3][6:9] == (b"4", b"1", 0)
    (m,) = h.send(1, 9, 101, OCR.pack(6, 0, 75, 69, NULL, 1, b"1", 0))     # never used
    assert m[2] == 201 and m[3][2:5] == (75, 69, NULL) and m[3][6:9] == (b"8", b"1", 1)


def test_a_cancel_or_replace_of_a_finished_order_is_too_late_and_names_it():
    """FIX 102 reason 0 with the order's OrderID and final OrdStatus, by OrigClOrdID or by
    OrderID, also after a snapshot and restore; one naming another SecurityID or Side, another
    session's order by ClOrdID, or a ClOrdID never used is unknown (reason 1)."""
    h = Harness()
    h.logon(1, 9)
    h.logon(2, 5)
    ms = h.nos(1, 9, 1, 70, side=b"1", price=100 * E8, qty=5)
    oid = ers(ms)[0][4]
    ms = h.nos(2, 5, 1, 80, side=b"2", price=100 * E8, qty=5)         # fills 70 in full
    assert [(m[1], m[3][2], m[3][14], m[3][15]) for m in ms] == [
        (5, 80, b"0", b"0"), (9, 70, b"F", b"2"), (5, 80, b"F", b"2")]
    assert oid not in h.v.te.orders
    (m,) = h.send(1, 9, 101, OCR.pack(2, 0, 71, 70, NULL, 1, b"1", 0))
    assert m[2] == 201 and m[3][2:9] == (71, 70, oid, 1, b"2", b"1", 0)
    # by OrderID alone: OrigClOrdID is the order's ClOrdID (FIX: the ClOrdID of the order
    # that could not be cancelled), as when the fill was still in flight and the CrossEngine
    # found the cancel too late; it used to be null here and 70 there
    (m,) = h.send(1, 9, 101, OCR.pack(3, 0, 72, NULL, oid, 1, b"1", 0))
    assert m[2] == 201 and m[3][2:9] == (72, 70, oid, 1, b"2", b"1", 0)
    (m,) = h.send(1, 9, 102, OCRR.pack(4, 0, 73, 70, NULL, 99 * E8, 8, 1, b"1", b"2", b"1", 0))
    assert m[2] == 201 and m[3][2:9] == (73, 70, oid, 1, b"2", b"2", 0)
    # not the order's SecurityID or Side, or another session's ClOrdID: unknown
    (m,) = h.send(1, 9, 101, OCR.pack(5, 0, 74, 70, NULL, 1, b"2", 0))
    assert m[3][4:9] == (NULL, 1, b"8", b"1", 1)
    (m,) = h.send(1, 9, 101, OCR.pack(6, 0, 75, 70, NULL, 2, b"1", 0))
    assert m[3][4:9] == (NULL, 2, b"8", b"1", 1)
    (m,) = h.send(1, 9, 101, OCR.pack(7, 0, 76, 80, NULL, 1, b"1", 0))
    assert m[3][4:9] == (NULL, 1, b"8", b"1", 1)
    # a restored engine answers as the one that wrote the snapshot
    back = TradingEngine.restore(h.v.te.snapshot())
    assert back.state_hash() == h.v.te.state_hash()
    assert back.sessions[(1, 9)].done == {oid: (70, ord("2"), 1, ord("1"), 1)}
    h.v.te = back
    (m,) = h.send(1, 9, 101, OCR.pack(8, 0, 77, 70, NULL, 1, b"1", 0))
    assert m[2] == 201 and m[3][2:9] == (77, 70, oid, 1, b"2", b"1", 0)


def _cancel_answer(h, user, sid, seqno, coid, orig, order_id):
    """The OrderCancelReject a cancel gets: (OrderID, OrdStatus, CxlRejReason), and the
    engine's own CancelRejected event's (account, code)."""
    ev = h.apply(c.CLIENT_MESSAGE, c.client_message(user, sid, 101, OCR.pack(
        seqno, 0, coid, orig, order_id, 1, b"1", 0)))
    (m,) = [m for m in msgs(ev) if (m[0], m[1]) == (user, sid)]
    assert m[2] == 201
    (rej,) = [e for e in ev if e[0] == c.CANCEL_REJECTED]
    return (m[3][4], m[3][6], m[3][8]), (rej[1], rej[4])


def _oid(h, clordid):
    """The OrderID of the open order that goes by clordid (one of them here): how another
    session names it (PROTOCOL.md §4.3: ClOrdIDs are the session's)."""
    (o,) = [o for o in h.v.te.orders.values() if o.client_order_id == clordid]
    return o.order_id


def test_a_finished_order_replaced_by_another_session_is_too_late_and_restores_alike():
    """Session A of a user enters X (ClOrdID 10) and Y (its ClOrdID 91); Y fills; session B of
    the same user replaces X to B's own ClOrdID 91, then X fills. A's 91 names X now (the last
    of its orders to finish with it, as 91 named X while X was open; Y is named by its
    OrderID), X is too late by OrderID from either session, and a restore from a snapshot
    taken at any record answers as the engine that wrote it."""
    def run(restore_at):
        h = Harness(accounts=(1, 2, 3))
        h.logon(1, 9, conn=1, accounts=[1, 3])                    # A
        h.logon(1, 10, conn=2, accounts=[1, 3])                   # B, the same user
        h.logon(2, 5, conn=3)
        steps = [
            lambda: h.nos(1, 9, 1, 10, side=b"1", price=99 * E8, qty=5, account=3),
            lambda: h.nos(1, 9, 2, 91, side=b"1", price=100 * E8, qty=5),
            lambda: h.nos(2, 5, 1, 500, side=b"2", price=100 * E8, qty=5),      # fills Y
            lambda: h.send(1, 10, 102, OCRR.pack(1, 0, 91, NULL, _oid(h, 10), 99 * E8, 4, 1,
                                                 b"1", b"2", b"1", 0)),
            lambda: h.nos(2, 5, 2, 501, side=b"2", price=99 * E8, qty=4),       # fills X
        ]
        for n, step in enumerate(steps):
            if n == restore_at:
                h.v.te = TradingEngine.restore(h.v.te.snapshot())
            step()
        te = h.v.te
        x, y = sorted(te.sessions[(1, 9)].done)
        assert te.sessions[(1, 9)].done[x][:2] == (91, ord("2")) and not te.orders
        answers = [
            _cancel_answer(h, 1, 9, 3, 92, 91, NULL),      # A by 91: X
            _cancel_answer(h, 1, 9, 4, 93, NULL, y),       # A by Y's OrderID
            _cancel_answer(h, 1, 10, 2, 94, NULL, x),      # B by X's OrderID
            _cancel_answer(h, 1, 10, 3, 95, 91, NULL),     # B by 91: another session's order
            _cancel_answer(h, 1, 10, 4, 96, 10, NULL),     # B by X's first ClOrdID: never B's
        ]
        return answers, te.state_hash(), (x, y)

    answers, digest, (x, y) = run(None)
    assert answers == [((x, b"2", 0), (3, 2040)), ((y, b"2", 0), (1, 2040)),
                       ((x, b"2", 0), (3, 2040)), ((NULL, b"8", 1), (1, 2016)),
                       ((NULL, b"8", 1), (1, 2016))]
    for at in range(1, 5):
        assert run(at)[:2] == (answers, digest), at


def test_a_finished_order_of_an_account_the_session_no_longer_has_is_unknown():
    """As an open order would be: the session logged on again without the order's account."""
    h = Harness(accounts=(1, 3))
    h.logon(1, 9, conn=1, accounts=[1, 3])
    h.nos(1, 9, 1, 70, account=3)
    oid = next(iter(h.v.te.orders))
    (er,) = ers(h.send(1, 9, 101, OCR.pack(2, 0, 71, 70, NULL, 1, b"1", 0)), b"4")
    assert er[4] == oid
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))
    h.logon(1, 9, conn=2, accounts=[1])
    assert h.v.te.sessions[(1, 9)].done == {oid: (70, ord("4"), 1, ord("1"), 3)}
    assert _cancel_answer(h, 1, 9, 3, 72, 70, NULL) == ((NULL, b"8", 1), (1, 2016))
    assert _cancel_answer(h, 1, 9, 4, 73, NULL, oid) == ((oid, b"8", 1), (1, 2016))


def test_a_session_keeps_its_latest_finished_orders_and_a_restore_agrees(monkeypatch):
    """Past MAX_SESSION_DONE the oldest finished order goes (then unknown); a ClOrdID that two
    finished orders share names the later one, and keeps naming it when the older one goes;
    a restore at every record answers and hashes as the engine that wrote the snapshot."""
    import tradingengine.engine as engine_module
    monkeypatch.setattr(engine_module, "MAX_SESSION_DONE", 3)

    def run(restore_at):
        h = Harness(accounts=(1, 2))
        h.logon(1, 9, conn=1)
        h.logon(1, 10, conn=2)                # B, the same user
        h.logon(2, 5, conn=3)
        n = 0

        def step(fn, *args, **kw):
            nonlocal n
            if n == restore_at:
                h.v.te = TradingEngine.restore(h.v.te.snapshot())
            n += 1
            return fn(*args, **kw)
        ids = []
        for k in range(4):                    # A's 40..43, each filled in turn
            ids.append(ers(step(h.nos, 1, 9, k + 1, 40 + k, qty=1))[0][4])
            step(h.nos, 2, 5, k + 1, 80 + k, side=b"2", qty=1)
        # B gives a new order of A's the ClOrdID 43 (not A's open one: 43 is finished)
        step(h.nos, 1, 9, 5, 50, qty=1)
        step(h.send, 1, 10, 102, OCRR.pack(1, 0, 43, NULL, _oid(h, 50), 100 * E8, 2, 1, b"1",
                                           b"2", b"1", 0))
        ids.append(ers(step(h.nos, 2, 5, 5, 90, side=b"2", qty=2), b"F")[0][4])
        for k in range(2):                    # two more: A's older 43 goes, the later stays
            ids.append(ers(step(h.nos, 1, 9, 6 + k, 44 + k, qty=1))[0][4])
            step(h.nos, 2, 5, 6 + k, 91 + k, side=b"2", qty=1)
        sess = h.v.te.sessions[(1, 9)]
        h.v.te.check_invariants()
        kept = list(sess.done)
        answers = [_cancel_answer(h, 1, 9, 8 + j, 60 + j, orig, NULL)[0]
                   for j, orig in enumerate((42, 43, 44, 45))]
        return kept, answers, h.v.te.state_hash(), ids

    kept, answers, digest, ids = run(None)
    assert kept == [ids[4], ids[5], ids[6]]                 # the latest three
    assert answers == [(NULL, b"8", 1), (ids[4], b"2", 0), (ids[5], b"2", 0), (ids[6], b"2", 0)]
    for at in range(1, 15):
        assert run(at)[:3] == (kept, answers, digest), at


def test_a_finalized_session_takes_its_finished_orders_with_it():
    h = Harness()
    h.logon(1, 9)
    h.logon(2, 5)
    oid = ers(h.nos(1, 9, 1, 70, side=b"1", price=100 * E8, qty=5))[0][4]
    h.nos(2, 5, 1, 80, side=b"2", price=100 * E8, qty=5)
    assert h.v.te.done_sess == {oid: (1, 9), oid + 1: (2, 5)}
    h.apply(c.SESSION_END, c.session_end(1, 9, 7, c.END_FINALIZE))
    assert (1, 9) not in h.v.te.sessions and h.v.te.done_sess == {oid + 1: (2, 5)}
    h.logon(1, 11)                   # the order is forgotten with the session: unknown
    assert _cancel_answer(h, 1, 11, 1, 71, NULL, oid) == ((oid, b"8", 1), (1, 2016))


def test_replace_changes_the_total_qty_and_the_order_goes_by_the_new_clordid():
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 80, qty=5)
    ms = h.send(1, 9, 102, OCRR.pack(2, 0, 81, 80, NULL, 99 * E8, 8, 1, b"1", b"2", b"1", 0))
    (er,) = ers(ms, b"5")
    assert er[2:4] == (81, 80) and er[6:8] == (99 * E8, 8) and er[10] == 8
    (er,) = ers(h.send(1, 9, 101, OCR.pack(3, 0, 82, 81, NULL, 1, b"1", 0)), b"4")
    assert er[2:4] == (82, 81)
    (m,) = h.send(1, 9, 102, OCRR.pack(4, 0, 83, 81, NULL, 98 * E8, 8, 1, b"1", b"2", b"1", 0))
    assert m[2] == 201 and m[3][7] == b"2"


def test_a_replace_must_carry_the_orders_own_ord_type_and_time_in_force():
    """A replace cannot change OrdType or TimeInForce (the CrossEngine amends price and
    quantity only): another value, valid or not, is refused (OrderCancelReject 99, code 2042)
    and the order stays as it was. Both used to be ignored, so a replace asking IOC of a GTC
    order was "Replaced" and went on resting, and an invalid character passed."""
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 80, qty=5, tif=b"0")                      # a Day order
    seq, coid = 1, 80
    for ot, tif in [(b"2", b"1"), (b"2", b"3"), (b"2", b"4"), (b"2", b"X"), (b"1", b"0"),
                    (b"X", b"0"), (b"\0", b"\0")]:
        seq, coid = seq + 1, coid + 1
        ms = h.send(1, 9, 102, OCRR.pack(seq, 0, coid, 80, NULL, 99 * E8, 8, 1, b"1", ot, tif,
                                         0))
        assert [(m[2], m[3][2], m[3][8]) for m in ms] == [(201, coid, 99)], (ot, tif, ms)
    (o,) = h.v.te.orders.values()
    assert (o.price, o.qty, o.client_order_id) == (10_000, 5, 80)    # as entered
    seq, coid = seq + 1, coid + 1
    (er,) = ers(h.send(1, 9, 102, OCRR.pack(seq, 0, coid, 80, NULL, 99 * E8, 8, 1, b"1", b"2",
                                            b"0", 0)), b"5")
    assert er[2:4] == (coid, 80) and er[6:8] == (99 * E8, 8) and er[18] == b"0"


def test_a_replace_names_its_new_quantity_and_price():
    """OrderQty is the new total quantity (PROTOCOL.md §3, FIX semantics) and a limit order's
    replace carries its price: a quantity of 0 or a null price is refused (OrderCancelReject
    99, codes 2009 and 2008) and the order stays as it was. Both were read as "unchanged", so
    a client that sent them by mistake had its order replaced."""
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 80, qty=5)
    for seq, coid, price, qty in [(2, 81, 99 * E8, 0), (3, 82, NULL_PX, 8), (4, 83, NULL_PX, 0)]:
        ms = h.send(1, 9, 102, OCRR.pack(seq, 0, coid, 80, NULL, price, qty, 1, b"1", b"2",
                                         b"1", 0))
        assert [(m[2], m[3][2], m[3][8]) for m in ms] == [(201, coid, 99)], (price, qty, ms)
    (o,) = h.v.te.orders.values()
    assert (o.price, o.qty, o.client_order_id) == (10_000, 5, 80)    # as entered


def test_a_cancel_from_another_session_of_the_user_gets_its_own_copy():
    h = Harness()
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.nos(1, 9, 1, 90)
    assert h.send(1, 10, 101, OCR.pack(1, 0, 91, 90, NULL, 1, b"1", 0))[0][3][8] == 1  # unknown
    ms = h.send(1, 10, 101, OCR.pack(2, 0, 92, NULL, _oid(h, 90), 1, b"1", 0))
    assert {(m[0], m[1]) for m in ms if m[2] == 200} == {(1, 9), (1, 10)}
    assert [m[3][0] for m in ms if m[1] == 10] == [2]   # its server SeqNo: after the reject


def test_mass_cancel_reports_and_cancels_each_order():
    h = Harness()
    h.logon(1, 9)
    for n, sym in ((1, 1), (2, 1), (3, 2)):
        h.nos(1, 9, n, 100 + n, secid=sym, price=(100 if sym == 1 else 500) * E8)
    ms = h.send(1, 9, 103, OMCR.pack(4, 0, 200, 1, b"1", b"0", 0))
    (rpt,) = [m[3] for m in ms if m[2] == 202]
    assert rpt[2:8] == (200, 2, 1, b"1", b"1", 0)
    cancelled = ers(ms, b"4")
    assert sorted(e[2] for e in cancelled) == [101, 102] and {e[19] for e in cancelled} == {1}
    ms = h.send(1, 9, 103, OMCR.pack(5, 0, 201, NULL & 0xFFFFFFFF, b"7", b"0", 0))
    # the report echoes the SecurityID asked (null here), and counts what it cancelled
    assert [m[3][3:5] for m in ms if m[2] == 202] == [(1, NULL & 0xFFFFFFFF)]
    assert not h.v.te.orders


def test_mass_cancel_covers_every_account_of_the_session():
    """OrderMassCancelRequest names no account: '7' cancels the orders of every account of
    the session (the default account's in the record, the others' as a sweep), '1' those of
    one security; the report counts them all. It used to cover the default account only,
    and an order entered with Account 3 stayed."""
    h = Harness()
    h.logon(1, 9, accounts=[1, 3])
    h.nos(1, 9, 1, 110)                      # the default account, 1
    h.nos(1, 9, 2, 111, account=3)
    h.nos(1, 9, 3, 112, account=3, secid=2, price=500 * E8)
    ms = h.send(1, 9, 103, OMCR.pack(4, 0, 113, 1, b"1", b"0", 0))
    assert [(e[2], e[13]) for e in ers(ms, b"4")] == [(110, 1), (111, 3)]
    assert [m[3][3:6] for m in ms if m[2] == 202] == [(2, 1, b"1")]
    ms = h.send(1, 9, 103, OMCR.pack(5, 0, 114, NULL & 0xFFFFFFFF, b"7", b"0", 0))
    assert [(e[2], e[13]) for e in ers(ms, b"4")] == [(112, 3)]
    assert [m[3][3:5] for m in ms if m[2] == 202] == [(1, NULL & 0xFFFFFFFF)]
    assert not h.v.te.orders and not h.v.te.sweeps


def test_a_sessions_mass_cancel_goes_on_over_records_and_restores_alike():
    """Over the output budget, a session's mass cancel goes on at the next records, one
    account a unit, and its report (the whole count) comes with the last account's cancels;
    an order entered meanwhile on an account not yet swept is not the request's (it was
    cancelled and counted: a "cancel all" and a quote right behind it lost the quote); the
    sweep is state: a replica restored while it runs has the same state hash."""
    h = Harness(accounts=(1, 2, 3, 4))
    h.logon(1, 9, accounts=[1, 2, 3, 4])
    h.nos(1, 9, 1, 110, account=2)
    h.nos(1, 9, 2, 111, account=3)
    v = h.v
    te = v.te
    te.output_budget = 1               # one account a record once anything is out

    def record(kind, payload):
        """One record of the shard alone (no CrossEngine answer): the session's messages."""
        v.seq += 1
        v.ts_ns += 1000
        return msgs(c.decode_events(te.apply(v.seq, v.ts_ns, kind, payload)), 1, 9)

    def mass(seq, coid, side):
        return record(c.CLIENT_MESSAGE, c.client_message(
            1, 9, 103, OMCR.pack(seq, 0, coid, NULL & 0xFFFFFFFF, b"7", side, 0)))

    ms = mass(3, 113, b"2")
    assert [m[3][2:4] for m in ms if m[2] == 202] == [(113, 0)]   # no sells: done at once
    assert not te.sweeps
    ms = mass(4, 114, b"0")            # account 1 has none; account 2's cancel goes out
    assert not [m for m in ms if m[2] == 202] and te.sweeps
    twin = TradingEngine.restore(te.snapshot())
    assert twin.state_hash() == te.state_hash()
    # the sweep goes on first (account 3's cancel), then a new quote on account 4, not swept
    ms = record(c.CLIENT_MESSAGE, c.client_message(1, 9, 100, NOS.pack(
        5, 0, 777, 100 * E8, 5, 1, 4, b"1", b"2", b"1", 0)))
    assert not [m for m in ms if m[2] == 202] and te.sweeps
    ms = record(c.KIND_TICK, b"")      # account 4: nothing of the request's; the report
    assert [m[3][2:4] for m in ms if m[2] == 202] == [(114, 2)]
    assert not te.sweeps
    assert sorted((o.client_order_id, o.pending) for o in te.orders.values()) == \
        [(110, PENDING_CANCEL), (111, PENDING_CANCEL), (777, 0)]


def test_cancel_on_disconnect_fires_after_the_grace_in_sequenced_time():
    h = Harness()
    h.logon(1, 9, conn=1, cod=c.COD_ON_DISCONNECT, cod_ms=500)
    h.nos(1, 9, 1, 300)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))      # mode 2: not on logout
    assert not h.v.te.cod
    h.logon(1, 9, conn=2, cod=c.COD_ON_DISCONNECT, cod_ms=500)
    h.apply(c.SESSION_END, c.session_end(1, 9, 2, c.END_DISCONNECT))
    assert msgs(h.apply(c.KIND_TICK, b"", 400_000_000)) == []
    ms = msgs(h.apply(c.KIND_TICK, b"", 200_000_000))
    (er,) = ers(ms, b"4")
    assert er[19] == 2 and er[2] == 300
    assert not h.v.te.orders


def test_a_logon_within_the_grace_disarms_cancel_on_disconnect():
    h = Harness()
    h.logon(1, 9, conn=1, cod=c.COD_ON_DISCONNECT_OR_LOGOUT, cod_ms=500)
    h.nos(1, 9, 1, 300)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))
    assert h.v.te.cod
    h.logon(1, 9, conn=2)
    assert not h.v.te.cod
    h.apply(c.KIND_TICK, b"", SECOND)
    assert len(h.v.te.orders) == 1


def test_gateway_start_ends_the_sessions_of_that_gateway():
    h = Harness()
    h.logon(1, 9, conn=3 << 48 | 1, cod=c.COD_ON_DISCONNECT, cod_ms=0)
    h.logon(2, 9, conn=4 << 48 | 1)
    h.nos(1, 9, 1, 300)
    ms = msgs(h.apply(c.GATEWAY_START, c.gateway_start(3)))
    assert ers(ms, b"4")[0][19] == 2
    assert not h.v.te.sessions[(1, 9)].bound and h.v.te.sessions[(2, 9)].bound


def test_finalize_ends_a_session_for_seven_days():
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 300)
    ev = h.apply(c.SESSION_END, c.session_end(1, 9, 7, c.END_FINALIZE))
    assert [e[6] for e in ev if e[0] == c.SESSION_STATE] == [c.SESSION_FINALIZED]
    assert (1, 9) not in h.v.te.sessions
    assert h.logon(1, 9)[5] == c.SESSION_FINALIZED
    ev = h.apply(c.CLIENT_MESSAGE, c.client_message(1, 9, 100, NOS.pack(
        2, 0, 301, 100 * E8, 1, 1, 0, b"1", b"2", b"1", 0)))
    assert ev[0][0] == c.REQUEST_REJECTED and ev[0][1] == c.CODES["session_unknown"]
    h.apply(c.KIND_TICK, b"", 7 * 24 * 3600 * SECOND + 1)
    assert h.logon(1, 9)[5] == c.SESSION_NEW


def test_a_session_over_its_clordid_bound_must_start_a_new_one(monkeypatch):
    h = Harness()
    h.logon(1, 9)
    h.v.te.sessions[(1, 9)].clordids = dict.fromkeys(range(1_000_000))
    (m,) = h.nos(1, 9, 1, 2_000_000)
    assert m[2] == 203 and m[3][5] == 0 and m[3][7].rstrip(b"\0") == b"start a new session"


def test_bad_logons_are_refused():
    h = Harness()
    for payload in (c.session_logon(1, 9, 0, 1, [2]),          # default not in the list
                    c.session_logon(1, 9, 0, 1, [1], cod_mode=3),
                    c.session_logon(1, 9, 0, 1, [1])[:-1]):
        ev = h.apply(c.SESSION_LOGON, payload)
        assert ev[0][0] == c.REQUEST_REJECTED, payload
    assert not h.v.te.sessions
    te = TradingEngine(specs(), shard=1, n_shards=2)
    ev = c.decode_events(te.apply(1, 1, c.SESSION_LOGON, c.session_logon(1, 9, 0, 1, [1, 2])))
    assert ev[0][0] == c.REQUEST_REJECTED               # account 2 lives in shard 0


def _session_flow(h: Harness) -> None:
    h.logon(1, 9, conn=1, cod=c.COD_ON_DISCONNECT, cod_ms=300)
    h.logon(2, 4, conn=2, accounts=[2, 3])
    h.nos(1, 9, 1, 10, side=b"2", price=100 * E8, qty=5)
    h.nos(2, 4, 1, 20, side=b"1", price=101 * E8, qty=3, account=3)
    h.nos(2, 4, 3, 21, side=b"1", price=99 * E8, qty=3)
    h.send(2, 4, 102, OCRR.pack(4, 0, 22, 21, NULL, 98 * E8, 6, 1, b"1", b"2", b"1", 0))
    h.nos(1, 9, 2, 11, side=b"2", price=101 * E8, qty=2, secid=1)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT))


def test_sessions_in_the_interpreted_and_compiled_engines_give_the_same_bytes():
    h = Harness(shadows=(interpreted(),))
    _session_flow(h)
    h.apply(c.KIND_TICK, b"", SECOND)
    h.send(2, 4, 103, OMCR.pack(5, 0, 23, 0, b"7", b"0", 0))
    h.nos(2, 4, 4, 23)                                        # ClOrdID reuse
    assert h.v.shadows[0].state_hash() == h.v.te.state_hash()


def test_snapshot_and_replay_with_sessions_give_the_same_state():
    h = Harness()
    _session_flow(h)
    cut = len(h.v.log)
    snap = h.v.te.snapshot()
    h.apply(c.KIND_TICK, b"", SECOND)
    h.send(2, 4, 103, OMCR.pack(5, 0, 23, 0, b"7", b"0", 0))
    h.logon(1, 9, conn=5)
    back = TradingEngine.restore(snap)
    assert back.snapshot() == snap
    assert back.sessions.keys() == {(1, 9), (2, 4)} and back.cod
    for seq, ts, kind, payload in h.v.log[cut:]:
        back.apply(seq, ts, kind, payload)
    assert back.state_hash() == h.v.te.state_hash()


def test_the_route_has_the_bit_of_each_symbol_commanded():
    te = Harness().v.te
    te.apply(te.seq + 1, te.ts_ns, c.NEW_ORDER, c.new_order(1, 1, 2, c.BUY, 50_000, 1))
    assert te.route == 1 << 2
    te.apply(te.seq + 1, te.ts_ns, c.KIND_TICK, b"")
    assert te.route == 0


@pytest.mark.parametrize("code, reason", [(2015, 6), (2004, 1), (2035, 18), (2012, 3),
                                          (3006, 0), (2009, 13), (2001, 99)])
def test_fix_reason_mapping(code, reason):
    from tradingengine.engine import fix_ord_rej_reason
    assert fix_ord_rej_reason(code) == reason


def test_a_session_cancelling_an_order_entered_without_a_session_gets_the_report():
    h = Harness()
    h.logon(1, 9)
    h.v.order(500, 1, c.BUY, 10_000, 2)              # the operator's order of account 1
    ms = h.send(1, 9, 101, OCR.pack(1, 0, 501, NULL, _oid(h, 500), 1, b"1", 0))
    (er,) = ers(ms, b"4")
    assert er[2:4] == (501, 500) and er[0] == 1


def test_cancel_on_disconnect_goes_one_account_a_unit_within_the_output_budget():
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1, accounts=[1, 3], cod=c.COD_ON_DISCONNECT, cod_ms=0)
    h.nos(1, 9, 1, 300, account=1)
    h.nos(1, 9, 2, 301, account=3)
    for te in (h.v.te, *h.v.shadows):
        te.output_budget = 0
    h.v.auto = False          # the CrossEngine's answers wait: one record at a time
    ms = msgs(h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_DISCONNECT)))
    assert [o.pending for o in h.v.te.orders.values()] == [1, 0]   # account 1's only
    assert h.v.te.cod and h.v.te.sessions[(1, 9)].cod_cursor == 1
    back = TradingEngine.restore(h.v.te.snapshot())
    assert back.state_hash() == h.v.te.state_hash()
    ms += msgs(h.apply(c.KIND_TICK, b""))
    assert not h.v.te.cod and [o.pending for o in h.v.te.orders.values()] == [1, 1]
    ms += msgs(h.v.deliver())
    assert not h.v.te.orders
    assert sorted(e[2] for e in ers(ms, b"4")) == [300, 301]


@pytest.mark.parametrize("logout_first", [True, False])
def test_finalizing_a_session_fires_its_armed_cancel_on_disconnect_at_once(logout_first):
    """Mode 1 cancels on logout too (PROTOCOL.md §4.10), and a finalized session cannot come
    back within the grace to disarm it: Logout(5) cancels its orders now, whether the gateway
    said logout before the finalize (as it does) or not."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1, cod=c.COD_ON_DISCONNECT_OR_LOGOUT, cod_ms=5_000)
    h.nos(1, 9, 1, 300)
    if logout_first:
        h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))
        assert h.v.te.cod and len(h.v.te.orders) == 1          # armed, within its grace
    ev = h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_FINALIZE))
    assert [e[6] for e in ev if e[0] == c.SESSION_STATE] == [c.SESSION_FINALIZED]
    assert not h.v.te.orders and not h.v.te.cod
    assert (1, 9) not in h.v.te.sessions and 1 not in h.v.te.user_sessions
    assert msgs(ev, 1, 9) == []                  # nothing more to a finalized session
    assert h.logon(1, 9)[5] == c.SESSION_FINALIZED


def test_finalizing_a_mode_2_session_keeps_its_orders():
    h = Harness()
    h.logon(1, 9, conn=1, cod=c.COD_ON_DISCONNECT, cod_ms=0)
    h.nos(1, 9, 1, 300)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_FINALIZE))
    h.apply(c.KIND_TICK, b"", SECOND)
    assert len(h.v.te.orders) == 1 and (1, 9) not in h.v.te.sessions


def test_a_finalized_session_past_the_output_budget_cancels_on_then_goes():
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1, accounts=[1, 3], cod=c.COD_ON_DISCONNECT_OR_LOGOUT, cod_ms=5_000)
    h.nos(1, 9, 1, 300, account=1)
    h.nos(1, 9, 2, 301, account=3)
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_LOGOUT))
    for te in (h.v.te, *h.v.shadows):
        te.output_budget = 0
    h.v.auto = False
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_FINALIZE))
    te = h.v.te
    assert [o.pending for o in te.orders.values()] == [1, 0]      # account 1's only
    assert (1, 9) in te.sessions and te.cod                      # kept until its cancels are out
    assert te.user_sessions[1] == 1
    back = TradingEngine.restore(te.snapshot())
    assert back.state_hash() == te.state_hash() and back.user_sessions == te.user_sessions
    assert h.logon(1, 9, conn=2)[5] == c.SESSION_FINALIZED      # no way back in
    ev = h.apply(c.CLIENT_MESSAGE, c.client_message(1, 9, 100, NOS.pack(
        3, 0, 302, 100 * E8, 1, 1, 0, b"1", b"2", b"1", 0)))
    assert ev[0][0] == c.REQUEST_REJECTED and ev[0][1] == c.CODES["session_unknown"]
    assert [o.pending for o in te.orders.values()] == [1, 1]      # the rest went on
    assert not te.cod and (1, 9) not in te.sessions and 1 not in te.user_sessions
    h.v.deliver()
    assert not te.orders


def test_apply_frame_gives_each_output_its_route_once_the_header_has_one(monkeypatch):
    """With mq.record's 46-byte header (route at 38) apply_frame hands encode 8-tuples whose
    last element is the route; with the 38-byte one, 7-tuples as before."""
    import tradingengine.engine as engine_module
    from mq.record import encode
    te = Harness().v.te
    seq = te.seq
    frame = encode([(seq + 1, te.ts_ns, 5, 1, 1, c.NEW_ORDER,
                     c.new_order(1, 1, 2, c.BUY, 50_000, 1)),
                    (seq + 2, te.ts_ns, 5, 2, 1, c.KIND_TICK, b"")])
    seen = []
    monkeypatch.setattr(engine_module, "encode", lambda recs: seen.extend(recs) or b"")
    te.apply_frame(frame)
    assert [len(r) for r in seen] == [8, 8]
    assert [r[7] for r in seen] == [1 << 2, 0] and seen[0][:6] == (seq + 1, te.ts_ns, 5, 1, 1,
                                                                   c.NEW_ORDER)


def test_a_cancel_in_flight_when_the_order_fills_gets_too_late():
    h = Harness()
    h.logon(1, 9)
    h.logon(2, 9)
    h.nos(1, 9, 1, 10, side=b"2", price=100 * E8, qty=5)
    h.v.auto = False
    h.nos(2, 9, 1, 20, side=b"1", price=100 * E8, qty=5)     # fills it in the CrossEngine
    h.send(1, 9, 101, OCR.pack(2, 0, 11, 10, NULL, 1, b"2", 0))   # the cancel crosses the fill
    ms = msgs(h.v.deliver())
    mine = [m for m in ms if m[0] == 1]
    assert [m[2] for m in mine] == [200, 201]
    assert mine[0][3][14] == b"F" and mine[1][3][2:5] == (11, 10, mine[0][3][4])
    assert mine[1][3][6:9] == (b"2", b"1", 0)                 # filled; cancel; too late


DAY_NS = 86_400 * 10**9


def test_a_day_order_rests_as_gtc_and_expires_at_the_end_of_its_utc_day():
    """PROTOCOL.md's TimeInForce '0' (its worked example's): the order rests, and the first
    record of the next UTC day of sequenced time expires it (ExecType 'C', Reason 6, end of
    day), its margin released; GTC orders stay. The interpreted source agrees byte for byte."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    (er,) = ers(h.nos(1, 9, 1, 80, tif=b"0"))
    assert er[14:16] == (b"0", b"0") and er[18] == b"0" and er[10] == 5
    ers(h.nos(1, 9, 2, 81))                                      # GTC
    (er,) = ers(h.nos(1, 9, 3, 82, tif=b"0", flags=2))           # Day and post-only
    assert er[14] == b"0"
    held = h.v.te.accounts[1].order_margin
    left = DAY_NS - h.v.ts_ns % DAY_NS
    assert ers(msgs(h.apply(c.KIND_TICK, b"", dt_ns=left - 1))) == []   # the day's last ns
    expired = ers(msgs(h.apply(c.KIND_TICK, b"", dt_ns=1)))      # the next day's first
    assert sorted((e[2], e[14], e[15], e[19], e[10]) for e in expired) == [
        (80, b"C", b"C", 6, 0), (82, b"C", b"C", 6, 0)]
    assert [o.client_order_id for o in h.v.te.accounts[1].orders.values()] == [81]
    assert 0 < h.v.te.accounts[1].order_margin < held
    # a day later, nothing more expires (the GTC order stays)
    assert ers(msgs(h.apply(c.KIND_TICK, b"", dt_ns=DAY_NS))) == []


def test_an_fok_that_cannot_fill_is_expired_and_a_refused_order_leaves_nothing():
    """PROTOCOL.md lists 3 "IOC/FOK remainder" among the reasons of ExecType '4'/'C': an FOK
    the book cannot fill in full is Expired with it, as an IOC's remainder is, not Rejected
    with 3 ("exceeds limit", a risk reject). An order the CrossEngine refuses (post-only that
    would take) reports LeavesQty 0, as every reject does."""
    h = Harness()
    h.logon(1, 9)
    h.logon(2, 9)
    (er,) = ers(h.nos(2, 9, 1, 90, side=b"2", qty=3))             # resting sell 3 @ 100.00
    assert er[14] == b"0"
    (er,) = ers(h.nos(1, 9, 1, 91, qty=5, tif=b"4"))             # FOK buy 5: not fillable
    assert (er[14], er[15], er[19], er[10], er[11]) == (b"C", b"C", 3, 0, 0)
    (er,) = ers(h.nos(1, 9, 2, 92, qty=1, flags=2))              # post-only buy would take
    assert (er[14], er[15], er[10], er[11]) == (b"8", b"8", 0, 0)
    assert h.v.te.accounts[1].order_margin == 0 and not h.v.te.accounts[1].orders
    (er, *fills) = ers(h.nos(1, 9, 3, 93, qty=3, tif=b"4"))      # FOK buy 3: fills in full
    assert er[14] == b"0" and sorted((f[2], f[14]) for f in fills) == [(90, b"F"), (93, b"F")]


def test_protocol_md_worked_example_is_accepted_and_rests():
    """PROTOCOL.md §3's worked example, its block exactly as the page packs it (100 lots at
    10.25, Buy Limit, TimeInForce '0' Day): a New, resting, then Expired at the day's end."""
    h = Harness()
    h.v.mark(1, 1025)                                    # 10.25 in ticks of 0.01
    h.logon(1, 9)
    block = struct.pack("<QQQqQIIcccB", 1, 0, 7, 1025000000, 100, 1, 0, b"1", b"2", b"0", 0)
    (er,) = ers(h.send(1, 9, 100, block))
    assert (er[2], er[6], er[7], er[10], er[14], er[15], er[18]) == (
        7, 1025000000, 100, 100, b"0", b"0", b"0")
    (er,) = ers(msgs(h.apply(c.KIND_TICK, b"", dt_ns=DAY_NS)))
    assert (er[2], er[14], er[19]) == (7, b"C", 6)


def _to_midnight(h):
    """A Tick at the first ns of the next UTC day (the venue's results still waiting)."""
    return h.apply(c.KIND_TICK, b"", dt_ns=DAY_NS - h.v.ts_ns % DAY_NS)


def test_a_day_order_with_a_replace_in_flight_at_the_days_end_still_expires():
    """The end of the day cancels a Day order whose replace the CrossEngine has not answered
    yet: the replace's answer must not make the cancel in flight a client's (ExecType '4',
    Reason 0); the order expires with Reason 6."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    ers(h.nos(1, 9, 1, 80, tif=b"0", qty=5))
    h.v.auto = False
    assert h.send(1, 9, 102, OCRR.pack(2, 0, 81, 80, NULL, 99 * E8, 8, 1, b"1", b"2", b"0",
                                       0)) == []
    _to_midnight(h)
    out = []
    while h.v.pending:
        out += msgs(h.v.deliver(1))
        h.v.te.check_invariants()
    got = [(m[3][2], m[3][14], m[3][19], m[3][10]) for m in out if m[2] == 200]
    assert got == [(81, b"5", 0, 8), (81, b"C", 6, 0)]
    assert not h.v.te.orders and h.v.te.accounts[1].order_margin == 0


def test_a_replace_refused_while_the_days_end_cancel_is_in_flight_is_a_replace_reject():
    """The CrossEngine refuses the replace (a fill came first and left nothing to amend),
    then cancels the rest for the end of the day: the session gets a replace reject for its
    ClOrdID (not a cancel reject for ClOrdID 0), and the order expires with Reason 6."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    ers(h.nos(1, 9, 1, 80, tif=b"0", qty=5))
    o = next(iter(h.v.te.orders.values()))
    v = h.v
    v.auto = False
    v.ce_seq[1] += 1                      # another shard's seller takes 3 of it first
    v.pending.append(c.ce_events(1, v.ces[1].apply(v.ce_seq[1], v.ts_ns, 32, _CE_NEW(
        10**10, o.price, 3, 7, c.SELL, c.LIMIT, c.IOC, 0, 0))))
    h.send(1, 9, 102, OCRR.pack(2, 0, 81, 80, NULL, 100 * E8, 3, 1, b"1", b"2", b"0", 0))
    _to_midnight(h)
    out = []
    while v.pending:
        out += msgs(v.deliver(1))
        v.te.check_invariants()
    assert [m[2] for m in out] == [200, 201, 200]
    assert out[0][3][14] == b"F"
    assert out[1][3][2:4] == (81, 80) and out[1][3][7] == b"2"          # the replace's
    assert (out[2][3][14], out[2][3][19], out[2][3][10]) == (b"C", 6, 0)
    assert not v.te.orders and v.te.accounts[1].order_margin == 0


def test_a_refused_mass_cancel_echoes_the_security_id_sent():
    """MassCancelRequestType '7' with SecurityID 1 and a bad Side: the report echoes 1 (it said
    0 for type '7')."""
    h = Harness()
    h.logon(1, 9)
    (m,) = h.send(1, 9, 103, OMCR.pack(1, 0, 50, 1, b"7", b"5", 0))
    assert m[2] == 202 and m[3][2:8] == (50, 0, 1, b"7", b"0", 99)
    (m,) = h.send(1, 9, 103, OMCR.pack(2, 0, 51, 1, b"1", b"5", 0))
    assert m[2] == 202 and m[3][2:8] == (51, 0, 1, b"1", b"0", 99)


def test_a_mass_cancel_reports_each_order_to_the_requester_too():
    """A user's two sessions: A's mass cancel cancels B's order too (the user's accounts),
    and TotalAffectedOrders counts it: its ExecutionReport went to B only, so A counted two
    and saw one. Each cancelled order's report reaches the requester (PROTOCOL.md 202), as
    a single cancel of another session's order does; B still gets its own."""
    h = Harness()
    h.logon(1, 9, conn=7)
    h.logon(1, 10, conn=8)
    h.nos(1, 9, 1, 101)
    h.nos(1, 10, 1, 201)
    ms = h.send(1, 9, 103, OMCR.pack(2, 0, 300, NULL & 0xFFFFFFFF, b"7", b"0", 0))
    (rpt,) = [m[3] for m in ms if m[2] == 202]
    to_a = [(m[3][2], m[3][3], m[3][19]) for m in ms
            if (m[0], m[1], m[2]) == (1, 9, 200) and m[3][14] == b"4"]
    to_b = [(m[3][2], m[3][3]) for m in ms
            if (m[0], m[1], m[2]) == (1, 10, 200) and m[3][14] == b"4"]
    assert rpt[3] == 2 and sorted(to_a) == [(101, NULL, 1), (201, NULL, 1)], (rpt, to_a)
    assert to_b == [(201, NULL)]
    assert not h.v.te.orders
