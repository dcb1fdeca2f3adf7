"""deploy/oracle.py: the simulated mark-price source. Its records have the TradingEngine's
MarkPrice/FundingInputs layouts (compared with tradingengine/codec.py), its walk is seeded
(one path per seed) and stays inside its bounds, and a bad configuration is one line."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy import oracle
from deploy.cli import main
from tradingengine import codec


def test_layouts_are_the_tradingengines():
    assert (oracle.MARK_PRICE, oracle.FUNDING_INPUTS) == (codec.MARK_PRICE, codec.FUNDING_INPUTS)
    assert oracle.MARK_PRICE_S.format == codec.MARK_PRICE_S.format
    assert oracle.FUNDING_INPUTS_S.format == codec.FUNDING_INPUTS_S.format


def test_one_path_per_seed_and_symbol():
    def path(seed, sid):
        w = oracle.Walk(sid, 100_000, 10**9, 500, seed)
        return [w.step() for _ in range(200)]
    assert path(1, 1) == path(1, 1)
    assert path(1, 1) != path(2, 1) and path(1, 1) != path(1, 2)
    assert len(set(path(1, 1))) > 10


@given(st.integers(1, 10**6), st.integers(0, 100_000), st.integers(0, 2**40),
       st.integers(1, 10**7))
def test_the_walk_stays_in_its_bounds(start, step_ppm, seed, max_ticks):
    start = min(start, max_ticks)
    w = oracle.Walk(7, start, max_ticks, step_ppm, seed)
    for _ in range(50):
        p = w.step()
        assert max(1, start // 2) <= p <= min(max_ticks, start * 2)
        assert -oracle.PREMIUM_CAP_PPM <= w.premium_ppm() <= oracle.PREMIUM_CAP_PPM


def test_marks_are_one_record_per_symbol():
    walks = [oracle.Walk(1, 100_000, 10**9, 500, 1), oracle.Walk(2, 60_000, 10**9, 500, 1)]
    recs = oracle.marks(walks)
    assert [(k, codec.MARK_PRICE_S.unpack(p)[0]) for k, p in recs] == [(73, 1), (73, 2)]
    assert [codec.MARK_PRICE_S.unpack(p)[1] for _k, p in recs] == [w.price for w in walks]


def test_a_restart_resumes_the_walk_where_it_stood(tmp_path):
    """The walk's state (price and step count per symbol) is saved after every interval and a
    restart resumes from it, not from start_ticks: a restarted oracle used to send the
    walk's start again at once (BTCUSDT 50,684 -> 50,011 in one step) and repeat the path it
    had walked. A missing file is a fresh start; an unreadable one is set aside."""
    path = str(tmp_path / "walk.json")

    def walks():
        return [oracle.Walk(1, 100_000, 10**9, 5_000, 1), oracle.Walk(2, 60_000, 10**9, 5_000, 1)]
    assert oracle.load_state(path, before := walks()) == 0      # no file: a fresh start
    for _ in range(300):
        for w in before:
            w.step()
    oracle.save_state(path, 300, before)
    after = walks()
    assert oracle.load_state(path, after) == 300
    assert [(w.price, w.steps) for w in after] == [(w.price, w.steps) for w in before]
    assert all(w.price != w.start for w in after)
    for b, a in zip(before, after, strict=True):
        size = max(1, b.price * 5_000 // 1_000_000)
        first = a.step()
        assert abs(first - b.price) <= size          # one step on from where it stood
        fresh = walks()[before.index(b)]
        assert [a.step() for _ in range(20)] != [fresh.step() for _ in range(20)]
    (tmp_path / "walk.json").write_text("{not json")
    again = walks()
    assert oracle.load_state(path, again) == 0 and [w.price for w in again] == [100_000, 60_000]
    assert (tmp_path / "walk.json.bad").exists() and not (tmp_path / "walk.json").exists()


def test_the_oracle_saves_its_walk_every_interval_and_resumes_it(tmp_path):
    """Oracle.tick saves the state given in its configuration; a new Oracle resumes it."""
    conf = oracle.parse_config(json.dumps({
        **GOOD, "control": "tcp://127.0.0.1:0", "state": str(tmp_path / "o" / "w.json"),
        "step_ppm": 50_000}))
    conf["shards"] = []                  # no streams: the marks go nowhere
    first = oracle.Oracle(conf)
    try:
        for _ in range(5):
            first.tick()
        price = first.walks[0].price
    finally:
        first.close()
    second = oracle.Oracle(conf)
    try:
        assert second.intervals == 5 and second.walks[0].price == price
    finally:
        second.close()


GOOD = {"control": "tcp://127.0.0.1:1", "shards": [{"in": "in.te.0", "producers": "tcp://x:1"}],
        "symbols": [{"symbol_id": 1, "start_ticks": 100}]}


@pytest.mark.parametrize("change, want", [
    ({"interval_ms": 0}, "interval_ms must be in 10 .. 3600000"),
    ({"source": 0xFFFF_0001}, "is not a producer's source id"),
    ({"shards": []}, "shards and symbols must not be empty"),
    ({"symbols": [{"symbol_id": 1}]}, "symbols[0].start_ticks must be a int"),
    ({"symbols": [{"symbol_id": 0, "start_ticks": 1}]}, "symbol_id in 1 .. 2**32-1"),
    ({"control": 5}, "control must be a str"),
    ({"mark": "last"}, 'mark must be "fair" or "index"'),
    ({"funding_interval_ms": 10}, "funding_interval_ms must be in 1000 .. 604800000"),
])
def test_a_bad_configuration_is_one_line(capsys, change, want):
    assert main(["--insecure", "oracle", "--config", json.dumps({**GOOD, **change})]) == 2
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_defaults_fill_in():
    c = oracle.parse_config(json.dumps(GOOD))
    assert (c["source"], c["interval_ms"], c["funding_every"]) == (0x7100_0000, 1000, 0)


def test_the_funding_rate_is_bitmex_premium_plus_clamped_interest():
    assert oracle.funding_rate_ppm(0, 100) == 100          # I - P inside the clamp
    assert oracle.funding_rate_ppm(2_000, 100) == 1_500    # clamp(100 - 2000) = -500
    assert oracle.funding_rate_ppm(-2_000, 100) == -1_500  # clamp(2100) = +500
    assert oracle.funding_rate_ppm(300, 100) == 100        # P - (P - I) = I near the rate


def test_the_fair_mark_is_index_times_one_plus_the_funding_basis():
    day = 8 * 3600 * 1000
    # F = 0.01 %, half the interval to go: basis 0.005 %; 100,000 ticks -> 100,005
    assert oracle.fair_mark(100_000, 100, day // 2, day) == 100_005
    assert oracle.fair_mark(100_000, 100, 0, day) == 100_000           # at funding: the index
    assert oracle.fair_mark(100_000, -1_500, day, day) == 99_850       # a whole interval ahead
    assert oracle.fair_mark(3, 100, day, day) == 3                      # rounds to whole ticks
    assert oracle.fair_mark(1, -5_000, day, day) == 1                   # never below one tick


@given(st.integers(1, 10**12), st.integers(-5_500, 5_500), st.integers(0, 10**8),
       st.integers(60_000, 10**8))
def test_the_fair_mark_stays_within_the_basis_of_the_index(index, rate, until, interval):
    until = min(until, interval)
    m = oracle.fair_mark(index, rate, until, interval)
    exact = index * (1 + rate * until / (1_000_000 * interval))
    assert abs(m - exact) <= 0.5 + 1e-9 * index or m == 1


def test_fair_marks_follow_the_index_with_the_basis():
    walks = [oracle.Walk(1, 100_000, 10**9, 0, 1)]          # step 0: the index stays put
    fair = {"interest_ppm": 100, "now_ms": 14_400_000 + 5 * 28_800_000,
            "interval_ms": {1: 28_800_000}}
    [(kind, payload)] = oracle.marks(walks, fair)
    assert kind == 73 and codec.MARK_PRICE_S.unpack(payload) == (1, 100_005)
    [(kind, payload)] = oracle.marks(walks)
    assert codec.MARK_PRICE_S.unpack(payload) == (1, 100_000)
