"""The gateway's journal index on disk (gateway/index.py, docs/gateway.md "The index on
disk"): a restarted gateway takes the file's sessions and reads out.te.N only after the
records it covers; what it then holds is what reading the log from seq 1 gives, whatever
the file went through (a crash at any byte of a write, a disk that refused a write, a file of
another log)."""
from __future__ import annotations

import asyncio
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import index as gindex
from gateway import server as gs
from gateway import wire
from tests.gateway_fakes import FakeCore
from tests.unit.test_gateway_server import Client, forty_reports, run, started, users, wait_for


def _locs(gw) -> dict:
    return {k: (j.shard, list(j.locs)) for k, j in gw.journal.items()}


def test_a_restarted_gateway_reads_only_the_records_after_its_index_and_replays_all():
    """The index file covers out.te.0 to some seq; the next gateway reads from the record
    after it (the core is told so) and holds the same index as one that read from seq 1; a
    client that logs on asking for everything gets every message, as sent live, PossDup."""
    async def main(path):
        gw, core, port = await started(cfg=gs.Config(index_file=path, index_interval_s=0.05))
        c = await Client.connect(port)
        await c.logon()
        await c.expect(wire.LOGON_ACK)
        for _ in range(4):
            core.push(7, 1, 10)
        live = [await c.expect(wire.EXECUTION_REPORT) for _ in range(40)]
        await wait_for(lambda: gw.index_written == gw.covered and gw.stats["index_writes"])
        await gw.close()
        covered = gindex.load(path, 1).covered[0][0]    # (the close wrote the last records)
        assert covered == len(core.out_log[0])
        core.callbacks.clear()
        core.push(7, 1, 5)                  # written while no gateway runs
        live += [None] * 5
        # the next gateway, and one reading from seq 1 (no file) for comparison
        core.replay_history = True
        gw2, _core, port2 = await started(cfg=gs.Config(index_file=path), core=core)
        assert core.resumed == [covered + 1] and covered >= 5
        whole = gs.Gateway(core, users(), gs.Config())
        for seq, (ts, payload) in enumerate(zip(core.out_ts[0], core.out_log[0], strict=True), 1):
            whole._on_record(0, seq, ts, payload)
        assert _locs(gw2) == _locs(whole) and len(gw2.journal[(7, 1)].locs) == 45
        c = await Client.connect(port2)
        await c.logon(next_expected=1, next_seq=1)
        ack = await c.expect(wire.LOGON_ACK)
        assert ack.NextSeqNo == 46
        assert (await c.expect(wire.RETRANSMISSION)).Count == 45
        got = [await c.expect(wire.EXECUTION_REPORT) for _ in range(45)]
        assert [g.SeqNo for g in got] == list(range(1, 46))
        assert all(g.Flags == wire.FLAG_POSS_DUP for g in got)
        assert [g._replace(Flags=0) for g in got[:40]] == live[:40]
        await gw2.close()
    tmp = _tmp()
    run(main(os.path.join(tmp, "gw", "journal.index")))


def test_an_index_of_another_log_is_not_used_and_is_written_again():
    """The log was built again (other stamps at the covered seq), or no replicator answers:
    the file is not used, the gateway reads from seq 1, and the file starts over."""
    async def main(path):
        gw, core, _port = await started(cfg=gs.Config(index_file=path, index_interval_s=0.05))
        core.emit(0, core._message({"user": 7, "sid": 3, "next_seq": 1}, 203, 0, 1,
                                   wire.U64_NULL, 100, 0, 0, b""))
        at = len(core.out_log[0])
        await wait_for(lambda: gw.index_written == gw.covered)
        await gw.close()
        for other in (lambda c: setattr(c, "out_ts", [[t + 1 for t in c.out_ts[0]]]),
                      lambda c: setattr(c, "fetch_fails", True)):
            core2 = FakeCore()
            core2.out_log, core2.out_ts = [list(core.out_log[0])], [list(core.out_ts[0])]
            other(core2)
            core2.replay_history = True
            gw2, _c, _p = await started(cfg=gs.Config(index_file=path), core=core2)
            assert core2.resumed == [1]
            assert list(gw2.journal[(7, 3)].locs) == [at]
            assert gindex.load(path, 1).covered == [(0, 0)]
            core2.fetch_fails = False
            await gw2.close()
    tmp = _tmp()
    run(main(os.path.join(tmp, "journal.index")))


def _tmp() -> str:
    import tempfile
    d = tempfile.mkdtemp(prefix="seqex-gwindex-")
    _CLEANUP.append(d)
    return d


_CLEANUP: list[str] = []


def teardown_module(_module):
    import shutil
    for d in _CLEANUP:
        shutil.rmtree(d, ignore_errors=True)


# -- the index against a fresh read, under crashes at any byte ---------------------------------

def _message(user: int, sid: int, seqno: int) -> bytes:
    block = wire.TEMPLATES[203].block.pack(seqno, 0, 1, wire.U64_NULL, 100, 0, 0, b"")
    return gs.SESSION_MESSAGE_S.pack(gs.EV_SESSION_MESSAGE, user, sid, 203) + block


def _finalized(user: int, sid: int) -> bytes:
    return gs.SESSION_STATE_S.pack(gs.EV_SESSION_STATE, user, sid, 0, 1, 1,
                                   gs.STATUS_FINALIZED)


# one step: (shard, [(session, SeqNo step)]) a record of session messages (a step of +1 is
# the next SeqNo; 0 one again; +2.. a gap), or (shard, None, session) a finalization, or
# "checkpoint"
_SESSIONS = st.integers(0, 3)
_STEP = st.one_of(
    st.tuples(st.integers(0, 1), st.lists(st.tuples(_SESSIONS, st.sampled_from([1, 1, 1, 0, 2, 5])),
                                          min_size=0, max_size=4)),
    st.tuples(st.integers(0, 1), st.none(), _SESSIONS),
    st.just("checkpoint"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=40),
       cut=st.one_of(st.just(1.0), st.floats(0, 1)),
       refuse=st.integers(-1, 12))
def test_the_file_at_any_crash_point_plus_the_log_after_it_is_the_whole_index(steps, cut,
                                                                               refuse):
    """A gateway applies records and writes checkpoints (one of them refused by the disk);
    the file is then cut at a random byte (a crash mid-write, a lost tail). Loading what is
    left and applying the records after its covered seqs gives exactly the index of the
    gateway that saw everything, and exactly what a gateway reading from seq 1 builds."""
    tmp = _tmp()
    path = os.path.join(tmp, "journal.index")
    core = FakeCore(n_shards=2)
    gw = gs.Gateway(core, users(), gs.Config(index_file=path))
    gw.index = gindex.IndexFile(path, 2)
    gw.index.rewrite(gw.covered, {})
    nexts = {}
    log = [[], []]               # per shard: (ts_ns, payload)
    ts = 1_000
    n_checkpoints = 0
    for step in steps:
        if step == "checkpoint":
            if n_checkpoints == refuse:
                _checkpoint_on_a_full_disk(gw)
            else:
                gw._checkpoint()
            n_checkpoints += 1
            continue
        shard = step[0]
        if step[1] is None:
            key = (shard + 1, step[2])      # (a session lives on one shard: its user's)
            payload = _finalized(*key)
            nexts.pop(key, None)
        else:
            payload = b""
            for s, jump in step[1]:
                key = (shard + 1, s)
                nxt = nexts.get(key, 1)
                seqno = max(1, nxt - 1 if jump == 0 else nxt + jump - 1)
                nexts[key] = max(nxt, seqno + 1)
                payload += _message(*key, seqno)
        ts += 1_000
        log[shard].append((ts, payload))
        gw._on_record(shard, len(log[shard]), ts, payload)
    gw._checkpoint()
    gw.index.close()
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * cut)])
    loaded = gindex.load(path, 2)
    again = gs.Gateway(core, users(), gs.Config())
    for key, (shard, locs) in loaded.sessions.items():
        again.journal[key] = gs.Journal(shard)
        again.journal[key].locs = locs
    for shard in (0, 1):
        seq, stamp = loaded.covered[shard]
        assert seq == 0 or log[shard][seq - 1][0] == stamp
        for s in range(seq + 1, len(log[shard]) + 1):
            again._on_record(shard, s, *log[shard][s - 1])
    fresh = gs.Gateway(core, users(), gs.Config())
    for shard in (0, 1):
        for s, (t, p) in enumerate(log[shard], 1):
            fresh._on_record(shard, s, t, p)
    assert _locs(again) == _locs(gw) == _locs(fresh)


def _refuse(*_a):
    raise OSError(28, "No space left on device")


def _checkpoint_on_a_full_disk(gw) -> None:
    real = os.pwrite
    os.pwrite = _refuse
    try:
        gw._checkpoint()
    finally:
        os.pwrite = real


def test_a_write_the_disk_refuses_leaves_the_file_as_it_was_and_goes_next_time():
    tmp = _tmp()
    path = os.path.join(tmp, "journal.index")
    gw = gs.Gateway(FakeCore(), users(), gs.Config(index_file=path))
    gw.index = gindex.IndexFile(path, 1)
    gw.index.rewrite(gw.covered, {})
    gw._on_record(0, 1, 10, _message(1, 1, 1))
    size = os.path.getsize(path)
    _checkpoint_on_a_full_disk(gw)
    assert os.path.getsize(path) == size and gw.stats["index_write_failures"] == 1
    assert gindex.load(path, 1).covered == [(0, 0)]
    gw._on_record(0, 2, 20, _message(1, 1, 2))
    gw._checkpoint()
    loaded = gindex.load(path, 1)
    assert loaded.covered == [(2, 20)] and list(loaded.sessions[(1, 1)][1]) == [1, 2]


def test_damage_stops_reading_at_the_damaged_chunk():
    """A flipped byte in a chunk: the chunks before it are the index; the file says why it
    stopped. A file of another shard count, or garbage, gives an empty index."""
    tmp = _tmp()
    path = os.path.join(tmp, "journal.index")
    f = gindex.IndexFile(path, 1)
    f.open_for_append(0)
    from array import array
    for n in range(1, 4):
        f.append(gindex.chunk(1, [(n, n * 10)], [], [((1, 1), 0, array("q", [n]), n)]))
    f.close()
    data = bytearray(open(path, "rb").read())
    second = len(data) // 3
    data[second + gindex.HEAD.size + 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    loaded = gindex.load(path, 1)
    assert loaded.covered == [(1, 10)] and list(loaded.sessions[(1, 1)][1]) == [1]
    assert "CRC" in loaded.damaged and loaded.chunks == 1
    assert gindex.load(path, 2).covered == [(0, 0), (0, 0)]
    open(path, "wb").write(os.urandom(100))
    assert gindex.load(path, 1).sessions == {} and gindex.load(path, 1).damaged
    body = b"\x93\x01\x02\x03"                 # msgpack, but not a chunk's shape
    open(path, "wb").write(gindex.HEAD.pack(gindex.MAGIC, len(body), __import__("zlib").crc32(
        body)) + body)
    assert gindex.load(path, 1).damaged.startswith("a chunk that does not parse")
    assert struct.calcsize("<4sII") == gindex.HEAD.size


def test_settings_take_the_index_file():
    doc = {"index": 0, "listen": "127.0.0.1:1", "accounts": "a.json",
           "shards": [{"in": "tcp://127.0.0.1:2", "pub": "tcp://127.0.0.1:3",
                       "replicators": ["tcp://127.0.0.1:4"]}],
           "index_file": "/x/journal.index", "index_interval_s": 0.5}
    cfg = gs.parse_settings(doc).cfg
    assert (cfg.index_file, cfg.index_interval_s) == ("/x/journal.index", 0.5)
    asyncio.run(asyncio.sleep(0))


def test_an_index_path_that_cannot_be_written_leaves_the_gateway_running_without_it():
    """A directory where the file should be (or a full disk at start): the gateway says so,
    reads from seq 1 and serves; it only has no checkpoint this run."""
    async def main(path):
        os.makedirs(path)
        gw, core, port = await started(cfg=gs.Config(index_file=path, index_interval_s=0.05))
        assert gw.index is None and core.resumed == [1]
        await forty_reports(core, port, n=3)
        await gw.close()
    tmp = _tmp()
    run(main(os.path.join(tmp, "journal.index")))


def test_a_chunk_that_passes_its_crc_but_says_nonsense_is_damage():
    """A body msgpack reads and the CRC matches, with values no gateway writes: floats and
    booleans for numbers, a session's locations starting far beyond what the file holds (it
    would be zero-padded to gigabytes), a session named twice. Each stops the reading there,
    never an exception out of load() and never a large allocation."""
    import zlib

    import msgpack
    tmp = _tmp()
    path = os.path.join(tmp, "journal.index")
    good = gindex.chunk(1, [(3, 30)], [], [((1, 1), 0, __import__("array").array("q", [1, 2]),
                                            1)])
    bodies = [
        [1, 1, [[3, 30]], [[float("inf"), 0]], []],
        [1, 1, [[float("inf"), 5]], [], []],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 2**62, b""]]],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 10**9, b"\0" * 8]]],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 4, b""]]],            # beyond 2 held, +1
        [True, 1, [[3, 30]], [], []],
        [1, 1, [[True, 30]], [], []],
        [1, 1, [[3, 30]], [["12", 1]], []],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 1, b""], [1, 1, 0, 3, b"\0" * 8]]],
        [1, 1, [[-1, 30]], [], []],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 1, struct.pack("<3q", 1 << 62, -1, 0)]]],
        [1, 1, [[3, 30]], [], [[1, 1, 0, 3, struct.pack("<q", 4)]]],   # beyond covered 3
        [1, 1, [[3, 30]], [], [[1, 1, 0, 3, struct.pack("<q", -1)]]],
    ]
    for body in bodies:
        data = msgpack.packb(body, use_bin_type=True)
        with open(path, "wb") as f:
            f.write(good + gindex.HEAD.pack(gindex.MAGIC, len(data), zlib.crc32(data)) + data)
        loaded = gindex.load(path, 1)
        assert loaded.chunks == 1 and loaded.covered == [(3, 30)], body
        assert list(loaded.sessions[(1, 1)][1]) == [1, 2] and loaded.damaged, body
