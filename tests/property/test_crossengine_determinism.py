"""The CrossEngine is deterministic: the same frames give identical output bytes and state hash
in two processes, and a snapshot at any point followed by replay of the rest equals the
uninterrupted run, outputs included."""
import hashlib
import random
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import CrossEngine
from mq.record import encode

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
