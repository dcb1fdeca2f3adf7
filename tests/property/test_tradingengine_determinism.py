"""Determinism of the TradingEngine: the same input log gives the same outputs and state hash,
whether applied twice, from a snapshot plus the rest of the log, record by record or as mq
frames (as a replica host applies it, hot or warm alike), by the compiled engine or by its
source run by the interpreter, and by the naive reference.

Method: a seeded random flow on a venue of real CrossEngines (tests/tradingvenue.py) records
every record the TradingEngine applied; the log is then replayed into fresh engines."""
import random
import struct

import pytest

from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE
from tests.tradingvenue import random_step, random_venue, two_specs
from tradingengine import codec as c
from tradingengine.engine import TradingEngine
from tradingengine.reference import ReferenceEngine, interpreted

SEED = 20261122
STEPS = 2_500


@pytest.fixture(scope="module")
def run():
    v = random_venue(SEED, STEPS)
    print(f"seed {SEED}: {len(v.log)} records, state {v.te.state_hash().hex()[:16]}")
    return v


def replay(log, engine=None):
    te = engine or TradingEngine(two_specs(), shard=0, n_shards=2)
    outs = [te.apply(seq, ts, kind, payload) for seq, ts, kind, payload in log]
    return te, outs


def test_two_runs_give_one_state_hash_and_one_output(run):
    te1, out1 = replay(run.log)
    te2, out2 = replay(run.log)
    assert out1 == out2
    assert te1.state_hash() == te2.state_hash() == run.te.state_hash()


def test_snapshot_plus_replay_of_the_suffix_gives_the_same_hash(run):
    rng = random.Random(SEED)
    _, full = replay(run.log)
    for cut in sorted(rng.sample(range(1, len(run.log)), 4)):
        te, _ = replay(run.log[:cut])
        restored = TradingEngine.restore(te.snapshot())
        restored, suffix = replay(run.log[cut:], restored)
        assert suffix == full[cut:], f"outputs differ after a snapshot at record {cut}"
        assert restored.state_hash() == run.te.state_hash()


def test_frames_give_what_records_give(run):
    """apply_frame, as the replica host calls it, equals apply record by record."""
    _, outs = replay(run.log)
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    got = []
    for i in range(0, len(run.log), 256):
        frame = encode([(seq, ts, OPERATOR_SOURCE, seq, 1, kind, payload)
                        for seq, ts, kind, payload in run.log[i:i + 256]])
        got += [r[6] for r in decode(te.apply_frame(frame))]
    assert got == outs
    assert te.state_hash() == run.te.state_hash()


def test_another_seed_gives_another_hash():
    """The hash sees the state: a different flow is a different state."""
    assert random_venue(SEED + 1, 300).te.state_hash() != random_venue(SEED, 300).te.state_hash()


def test_the_naive_reference_gives_the_same_bytes(run):
    te, outs = replay(run.log)
    ref, ref_outs = replay(run.log, ReferenceEngine(two_specs(), shard=0, n_shards=2))
    assert ref_outs == outs
    assert ref.state_hash() == te.state_hash()


def test_the_compiled_engine_equals_its_interpreted_source(run):
    te, outs = replay(run.log)
    source, source_outs = replay(run.log, interpreted()(two_specs(), 0, 2))
    assert source_outs == outs
    assert source.state_hash() == te.state_hash()


# -- with sessions ------------------------------------------------------------------------------

_NOS = struct.Struct("<QQQqQIIcccB")
_OCR = struct.Struct("<QQQQQIcB")
_OCRR = struct.Struct("<QQQQQqQIcccB")
_OMCR = struct.Struct("<QQQIccB")
_USERS = {100: [2, 6], 200: [4, 8]}
NULL_ID = (1 << 64) - 1


def random_session_venue(seed: int, steps: int):
    """The random flow of random_venue with PROTOCOL.md sessions mixed in: logons, ends,
    gateway starts, orders (with repeated and skipped SeqNos), cancels, replaces, mass
    cancels, and time passing for cancel-on-disconnect."""
    rng = random.Random(seed)
    v = random_venue(seed, 0)
    keys = [(u, s) for u in _USERS for s in (1, 2)]
    coid = 0

    def msg(key, template, block):
        v.apply(c.CLIENT_MESSAGE, c.client_message(key[0], key[1], template, block,
                                                   rng.choice([0] * 12 + [1, 2])))

    for key in keys:
        v.apply(c.SESSION_LOGON, c.session_logon(key[0], key[1], key[1], _USERS[key[0]][0],
                                                 _USERS[key[0]], rng.randrange(3), 300))
    for _ in range(steps):
        key = rng.choice(keys)
        sess = v.te.sessions.get(key)
        seq = (sess.next_expected if sess else 1) + rng.choice([0] * 8 + [-1, 2])
        coid += 1
        r = rng.random()
        if r < 0.35:
            sym = rng.choice((1, 2))
            mark = v.te.marks[sym]
            price = max(1, mark + rng.randrange(-mark // 30, mark // 30))
            msg(key, 100, _NOS.pack(seq, 0, coid, price, rng.randrange(1, 100), sym,
                                    rng.choice([0, *_USERS[key[0]]]), rng.choice([b"1", b"2"]),
                                    b"2", b"1", 0))
        elif r < 0.5:
            mine = [o for o in v.te.orders.values() if o.account in _USERS[key[0]]]
            if mine:
                o = rng.choice(mine)
                if rng.random() < 0.5:
                    msg(key, 101, _OCR.pack(seq, 0, coid, o.client_order_id, NULL_ID, o.symbol,
                                            b"1", 0))
                else:
                    msg(key, 102, _OCRR.pack(seq, 0, coid, NULL_ID, o.order_id,
                                             max(1, o.price + rng.randrange(-5, 6)),
                                             o.cum + rng.randrange(1, 50), o.symbol, b"1",
                                             b"2", b"1", 0))
        elif r < 0.55:
            msg(key, 103, _OMCR.pack(seq, 0, coid, rng.choice((1, 2)), rng.choice([b"1", b"7"]),
                                     b"0", 0))
        elif r < 0.62:
            v.apply(c.SESSION_END, c.session_end(key[0], key[1], key[1],
                                                 rng.choice([0, 1, 1, 1, 2])))
        elif r < 0.7:
            v.apply(c.SESSION_LOGON, c.session_logon(key[0], key[1], key[1],
                                                     _USERS[key[0]][0], _USERS[key[0]],
                                                     rng.randrange(3), rng.choice([0, 300])))
        elif r < 0.72:
            v.apply(c.GATEWAY_START, c.gateway_start(0))
        else:
            random_step(v, rng, [2, 4, 6, 8, 10, 12], [1, 3, 5])
    v.deliver()
    return v


@pytest.fixture(scope="module")
def session_run():
    v = random_session_venue(SEED, 1_500)
    n = sum(1 for *_, kind, _p in v.log if kind == c.CLIENT_MESSAGE)
    print(f"sessions: {len(v.log)} records, {n} client messages")
    return v


def test_sessions_snapshot_plus_replay_gives_the_same_outputs_and_hash(session_run):
    rng = random.Random(SEED)
    te, full = replay(session_run.log)
    assert te.state_hash() == session_run.te.state_hash()
    assert sum(out.count(bytes([c.SESSION_MESSAGE])) for out in full) > 0
    for cut in sorted(rng.sample(range(1, len(session_run.log)), 4)):
        te, _ = replay(session_run.log[:cut])
        restored = TradingEngine.restore(te.snapshot())
        restored, suffix = replay(session_run.log[cut:], restored)
        assert suffix == full[cut:], f"outputs differ after a snapshot at record {cut}"
        assert restored.state_hash() == session_run.te.state_hash()


def test_sessions_in_the_reference_and_the_interpreted_source_give_the_same_bytes(session_run):
    te, outs = replay(session_run.log)
    for other in (ReferenceEngine(two_specs(), shard=0, n_shards=2),
                  interpreted()(two_specs(), 0, 2)):
        other, other_outs = replay(session_run.log, other)
        assert other_outs == outs
        assert other.state_hash() == te.state_hash()
