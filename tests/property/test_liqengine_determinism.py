"""Determinism of the LiqEngine: a random flow (positions, marks, handoffs, the CrossEngine's
answers, Adls applied in full or in part, deficits, deposits, ticks) is replayed into a fresh
engine that is snapshotted and restored at a random record; the restored one carries on with
the same outputs, and ends with the same state hash, as the run that never stopped. Replaying
the records as one mq frame through apply_frame gives the same payloads and the routes."""
from hypothesis import given, settings
from hypothesis import strategies as st

from liqengine import codec as c
from liqengine.engine import LiqEngine, LiqSpec
from liqengine.sim import LiqVenue, te_deficit
from mq.record import decode, encode

SPECS = (LiqSpec(1, 1), LiqSpec(2, 10))
OPS = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 10**6)), min_size=5, max_size=80)


def run_flow(ops) -> LiqVenue:
    v = LiqVenue(specs=SPECS, window_ns=1_000_000, interval_ns=300_000)
    victim = 100
    for op, x in ops:
        sym = 1 + x % 2
        if op == 0:
            v.mark(sym, 80 + x % 40)
        elif op == 1:
            v.position(1 + x % 6, sym, x % 41 - 20, 80 + x % 40, balance=x % 50_000)
        elif op == 2:
            victim += 1
            v.hand_off(victim, sym, (1 + x % 30) * (1 if x % 3 else -1), 80 + x % 40,
                       x % 2000)
        elif op == 3 and v.orders:
            coid = sorted(v.orders)[x % len(v.orders)]
            o = v.orders[coid]
            if o["order_id"] == 0:
                v.accept(coid, fills=[(1 + x % o["qty"], o["price"])] if x % 4 else [])
            elif o["qty"]:
                v.fill(coid, 1 + x % o["qty"])
        elif op == 4 and v.cancels:
            coid = v.cancels[0][1]
            if coid in v.orders and v.orders[coid]["order_id"] == 0:
                v.accept(coid)
            if v.cancels and v.cancels[0][1] == coid:
                v.answer_cancel()
        elif op == 5 and v.adls:
            adl_id = sorted(v.adls)[x % len(v.adls)]
            account, symbol, qty, _p = v.adls[adl_id]
            size, _ = v.positions.get((account, symbol), (0, 0))
            can = min(abs(qty), abs(size)) if size and (size > 0) != (qty > 0) else 0
            v.apply_adl(adl_id, can if x % 3 else can // 2)
        elif op == 6:
            v.te(x % 2, te_deficit(1 + x % 6, 1 + x % 3000))
        elif op == 7:
            v.deposit(x, x % 7000 - 2000)
        else:
            v.tick(1 + x * 3)
    return v


@settings(max_examples=40, deadline=None)
@given(ops=OPS, cut=st.integers(0, 10**6))
def test_snapshot_and_replay_give_the_same_state(ops, cut):
    v = run_flow(ops)
    log = v.log
    k = cut % (len(log) + 1)
    e = LiqEngine(*v_args(v))
    for i, (seq, ts, kind, payload, source) in enumerate(log):
        if i == k:
            e = LiqEngine.restore(e.snapshot())
        assert e.apply(seq, ts, kind, payload, source) == v.outputs[i]
    assert e.state_hash() == v.engine.state_hash()


@settings(max_examples=15, deadline=None)
@given(ops=OPS)
def test_apply_frame_gives_the_payloads_and_routes(ops):
    v = run_flow(ops)
    if not v.log:
        return
    e = LiqEngine(*v_args(v))
    frame = encode([(seq, ts, source, seq, 1, kind, payload, 0)
                    for seq, ts, kind, payload, source in v.log])
    out = decode(e.apply_frame(frame))
    assert [r[6] for r in out] == v.outputs
    probe = LiqEngine(*v_args(v))
    for (seq, ts, kind, payload, source), r in zip(v.log, out, strict=True):
        probe.apply(seq, ts, kind, payload, source)
        assert r[7] == probe.route
        assert r[:6] == (seq, ts, source, seq, 1, kind)


def v_args(v: LiqVenue) -> tuple:
    eng = v.engine
    return (list(SPECS), eng.n_shards, eng.te_sources, eng.ce_sources, eng.oracle_sources,
            eng.close_out_window_ns, eng.indicator_interval_ns)


def test_routes_name_the_crossengine_and_the_shard():
    """A takeover routes to its symbol's CrossEngine (bit symbol % 64); an Adl to the shard of
    its account (bit account % n_shards); the rest route nowhere."""
    v = LiqVenue(specs=SPECS, window_ns=10**9)
    v.hand_off(7, 2, 5, 100)
    assert v.engine.route == 1 << 2
    v.mark(1, 100)
    assert v.engine.route == 0
    v.position(3, 1, 10, 90, balance=1000)
    v.hand_off(9, 1, -4, 100)
    v.reject(max(v.orders))
    v.reject(max(v.orders))
    assert [e[0] for e in c.decode_events(v.outputs[-1])].count(c.ADL) == 1
    assert v.engine.route == 1 << (3 % 2)
