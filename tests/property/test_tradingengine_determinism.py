"""Determinism of the TradingEngine: the same input log gives the same outputs and state hash,
whether applied twice, from a snapshot plus the rest of the log, record by record or as mq
frames (as a replica host applies it, hot or warm alike), by the compiled engine or by its
source run by the interpreter, and by the naive reference.

Method: a seeded random flow on a venue of real CrossEngines (tests/tradingvenue.py) records
every record the TradingEngine applied; the log is then replayed into fresh engines."""
import random

import pytest

from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE
from tests.tradingvenue import random_venue, two_specs
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
