"""Structure-aware garbage sent to a real replicator process never kills it, never creates
anything, and each bad message gets an ERROR reply with a reason.

The generator knows every control message the replicator accepts (APPEND, COMMIT, CLAIM,
TRUNCATE, REPLAY, DIGEST, STATE, PING, STOP) and its fields. Each message starts well formed
and then has fields replaced by values of the wrong type, size or range: None, lists, maps,
float inf and nan, integers past 2^32 and 2^64 - 1, negatives, bytes, very long strings,
booleans, bad stream names, broken or mismatched frames, extra and missing parts. Reads
(REPLAY, DIGEST, STATE) also go out well formed for many stream names the replicator has never
seen. Afterwards the replicator still answers PING and STATE correctly, and it holds exactly
the one stream it held before: no request created a database.

The seed changes with every run (SEQEX_SEED, or the clock) and is printed on failure, so each
run explores new messages and a failing one can be replayed. The default run is short; the
`slow` one sends many more.
"""
from __future__ import annotations

import math
import os
import random
import time

import msgpack
import pytest
import zmq

from deploy.procs import Group, tcp
from mq import sockets, wire
from mq.control import call, ping, wait_until
from mq.record import HEADER_SIZE, encode
from replicator.store import Store

KNOWN = "in.known"
U32, U64 = (1 << 32) - 1, (1 << 64) - 1


def seed_from_env() -> int:
    return int(os.environ.get("SEQEX_SEED") or time.time_ns() % (1 << 32))


def good_frame(first: int = 1, n: int = 2, epoch: int = 1) -> bytes:
    return encode([(s, 1000 + s, 9, s, epoch, 16, b"g%d" % s) for s in range(first, first + n)])


# Values that are wrong for a field of each kind (None only where the field is required).
NOT_INT = [[], [1, 2], {}, {"a": 1}, math.inf, -math.inf, math.nan, 1.5, "1", b"1", True,
           False, "x" * 100_000, b"\x00" * 70_000, [[[[[]]]]]]
BAD_U64 = NOT_INT + [-1, -(1 << 63)]
BAD_U32 = BAD_U64 + [1 << 32, 1 << 40, U64, (1 << 63) - 1]
BAD_STREAM = [5, 1.0, [], {}, b"in.x", "", "a b", "x" * 201, "é", "\x00", "in\n", True,
              "y" * 100_000, math.inf]

# kind -> {field: (kind of field, required)}
FIELDS: dict[bytes, dict[str, tuple[str, bool]]] = {
    wire.APPEND: {"stream": ("stream", True), "epoch": ("u32", True), "first": ("u64", False),
                  "last": ("u64", False), "commit": ("u64", False),
                  "prev_epoch": ("u32", False)},
    wire.COMMIT: {"stream": ("stream", True), "epoch": ("u32", True), "commit": ("u64", True)},
    wire.CLAIM: {"stream": ("stream", True), "epoch": ("u32", True)},
    wire.TRUNCATE: {"stream": ("stream", True), "epoch": ("u32", True), "after": ("u64", True)},
    wire.REPLAY: {"stream": ("stream", True), "from": ("u64", True), "to": ("u64", False),
                  "max_bytes": ("u63", False), "req": ("req", False),
                  "uncommitted": ("bool", False)},
    wire.DIGEST: {"stream": ("stream", True), "from": ("u64", True), "to": ("u64", True)},
    wire.STATE: {"stream": ("stream", True)},
}
READS = (wire.REPLAY, wire.DIGEST, wire.STATE)


def bad_value(rng: random.Random, kind: str, required: bool) -> object:
    pool = {"stream": BAD_STREAM, "u32": BAD_U32, "u64": BAD_U64,
            "u63": BAD_U64 + [1 << 63, U64], "bool": NOT_INT[:7] + [0, 1, "true"],
            "req": [[], {}, math.inf, 1.5, b"r", "r" * 65, [1]]}[kind]
    if required and rng.random() < 0.1:
        return None
    return rng.choice(pool)


def good_value(rng: random.Random, kind: str, name: str) -> object:
    if kind == "stream":
        return rng.choice([KNOWN, f"out.ce.NOPE{rng.randrange(10**6)}"])
    if kind == "u32":
        return rng.choice([0, 1, 2, U32])
    if kind == "u64" or kind == "u63":
        return rng.choice([0, 1, 2, 1 << 40, (1 << 63) - 1])
    if kind == "bool":
        return rng.choice([True, False])
    return rng.choice([None, 1, "fetch"])


class Expect:
    """What a message should get: ERROR, or any answer (None: no answer at all)."""
    ERROR, ANSWER, NOTHING = "error", "answer", "nothing"


def garbage(rng: random.Random) -> tuple[list[bytes], str]:
    """One message and what it must get back."""
    roll = rng.random()
    if roll < 0.05:   # structure: no body, broken msgpack, a body that is not a map
        kind = rng.choice(list(FIELDS) + [wire.PING, b"NOPE", b"", b"\xff" * 40])
        shape = rng.randrange(4)
        if shape == 0:
            return [kind], Expect.NOTHING
        body = [b"\xc1", msgpack.packb([1, 2]), msgpack.packb("s"), rng.randbytes(20)][shape]
        return [kind, body], Expect.ERROR
    if roll < 0.25:   # a well formed read of a stream nobody created
        kind = rng.choice(READS)
        body = {"stream": f"out.ce.NOPE{rng.randrange(10**9)}", "from": rng.randrange(3),
                "to": rng.randrange(1, 5)}
        return [kind, wire.pack(body)], Expect.ANSWER
    kind = rng.choice(list(FIELDS))
    fields = FIELDS[kind]
    body = {name: good_value(rng, fk, name) for name, (fk, _req) in fields.items()}
    for name in [n for n in fields if rng.random() < 0.3]:  # sometimes leave fields out
        if not fields[name][1]:
            del body[name]
    extra = []
    if kind == wire.APPEND:
        body.pop("first", None)
        body.pop("last", None)
        extra = [good_frame(rng.randrange(1, 4), rng.randrange(1, 4))]
    breakage = rng.randrange(6 if kind == wire.APPEND else 5)
    if breakage <= 2 or kind in READS and breakage <= 3:   # one or more fields wrong
        names = rng.sample(list(fields), rng.randint(1, len(fields)))
        for name in names:
            fk, required = fields[name]
            body[name] = bad_value(rng, fk, required)
    elif breakage == 3:                                   # a required field missing
        required = [n for n, (_fk, req) in fields.items() if req]
        del body[rng.choice(required)]
    elif breakage == 4:                                   # an extra part
        extra = extra + [rng.randbytes(rng.randrange(40))]
    else:                                                 # a broken or mismatched frame
        frame = extra[0]
        extra = [rng.choice([frame[:-1], frame[:10], rng.randbytes(60), b"",
                             frame + b"\x00", frame[:34] + b"\xff" * 4 + frame[38:]])]  # length 4 GiB
        if rng.random() < 0.3:
            body["first"] = 99
            extra = [frame]
    try:
        packed = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        packed = b"\xc1"
    return [kind, packed, *extra], Expect.ERROR


def run_campaign(addr: str, seed: int, count: int) -> dict:
    rng = random.Random(seed)
    sock = sockets.dealer(addr, heartbeat_ms=0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    tally = {Expect.ERROR: 0, Expect.ANSWER: 0}
    try:
        sent = 0
        while sent < count:
            chunk = [garbage(rng) for _ in range(min(200, count - sent))]
            sent += len(chunk)
            for msg, _expect in chunk:
                sock.send_multipart(msg)
            sock.send_multipart([wire.PING, wire.pack({})])  # a barrier: answers keep order
            answers = []
            while True:
                reply = sock.recv_multipart()
                if reply[0] == wire.PONG:
                    break
                answers.append(reply)
            wanted = [e for _m, e in chunk if e != Expect.NOTHING]
            assert len(answers) == len(wanted), (len(answers), len(wanted))
            for (msg, expect), reply in zip([c for c in chunk if c[1] != Expect.NOTHING],
                                            answers, strict=True):
                shown = [p[:60] for p in msg]
                if expect == Expect.ERROR:
                    assert reply[0] == wire.ERROR, f"{shown} was answered {reply[0]!r}"
                    assert wire.unpack(reply[1])["error"], f"{shown}: an ERROR without reason"
                else:
                    assert reply[0] != wire.ERROR, f"{shown}: {wire.unpack(reply[1])}"
                tally[expect] += 1
    finally:
        sock.close(0)
    return tally


def campaign(tmp_path, count: int) -> None:
    seed = seed_from_env()
    print(f"garbage campaign seed {seed} (replay with SEQEX_SEED={seed})")
    data = str(tmp_path / "rep")
    addr = tcp()
    group = Group(str(tmp_path / "logs"))
    proc = group.spawn("replicator", ["replicator", "--data", data, "--bind", addr])
    try:
        wait_until(lambda: ping(addr), 60, "the replicator")
        call(addr, wire.STATE, {"stream": KNOWN})
        kind, body, _ = call(addr, wire.CLAIM, {"stream": KNOWN, "epoch": 1})
        assert kind == wire.STATE and body["ok"]
        kind, body, _ = call_frame(addr, {"stream": KNOWN, "epoch": 1, "commit": 2})
        assert body["ok"] and body["last"] == 2, body
        tally = run_campaign(addr, seed, count)
        print(f"seed {seed}: {tally}")
        stats = ping(addr, timeout_s=10)
        assert stats and stats["role"] == "replicator", f"seed {seed}: no PONG"
        assert sorted(stats["streams"]) == [KNOWN], f"seed {seed}: created {stats['streams']}"
        kind, body, _ = call(addr, wire.STATE, {"stream": KNOWN})
        assert kind == wire.STATE and body["last"] >= 2, f"seed {seed}: {body}"
        assert proc.alive, f"seed {seed}: " + proc.log()[-3000:]
    finally:
        group.stop_all()
    store = Store(data, map_size=1 << 30)
    try:
        assert store.names() == [KNOWN], f"seed {seed}: databases {store.names()}"
    finally:
        store.close()


def call_frame(addr: str, body: dict) -> tuple[bytes, dict, list[bytes]]:
    sock = sockets.dealer(addr, heartbeat_ms=0)
    try:
        sock.send_multipart([wire.APPEND, wire.pack(body), good_frame()])
        assert sock.poll(10_000)
        msg = sock.recv_multipart()
        return msg[0], wire.unpack(msg[1]), msg[2:]
    finally:
        sock.close(0)


@pytest.mark.timeout(300)
def test_structured_garbage_never_kills_the_replicator(tmp_path):
    campaign(tmp_path, 2_000)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_structured_garbage_campaign(tmp_path):
    campaign(tmp_path, int(os.environ.get("SEQEX_GARBAGE_COUNT", "100000")))


# -- the masters' input sockets: the sequencer's producers, the mirror's hot replicas ---------
MASTER_FIELDS: dict[bytes, dict[str, tuple[str, bool]]] = {
    wire.HELLO: {"src": ("u32", True)},
    wire.DATA: {"replica": ("req", False)},
    wire.PING: {},
}


def master_garbage(rng: random.Random) -> list[bytes]:
    """A message for a sequencer's or mirror's input socket: HELLO, DATA or PING with fields
    and batches of wrong types, sizes and ranges. Well formed STOPs are left out (a STOP is
    a legitimate command there); so are well formed batches, which would be sequenced."""
    roll = rng.random()
    if roll < 0.1:
        kind = rng.choice([wire.HELLO, wire.DATA, wire.PING, wire.STOP, b"NOPE", b""])
        return rng.choice([[kind], [kind, b"\xc1"], [kind, msgpack.packb([1])],
                           [kind, rng.randbytes(30)]])
    kind = rng.choice(list(MASTER_FIELDS))
    body: dict = {"src": rng.choice([1, 2, U32])} if kind == wire.HELLO else {}
    for name, (fk, required) in MASTER_FIELDS[kind].items():
        if rng.random() < 0.7:
            body[name] = bad_value(rng, fk, required)
    try:
        packed = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        packed = b"\xc1"
    if kind != wire.DATA:
        return [kind, packed] + ([rng.randbytes(8)] if rng.random() < 0.1 else [])
    good = encode([(0, 0, 5, s, 0, 16, b"p") for s in range(1, 4)])
    bad = rng.choice([good[:-1], good[:20], rng.randbytes(rng.randrange(1, 200)), b"",
                      good + b"\x01", good[:16] + b"\x00" * 8 + good[24:],   # source_seq 0
                      good[:24] + b"\x00" * 4 + good[28:],                   # source 0
                      b"\xff" * HEADER_SIZE])
    return [kind, packed, bad]


def master_campaign(addr: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    sock = sockets.dealer(addr, heartbeat_ms=0)
    try:
        for i in range(count):
            sock.send_multipart(master_garbage(rng))
            if i % 200 == 199:   # let it keep up; answers are drained and ignored
                while sock.poll(0):
                    sock.recv_multipart()
        sock.send_multipart([wire.PING, wire.pack({})])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.poll(1000) and sock.recv_multipart()[0] == wire.PONG:
                return
        raise AssertionError(f"seed {seed}: {addr} stopped answering")
    finally:
        sock.close(0)


@pytest.mark.timeout(300)
def test_structured_garbage_never_kills_the_sequencer_or_the_mirror(tmp_path):
    """The same generator aimed at the masters' input sockets; afterwards the sequencer
    still sequences a real producer's records and the mirror still answers."""
    masters_campaign(tmp_path, 1_000)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_structured_garbage_campaign_on_the_masters(tmp_path):
    masters_campaign(tmp_path, int(os.environ.get("SEQEX_GARBAGE_COUNT", "100000")))


def masters_campaign(tmp_path, count: int) -> None:
    from deploy.local import LogCluster
    from mq.producer import Producer
    seed = seed_from_env()
    print(f"master garbage campaign seed {seed} (replay with SEQEX_SEED={seed})")
    with LogCluster(str(tmp_path), replicators=1, policy="first") as cluster:
        cluster.start()
        inputs, pub = tcp(), tcp()
        mirror = cluster.group.spawn("mirror", [
            "mirror", "--stream", "out.ce.G", "--inputs", inputs, "--pub", pub,
            "--policy", "first", "--replicator", cluster.rep_addrs[0]])
        wait_until(lambda: ping(inputs), 60, "the mirror")
        for addr in (cluster.prod_addr, inputs):
            master_campaign(addr, seed, count)
        prod = Producer(1, cluster.prod_addr)
        prod.connect()
        prod.submit(16, [b"after %d" % i for i in range(50)])
        prod.flush()
        prod.close()
        assert ping(cluster.prod_addr)["last"] >= 50, f"seed {seed}"
        for proc in [cluster.sequencer, mirror, *cluster.replicators]:
            assert proc.alive, f"seed {seed}: {proc.name}: " + proc.log()[-3000:]
