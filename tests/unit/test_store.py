"""The LMDB store keeps a gapless log per stream: it refuses gaps, re-acknowledges a
re-sent frame with identical bytes, refuses different bytes at a held seq, refuses lower
epochs, keeps producer positions, and survives being closed and reopened."""
import pytest

from mq.record import FrameError, decode, encode, scan
from replicator.store import Store


def frame(first, n, src=1, ss_first=None, epoch=1, tag=b"x"):
    ss_first = first if ss_first is None else ss_first
    return encode([(first + i, 1000 + first + i, src, ss_first + i, epoch, 16, tag + bytes([first + i]))
                   for i in range(n)])


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "lmdb"), "os", map_size=1 << 26)
    yield s
    s.close()


def test_append_and_read_any_range(store):
    assert store.append("in.x", 1, frame(1, 5)).ok
    assert store.append("in.x", 1, frame(6, 5)).ok
    log = store.stream("in.x")
    assert log.last == 10
    for a in range(1, 11):
        for b in range(a, 11):
            assert scan(log.read(a, b)) == (b - a + 1, a, b)
    assert log.read(11) == b""
    assert scan(log.read(3, None, max_bytes=1)) == (3, 3, 5)  # stops at a frame boundary


def test_gap_is_refused(store):
    store.append("s", 1, frame(1, 3))
    r = store.append("s", 1, frame(5, 1))
    assert (r.ok, r.reason, r.last) == (False, "gap", 3)


def test_resent_identical_frame_is_acknowledged_again(store):
    store.append("s", 1, frame(1, 3))
    r = store.append("s", 1, frame(1, 3))
    assert (r.ok, r.last) == (True, 3)
    r = store.append("s", 1, frame(2, 4))  # overlaps 2..3, adds 4..5
    assert (r.ok, r.last) == (True, 5)
    assert [rec[0] for rec in decode(store.stream("s").read(1))] == [1, 2, 3, 4, 5]


def test_different_bytes_at_a_held_seq_are_refused(store):
    store.append("s", 1, frame(1, 3))
    r = store.append("s", 1, frame(2, 2, tag=b"y"))
    assert (r.ok, r.reason, r.seq, r.last) == (False, "conflict", 2, 3)
    assert decode(store.stream("s").read(2, 2))[0][6] == b"x\x02"


def test_lower_epoch_is_fenced(store):
    store.append("s", 3, frame(1, 1, epoch=3))
    r = store.append("s", 2, frame(2, 1, epoch=2))
    assert (r.ok, r.reason, r.epoch) == (False, "fenced", 3)


def test_an_epoch_is_granted_to_one_claimant_and_again_to_it_alone(tmp_path):
    """Two masters that start together claim the same epoch: the first is granted it, the
    second refused, even after a reopen; the first's CLAIM sent again is granted again, and
    a higher epoch goes to whoever claims it. Without this both masters stamp records of one
    epoch, and log matching (same epoch at a seq, same records) takes their different
    records for one log (tests/stateful/test_replication_model.py plays it)."""
    path = str(tmp_path / "lmdb")
    s = Store(path, map_size=1 << 26)
    claim = lambda epoch, who: s.change("s", lambda log, txn: log.claim(txn, epoch, who))  # noqa: E731
    assert claim(2, 11)
    assert not claim(2, 22)
    assert claim(2, 11)                           # its own CLAIM again (an answer was lost)
    assert not claim(1, 11)                       # lower: fenced
    s.close()
    s = Store(path, map_size=1 << 26)
    assert (s.stream("s").epoch, s.stream("s").claimant) == (2, 11)
    assert not claim(2, 22) and claim(2, 11)
    assert claim(3, 22) and not claim(3, 11)
    # an epoch that came with an APPEND has no claimant: the first CLAIM of it is granted
    assert s.append("s", 4, frame(1, 1, epoch=4)).ok
    assert s.stream("s").claimant == 0
    assert claim(4, 33) and not claim(4, 44) and claim(4, 33)
    # a CLAIM that names nobody takes only a higher epoch, or one nobody claimed by name
    assert not claim(4, 0) and claim(5, 0) and claim(5, 0) and claim(5, 55)
    s.close()


def test_malformed_frame_raises_frame_error_and_changes_nothing(store):
    store.append("s", 1, frame(1, 2))
    with pytest.raises(FrameError):
        store.append("s", 1, frame(3, 2)[:-3])
    assert store.stream("s").last == 2


def test_state_survives_reopen(tmp_path):
    path = str(tmp_path / "lmdb")
    s = Store(path, "fsync", map_size=1 << 26)
    s.append("a", 4, frame(1, 3, src=7, ss_first=10, epoch=4))
    s.append("b", 2, frame(1, 1, src=9, epoch=2))
    s.close()
    s = Store(path, "os", map_size=1 << 26)
    a = s.stream("a")
    assert (a.last, a.epoch, a.ts_ns) == (3, 4, 1003)
    assert a.sources() == [(7, 13, 3, 1003)]
    assert s.stream("b").sources() == [(9, 2, 1, 1001)]
    s.close()


def source_frame(first: int, src: int, ss: int, ts: int) -> bytes:
    return encode([(first, ts, src, ss, 1, 16, b"r")])


def test_state_leaves_out_sources_idle_past_the_retention_and_names_their_floor(store):
    """Expiry in sequenced time: a source whose last record is older than the log's last ts
    minus the retention is left out of STATE; source_floor is above every source_seq such a
    source used, so a master that meets it again cannot take an old number for a new one."""
    store.append("s", 1, source_frame(1, 5, 40, ts=1_000))     # source 5 up to ss 40
    store.append("s", 1, source_frame(2, 6, 7, ts=2_000))
    store.append("s", 1, source_frame(3, 0, 1, ts=3_000))      # a Tick: never left out
    store.append("s", 1, source_frame(4, 8, 3, ts=10_000))
    log_ = store.stream("s")
    st = log_.state(retention_ns=8_500)          # horizon 1_500: source 5 is idle too long
    assert [x[0] for x in st["sources"]] == [0, 6, 8]
    assert st["source_floor"] == 41
    assert st["sources"][1] == [6, 8, 2, 2_000]
    everything = log_.state()                    # no retention: every source, floor 1
    assert [x[0] for x in everything["sources"]] == [0, 5, 6, 8]
    assert everything["source_floor"] == 1
    kept = log_.state(retention_ns=8_500, keep=frozenset({5}))   # an upstream source
    assert [x[0] for x in kept["sources"]] == [0, 5, 6, 8] and kept["source_floor"] == 1


def test_state_names_at_most_max_sources_the_most_recent_first(store):
    for i in range(1, 11):
        store.append("s", 1, source_frame(i, 100 + i, 3 * i, ts=1_000 * i))
    st = store.stream("s").state(max_sources=4)
    assert [x[0] for x in st["sources"]] == [107, 108, 109, 110]
    assert st["source_floor"] == 3 * 6 + 1      # source 106's next source_seq


def test_a_source_written_before_sources_had_a_ts_reads_as_ts_0(store):
    store.append("s", 1, source_frame(1, 5, 1, ts=5_000))
    log_ = store.stream("s")
    with store.env.begin(write=True) as txn:
        txn.put(b"s" + (5).to_bytes(4, "big"), (2).to_bytes(8, "big") + (1).to_bytes(8, "big"),
                db=log_.meta_db)
    assert log_.sources() == [(5, 2, 1, 0)]
    assert log_.state(retention_ns=1)["source_floor"] == 2


def test_bad_durability_and_stream_names_are_refused(tmp_path):
    with pytest.raises(ValueError):
        Store(str(tmp_path / "x"), "maybe")
    s = Store(str(tmp_path / "y"), map_size=1 << 26)
    with pytest.raises(ValueError):
        s.stream("")
    s.close()


def test_append_onto_a_record_of_another_epoch_is_refused(store):
    """Raft's previous-entry check: the master names the epoch of the record before its frame;
    a replicator holding a record of another epoch there diverged and must truncate first."""
    store.append("s", 1, frame(1, 2, epoch=1))
    r = store.change("s", lambda log, txn: log.append(txn, 3, frame(3, 1, epoch=3), 2))
    assert (r.ok, r.reason, r.seq) == (False, "conflict", 2)
    assert store.change("s", lambda log, txn: log.append(txn, 3, frame(3, 1, epoch=3), 1)).ok


def test_a_store_opens_streams_up_to_its_limit_and_refuses_one_more(tmp_path):
    """The limit, and one past it; the refusal is clean and survives a restart."""
    from replicator.store import StreamLimit
    path = str(tmp_path / "lmdb")
    s = Store(path, map_size=1 << 26, max_streams=4)
    for i in range(4):
        assert s.append(f"s{i}", 1, frame(1, 1)).ok
    with pytest.raises(StreamLimit):
        s.append("s4", 1, frame(1, 1))
    assert s.find("s4") is None
    assert s.append("s3", 1, frame(2, 1)).ok      # the streams held still take writes
    s.close()
    s = Store(path, map_size=1 << 26, max_streams=4)
    assert sorted(s.streams) == ["s0", "s1", "s2", "s3"]
    with pytest.raises(StreamLimit):
        s.stream("s4")
    assert s.names() == ["s0", "s1", "s2", "s3"]
    s.close()


def test_find_never_creates_a_stream(store):
    for i in range(600):  # more than the default limit of 500
        assert store.find(f"out.ce.NOPE{i}") is None
    assert store.names() == []
    store.append("s", 1, frame(1, 1))
    assert store.find("s").last == 1
    with pytest.raises(ValueError):
        store.find("")
    with pytest.raises(ValueError):
        store.find("a b")
    with pytest.raises(ValueError):
        store.find("x" * 201)


@pytest.mark.parametrize("epoch", [-1, 1 << 32, 1 << 40, 1.0, "1", None, True])
def test_epochs_that_do_not_fit_32_bits_are_refused(store, epoch):
    store.append("s", 1, frame(1, 1))
    with pytest.raises(ValueError):
        store.change("s", lambda log, txn: log.claim(txn, epoch))
    with pytest.raises(ValueError):
        store.change("s", lambda log, txn: log.append(txn, epoch, frame(2, 1)))
    if epoch is not None:  # no prev_epoch: no previous-epoch check (mirror streams)
        with pytest.raises(ValueError):
            store.change("s", lambda log, txn: log.append(txn, 1, frame(2, 1), epoch))
    with pytest.raises(ValueError):
        store.change("s", lambda log, txn: log.truncate(txn, epoch, 0))
    log = store.stream("s")
    assert (log.last, log.epoch) == (1, 1)
    assert store.change("s", lambda log, txn: log.claim(txn, (1 << 32) - 1))


def test_a_persisted_epoch_out_of_range_is_refused_loudly_and_repaired(tmp_path):
    """An epoch stored by an older version that took u64 epochs must not crash the replicator
    at every start: the stream is refused with the repair command, the others work."""
    from replicator.store import U64, StreamDamaged, reset_epoch
    path = str(tmp_path / "lmdb")
    s = Store(path, map_size=1 << 26)
    s.append("bad", 3, frame(1, 2, epoch=3))
    s.append("good", 1, frame(1, 1))
    log = s.stream("bad")
    with s.env.begin(write=True) as txn:
        txn.put(b"epoch", U64.pack(1 << 40), db=log.meta_db)
    s.close()
    s = Store(path, map_size=1 << 26)
    with pytest.raises(StreamDamaged, match="--reset-epoch bad"):
        s.stream("bad")
    with pytest.raises(StreamDamaged):
        s.find("bad")
    assert s.append("good", 1, frame(2, 1)).ok
    s.close()
    assert reset_epoch(path, "bad") == (1 << 40, 3)
    s = Store(path, map_size=1 << 26)
    assert (s.stream("bad").epoch, s.stream("bad").last) == (3, 2)
    s.close()


def test_a_failed_transaction_leaves_no_stream_behind(store):
    """A write that fails after creating a stream (as a full disk fails a commit) leaves
    neither the stream nor its in-memory state."""
    def boom(log, txn):
        log.append(txn, 1, frame(1, 2))
        raise OSError("no space")
    with pytest.raises(OSError):
        store.change("new", boom)
    assert store.names() == [] and store.find("new") is None
    store.append("s", 1, frame(1, 2))
    with pytest.raises(OSError):
        store.change("s", boom)
    assert store.stream("s").last == 2


def test_replacing_a_range_keeps_the_epoch_history_true(store):
    """A repair that replaces records of another epoch rewrites the history with them."""
    store.append("s", 1, frame(1, 6, epoch=1))
    store.append("s", 2, frame(7, 4, epoch=2))
    good = encode([(s, 1000 + s, 1, s, 1 if s < 4 else 2, 16, b"y") for s in range(1, 8)])
    store.change("s", lambda log, txn: log.replace(txn, good))
    log = store.stream("s")
    assert log.history == [(1, 1), (2, 4)]
    assert [r[4] for r in decode(log.read(1))] == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]



def test_empty_streams_left_by_reads_are_removed_at_open(tmp_path):
    """Older versions created a stream for every read of an unknown name; such streams hold
    nothing and had no epoch claimed, and are removed when the store opens, so that they do
    not count against the limit. A claimed but empty stream stays."""
    path = str(tmp_path / "lmdb")
    s = Store(path, map_size=1 << 26, max_streams=4)
    for name in ("out.ce.NOPE1", "out.ce.NOPE2", "out.ce.NOPE3"):
        s.stream(name)
    s.change("claimed", lambda log, txn: log.claim(txn, 1))
    s.close()
    s = Store(path, map_size=1 << 26, max_streams=4)
    assert s.names() == ["claimed"]
    for i in range(3):
        assert s.append(f"new{i}", 1, frame(1, 1)).ok
    s.close()


def test_a_frame_of_many_interleaved_source_runs_keeps_the_same_source_table(tmp_path,
                                                                            monkeypatch):
    """A peer's catch-up stores frames of thousands of records from interleaved sources (ticks,
    producers, upstream sources): the source table after one such frame must be the one that
    appending its records one at a time gives (each source's next source_seq, its last seq
    and the ts of its last record), and the log's ts that of the frame's last record. The
    append walks the frame once: it walked it from the start for every run (records walked
    grew with runs x records; a replicator catching up froze for minutes)."""
    import random

    from replicator import store as store_mod
    walked = [0]
    real_offset_of = store_mod.offset_of

    def counting_offset_of(buf, index):
        walked[0] += index
        return real_offset_of(buf, index)
    monkeypatch.setattr(store_mod, "offset_of", counting_offset_of)
    rnd = random.Random(7)
    ss = {1: 1, 2: 1, 3: 1, 4: 1}
    recs = []
    for seq in range(1, 3001):
        src = rnd.choice((1, 1, 2, 3, 4))
        recs.append((seq, 10_000 + 3 * seq + rnd.randrange(3), src, ss[src], 1, 16,
                     bytes(rnd.randrange(40)), 0))
        ss[src] += rnd.choice((1, 1, 1, 2))    # a source_seq skipped starts a new run
    whole = Store(str(tmp_path / "whole"), "os", map_size=1 << 26)
    one_by_one = Store(str(tmp_path / "one"), "os", map_size=1 << 26)
    try:
        assert whole.append("s", 1, encode(recs)).ok
        assert walked[0] <= len(recs)
        for rec in recs:
            assert one_by_one.append("s", 1, encode([rec])).ok
        a, b = whole.stream("s"), one_by_one.stream("s")
        assert a.sources() == b.sources() and len(a.sources()) == 4
        assert (a.last, a.ts_ns) == (b.last, b.ts_ns) == (3000, recs[-1][1])
    finally:
        whole.close()
        one_by_one.close()
