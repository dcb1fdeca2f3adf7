"""The CrossEngine is deterministic: the same frames give identical output bytes and state hash
in two processes, and a snapshot at any point followed by replay of the rest equals the
uninterrupted run, outputs included. TradingEngine payloads (te_sources) give the same outputs
as their commands for the symbol applied one by one, and a payload of garbage is either walked
or refused with the engine's mismatch error, the state unchanged; never another exception."""
import hashlib
import random
import struct
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import TE_EVENT_SIZES, TE_SESSION_BLOCK_SIZES, CrossEngine
from mq.record import decode, encode

SEED = 424242


def flow(n: int, seed: int = SEED) -> list[bytes]:
    """Seeded commands of every kind, framed 256 to a frame."""
    rng = random.Random(seed)
    cmds = []
    for i in range(n):
        r = rng.random()
        side = rng.choice([c.BUY, c.SELL])
        acct = rng.randint(1, 30)
        if r < 0.6:
            cmds.append((c.NEW_ORDER, c.new_order(i, side, rng.randint(950, 1050), rng.randint(1, 30),
                                                  acct, rng.choice([c.LIMIT] * 9 + [c.MARKET]),
                                                  rng.choice([c.GTC] * 4 + [c.IOC, c.FOK]),
                                                  rng.choice([0, 0, 0, 1, 2]), rng.randint(0, 4))))
        elif r < 0.85:
            cmds.append((c.CANCEL, c.cancel(client_order_id=rng.randint(0, i), account=acct)))
        elif r < 0.97:
            cmds.append((c.AMEND, c.amend(client_order_id=rng.randint(0, i), account=acct,
                                          price=rng.choice([0, rng.randint(950, 1050)]),
                                          qty=rng.choice([0, rng.randint(1, 40)]))))
        else:
            cmds.append(rng.choice([(c.CANCEL_ALL, c.cancel_all(acct)), (c.KIND_TICK, b""),
                                    (c.HALT, b""), (c.RESUME, b""), (c.RESUME, b"")]))
    return [encode([(i + k + 1, 10**18 + i + k, 1, i + k + 1, 1, kind, p)
                    for k, (kind, p) in enumerate(cmds[i:i + 256])])
            for i in range(0, n, 256)]


def run(frames: list[bytes], eng: CrossEngine | None = None) -> tuple[bytes, bytes]:
    eng = eng or CrossEngine()
    h = hashlib.sha256()
    for f in frames:
        h.update(eng.apply_frame(f))
    return h.digest(), eng.state_hash()


CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.property.test_crossengine_determinism import flow, run
out, state = run(flow(20_000))
print(out.hex(), state.hex())
"""


def test_two_processes_give_identical_outputs_and_state():
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.run([sys.executable, "-c", CHILD.format(root=root)], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    out, state = run(flow(20_000))
    assert child.stdout.split() == [out.hex(), state.hex()]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 40))
def test_snapshot_then_replay_equals_the_uninterrupted_run(k):
    frames = flow(10_240, seed=SEED + 1)
    full_out, full_state = run(frames)
    eng = CrossEngine()
    prefix = hashlib.sha256()
    for f in frames[:k]:
        prefix.update(eng.apply_frame(f))
    restored = CrossEngine.restore(eng.snapshot())
    assert restored.state_hash() == eng.state_hash()
    h = prefix.copy()
    for f in frames[k:]:
        h.update(restored.apply_frame(f))
    assert (h.digest(), restored.state_hash()) == (full_out, full_state)


# -- TradingEngine payloads (te_sources) -------------------------------------------------------

TE_SOURCE = 0x7300_0003
SYMBOL = 1

commands = st.one_of(
    st.builds(lambda cl, side, price, qty, acct: (c.NEW_ORDER, c.new_order(cl, side, price, qty,
                                                                           acct)),
              st.integers(1, 20), st.sampled_from([c.BUY, c.SELL]), st.integers(95, 105),
              st.integers(1, 10), st.integers(1, 8)),
    st.builds(lambda cl, acct: (c.CANCEL, c.cancel(0, cl, acct)), st.integers(1, 20),
              st.integers(1, 8)),
    st.builds(lambda acct: (c.CANCEL_ALL, c.cancel_all(acct)), st.integers(1, 8)),
    st.builds(lambda k, body: (k, body), st.sampled_from([c.HALT, 99]), st.binary(max_size=4)),
)
other_events = st.one_of(
    st.sampled_from([k for k in TE_EVENT_SIZES if k not in (1, 14)]).map(
        lambda k: bytes([k]) + bytes(TE_EVENT_SIZES[k] - 1)),
    st.sampled_from(sorted(TE_SESSION_BLOCK_SIZES)).map(
        lambda t: struct.pack("<BIQH", 14, 1, 2, t) + bytes(TE_SESSION_BLOCK_SIZES[t])))


@st.composite
def te_payloads(draw):
    """[(symbol, kind, body) or None for another event] and the payload they make."""
    items = draw(st.lists(st.one_of(st.none(), st.tuples(st.sampled_from([SYMBOL, 2, 3]),
                                                         commands)), max_size=12))
    payload = b""
    for item in items:
        if item is None:
            payload += draw(other_events)
        else:
            sym, (kind, body) = item
            payload += struct.pack("<BIHH", 1, sym, kind, len(body)) + body
    return items, payload


@settings(max_examples=200, deadline=None)
@given(st.lists(te_payloads(), min_size=1, max_size=6), st.integers(1, 63))
def test_a_te_payload_applies_exactly_its_commands_for_this_symbol(records, n_shards):
    eng = CrossEngine(symbol_id=SYMBOL, te_sources=[TE_SOURCE], n_shards=n_shards)
    twin = CrossEngine(symbol_id=SYMBOL)
    frame = encode([(i + 1, 10 + i, TE_SOURCE, i + 1, 1, 44, p)
                    for i, (_items, p) in enumerate(records)])
    out = decode(eng.apply_frame(frame))
    for (items, _p), rec in zip(records, out, strict=True):
        want = b"".join(twin.apply(0, 0, kind, body, TE_SOURCE)
                        for sym, (kind, body) in (x for x in items if x) if sym == SYMBOL)
        assert rec[6] == want
    assert eng.book() == twin.book()


@settings(max_examples=300, deadline=None)
@given(te_payloads(), st.binary(max_size=60), st.integers(0, 200))
def test_garbage_in_a_te_payload_is_walked_or_refused_as_a_mismatch(valid, junk, at):
    _items, payload = valid
    at = min(at, len(payload))
    bad = payload[:at] + junk + payload[at:]
    eng = CrossEngine(symbol_id=SYMBOL, te_sources=[TE_SOURCE], n_shards=4)
    eng.apply_frame(encode([(1, 1, 1, 1, 1, c.NEW_ORDER, c.new_order(50, c.SELL, 100, 3, 1))]))
    before = eng.state_hash()
    try:
        eng.apply_frame(encode([(2, 2, TE_SOURCE, 2, 1, 44, bad)]))
    except RuntimeError as exc:
        assert "record seq 2 from source" in str(exc) and "deployment mismatch" in str(exc)
        assert eng.state_hash() == before
    eng.check_invariants()


def test_records_from_other_sources_are_still_commands():
    eng = CrossEngine(symbol_id=SYMBOL, te_sources=[TE_SOURCE])
    plain = CrossEngine(symbol_id=SYMBOL)
    frames = flow(2_000, seed=SEED + 2)
    assert run(frames, eng)[0] == run(frames, plain)[0]
    assert eng.book() == plain.book()
    assert eng.state_hash() != plain.state_hash()  # te_sources is configuration, in the state
