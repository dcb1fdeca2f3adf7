"""Market data: the publisher's state against the CrossEngine, and klines and ticker against a
naive recomputation from the recorded trades (docs/marketdata.md)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from gateway import wire
from gateway.marketdata import state as mdstate
from gateway.marketdata.binary import Instrument, snapshot_frames, update_frames
from gateway.marketdata.state import INTERVALS, MINUTE_NS, SymbolState
from gateway.mdclient import GAP, OK, STALE, LocalBook
from tests.mdload import LocalEngine

T0 = 1_800_000_000 * 10 ** 9
TICK_M, LOT_M = 50_000_000, 100_000


def _frames(frames):
    out = []
    for f in frames:
        fr, end = wire.read_frame(f)
        assert end == len(f)
        out.append(fr)
    return out


def _feed(lb: LocalBook, fr) -> str:
    m = wire.decode(fr)
    if fr.template_id == wire.MARKET_DATA_INCREMENTAL:
        return lb.on_incremental(m, wire.decode_entries(fr))
    if fr.template_id == wire.TRADE:
        return lb.on_trade(m)
    lb.on_snapshot(m, wire.decode_entries(fr))
    return OK


def test_book_and_local_book_equal_the_engine_at_every_seq():
    e = LocalEngine(seed=5)
    sym = SymbolState("BTCUSDT", 1)
    inst = Instrument("BTCUSDT", 1, TICK_M, LOT_M)
    lb = LocalBook(1)
    for i in range(2000):
        seq, ts, out = e.step(T0 + i * 3 * 10 ** 9)
        up = sym.apply(seq, ts, out)
        assert sym.book() == e.books[seq]
        if i == 500:       # a subscriber that joins late starts from the snapshot
            for fr in _frames(snapshot_frames(inst, sym, 9)):
                _feed(lb, fr)
            continue
        for _bit, f in update_frames(inst, up):
            assert _feed(lb, _frames([f])[0]) == (OK if i > 500 else "unsynced")
        if i > 500:
            want = {k: [(p * TICK_M, q, n) for p, q, n in v] for k, v in e.books[seq].items()}
            assert lb.levels() == want and lb.rpt_seq == sym.rpt_seq
    assert e.trades and sym.rpt_seq > len(e.trades)


def test_mass_cancel_clears_the_book_with_deletes():
    e = LocalEngine(seed=2)
    sym = SymbolState("X", 1)
    for i in range(300):
        seq, ts, out = e.step(T0 + i)
        sym.apply(seq, ts, out)
    assert sym.bids and sym.asks
    out = e.engine.apply(301, T0 + 301, c.MASS_CANCEL, b"", 0xFFFF_FFFE)
    up = sym.apply(301, T0 + 301, out)
    assert sym.book() == e.engine.book() == {"bids": [], "asks": []}
    (kind, run), = up.items
    assert kind == "levels" and all(a == mdstate.DELETE for *_x, a in run)


def test_local_book_verifies_rpt_seq():
    inst = Instrument("X", 1, TICK_M, LOT_M)
    sym = SymbolState("X", 1)
    e = LocalEngine(seed=9)
    lb = LocalBook(1)
    for fr in _frames(snapshot_frames(inst, sym, 1)):
        _feed(lb, fr)
    frames = []
    for i in range(200):
        seq, ts, out = e.step(T0 + i)
        frames += [f for _b, f in update_frames(inst, sym.apply(seq, ts, out))]
    frs = _frames(frames)
    assert _feed(lb, frs[0]) == OK
    assert _feed(lb, frs[0]) == STALE                # a repeat is ignored
    assert _feed(lb, frs[2]) == GAP and not lb.synced
    assert _feed(lb, frs[1]) == "unsynced"           # nothing applies until a snapshot
    for fr in _frames(snapshot_frames(inst, sym, 2)):
        _feed(lb, fr)
    assert lb.synced and lb.rpt_seq == sym.rpt_seq


def test_snapshot_fragments_hold_a_deep_book():
    sym = SymbolState("X", 1)
    payload = b"".join(c.EVENT_STRUCTS[c.EV_LEVEL].pack(c.EV_LEVEL, c.BUY, p, 5, 1)
                       for p in range(1, 7001))
    sym.apply(1, T0, payload)
    inst = Instrument("X", 1, 1, 1)
    frames = _frames(snapshot_frames(inst, sym, 3))
    assert len(frames) == 3
    lb = LocalBook(1)
    for fr in frames:
        _feed(lb, fr)
    assert len(lb.bids) == 7000 and lb.rpt_seq == sym.rpt_seq == 3   # 7000 levels: 3 frames


# -- klines and the ticker against a naive recomputation ---------------------------------------

def _naive(trades: list[tuple[int, int, int, int]], now: int):
    """trades: (ts as the publisher clamps it, trade id, price, qty)."""
    klines = {}
    for name, width in INTERVALS.items():
        groups: dict[int, list] = {}
        for t in trades:
            groups.setdefault(t[0] - t[0] % width, []).append(t)
        ks = []
        for start in sorted(groups)[-mdstate.KLINES_KEPT:]:
            g = groups[start]
            ks.append((start, g[0][2], max(x[2] for x in g), min(x[2] for x in g), g[-1][2],
                       sum(x[3] for x in g), sum(x[2] * x[3] for x in g), len(g), g[0][1],
                       g[-1][1]))
        klines[name] = ks
    start = now - now % MINUTE_NS - (mdstate.TICKER_MINUTES - 1) * MINUTE_NS
    w = [t for t in trades if t[0] >= start]
    ticker = (start, w[0][2] if w else None, w[-1][2] if w else None,
              max((x[2] for x in w), default=None), min((x[2] for x in w), default=None),
              sum(x[3] for x in w), sum(x[2] * x[3] for x in w), len(w))
    return klines, ticker


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-10 * MINUTE_NS, 900 * MINUTE_NS),   # ts step (may go back)
                          st.integers(1, 1000), st.integers(1, 100), st.booleans()),
                min_size=0, max_size=120))
def test_klines_and_ticker_equal_a_naive_recomputation(steps):
    sym = SymbolState("X", 1)
    ev = c.EVENT_STRUCTS[c.EV_TRADE]
    ts, now, tid = T0, 0, 0
    recorded = []
    for seq, (dt, price, qty, trades) in enumerate(steps, 1):
        ts += dt
        payload = b""
        if trades:             # a record with a trade; otherwise an empty one (a Tick's)
            tid += 1
            payload = ev.pack(c.EV_TRADE, tid, 1, 2, 1, 2, price, qty, c.BUY, 0, 0, 0, 0)
        sym.apply(seq, ts, payload)
        now = max(now, ts)
        if trades:
            recorded.append((now, tid, price, qty))
    klines, ticker = _naive(recorded, now)
    for name in INTERVALS:
        got = [(k.start_ns, k.open, k.high, k.low, k.close, k.volume, k.quote, k.count,
                k.first_trade, k.last_trade) for k in sym.klines[name]]
        assert got == klines[name], name
    t = sym.ticker()
    assert (t.window_start_ns, t.open, t.last, t.high, t.low, t.volume, t.quote,
            t.count) == ticker


def test_the_state_is_pure():
    """The publisher's state is a state machine of the out records: no clock, no I/O."""
    from tests.unit import test_tidy
    test_tidy.STATE_MACHINES.append("gateway/marketdata/state.py")
    try:
        test_tidy.test_state_machine_imports_nothing_impure("gateway/marketdata/state.py")
    finally:
        test_tidy.STATE_MACHINES.remove("gateway/marketdata/state.py")
