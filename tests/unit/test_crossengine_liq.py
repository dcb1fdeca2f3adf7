"""The CrossEngine's side of the LiqEngine contract (docs/liqengine.md §1, §2, §4): LIQ_ACCOUNT
routes to bit 63 and to no shard, book-wide events reach the LiqEngine too, and records from
liq_sources are LiqEngine output payloads whose CrossEngineCommands for this symbol apply."""
import importlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossengine import codec as c
from crossengine.engine import LIQ_EVENT_SIZES, CrossEngine
from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE

LIQ_SRC = 0x7600_0000
TE_SRC = 0x7300_0001
LIQ = c.LIQ_ACCOUNT
BIT63 = 1 << 63
CMD = struct.Struct("<BIHH")


def liq_command(symbol: int, kind: int, body: bytes) -> bytes:
    return CMD.pack(1, symbol, kind, len(body)) + body


# one of each other LiqEngine event, fields zero (the CrossEngine skips them)
OTHERS = {t: bytes([t]) + bytes(size - 1) for t, size in LIQ_EVENT_SIZES.items() if t != 1}


def frame(recs, seq=1):
    return encode([(seq + i, 1000 + i, src, seq + i, 1, kind, p)
                   for i, (src, kind, p) in enumerate(recs)])


def run(eng, recs, seq=1):
    return [(r[7], r[6]) for r in decode(eng.apply_frame(frame(recs, seq)))]


def test_the_mirrored_liqengine_event_sizes_are_the_contracts():
    assert LIQ_EVENT_SIZES == {1: 9, 2: 33, 3: 37, 4: 18, 5: 10, 6: 13, 7: 29}
    try:
        lc = importlib.import_module("liqengine.codec")
    except ImportError:
        return
    sizes = getattr(lc, "EVENT_SIZES", None)
    if isinstance(sizes, dict):
        assert {k: v for k, v in sizes.items() if k in LIQ_EVENT_SIZES} == LIQ_EVENT_SIZES


def test_a_liq_record_applies_its_commands_for_this_symbol_in_order():
    eng = CrossEngine(symbol_id=1, n_shards=4, liq_sources=[LIQ_SRC])
    alone = CrossEngine(symbol_id=1, n_shards=4)
    mine = [(c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, LIQ)),
            (c.CANCEL, c.cancel(0, 1, LIQ)),
            (c.NEW_ORDER, c.new_order(2, c.SELL, 100, 5, LIQ, tif=c.GTC))]
    payload = (OTHERS[2] + liq_command(1, *mine[0]) + OTHERS[3] + liq_command(2, *mine[1])
               + liq_command(1, *mine[1]) + OTHERS[4] + OTHERS[5] + OTHERS[6] + OTHERS[7]
               + liq_command(1, *mine[2]))
    ((route, out),) = run(eng, [(LIQ_SRC, c.KIND_TICK, payload)])
    assert out == b"".join(alone.apply(0, 0, k, p) for k, p in mine)
    assert route == BIT63            # only LIQ named: the LiqEngine's bit, no shard's
    assert eng.book() == alone.book()
    assert run(eng, [(LIQ_SRC, 73, b"".join(OTHERS.values()))], seq=2) == [(0, b"")]


def test_a_trade_with_liq_routes_to_the_counterpartys_shard_and_bit_63_not_liqs_shard():
    eng = CrossEngine(symbol_id=1, n_shards=4, liq_sources=[LIQ_SRC])
    assert LIQ % 4 == 0
    run(eng, [(LIQ_SRC, 1, liq_command(1, c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, LIQ)))])
    ((route, out),) = run(eng, [(OPERATOR_SOURCE, c.NEW_ORDER,
                                 c.new_order(2, c.BUY, 100, 5, 6))], seq=2)
    assert [e[0] for e in c.decode_events(out)][:2] == [c.EV_ACCEPTED, c.EV_TRADE]
    assert route == BIT63 | 1 << 2
    ((route, _),) = run(eng, [(OPERATOR_SOURCE, c.CANCEL_ALL, c.cancel_all(LIQ))], seq=3)
    assert route == BIT63


def test_book_wide_events_set_bit_63_with_or_without_liq_sources():
    for eng in (CrossEngine(n_shards=2), CrossEngine(n_shards=2, liq_sources=[LIQ_SRC])):
        got = run(eng, [(OPERATOR_SOURCE, c.HALT, b""), (OPERATOR_SOURCE, c.RESUME, b""),
                        (OPERATOR_SOURCE, c.MASS_CANCEL, b"")])
        assert [r for r, _ in got] == [0b11 | BIT63] * 3


def test_a_liq_source_is_not_the_operator():
    eng = CrossEngine(symbol_id=1, liq_sources=[LIQ_SRC])
    ((_, out),) = run(eng, [(LIQ_SRC, 1, liq_command(1, c.HALT, b""))])
    assert [e[3] for e in c.decode_events(out)] == [c.CODES["source_not_operator"]]


@pytest.mark.parametrize("payload, what", [
    (bytes([8]) + bytes(20), "unknown event type 8"),
    (OTHERS[2][:20], "event type 2 truncated"),
    (liq_command(1, c.NEW_ORDER, c.new_order(1, c.BUY, 100, 5, LIQ))[:-1],
     "event type 1 truncated"),
    (CMD.pack(1, 1, 32, 0)[:5], "event type 1 truncated"),
])
def test_a_liq_payload_this_engine_cannot_walk_is_a_clear_error_that_changes_nothing(payload,
                                                                                     what):
    eng = CrossEngine(symbol_id=1, liq_sources=[LIQ_SRC])
    before = eng.state_hash()
    first = liq_command(1, c.NEW_ORDER, c.new_order(7, c.BUY, 100, 5, LIQ))
    with pytest.raises(RuntimeError, match=f"record seq 42 from source {LIQ_SRC} "
                                           f"\\(a liq_sources stream\\).*{what}.*LiqEngine"):
        eng.apply_frame(frame([(LIQ_SRC, 1, first + payload)], seq=42))
    assert eng.state_hash() == before


@pytest.mark.parametrize("liq, te", [([0], []), ([5, 5], []), ([0xFFFF_0000], []),
                                     (list(range(1, 10)), []), ([TE_SRC], [TE_SRC])])
def test_liq_sources_are_distinct_non_operator_ids_not_te_sources(liq, te):
    with pytest.raises(ValueError, match="liq_sources"):
        CrossEngine(liq_sources=liq, te_sources=te)


def test_a_snapshot_with_liq_sources_is_version_4_and_without_them_version_3():
    eng = CrossEngine(symbol_id=1, n_shards=3, te_sources=[TE_SRC], liq_sources=[LIQ_SRC, 9])
    run(eng, [(LIQ_SRC, 1, liq_command(1, c.NEW_ORDER, c.new_order(1, c.SELL, 100, 5, LIQ)))])
    data = eng.snapshot()
    assert struct.unpack_from("<H", data, 4)[0] == 4
    back = CrossEngine.restore(data)
    assert back.liq_sources == [LIQ_SRC, 9] and back.te_sources == [TE_SRC]
    assert back.state_hash() == eng.state_hash() and back.snapshot() == data
    plain = CrossEngine(symbol_id=1, n_shards=3, te_sources=[TE_SRC])
    assert struct.unpack_from("<H", plain.snapshot(), 4)[0] == 3
    assert len(plain.snapshot()) == c.SNAP_HEADER_V3.size + 4
    assert CrossEngine.restore(plain.snapshot()).liq_sources == []


liq_commands = st.one_of(
    st.builds(lambda cl, side, price, qty, acct: (c.NEW_ORDER, c.new_order(cl, side, price, qty,
                                                                           acct)),
              st.integers(1, 20), st.sampled_from([c.BUY, c.SELL]), st.integers(95, 105),
              st.integers(1, 10), st.sampled_from([1, 2, 5, LIQ])),
    st.builds(lambda cl, acct: (c.CANCEL, c.cancel(0, cl, acct)), st.integers(1, 20),
              st.sampled_from([1, LIQ])),
    st.builds(lambda k, body: (k, body), st.sampled_from([c.HALT, 99]), st.binary(max_size=4)),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(sorted(OTHERS)),
                                   st.tuples(st.sampled_from([1, 2]), liq_commands)),
                         max_size=8), min_size=1, max_size=4),
       st.integers(1, 63))
def test_a_liq_payload_applies_exactly_its_commands_for_this_symbol(records, n_shards):
    """Against a twin fed the same commands directly: the same events; and every output
    route is the codec's (LIQ to bit 63 only)."""
    from tests.unit.test_crossengine import expected_route
    eng = CrossEngine(symbol_id=1, liq_sources=[LIQ_SRC], n_shards=n_shards)
    twin = CrossEngine(symbol_id=1, n_shards=n_shards)
    payloads = [b"".join(OTHERS[x] if isinstance(x, int) else liq_command(x[0], *x[1])
                         for x in items) for items in records]
    out = run(eng, [(LIQ_SRC, 1, p) for p in payloads])
    for items, (route, events) in zip(records, out, strict=True):
        want = b"".join(twin.apply(0, 0, k, body, LIQ_SRC)
                        for sym, (k, body) in (x for x in items if not isinstance(x, int))
                        if sym == 1)
        assert events == want
        assert route == expected_route(events, n_shards)
    assert eng.book() == twin.book()
