"""A hostile or careless trading firm against the gateway and the TradingEngine's sessions
(PROTOCOL.md §4.12): every crafted input gets its prescribed reject, never a crash, a hang,
a halted shard or a divergence; no user can act on another user's orders."""
from __future__ import annotations

import struct
import time

import pytest

from tests.protoclient import ENCODING, NULL_ID, NULL_PRICE, PREFIX, ProtoClient, frame, nos
from tests.unit.test_order_path_tcp import E8, Cluster, is_er
from tradingengine import codec as c

U64 = (1 << 64) - 1


@pytest.fixture
def cluster(tmp_path):
    cl = Cluster(tmp_path)
    yield cl
    cl.close()


def healthy(cluster) -> None:
    """Every shard still applies, balances, snapshots and restores to the same state."""
    from tradingengine.engine import TradingEngine

    def check() -> None:   # on the core's thread: it may still be applying records
        for te in cluster.core.shards:
            te.check_invariants()
            assert TradingEngine.restore(te.snapshot()).state_hash() == te.state_hash()
    cluster.call_sync(check)
    cl = cluster.client()
    try:
        assert cl.logon("alice", "pw-a", session=999_000 + int(time.time_ns() % 1000)).template == 2
        cl.send(*nos(1, 900_001, 100 * E8, 1, 1, b"1", account=2))
        r = cl.until(lambda m: m.template in (200, 203))[-1].named()
        assert r["exec_type"] == b"0", (r["reason"], r["ord_status"], r)
    finally:
        cl.close()


def logged_on(cluster, user="alice", pw="pw-a", session=1) -> ProtoClient:
    cl = cluster.client()
    ack = cl.logon(user, pw, session=session)
    assert ack.template == 2, ack
    return cl


def reply(cl):
    return cl.until(lambda m: m.template in (10, 200, 201, 202, 203, 4))[-1]


# -- trust ------------------------------------------------------------------------------------

def test_another_users_order_cannot_be_cancelled_amended_or_mass_cancelled(cluster):
    bob = logged_on(cluster, "bob", "pw-b", 5)
    alice = logged_on(cluster, "alice", "pw-a", 5)
    try:
        bob.send(*nos(1, 77, 90 * E8, 2, 1, b"1", account=3))
        er = bob.until(is_er(b"0", 77))[-1].named()
        oid = er["order_id"]
        # alice names bob's account
        alice.send(*nos(1, 1, 90 * E8, 1, 1, b"1", account=3))
        r = reply(alice)
        assert r.template == 203 and r.fields[5] == 6
        # cancel by OrderID and by OrigClOrdID
        alice.send(101, 2, 0, 2, NULL_ID, oid, 1, b"1", 0)
        r = reply(alice)
        assert r.template == 201 and r.fields[8] == 1
        alice.send(101, 3, 0, 3, 77, NULL_ID, 1, b"1", 0)
        assert reply(alice).template == 201
        alice.send(102, 4, 0, 4, NULL_ID, oid, 91 * E8, 5, 1, b"1", b"2", b"1", 0)
        assert reply(alice).template == 201
        alice.send(103, 5, 0, 5, 0, b"7", b"0", 0)
        r = reply(alice)
        assert r.template == 202 and r.fields[3] == 0
        bob.send(101, 2, 0, 78, 77, NULL_ID, 1, b"1", 0)
        assert bob.until(is_er(b"4", 78))
    finally:
        alice.close()
        bob.close()
    healthy(cluster)


# -- crafted fields ---------------------------------------------------------------------------

BAD_NOS = [
    dict(price=-(1 << 63)),
    dict(price=(1 << 63) - 1),
    dict(price=-E8),
    dict(qty=0),
    dict(qty=U64),
    dict(qty=1 << 63),
    dict(security=0),
    dict(security=0xFFFFFFFF),
    dict(side=b"9"),
    dict(side=b"\0"),
    dict(ord_type=b"X"),
    dict(tif=b"\xff"),
    dict(ord_type=b"1", price=100 * E8),
    dict(flags=0xFF),
    dict(account=0xFFFFFFFF),
]


@pytest.mark.parametrize("bad", BAD_NOS, ids=[repr(b) for b in BAD_NOS])
def test_a_bad_new_order_is_rejected_and_nothing_breaks(cluster, bad):
    alice = logged_on(cluster)
    try:
        f = dict(price=100 * E8, qty=1, security=1, side=b"1", ord_type=b"2", tif=b"1",
                 account=2, flags=0)
        f.update(bad)
        alice.send(*nos(1, 1, f["price"], f["qty"], f["security"], f["side"], f["ord_type"],
                        f["tif"], f["account"], f["flags"]))
        r = reply(alice)
        assert r.template in (200, 203), r
        if r.template == 200 and bad != dict(flags=0xFF):
            assert r.named()["exec_type"] == b"8", r.named()
        alice.send(*nos(2, 2, 100 * E8, 1, 1, b"1", account=2))
        assert alice.until(is_er(b"0", 2))
    finally:
        alice.close()
    healthy(cluster)


BAD_REPLACE = [dict(price=-(1 << 63) + 1), dict(price=(1 << 63) - 1), dict(qty=U64),
               dict(qty=1 << 63), dict(price=0)]


@pytest.mark.parametrize("bad", BAD_REPLACE, ids=[repr(b) for b in BAD_REPLACE])
def test_a_bad_replace_is_rejected_and_nothing_breaks(cluster, bad):
    alice = logged_on(cluster)
    try:
        alice.send(*nos(1, 1, 100 * E8, 2, 1, b"1", account=2))
        alice.until(is_er(b"0", 1))
        f = dict(price=NULL_PRICE, qty=0)
        f.update(bad)
        alice.send(102, 2, 0, 2, 1, NULL_ID, f["price"], f["qty"], 1, b"1", b"2", b"1", 0)
        r = reply(alice)
        assert r.template == 201 or r.named().get("exec_type") == b"8", r
        alice.send(101, 3, 0, 3, 1, NULL_ID, 1, b"1", 0)
        alice.until(is_er(b"4", 3))
    finally:
        alice.close()
    healthy(cluster)


def test_seqno_max_is_refused_by_the_gateway_and_breaks_nothing(cluster):
    """A SeqNo of 2^64 - 1 (nothing could be expected after it) and a jump past what
    NotApplied's u32 Count states get Logout(2) before anything reaches the engine (the
    engine's own guard: tests/unit/test_tradingengine_sessions.py); the session resumes with
    nothing consumed, and a jump NotApplied can state is applied."""
    alice = logged_on(cluster, session=3)
    try:
        alice.send(*nos(U64, 1, 100 * E8, 1, 1, b"1", account=2))
        r = reply(alice)
        assert r.template == 4 and r.fields[0] == 2, r
    finally:
        alice.close()
    cl = cluster.client()
    try:
        ack = cl.logon("alice", "pw-a", session=3)
        assert ack.template == 2 and ack.fields[1] == 1, ack   # NextExpectedSeqNo: 1
        cl.send(*nos(1 + 0xFFFFFFFF, 1, 100 * E8, 1, 1, b"1", account=2))  # stated: applied
        msgs = cl.until(is_er(b"0", 1))
        na = [m for m in msgs if m.template == 10]
        assert na and na[0].fields[1:3] == (1, 0xFFFFFFFF), na
        cl.send(*nos(2 + 0xFFFFFFFF + 0x1_0000_0000, 2, 100 * E8, 1, 1, b"1", account=2))
        r = reply(cl)
        assert r.template == 4 and r.fields[0] == 2, r
    finally:
        cl.close()
    healthy(cluster)


# -- crafted frames ---------------------------------------------------------------------------

def raw(template, block, block_length=None, version=1, schema=1, enc=ENCODING, length=None):
    bl = len(block) if block_length is None else block_length
    return PREFIX.pack(12 + len(block) if length is None else length, enc, bl, template,
                       schema, version) + block


def test_longer_block_with_trailing_bytes_is_accepted(cluster):
    alice = logged_on(cluster)
    try:
        block = frame(*nos(1, 1, 100 * E8, 1, 1, b"1", account=2))[12:] + b"\x55" * 40
        alice.send_raw(raw(100, block))
        assert alice.until(is_er(b"0", 1))
    finally:
        alice.close()
    healthy(cluster)


@pytest.mark.parametrize("tid,block", [(150, b"\x01" + b"\0" * 7), (150, b"\x01" + b"\0" * 60),
                                       (199, struct.pack("<Q", 1))])
def test_unknown_template_is_a_business_reject_3(cluster, tid, block):
    alice = logged_on(cluster)
    try:
        alice.send_raw(raw(tid, block))
        r = reply(alice)
        assert r.template == 203 and r.fields[5] == 3 and r.fields[2] == 1
    finally:
        alice.close()
    healthy(cluster)


@pytest.mark.parametrize("data", [
    raw(100, b"\0" * 51),                          # shorter than v1
    raw(100, b"\0" * 52, block_length=53),         # blockLength beyond the frame
    raw(5, b"\0" * 10),                            # heartbeat short
    raw(7, b"\0" * 4),
    raw(150, b"\0" * 4),
    raw(100, b"\0" * 52, schema=2),
    raw(100, b"\0" * 52, enc=0xCAFE),
    raw(100, b"", length=11),
    raw(1, b"\0" * 80),                            # second logon
    raw(300, b"\0" * 15),
    raw(42, b"\0" * 8),
    raw(2, b"\0" * 40),                            # a server message
])
def test_a_broken_frame_is_logout_2(cluster, data):
    alice = logged_on(cluster)
    try:
        alice.send_raw(data)
        r = reply(alice)
        assert r.template == 4 and r.fields[0] == 2, r
    finally:
        alice.close()
    healthy(cluster)


def test_pipelined_logon_and_orders(cluster):
    cl = cluster.client()
    try:
        data = frame(1, 8, 0, 1, 1000, 0, 0, 0, b"alice", b"pw-a")
        data += b"".join(frame(*nos(i, i, 100 * E8, 1, 1, b"1", account=2)) for i in (1, 2, 3))
        cl.send_raw(data)
        assert cl.recv(skip=(5, 6)).template == 2
        assert cl.until(is_er(b"0", 3))
    finally:
        cl.close()
    healthy(cluster)


def test_pipelined_orders_after_a_bad_password_go_nowhere(cluster):
    cl = cluster.client()
    try:
        data = frame(1, 8, 0, 1, 1000, 0, 0, 0, b"alice", b"nope")
        data += frame(*nos(1, 1, 100 * E8, 1, 1, b"1", account=2))
        cl.send_raw(data)
        r = cl.recv(skip=(5, 6))
        assert r.template == 3 and r.fields[1] == 1
    finally:
        cl.close()
    cl = logged_on(cluster, session=8)   # the session was never created
    cl.close()
    assert cluster.call_sync(lambda: all(not te.orders for te in cluster.core.shards))


@pytest.mark.parametrize("fr,count", [(1, 0xFFFFFFFF), (U64, 1), (U64, 0xFFFFFFFF), (0, 5),
                                      (1, 0)])
def test_retransmit_request_out_of_range(cluster, fr, count):
    alice = logged_on(cluster)
    try:
        alice.send(7, fr, count)
        r = alice.recv()
        assert r.template == 9, r
    finally:
        alice.close()


@pytest.mark.parametrize("ne", [U64, 2, 1 << 63])
def test_logon_next_expected_beyond_is_logon_reject_5(cluster, ne):
    cl = cluster.client()
    try:
        r = cl.logon("alice", "pw-a", session=4, next_expected=ne)
        assert r.template == 3 and r.fields[1] == 5, r
    finally:
        cl.close()
    healthy(cluster)


@pytest.mark.parametrize("user,pw", [(b"a" * 16, b"p" * 32), (b"\xff\xfe", b"x"),
                                     (b"alice", b"pw-a" + b"\0junk")])
def test_odd_credentials(cluster, user, pw):
    cl = cluster.client()
    try:
        cl.send(1, 6, 0, 1, 1000, 0, 0, 0, user, pw)
        r = cl.recv(skip=(5, 6))
        assert r.template in (2, 3)
    finally:
        cl.close()


def test_slow_loris_frame_is_cut_off(cluster):
    cluster.gw.cfg.logon_timeout_s = 0.5
    cl = cluster.client()
    try:
        cl.send_raw(struct.pack("<HH", 65535, ENCODING))
        t0 = time.monotonic()
        with pytest.raises((ConnectionError, OSError, TimeoutError)):
            while time.monotonic() - t0 < 5:
                cl.send_raw(b"\0")
                cl.recv(timeout=0.2)
    finally:
        cl.close()


# -- resources ----------------------------------------------------------------------------------

def test_a_user_cannot_open_sessions_without_bound():
    """Every new SessionID of a user is engine state until the end of the trading day: a
    client looping over fresh SessionIDs must hit a limit, not grow the shard (and its
    snapshots) without bound. Other users are not affected."""
    from tests.unit.test_tradingengine_sessions import Harness
    from tradingengine import engine as te
    h = Harness()
    n = te.MAX_USER_SESSIONS
    for sid in range(1, n + 1):
        assert h.logon(1, sid)[-1] == c.SESSION_NEW
    assert h.logon(1, n + 1)[-1] == c.SESSION_LIMIT
    assert h.logon(1, 1, conn=7)[-1] == c.SESSION_RESUMED     # an existing one resumes
    assert h.logon(2, 1)[-1] == c.SESSION_NEW
    restored = te.TradingEngine.restore(h.v.te.snapshot())
    assert restored.state_hash() == h.v.te.state_hash()
    h.apply(c.SESSION_END, c.SESSION_END_S.pack(1, 5, 7, c.END_FINALIZE))
    assert h.logon(1, n + 1)[-1] == c.SESSION_NEW             # a finalized one frees a place


# -- the SDK's persisted session state ----------------------------------------------------------

GOOD_STATE = {"session_id": 5, "next_seq": 2, "last_seen": 0, "next_cl_ord_id": 2,
              "outbox": [[1, 100, frame(*nos(1, 1, 100 * E8, 1, 1, b"1"))[12:].hex()]]}


@pytest.mark.parametrize("change", [
    {"session_id": -1}, {"session_id": 0}, {"session_id": 1 << 64}, {"session_id": 1.5},
    {"session_id": "5"}, {"session_id": True},
    {"next_seq": 1 << 70}, {"next_seq": 0}, {"last_seen": -5}, {"last_seen": 1 << 64},
    {"next_cl_ord_id": -1},
    {"outbox": [[1, 100, "000000"]]},                 # a block shorter than the template's
    {"outbox": [[1, 5, "00" * 24]]},                  # not an order-entry template
    {"outbox": [[1, 150, "00" * 8]]},
    {"outbox": [[-1, 100, GOOD_STATE["outbox"][0][2]]]},
    {"outbox": [[3, 100, GOOD_STATE["outbox"][0][2]]]},  # SeqNo not below next_seq
    {"user": "bob"},                                  # another user's session file
])
def test_a_damaged_session_file_is_one_clear_error(tmp_path, change):
    import json

    from gateway.client import Client, SessionError
    path = tmp_path / "s.json"
    d = dict(GOOD_STATE, user="alice")
    d.update(change)
    path.write_text(json.dumps(d))
    with pytest.raises(SessionError, match="session file"):
        Client("127.0.0.1", 1, "alice", "pw", str(path), {"BTC-PERP": (1, 10**6, 1)})


def test_a_good_session_file_loads_and_records_its_user(tmp_path):
    import json

    from gateway.client import Client, SessionState
    path = tmp_path / "s.json"
    path.write_text(json.dumps(GOOD_STATE))           # written before files named their user
    c = Client("127.0.0.1", 1, "alice", "pw", str(path), {"BTC-PERP": (1, 10**6, 1)})
    assert c.state.outbox[0][0] == 1
    c.state.save()
    assert json.loads(path.read_text())["user"] == "alice"
    assert SessionState.load(str(path), "alice").session_id == 5


# -- the CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--account", "-1", "buy", "BTCUSDT", "1", "@", "100"],
    ["--account", str(1 << 32), "buy", "BTCUSDT", "1", "@", "100"],
    ["--wait", "nan", "buy", "BTCUSDT", "1"],
    ["amend", "BTCUSDT", "99999999999999999999999", "1", "@", "1"],
    ["buy", "BTCUSDT", "1", "@", "1e30"],
    ["buy", "BTCUSDT", "-1"],
])
def test_seqex_client_bad_input_is_one_line_and_status_2(cluster, tmp_path, capsys, argv):
    from deploy import cli
    rc = cli.main(["client", "--user", "alice", "--password", "pw-a", "--data", str(tmp_path),
                   "--gateway", f"{cluster.host}:{cluster.port}", "--wait", "0", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("content", ["[]", "3", '"x"', "{bad", '{"5": 7}'])
def test_a_damaged_orders_file_is_forgotten(tmp_path, content):
    from deploy import trader
    base = str(tmp_path / "alice")
    (tmp_path / "alice.orders.json").write_text(content)
    orders = trader._orders(base)
    assert isinstance(orders, dict)
    assert all(isinstance(v, dict) for v in orders.values())


def test_an_account_belongs_to_one_user(tmp_path):
    """An operator who gives a new user an account of another's (a typo in --accounts) must
    not hand that user the other's orders and money: the accounts file refuses it."""
    from gateway import accounts as acc
    path = tmp_path / "accounts.json"
    acc.add_user(path, "alice", "pw-a", [2, 4], n_shards=2, n=1024)
    with pytest.raises(acc.AccountsError, match="account 2 is 'alice''s"):
        acc.add_user(path, "mallory", "pw-m", [2], n_shards=2, n=1024)
    assert set(acc.load(path, 2).users) == {"alice"}


def test_another_users_session_id_is_a_session_of_ones_own(cluster):
    """(user, SessionID) is the session: bob logging on with alice's SessionID, while hers is
    bound, gets a new session of his own, and no replay of her messages."""
    alice = logged_on(cluster, "alice", "pw-a", 42)
    try:
        alice.send(*nos(1, 1, 90 * E8, 1, 1, b"1", account=2))
        alice.until(is_er(b"0", 1))
        bob = cluster.client()
        try:
            ack = bob.logon("bob", "pw-b", session=42, next_expected=1)
            assert ack.template == 2 and ack.fields[7] & 8 and ack.fields[2] == 1, ack
            bob.send(6, 77)
            hb = bob.recv(skip=())                       # nothing of alice's came first
            assert hb.template == 5 and hb.fields[:2] == (77, 1), hb
        finally:
            bob.close()
        alice.send(*nos(2, 2, 90 * E8, 1, 1, b"1", account=2))   # alice's stays bound to her
        assert alice.until(is_er(b"0", 2))
    finally:
        alice.close()


def test_retransmit_requests_count_against_the_throttle(cluster):
    """A RetransmitRequest costs the gateway up to 10,000 messages of output: a client asking
    again and again must meet the session's rate (RetransmitReject 1), as its orders do."""
    import dataclasses
    users = cluster.gw.accounts.users
    users["alice"] = dataclasses.replace(users["alice"], max_msgs_per_sec=5)
    alice = logged_on(cluster)
    try:
        alice.send(*nos(1, 1, 90 * E8, 1, 1, b"1", account=2))
        alice.until(is_er(b"0", 1))
        answers = []
        for _ in range(12):
            alice.send(7, 1, 1)
            m = alice.until(lambda m: m.template in (9, 200))[-1]
            answers.append((m.template, m.fields[2] if m.template == 9 else None))
        assert (9, 1) in answers, answers
        assert answers[0] == (200, None)
    finally:
        alice.close()


def test_one_user_cannot_take_every_connection(cluster):
    """A user opening connection after connection (each its own session) meets a per-user
    limit, so the gateway's max_connections stay available to the other firms."""
    cluster.gw.cfg.max_conns_per_user = 2
    a1, a2 = logged_on(cluster, session=1), logged_on(cluster, session=2)
    try:
        a3 = cluster.client()
        try:
            r = a3.logon("alice", "pw-a", session=3)
            assert r.template == 3 and r.fields[1] == 6, r
        finally:
            a3.close()
        logged_on(cluster, "bob", "pw-b", 1).close()        # others are not affected
    finally:
        a1.close()
        a2.close()
    import time as _t
    deadline = _t.monotonic() + 10
    while any(c.user is not None and c.user.name == "alice" for c in list(cluster.gw.conns)):
        assert _t.monotonic() < deadline
        _t.sleep(0.01)
    logged_on(cluster, session=3).close()


def test_a_client_that_never_reads_is_cut_off(cluster):
    """TestRequests answered into a socket nobody reads: the gateway's unsent output stays
    bounded (max_output_bytes) and the connection is closed as a slow consumer. (Over the
    session's rate TestRequests are not answered: here the session's bucket is made large,
    as for a user whose rate allows the flood.)"""
    import socket
    cluster.gw.cfg.max_output_bytes = 64 * 1024
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect((cluster.host, cluster.port))
    try:
        s.sendall(frame(1, 12, 0, 1, 30000, 0, 0, 0, b"alice", b"pw-a"))
        deadline = time.monotonic() + 30
        from gateway.server import LIVE
        while not any(c.state == LIVE for c in list(cluster.gw.conns)):
            assert time.monotonic() < deadline, "no session"
            time.sleep(0.01)
        for c in list(cluster.gw.conns):
            c.bucket.rate, c.bucket.tokens = 10**9, 1e9
        batch = frame(6, 1) * 20_000
        while cluster.gw.stats["slow_consumers"] == 0:
            assert time.monotonic() < deadline, cluster.gw.stats
            try:
                s.sendall(batch)
            except OSError:
                break
        for c in list(cluster.gw.conns):
            assert c.transport is None or c.transport.get_write_buffer_size() <= \
                cluster.gw.cfg.max_output_bytes + 256 * 1024
    finally:
        s.close()
    assert cluster.gw.stats["slow_consumers"] >= 1


def test_a_user_removed_from_the_accounts_file_is_logged_out(cluster, tmp_path):
    """The operator revokes a user (or takes an account away) and reloads the accounts file
    (SIGHUP): that user's live connections end, Logout(6); the others go on."""
    from gateway import accounts as acc
    alice, bob = logged_on(cluster), logged_on(cluster, "bob", "pw-b", 1)
    try:
        bob_only = acc.Accounts({"bob": cluster.users.users["bob"]})
        cluster.call_sync(cluster.gw.reload_accounts, bob_only)
        r = alice.until(lambda m: m.template == 4)[-1]
        assert r.fields[0] == 6, r
        bob.send(6, 9)
        assert bob.recv(skip=()).fields[0] == 9              # bob is still logged on
        again = cluster.client()
        try:
            assert again.logon("alice", "pw-a", session=1).fields[1] == 1   # bad credentials
        finally:
            again.close()
    finally:
        alice.close()
        bob.close()


def test_random_client_streams_over_tcp_leave_every_shard_sound(tmp_path):
    """Hypothesis drives a logged-on client with sequences of order-entry messages (fields
    from the edges of their types, SeqNos out of order) and session messages, through the
    real gateway and TradingEngines; every shard must still balance, snapshot and trade."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    cluster = Cluster(tmp_path)
    sessions = iter(range(10_000, 20_000))
    u64 = st.sampled_from([0, 1, 2, 7, U64, 1 << 63])
    px = st.sampled_from([NULL_PRICE, (1 << 63) - 1, 0, -E8, 90 * E8, 90 * E8 + 1, 110 * E8])
    ch = st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"7", b"\0", b"\xff"])
    seq = st.one_of(st.integers(1, 12), st.just(U64))
    msg = st.one_of(
        st.builds(lambda *f: (100, *f), seq, u64, st.integers(1, 9), px, u64,
                  st.sampled_from([0, 1, 2, 9]), st.sampled_from([0, 2, 3, 4]), ch, ch, ch,
                  st.integers(0, 255)),
        st.builds(lambda *f: (101, *f), seq, u64, st.integers(1, 9), st.integers(1, 9),
                  st.sampled_from([NULL_ID, 0, 1, 2, 3]), st.sampled_from([1, 2, 9]), ch,
                  st.integers(0, 255)),
        st.builds(lambda *f: (102, *f), seq, u64, st.integers(1, 9), st.integers(1, 9),
                  st.sampled_from([NULL_ID, 1, 2]), px, u64, st.sampled_from([1, 2]), ch, ch,
                  ch, st.integers(0, 255)),
        st.builds(lambda *f: (103, *f), seq, u64, st.integers(1, 9),
                  st.sampled_from([0, 1, 0xFFFFFFFF]), ch, ch, st.integers(0, 255)),
        st.builds(lambda *f: (7, *f), u64, st.sampled_from([0, 1, 5, 0xFFFFFFFF])),
        st.builds(lambda *f: (5, *f), u64, u64, u64),
        st.builds(lambda *f: (6, *f), u64))

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(msg, min_size=1, max_size=15))
    def run(msgs):
        cl = cluster.client()
        try:
            assert cl.logon("alice", "pw-a", session=next(sessions)).template == 2
            cl.send_raw(b"".join(frame(*m) for m in msgs))
            cl.send(6, 4242)                                # a marker: all of it was read
            while True:
                m = cl.recv(skip=())
                if m.template == 5 and m.fields[0] == 4242 or m.template == 4:
                    break
        finally:
            cl.close()
        cluster.call_sync(lambda: [te.check_invariants() for te in cluster.core.shards])
    try:
        run()
        healthy(cluster)
    finally:
        cluster.close()
