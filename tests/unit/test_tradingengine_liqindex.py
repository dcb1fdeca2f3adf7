"""The liquidation-trigger index: a mark checks only the holders whose trigger it crossed.

Exact: a holder the index leaves out is not below maintenance at that mark (its check would
output nothing), checked here over random flows at marks on a wide grid and at every holder's
published liquidation price and its neighbours. Cheap: holders far from their triggers are not
candidates at all. The sorted structure under it agrees with a sorted list. The lockstep of
the index against the walk over every holder is tests/stateful (the ReferenceEngine walks)."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tradingvenue import MID, Venue, random_venue, spec
from tradingengine import codec as c
from tradingengine.engine import TradingEngine, _fires, _SortedInts
from tradingengine.margin import liquidation_price


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=3000),
       st.integers(0, 3100))
def test_sorted_ints_agree_with_a_sorted_list(ops, probe):
    s = _SortedInts()
    model: list[int] = []
    for add, key in ops:
        if add and key not in model:
            s.add(key)
            model.append(key)
        elif not add and key in model:
            s.remove(key)
            model.remove(key)
    model.sort()
    assert [k for b in s.blocks for k in b] == model
    assert s.at_least(probe) == [k for k in model if k >= probe]
    assert s.below(probe) == [k for k in model if k < probe]
    assert len(s) == len(model)


def _check_index_exact(te: TradingEngine, marks_of) -> int:
    """At every mark of ``marks_of(symbol)``, a holder that is not a candidate must not be
    below maintenance: its check outputs nothing. Returns how many (holder, mark) pairs the
    index skipped."""
    probe = TradingEngine.restore(te.snapshot())
    skipped = 0
    for symbol in probe.specs:
        spec = probe.specs[symbol]
        for m in marks_of(probe, symbol):
            if not 0 < m <= spec.max_price:
                continue
            probe.marks[symbol] = m
            cands = probe._liq_candidates(symbol, m, -1)
            for a in sorted(probe.holders[symbol]):
                if a in cands:
                    continue
                skipped += 1
                probe._out = []
                probe._maintain(probe.accounts[a], symbol, spec, m)
                assert probe._out == [], f"account {a} below maintenance at {symbol}@{m} " \
                                         "but not a candidate"
    return skipped


def _grid(te: TradingEngine, symbol: int) -> list[int]:
    mid = te.marks.get(symbol, MID[symbol])
    marks = [mid * k // 100 for k in range(1, 300, 3)]
    spec = te.specs[symbol]
    for a in te.holders[symbol]:
        acct = te.accounts[a]
        pos = acct.positions[symbol]
        base = pos.margin if pos.mode == c.ISOLATED else te._cross_base(acct, symbol)
        liq = liquidation_price(pos.size, pos.cost, base, spec)
        marks += [liq - 2, liq - 1, liq, liq + 1, liq + 2]
    return marks


def test_the_index_never_misses_a_holder_below_maintenance():
    skipped = 0
    for seed in range(12):
        v = random_venue(seed, 400)
        skipped += _check_index_exact(v.te, _grid)
    assert skipped > 1000      # and it does leave most of them out


def test_high_leverage_isolated_and_cross_holders_near_their_triggers():
    rng = random.Random(7)
    v = Venue([spec(1), spec(2, value=10)])
    v.mark(1, 10_000)
    v.mark(2, 50_000)
    for a in range(1, 41):
        v.deposit(a, rng.randrange(10**8, 10**10))
        sym = 1 + a % 2
        if a % 3 == 0:
            v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(a, sym, c.ISOLATED))
        v.apply(c.SET_LEVERAGE, c.set_leverage(a, sym, rng.choice((500, 2000, 5000, 10_000))))
    for a in range(1, 41, 2):     # pairs trade with each other: longs and shorts
        sym = 1 + a % 2
        mark = v.te.marks[sym]
        qty = rng.randrange(1, 400)
        v.order(a, a, c.BUY, mark, qty, symbol=sym)
        v.order(a + 1, a + 1, c.SELL, mark, qty, symbol=sym)
        if a % 5 == 0:      # some hold both symbols cross: checked at every mark
            other = 3 - sym
            v.order(1000 + a, a, c.SELL, v.te.marks[other], 3, symbol=other)
            v.order(1000 + a + 1, a + 1, c.BUY, v.te.marks[other], 3, symbol=other)
    assert sum(len(h) for h in v.te.holders.values()) > 30
    assert _check_index_exact(v.te, _grid) > 100


def test_a_mark_far_from_every_trigger_checks_no_one():
    v = Venue([spec(1)])
    v.mark(1, 10_000)
    for a in range(1, 201):
        v.deposit(a, 10**11)
    for a in range(1, 201, 2):
        v.order(a, a, c.BUY, 10_000, 10)
        v.order(a + 1, a + 1, c.SELL, 10_000, 10)
    assert len(v.te.holders[1]) == 200
    v.mark(1, 10_100)
    assert v.te._liq_candidates(1, 10_100, -1) == []
    # a long with little behind it: crossed by a fall, not by a rise
    v.deposit(1001, 2 * 10**7)
    v.deposit(1002, 10**11)
    v.apply(c.SET_LEVERAGE, c.set_leverage(1001, 1, 10_000))
    v.order(7001, 1001, c.BUY, 10_100, 150)
    v.order(7002, 1002, c.SELL, 10_100, 150)
    assert v.position(1001).size == 150
    assert v.te._liq_candidates(1, 10_200, -1) == []
    assert 1001 in v.te._liq_candidates(1, 9_000, -1)
    out = v.mark(1, 9_000)
    assert [e[1] for e in out if e[0] == c.LIQUIDATION] == [1001]
    assert 1001 not in v.te.holders[1] and v.te._liq_candidates(1, 1, -1) == []


def test_restore_rebuilds_the_index():
    v = random_venue(3, 300)
    back = TradingEngine.restore(v.te.snapshot())
    for symbol in back.specs:
        for m in _grid(v.te, symbol):
            if 0 < m <= back.specs[symbol].max_price:
                assert back._liq_candidates(symbol, m, -1) == v.te._liq_candidates(symbol, m, -1)


def _fired_by_index(te: TradingEngine, symbol: int, by: int, price: int) -> list[int]:
    index = te._trig_index[symbol]
    ids = [k & (2**64 - 1) for k in index[by * 2 + 1].below((price + 1) << 64)]
    ids += [k & (2**64 - 1) for k in index[by * 2].at_least(price << 64)]
    return sorted(ids)


def test_the_trigger_index_holds_exactly_the_orders_a_price_fires():
    checked = 0
    for seed in range(8):
        te = random_venue(seed, 500).te
        back = TradingEngine.restore(te.snapshot())
        for symbol, waiting in te.conditional.items():
            prices = sorted({o.trigger_price + d for o in waiting.values() for d in (-1, 0, 1)})
            for by in (c.BY_MARK, c.BY_LAST):
                for p in prices + [1, MID[symbol]]:
                    want = sorted(i for i, o in waiting.items()
                                  if o.trigger_by == by and _fires(o, p))
                    assert _fired_by_index(te, symbol, by, p) == want
                    assert _fired_by_index(back, symbol, by, p) == want
                    checked += len(want)
    assert checked > 10


def test_a_mark_fires_the_stops_it_reaches_among_thousands():
    v = Venue([spec(1)])
    v.mark(1, 10_000)
    for a in range(1, 21):
        v.deposit(a, 10**15)
    for i in range(2_000):     # sell stops below the mark, buy stops above
        side, trig = (c.SELL, 9_000 - i) if i % 2 else (c.BUY, 11_000 + i)
        v.order(i + 1, 1 + i // 100, side, 0, 1, ord_type=c.MARKET, trigger_price=trig,
                trigger_kind=c.TRIGGER_STOP)
    assert len(v.te.conditional[1]) == 2_000
    assert _fired_by_index(v.te, 1, c.BY_MARK, 10_500) == []
    out = v.mark(1, 8_995)     # reaches the sell stops at 8,999, 8,997 and 8,995
    triggered = [e for e in out if e[0] == c.EXEC_REPORT and e[1] == c.EXEC_TRIGGERED]
    assert sorted(e[5] for e in triggered) == [2, 4, 6]
    assert len(v.te.conditional[1]) == 1_997
