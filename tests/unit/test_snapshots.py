"""Replica snapshot files: written atomically and checksummed; a damaged, truncated or foreign
file is never restored from; only the last K are kept.

Start-up over damaged files: every header field is checked before it is trusted (a corrupt
length must not allocate, MemoryError was a crash loop); a bad file is moved aside with one log
line and the next older one is used, or a full replay. Who writes snapshots: warm replicas;
hot ones only when asked, at staggered seqs, with the write off the apply loop."""
import logging
import os
import struct

import pytest

from mq.replica import (
    SNAP_HEADER,
    ReplicaHost,
    SnapshotError,
    check_snapshot,
    read_snapshot,
)
from mq.replica import write_snapshot as _write_snapshot

REC = b"\x01" * 16   # the record digest these files name: a restore asks the log from its seq


def write_snapshot(*args, **kw) -> str:
    """mq.replica.write_snapshot with a record digest (a file with none is not restored)."""
    kw.setdefault("record", REC)
    return _write_snapshot(*args, **kw)


def test_round_trip_and_keep_last_k(tmp_path):
    d = str(tmp_path)
    for seq in (10, 20, 30, 40):
        write_snapshot(d, "in.ce.X", seq, b"state-%d" % seq, keep=2)
    names = sorted(os.listdir(d))
    assert names == ["in.ce.X-00000000000000000030.snap", "in.ce.X-00000000000000000040.snap"]
    assert read_snapshot(os.path.join(d, names[-1])) == (40, b"state-40")
    assert not any(n.endswith(".tmp") for n in names)


def test_damaged_truncated_or_foreign_files_are_refused(tmp_path):
    path = write_snapshot(str(tmp_path), "s", 7, b"x" * 1000, keep=3)
    data = open(path, "rb").read()
    for bad in (data[:-1], data[:20], data[:-5] + b"yyyyy", b"NOTASNAP" + data[8:], data + b"!"):
        with open(path, "wb") as f:
            f.write(bad)
        assert read_snapshot(path) is None
    assert read_snapshot(str(tmp_path / "missing.snap")) is None


def _with_header(path: str, **fields: object) -> None:
    """Rewrite one header field of a snapshot file in place."""
    data = bytearray(open(path, "rb").read())
    magic, seq, digest, length = SNAP_HEADER.unpack_from(data)
    values = {"magic": magic, "seq": seq, "digest": digest, "length": length, **fields}
    SNAP_HEADER.pack_into(data, 0, values["magic"], values["seq"], values["digest"],
                          values["length"])
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("field,value,reason", [
    ("length", 1 << 40, "the file holds"),            # was MemoryError: f.read(2**40 + 1)
    ("length", (1 << 64) - 1, "the file holds"),      # was OverflowError
    ("length", 999, "the file holds"),
    ("length", 1001, "the file holds"),
    ("magic", b"SQXSNAP9", "version"),
    ("magic", b"GARBAGE!", "not a snapshot"),
    ("seq", 8, "file name"),
    ("digest", b"\0" * 32, "checksum"),
])
def test_every_header_field_is_checked_before_it_is_trusted(tmp_path, field, value, reason):
    path = write_snapshot(str(tmp_path), "s", 7, b"x" * 1000, keep=3)
    _with_header(path, **{field: value})
    with pytest.raises(SnapshotError, match=reason):
        check_snapshot(path)
    assert read_snapshot(path) is None


class Fake:
    """A minimal engine: its state is the bytes it was restored from."""

    def __init__(self, state: bytes = b"fresh"):
        self.state = state

    def snapshot(self) -> bytes:
        return self.state

    def state_hash(self) -> bytes:
        return self.state

    @classmethod
    def restore(cls, data: bytes) -> "Fake":
        if data == b"unrestorable":
            raise ValueError("snapshot version 99 is not 1")
        return cls(data)


def host(tmp_path, role: str = "warm", **kw) -> ReplicaHost:
    return ReplicaHost(kw.pop("name", "r1"), Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9",
                       ["tcp://127.0.0.1:9"], "tcp://127.0.0.1:*", role=role,
                       mirror="tcp://127.0.0.1:9" if role == "hot" else None,
                       snapshot_dir=str(tmp_path / "own"),
                       shared_snapshot_dir=str(tmp_path / "shared"),
                       **kw)


def close(h: ReplicaHost) -> None:
    h.wait_snapshot()
    h.sub.close()
    h.control.close(0)
    if h.mirror is not None:
        h.mirror.close(0)


def test_start_up_skips_damaged_snapshots_newest_first_and_moves_them_aside(tmp_path, caplog):
    shared, own = str(tmp_path / "shared"), str(tmp_path / "own")
    write_snapshot(shared, "in.ce.X", 100, b"state-100", keep=5)
    bad_len = write_snapshot(shared, "in.ce.X", 300, b"state-300", keep=5)
    _with_header(bad_len, length=1 << 40)
    bad_restore = write_snapshot(own, "in.ce.X", 200, b"unrestorable", keep=5)
    truncated = write_snapshot(own, "in.ce.X", 400, b"state-400", keep=5)
    with open(truncated, "r+b") as f:
        f.truncate(30)
    open(os.path.join(own, "in.ce.X-00000000000000000500.snap.tmp"), "wb").close()
    with caplog.at_level(logging.INFO, logger="seqex.replica"):
        h = host(tmp_path)
    try:
        assert h.seq == 100 and h.engine.state == b"state-100"
        # the input is asked for from the restored seq on (the subscriber made for the
        # unrestorable snapshot at 200 was dropped with it)
        assert h.sub.next_seq == 100   # the record at 100 first, to check
        assert h.stats["bad_snapshots"] == 3
        for path in (bad_len, bad_restore, truncated):
            assert not os.path.exists(path) and os.path.exists(path + ".bad")
        assert not any(n.endswith(".tmp") for n in os.listdir(own))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 3, [r.getMessage() for r in errors]   # one line each
        assert "400" in errors[0].getMessage() and "header" in errors[0].getMessage()
    finally:
        close(h)
    # the damaged files are never tried again
    h = host(tmp_path)
    try:
        assert h.seq == 100 and h.stats["bad_snapshots"] == 0
    finally:
        close(h)


def test_no_usable_snapshot_means_a_full_replay(tmp_path):
    path = write_snapshot(str(tmp_path / "own"), "in.ce.X", 50, b"x" * 100, keep=3)
    _with_header(path, digest=b"\1" * 32)
    h = host(tmp_path)
    try:
        assert h.seq == 0 and h.sub.next_seq == 1 and isinstance(h.engine, Fake)
    finally:
        close(h)


def snaps(tmp_path) -> list[str]:
    d = tmp_path / "own"
    return sorted(n for n in os.listdir(d) if n.endswith(".snap")) if d.exists() else []


def test_warm_replicas_snapshot_and_hot_ones_do_not_by_default(tmp_path):
    for role, expected in (("warm", 1), ("hot", 0)):
        h = host(tmp_path / role, role=role, snapshot_every=10)
        try:
            h.seq = 25
            h._maybe_snapshot()
            h.wait_snapshot()
            assert len(snaps(tmp_path / role)) == expected, role
        finally:
            close(h)


def test_hot_snapshots_when_asked_are_staggered_by_name(tmp_path):
    every = 1000
    taken = {}
    for name in ("ce.X.hot0", "ce.X.hot1"):
        h = host(tmp_path / name, role="hot", name=name, snapshot_every=every,
                 snapshot_s=3600.0, hot_snapshots=True)
        try:
            taken[name] = []
            for seq in range(1, 3 * every + 1, 7):
                h.seq = seq
                h._maybe_snapshot()
                h.wait_snapshot()
                if h.snap_seq == seq:
                    taken[name].append(seq)
        finally:
            close(h)
        assert 2 <= len(taken[name]) <= 3
    a, b = taken["ce.X.hot0"], taken["ce.X.hot1"]
    # never within a tenth of the interval of each other
    assert min(abs(x - y) for x in a for y in b) > every // 10, (a, b)


def test_snapshot_header_layout():
    assert SNAP_HEADER.size == struct.calcsize("<8sQ32sQ") == 56


def test_a_promoted_warm_replica_keeps_writing_snapshots(tmp_path):
    h = host(tmp_path, role="warm", snapshot_every=10)
    try:
        h.role = "hot"   # what promote() does to the role, without a mirror to ask
        h.seq = 25
        h._maybe_snapshot()
        h.wait_snapshot()
        assert len(snaps(tmp_path)) == 1
    finally:
        close(h)


def test_promote_answers_an_error_when_the_mirror_answers_no_position(tmp_path):
    """PROMOTE asks the mirror where the out stream stands. A mirror that answers something
    else (ERROR: a refusal, or a wrong address that answers PING as another role) is an
    operating error, answered to the operator; it used to raise KeyError and kill the replica."""
    import threading

    import zmq

    from mq import sockets, wire
    fake = sockets.router("tcp://127.0.0.1:*")
    addr = fake.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer():
        for body in ({"error": "refused"}, {"role": "replicator"}):
            if fake.poll(10_000):
                ident, _kind, _body = fake.recv_multipart()
                fake.send_multipart([ident, wire.ERROR if "error" in body else wire.PONG,
                                     wire.pack(body)])

    h = ReplicaHost("w1", Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9",
                    ["tcp://127.0.0.1:9"], "tcp://127.0.0.1:*", role="warm", mirror=addr)
    t = threading.Thread(target=answer)
    t.start()
    op = zmq.Context.instance().socket(zmq.DEALER)
    op.connect(h.control_endpoint)
    try:
        for _ in range(2):
            op.send_multipart([wire.PROMOTE, wire.pack({})])
            assert h.control.poll(10_000)
            h._control()
            assert op.poll(10_000)
            kind, body = op.recv_multipart()
            assert kind == wire.PONG and "error" in wire.unpack(body)
            assert h.role == "warm"
    finally:
        t.join(15)
        op.close(0)
        fake.close(0)
        close(h)


def test_snapshots_of_a_stream_whose_name_extends_another_are_left_alone(tmp_path):
    """Stream names may hold '-' and glob characters: writing and rotating the snapshots of
    in.x must neither delete nor read those of in.x-2 (nor of in.[x]) in the same directory."""
    d = str(tmp_path)
    other = write_snapshot(d, "in.x-2", 5, b"other", keep=1)
    odd = write_snapshot(d, "in.[x]", 6, b"odd", keep=1)
    write_snapshot(d, "in.x", 3, b"mine", keep=1)
    write_snapshot(d, "in.x", 4, b"mine", keep=1)
    write_snapshot(d, "in.[x]", 7, b"odd", keep=1)
    assert read_snapshot(other) == (5, b"other")
    assert sorted(os.listdir(d)) == sorted([os.path.basename(other),
                                            f"in.x-{4:020d}.snap", f"in.[x]-{7:020d}.snap"])
    assert not os.path.exists(odd)


@pytest.mark.parametrize("flip", [None, 0, 4_999, 9_999])
def test_a_damaged_byte_anywhere_in_the_state_fails_the_checksum(tmp_path, flip):
    # a damaged byte at the start, in the middle and at the end of the state
    state = bytes(range(256)) * 39 + b"tail"   # 9,988 bytes: ten chunks, the last one short
    state = state + b"x" * (10_000 - len(state))
    write_snapshot(str(tmp_path), "in.ce.X", 7, state, keep=1)
    path = str(tmp_path / os.listdir(tmp_path)[0])
    if flip is None:
        seq, got = check_snapshot(path)
        assert (seq, got) == (7, state) and type(got) is bytes
        return
    start = SNAP_HEADER.size + 2 + len(b"in.ce.X") + 16   # after the name and record digest
    with open(path, "r+b") as f:
        f.seek(start + flip)
        byte = f.read(1)
        f.seek(start + flip)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SnapshotError, match="checksum"):
        check_snapshot(path)


def test_a_snapshot_that_could_not_be_written_is_not_reported_as_taken(tmp_path, monkeypatch):
    """Disk full on the snapshot directory (the compound fault campaign): the replica goes on,
    and PING (hence the metrics' snapshot seq and age) names the newest snapshot that is on
    disk, not the one it tried to write, and counts the failures. It reported the failed one:
    a full snapshot disk looked like fresh snapshots every interval."""
    import errno

    import mq.replica

    real = mq.replica.write_snapshot

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    h = host(tmp_path, role="warm", snapshot_every=10, snapshot_s=3600.0)
    try:
        h.seq = 15
        h._maybe_snapshot()
        h.wait_snapshot()
        assert h.status()["snapshot_seq"] == 15 and not h.stats.get("snapshot_failures")
        written_age = h.status()["snapshot_age_s"]
        monkeypatch.setattr(mq.replica, "write_snapshot", full)
        for seq in (25, 35):
            h.seq = seq
            h._maybe_snapshot()
            h.wait_snapshot()
        st = h.status()
        assert st["snapshot_seq"] == 15, st
        assert st["snapshot_age_s"] >= written_age
        assert st.get("snapshot_failures") == 2 and "No space left" in st["snapshot_error"]
        assert snaps(tmp_path) == ["in.ce.X-00000000000000000015.snap"]
        monkeypatch.setattr(mq.replica, "write_snapshot", real)   # room again
        h.seq = 45
        h._maybe_snapshot()
        h.wait_snapshot()
        st = h.status()
        assert st["snapshot_seq"] == 45 and st["snapshot_error"] is None, st
        assert st["snapshot_failures"] == 2
    finally:
        close(h)


def test_a_hot_replica_restores_from_a_snapshot_no_newer_than_what_the_mirror_committed(
        tmp_path):
    """Both hot replicas SIGKILLed together (the compound fault campaign, 2,000 orders/s):
    the mirror had committed outputs up to 297347, the warm replica's newest snapshot was at
    298000, and both restarted from it, so neither could ever send outputs 297348..298000:
    the out stream stopped for good. A hot replica now asks the mirror where the out stream
    stands and restores from the newest snapshot at or below that seq; a mirror that does
    not answer leaves the newest snapshot in use (as before)."""
    import threading

    import zmq

    from mq import sockets, wire
    shared = str(tmp_path / "shared")
    for seq in (100, 200, 300):
        write_snapshot(shared, "in.ce.X", seq, b"state-%d" % seq, keep=5)
    fake = sockets.router("tcp://127.0.0.1:*")
    addr = fake.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer():
        while fake.poll(10_000):
            ident, kind, _body = fake.recv_multipart()[:3]
            if kind == wire.PING:
                fake.send_multipart([ident, wire.PONG, wire.pack({"role": "mirror",
                                                                  "committed": 250})])
                return

    t = threading.Thread(target=answer)
    t.start()
    h = ReplicaHost("hot1", Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9",
                    ["tcp://127.0.0.1:9"], "tcp://127.0.0.1:*", role="hot", mirror=addr,
                    snapshot_dir=str(tmp_path / "own"), shared_snapshot_dir=shared)
    try:
        assert h.seq == 200 and h.engine.state == b"state-200"
        assert h.sub.next_seq == 200   # the record at 200 first, to check
        assert h.stats["bad_snapshots"] == 0   # the newer one is skipped, not moved aside
        assert os.path.exists(os.path.join(shared, "in.ce.X-00000000000000000300.snap"))
    finally:
        t.join(15)
        fake.close(0)
        close(h)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_hot_replica_does_not_wait_for_a_mirror_that_is_down(tmp_path, monkeypatch, caplog):
    """A restarting hot replica asks the mirror how far the out stream is committed; with the
    mirror down (its port closed) it waited out the whole question (MIRROR_ASK_S, 1 s) on
    every restart. A refused connection now ends the question at once: here MIRROR_ASK_S is
    an hour, and the restore (newest snapshot, as before with no answer) still completes."""
    import mq.replica
    monkeypatch.setattr(mq.replica, "MIRROR_ASK_S", 3600.0)
    shared = str(tmp_path / "shared")
    for seq in (100, 200):
        write_snapshot(shared, "in.ce.X", seq, b"state-%d" % seq, keep=5)
    caplog.set_level(logging.WARNING, logger="seqex.replica")
    h = ReplicaHost("hot0", Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9",
                    ["tcp://127.0.0.1:9"], "tcp://127.0.0.1:*", role="hot",
                    mirror=f"tcp://127.0.0.1:{_closed_port()}",
                    snapshot_dir=str(tmp_path / "own"), shared_snapshot_dir=shared)
    try:
        assert h.seq == 200 and h.engine.state == b"state-200"
        assert "did not say how far the out stream is committed" in caplog.text
    finally:
        close(h)


@pytest.mark.timeout(60)
def test_a_call_ends_at_a_refused_connection_and_waits_for_a_silent_peer():
    """mq.control.call(refused_ends=True): nothing listening is ConnectionRefusedError at once
    (the deadline here is an hour); a peer that listens and does not answer is still waited
    for until the deadline (TimeoutError). (One that answers: the test above.)"""
    import zmq

    from mq import sockets, wire
    from mq.control import call
    with pytest.raises(ConnectionRefusedError):
        call(f"tcp://127.0.0.1:{_closed_port()}", wire.PING, timeout_s=3600, refused_ends=True)
    silent = sockets.router("tcp://127.0.0.1:*")
    try:
        addr = silent.getsockopt_string(zmq.LAST_ENDPOINT)
        with pytest.raises(TimeoutError):
            call(addr, wire.PING, timeout_s=0.5, refused_ends=True)
    finally:
        silent.close(0)


def test_an_account_query_is_answered_from_the_engine_and_bad_ones_with_one_error(tmp_path):
    """QUERY (operators: `seqex client positions`): the engine's view_accounts at the host's
    seq; an engine without one, a body that is not {accounts: [ints]}, or too many accounts:
    an error, never an exception out of the loop."""
    from mq import wire
    from mq.replica import MAX_QUERY_ACCOUNTS
    h = host(tmp_path)
    try:
        assert "answers no account query" in h._query(wire.pack({"accounts": [1]}))["error"]
        h.engine.view_accounts = lambda ids: [{"account": i} for i in ids]
        h.seq = 41
        assert h._query(wire.pack({"accounts": [2, 4]})) == {
            "seq": 41, "catching_up": h.sub.replaying,
            "accounts": [{"account": 2}, {"account": 4}]}
        # a replica still replaying the log says so (its figures are not the latest)
        h.sub.replaying = True
        assert h._query(wire.pack({"accounts": [2]}))["catching_up"] is True
        h.sub.replaying = False
        assert h._query(wire.pack({"accounts": [2]}))["catching_up"] is False
        for bad in (b"\xc1", wire.pack({}), wire.pack({"accounts": 3}),
                    wire.pack({"accounts": ["2"]}), wire.pack({"accounts": [-1]}),
                    wire.pack({"accounts": [1 << 32]}), wire.pack({"accounts": [True]}),
                    wire.pack({"accounts": list(range(MAX_QUERY_ACCOUNTS + 1))})):
            assert set(h._query(bad)) == {"error"}, bad
    finally:
        close(h)


def test_a_tradingengine_snapshot_without_finished_orders_is_refused_and_the_log_replayed(
        tmp_path):
    """A version 5 TradingEngine snapshot in which a session has used a ClOrdID (written before
    sessions kept their finished orders) is moved aside at start and the replica replays from
    seq 1, with the real engine's restore; the same snapshot in version 9 is restored."""
    import msgpack

    from tests.unit.test_tradingengine_sessions import Harness
    from tradingengine.engine import TradingEngine
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 70)
    state = msgpack.unpackb(h.v.te.snapshot(), raw=False, strict_map_key=False)
    old = msgpack.packb([5, *state[1:21], [row[:13] for row in state[21]], *state[22:]],
                        use_bin_type=True)
    own = str(tmp_path / "own")

    def start():
        return ReplicaHost("r1", TradingEngine(list(h.v.te.specs.values())), TradingEngine.restore,
                           "in.te.0", "tcp://127.0.0.1:9", ["tcp://127.0.0.1:9"],
                           "tcp://127.0.0.1:*", role="warm", snapshot_dir=own,
                           shared_snapshot_dir=str(tmp_path / "shared"))
    path = write_snapshot(own, "in.te.0", 50, old, keep=3)
    r = start()
    try:
        assert r.seq == 0 and r.sub.next_seq == 1 and r.stats["bad_snapshots"] == 1
        assert os.path.exists(path + ".bad")
    finally:
        close(r)
    write_snapshot(own, "in.te.0", 60, h.v.te.snapshot(), keep=3)
    r = start()
    try:
        assert r.seq == 60 and r.engine.state_hash() == h.v.te.state_hash()
    finally:
        close(r)


def _log_frame(first: int, n: int, salt: bytes = b"") -> bytes:
    from mq.record import encode
    return encode([(first + i, 1000 + first + i, 7, first + i, 1, 64, b"r%d" % (first + i) + salt)
                   for i in range(n)])


def test_a_snapshot_names_its_stream_and_another_streams_is_refused(tmp_path, caplog):
    """A file of another stream under this stream's name (copied in by hand, or a shared
    directory mixed up) was restored: an ETHUSDT book ran in the BTCUSDT engine. Now the
    header names the stream, and such a file is moved aside like a damaged one."""
    own = str(tmp_path / "own")
    write_snapshot(own, "in.ce.X", 100, b"state-100", keep=5)
    other = write_snapshot(own, "in.ce.Y", 300, b"state-of-Y", keep=5)
    mine = os.path.join(own, f"in.ce.X-{300:020d}.snap")
    os.rename(other, mine)
    with pytest.raises(SnapshotError, match="'in.ce.Y', not of 'in.ce.X'"):
        check_snapshot(mine, "in.ce.X")
    assert check_snapshot(mine) == (300, b"state-of-Y")    # intact, of its own stream
    with caplog.at_level(logging.INFO, logger="seqex.replica"):
        h = host(tmp_path)
    try:
        assert h.seq == 100 and h.engine.state == b"state-100"
        assert os.path.exists(mine + ".bad") and h.stats["bad_snapshots"] == 1
    finally:
        close(h)


def test_a_restore_is_verified_against_the_logs_record_at_its_seq(tmp_path, caplog):
    """A snapshot of this stream from another cluster (or restored from another venue's
    backup) named the right stream and passed every check; the replica ran on from a state
    the log never produced, ahead of the log and showing lag 0. The snapshot keeps a digest of
    the record at its seq; the replica asks for the input from that seq, and before applying
    anything the log's record there must match, or the file is moved aside and the next older
    one (or seq 0) is used."""
    from mq.replica import check_snapshot_record, last_record, record_digest
    own = str(tmp_path / "own")
    ours = _log_frame(91, 20)                                  # seqs 91 .. 110
    rec100 = record_digest(last_record(91, 100, ours))
    write_snapshot(own, "in.ce.X", 100, b"state-100", keep=5, record=rec100)
    theirs = _log_frame(191, 20, b"elsewhere")                 # another log's 191 .. 210
    foreign = write_snapshot(own, "in.ce.X", 200, b"state-200-elsewhere", keep=5,
                             record=record_digest(last_record(191, 200, theirs)))
    assert check_snapshot_record(foreign, "in.ce.X")[2] is not None
    with caplog.at_level(logging.INFO, logger="seqex.replica"):
        h = host(tmp_path)
    try:
        assert h.seq == 200 and h.sub.next_seq == 200       # asks for the record at 200 too
        assert h.status()["verifying"] == 200
        ours_200 = _log_frame(200, 3)                        # this log's 200 .. 202
        assert not h._verified(200, 202, ours_200)
        assert os.path.exists(foreign + ".bad") and h.stats["bad_snapshots"] == 1
        assert "another log" in caplog.text
        # back on the older snapshot, which this log's record at 100 matches
        assert h.seq == 100 and h.engine.state == b"state-100" and h.sub.next_seq == 100
        assert h.verify is not None and h._verified(100, 110, trim_from(ours, 91, 100))
        assert h.verify is None and h.seq == 100 and h.status()["verifying"] == 0
    finally:
        close(h)


def trim_from(frame: bytes, first: int, want: int) -> bytes:
    from mq.record import trim
    return trim(frame, first, want)


def test_the_serve_loop_applies_nothing_on_a_snapshot_the_log_does_not_match(tmp_path):
    """serve(): the first frame after a restore starts at the snapshot's seq; on a match that
    record is dropped and the rest applied; on a mismatch nothing is applied."""
    from mq.replica import last_record, record_digest
    own = str(tmp_path / "own")
    ours = _log_frame(1, 10)
    write_snapshot(own, "in.ce.X", 5, b"state-5", keep=5,
                   record=record_digest(last_record(1, 5, ours)))

    class Applying(Fake):
        applied: list = []

        def apply_frame(self, frame):
            from mq.record import decode
            Applying.applied += [r[0] for r in decode(frame)]
            return frame

        @classmethod
        def restore(cls, data):
            return cls(data)

    h = ReplicaHost("r1", Applying(), Applying.restore, "in.ce.X", "tcp://127.0.0.1:9",
                    ["tcp://127.0.0.1:9"], "tcp://127.0.0.1:*", role="warm",
                    snapshot_dir=own)
    sent = [(5, 10, trim_from(ours, 1, 5))]

    def poll(_ms):
        if sent:
            return [sent.pop()]
        h.running = False
        return []
    try:
        h.sub.poll = poll
        h.serve()
        assert Applying.applied == [6, 7, 8, 9, 10] and h.seq == 10 and h.verify is None
    finally:
        h.control.close(0)


def test_a_snapshot_keeps_the_digest_of_the_record_it_was_taken_after(tmp_path):
    from mq.replica import check_snapshot_record, last_record, record_digest
    h = host(tmp_path, role="warm", snapshot_every=10)
    try:
        frame = _log_frame(21, 5)
        h.last_frame, h.seq = (21, 25, frame), 25
        h._maybe_snapshot()
        h.wait_snapshot()
        (name,) = snaps(tmp_path)
        seq, state, record = check_snapshot_record(str(tmp_path / "own" / name), "in.ce.X")
        assert (seq, state) == (25, b"fresh")
        assert record == record_digest(last_record(21, 25, frame))
    finally:
        close(h)


def test_a_file_that_names_no_record_of_the_log_is_not_restored(tmp_path, caplog):
    """A version 1 file (or one with a zero record digest) was restored unverified, and the
    replica's next snapshot, taken after a record of this log, carried the foreign state as a
    verified one: the hot replicas restored from it and published a state no rebuild gives.
    Such a file is now passed over (left in place: the rotation removes it)."""
    import hashlib
    own = tmp_path / "own"
    own.mkdir()
    state = b"state-42"
    v1 = own / f"in.ce.X-{42:020d}.snap"
    v1.write_bytes(SNAP_HEADER.pack(b"SQXSNAP1", 42, hashlib.sha256(state).digest(),
                                    len(state)) + state)
    assert check_snapshot(str(v1), "in.ce.X") == (42, state)
    zero = _write_snapshot(str(own), "in.ce.X", 50, b"state-50", keep=5)
    write_snapshot(str(own), "in.ce.X", 30, b"state-30", keep=5)
    with caplog.at_level(logging.INFO, logger="seqex.replica"):
        h = host(tmp_path)
    try:
        assert h.seq == 30 and h.engine.state == b"state-30" and h.sub.next_seq == 30
        assert h.stats["unverifiable_snapshots"] == 2 and h.stats["bad_snapshots"] == 0
        assert os.path.exists(v1) and os.path.exists(zero)
        assert caplog.text.count("names no record of the log") == 2
    finally:
        close(h)


def test_a_snapshot_beyond_the_logs_end_is_refused_at_start(tmp_path):
    """A snapshot at seq 10,000,000 of a log at ~5,400 (another log's): the warm replica
    waited for a record that would not come for hours, applying nothing, PROMOTE refused,
    status showing lag 0. Now a restarting replica asks the replicators where the log ends
    (STATE) and refuses a snapshot beyond it."""
    import threading

    import zmq

    from mq import sockets, wire
    fake = sockets.router("tcp://127.0.0.1:*")
    addr = fake.getsockopt_string(zmq.LAST_ENDPOINT)
    asked = []

    def answer():
        if fake.poll(10_000):
            ident, kind, body = fake.recv_multipart()
            asked.append((kind, wire.unpack(body)))
            fake.send_multipart([ident, wire.STATE, wire.pack({"last": 150, "commit": 150})])
    t = threading.Thread(target=answer)
    t.start()
    own = str(tmp_path / "own")
    far = write_snapshot(own, "in.ce.X", 10_000_000, b"far", keep=5)
    write_snapshot(own, "in.ce.X", 100, b"state-100", keep=5)
    h = ReplicaHost("r1", Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9", [addr],
                    "tcp://127.0.0.1:*", role="warm", snapshot_dir=own)
    try:
        t.join(15)
        assert asked == [(wire.STATE, {"stream": "in.ce.X"})]
        assert h.seq == 100 and h.engine.state == b"state-100"
        assert os.path.exists(far + ".bad") and h.stats["bad_snapshots"] == 1
    finally:
        fake.close(0)
        close(h)


def test_a_good_snapshot_is_kept_when_only_a_lagging_replicator_answers(tmp_path):
    """The only replicator that answered STATE was frozen behind the others (which were away):
    the end it gave was below a good snapshot, which was moved aside as "another log's". The
    end is now taken only when every replicator answers; else the check of the record at the
    snapshot's seq decides."""
    import threading

    import zmq

    from mq import sockets, wire
    fake = sockets.router("tcp://127.0.0.1:*")
    addr = fake.getsockopt_string(zmq.LAST_ENDPOINT)
    away = sockets.router("tcp://127.0.0.1:*")         # bound, never answers: frozen
    frozen = away.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer():
        if fake.poll(10_000):
            ident, _kind, _body = fake.recv_multipart()
            fake.send_multipart([ident, wire.STATE, wire.pack({"last": 150, "commit": 150})])
    t = threading.Thread(target=answer)
    t.start()
    own = str(tmp_path / "own")
    good = write_snapshot(own, "in.ce.X", 200, b"state-200", keep=5)
    h = ReplicaHost("r1", Fake(), Fake.restore, "in.ce.X", "tcp://127.0.0.1:9",
                    [addr, frozen], "tcp://127.0.0.1:*", role="warm", snapshot_dir=own)
    try:
        t.join(15)
        assert h.seq == 200 and h.verify is not None and os.path.exists(good)
        assert h.stats["bad_snapshots"] == 0
    finally:
        fake.close(0)
        away.close(0)
        close(h)
