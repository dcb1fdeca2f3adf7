"""Which source may send the TradingEngine's feed commands (a known hole, docs/security.md).

MarkPrice and FundingInputs come from the price feed, CrossEngineEvents from the CrossEngine's
out stream (taken upstream under its own source id). The engine obeys them from any source: a
producer key registered for a client source id (a gateway) may move the mark price (and so
liquidate accounts), or send CrossEngine events, forged fills or, malformed, a payload that
halts every replica for good (the same record halts each, deterministically). The sequencer
checks only that the key owns the source id, not the kind. These tests are strict xfails:
they pass, and fail the suite, once the engine refuses these kinds from client sources.
"""
from __future__ import annotations

import pytest

from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE
from tests.tradingvenue import two_specs
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine

CLIENT = 101   # a gateway's source id


def _frame(recs):
    return encode([(i + 1, 1000 + i, src, i + 1, 1, kind, payload)
                   for i, (src, kind, payload) in enumerate(recs)])


@pytest.mark.xfail(strict=True, reason="the TradingEngine takes MarkPrice from any source")
def test_a_client_source_cannot_move_the_mark_price():
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    out = decode(te.apply_frame(_frame([(CLIENT, tc.MARK_PRICE, tc.mark_price(1, 12345))])))
    assert te.marks.get(1) != 12345
    assert tc.decode_events(out[0][6])[0][0] == tc.REQUEST_REJECTED


@pytest.mark.xfail(strict=True, reason="the TradingEngine takes CrossEngineEvents from any "
                   "source and halts on a malformed one")
def test_a_client_source_cannot_halt_the_engine_with_crossengine_events():
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    te.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10))]))
    bad = tc.ce_events(1, b"\xff")   # an event type that does not exist
    te.apply_frame(encode([(2, 2000, CLIENT, 1, 1, tc.CE_EVENTS, bad)]))
    te.apply_frame(encode([(3, 3000, OPERATOR_SOURCE, 2, 1, tc.KIND_TICK, b"")]))

