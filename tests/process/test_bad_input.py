"""Bad input from the network never kills a log process: a live replicator and sequencer are
sent random parts, undecodable bodies, fields of the wrong type and malformed frames; each
answers ERROR (or ignores what it cannot answer), still answers PING, and the log still
sequences, replicates and replays records correctly afterwards.

Then the packets that each killed a replicator once, one test each: wrong types and ranges in
one field, reads of streams that do not exist (which must create nothing), the stream limit and
one past it across a restart, and an out-of-range epoch left on disk by an older version.
The structure-aware random campaign is tests/property/test_garbage_input.py."""
import random
import time

import pytest
import zmq

from deploy.local import LogCluster
from deploy.procs import Group, tcp
from mq import wire
from mq.control import ping, replay, stats, wait_until
from mq.producer import Producer
from mq.record import decode, encode, pack
from replicator.store import U64, Store

SEED = 99


def garbage_messages(rng: random.Random) -> list[list[bytes]]:
    good_frame = encode([(1, 1, 1, 1, 1, 16, b"x")])
    msgs = [[b""], [wire.APPEND], [wire.APPEND, b"\xc1"], [wire.APPEND, wire.pack([1, 2])],
            [wire.APPEND, wire.pack({"stream": 5, "epoch": "x"}), good_frame],
            [wire.APPEND, wire.pack({"stream": "s", "epoch": 1}), good_frame[:-1]],
            [wire.APPEND, wire.pack({"stream": "", "epoch": 1}), good_frame],
            [wire.REPLAY, wire.pack({"stream": "s", "from": "a"})],
            [wire.REPLAY, wire.pack({"stream": "s", "from": 1, "to": "z", "max_bytes": "q"})],
            [wire.STATE, wire.pack({})], [wire.HELLO, wire.pack({"src": None})],
            [wire.DATA, b"\x80", b"\x00" * 37], [wire.DATA, b"\x80", pack(3, 1, 1, [b"a"])[:-1]],
            [wire.DATA, b"\x80"], [b"NOPE", b"\x80"], [wire.PING, b"\xff" * 20],
            [wire.APPEND, wire.pack({"stream": "s", "epoch": 1}), b"\xff" * (1 << 16)]]
    for _ in range(200):
        msgs.append([rng.randbytes(rng.randint(0, 12)) for _ in range(rng.randint(1, 4))])
    return msgs


@pytest.mark.timeout(300)
def test_log_processes_survive_garbage(tmp_path):
    rng = random.Random(SEED)
    with LogCluster(str(tmp_path), replicators=1, policy="first") as cluster:
        cluster.start()
        ctx = zmq.Context.instance()
        for addr in (cluster.rep_addrs[0], cluster.prod_addr):
            sock = ctx.socket(zmq.DEALER)
            sock.connect(addr)
            for msg in garbage_messages(rng):
                sock.send_multipart(msg)
            sock.close(linger=10_000)  # deliver everything queued before closing
            # The garbage reaches the handlers and is refused there, and the server answers
            # (a ping on another connection may overtake the garbage: wait for both).
            wait_until(lambda addr=addr: (lambda st: st and st.get("errors", 0)
                                          + st.get("bad_batches", 0) > 0)(ping(addr)),
                       30, f"{addr} to refuse the garbage and keep answering")
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        prod.submit(16, [b"r%d" % i for i in range(100)])
        prod.flush()
        prod.close()
        def replayed():
            recs = [r for f in replay(cluster.rep_addrs[0], cluster.stream) for r in decode(f)]
            return [r[6] for r in recs if r[2] == 1]
        # replay serves committed records; the replicator learns the commit point shortly
        wait_until(lambda: len(replayed()) >= 100, 30, "the records to be replayable")
        assert replayed() == [b"r%d" % i for i in range(100)]
        for proc in cluster.replicators + [cluster.sequencer]:
            assert proc.alive, proc.log()[-2000:]


def _answers(addr: str, msgs: list[list[bytes]], timeout_s: float = 30) -> list[list[bytes]]:
    """Send msgs on one connection and collect one answer each, in order."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    try:
        for msg in msgs:
            sock.send_multipart(msg)
        out = []
        for _ in msgs:
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"{addr} answered {len(out)} of {len(msgs)}")
            out.append(sock.recv_multipart())
        return out
    finally:
        sock.close()


def _replicator(tmp_path, group, name="replicator", extra=()):
    addr = tcp()
    proc = group.spawn(name, ["replicator", "--data", str(tmp_path / name), "--bind", addr,
                              *extra])
    wait_until(lambda: ping(addr), 60, "the replicator")
    return proc, addr


@pytest.mark.timeout(300)
def test_one_bad_field_gets_an_error_and_the_replicator_carries_on(tmp_path):
    """Each packet that killed a replicator before: a list, inf, a negative or a huge
    max_bytes; CLAIM epochs of 2^40, -1 and 2^32 (records hold u32 epochs). Each gets ERROR
    with a reason; nothing is created; the largest u32 epoch is accepted."""
    group = Group(str(tmp_path / "logs"))
    try:
        proc, addr = _replicator(tmp_path, group)
        bad = [[wire.REPLAY, wire.pack({"stream": "in.x", "from": 1, "max_bytes": mb})]
               for mb in ([1, 2], float("inf"), float("nan"), -1, 1 << 63, (1 << 64) - 1, "9")]
        bad += [[wire.CLAIM, wire.pack({"stream": f"in.e{i}", "epoch": e})]
                for i, e in enumerate([1 << 40, -1, 1 << 32, 1.5, None, True, [1]])]
        bad += [[wire.APPEND, wire.pack({"stream": "in.a", "epoch": 1 << 32}),
                 encode([(1, 1, 1, 1, 1, 16, b"x")])],
                [wire.APPEND, wire.pack({"stream": "in.a", "epoch": 1, "prev_epoch": -1}),
                 encode([(1, 1, 1, 1, 1, 16, b"x")])],
                [wire.TRUNCATE, wire.pack({"stream": "in.a", "epoch": 1, "after": -5})],
                [wire.COMMIT, wire.pack({"stream": "in.a", "epoch": 1, "commit": [1]})],
                [wire.DIGEST, wire.pack({"stream": "in.a", "from": 1, "to": float("inf")})]]
        for reply in _answers(addr, bad):
            assert reply[0] == wire.ERROR and wire.unpack(reply[1])["error"], reply
        st = stats(addr)
        assert st["streams"] == {} and st["errors"] == len(bad)
        top = [[wire.CLAIM, wire.pack({"stream": "in.e", "epoch": (1 << 32) - 1})]]
        (reply,) = _answers(addr, top)
        assert reply[0] == wire.STATE and wire.unpack(reply[1])["ok"]
        assert proc.alive, proc.log()[-3000:]
    finally:
        group.stop_all()


@pytest.mark.timeout(300)
def test_reads_of_unknown_streams_create_nothing_and_the_stream_limit_holds(tmp_path):
    """600 unknown stream names read (REPLAY, STATE, DIGEST: `seqex tail out.ce.NOPE`) create
    no database. Writes create streams up to the limit (500); the next is refused with ERROR,
    also after a restart, while the streams held keep working."""
    group = Group(str(tmp_path / "logs"))
    try:
        proc, addr = _replicator(tmp_path, group)
        reads = []
        for i in range(600):
            name = f"out.ce.NOPE{i}"
            reads += [[wire.REPLAY, wire.pack({"stream": name, "from": 1})],
                      [wire.STATE, wire.pack({"stream": name})],
                      [wire.DIGEST, wire.pack({"stream": name, "from": 1, "to": 1})]]
        answers = _answers(addr, reads)
        assert all(a[0] != wire.ERROR for a in answers)
        assert all(wire.unpack(a[1])["last"] == 0 for a in answers if a[0] == wire.STATE)
        assert stats(addr)["streams"] == {}
        claims = [[wire.CLAIM, wire.pack({"stream": f"in.s{i}", "epoch": 1})] for i in range(500)]
        assert all(a[0] == wire.STATE for a in _answers(addr, claims))
        (one_more,) = _answers(addr, [[wire.CLAIM, wire.pack({"stream": "in.s500", "epoch": 1})]])
        assert one_more[0] == wire.ERROR and "limit" in wire.unpack(one_more[1])["error"]
        proc.stop()
        proc.start()
        wait_until(lambda: ping(addr), 60, "the restarted replicator")
        assert len(stats(addr)["streams"]) == 500
        frame = encode([(1, 1, 1, 1, 1, 16, b"x")])
        answers = _answers(addr, [
            [wire.CLAIM, wire.pack({"stream": "in.s501", "epoch": 1})],
            [wire.STATE, wire.pack({"stream": "out.ce.NOPE"})],
            [wire.APPEND, wire.pack({"stream": "in.s7", "epoch": 1}), frame]])
        assert answers[0][0] == wire.ERROR
        assert answers[1][0] == wire.STATE
        assert answers[2][0] == wire.APPENDED and wire.unpack(answers[2][1])["ok"]
        assert proc.alive, proc.log()[-3000:]
    finally:
        group.stop_all()


@pytest.mark.timeout(300)
def test_a_persisted_epoch_out_of_range_is_refused_without_a_crash_loop(tmp_path):
    """A store that holds an epoch of 2^40 (left by an older version): the replicator starts,
    refuses that stream with the command that repairs it, and serves the others."""
    data = tmp_path / "replicator"
    store = Store(str(data), map_size=1 << 26)
    store.append("in.bad", 2, encode([(1, 1, 1, 1, 2, 16, b"x")]))
    store.append("in.good", 1, encode([(1, 1, 1, 1, 1, 16, b"x")]))
    with store.env.begin(write=True) as txn:
        txn.put(b"epoch", U64.pack(1 << 40), db=store.stream("in.bad").meta_db)
    store.close()
    group = Group(str(tmp_path / "logs"))
    try:
        # With a peer (absent here), so that the peer loop walks the streams too.
        proc, addr = _replicator(tmp_path, group, extra=["--peer", tcp()])
        started = time.monotonic()
        st = stats(addr)
        assert st["damaged_streams"] == ["in.bad"] and list(st["streams"]) == ["in.good"]
        bad, good = _answers(addr, [[wire.STATE, wire.pack({"stream": "in.bad"})],
                                    [wire.STATE, wire.pack({"stream": "in.good"})]])
        assert bad[0] == wire.ERROR and "--reset-epoch in.bad" in wire.unpack(bad[1])["error"]
        assert good[0] == wire.STATE and wire.unpack(good[1])["last"] == 1
        assert "does not fit in 32 bits" in proc.log()
        wait_until(lambda: stats(addr)["commits"] >= 0 and time.monotonic() > started + 2.5, 10,
                   "two peer rounds")
        assert proc.alive, proc.log()[-3000:]
    finally:
        group.stop_all()
