"""Operator-only engine commands are obeyed only from an operator source id (mq/sources.py).

The source is in each record's header, so the rule is deterministic: every replica, and the
operator's rebuild from the log, refuses the same records. Each command is sent through
apply_frame (the replica host's path) from a client's source and from the operator's, at the
boundary of the operator range and one below it; a refused command changes nothing (same
state hash as before) and answers source_not_operator; the reference engine agrees byte for
byte.
"""
from __future__ import annotations

import pytest

from crossengine import codec as cc
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN, is_operator
from tests.tradingvenue import two_specs
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine

CLIENT = 5
JUST_BELOW = OPERATOR_SOURCE_MIN - 1


def test_operator_range_bounds():
    assert is_operator(OPERATOR_SOURCE_MIN) and is_operator((1 << 32) - 1)
    assert not is_operator(JUST_BELOW) and not is_operator(CLIENT)
    assert not is_operator(1 << 32)


def _frame(recs):
    return encode([(i + 1, 1000 + i, src, i + 1, 1, kind, payload)
                   for i, (src, kind, payload) in enumerate(recs)])


def _resting(eng) -> None:
    eng.apply_frame(_frame([(CLIENT, cc.NEW_ORDER, cc.new_order(1, cc.BUY, 100, 5, 1))]))


@pytest.mark.parametrize("kind", [cc.HALT, cc.RESUME, cc.MASS_CANCEL])
@pytest.mark.parametrize("src", [CLIENT, JUST_BELOW])
def test_crossengine_refuses_operator_commands_from_other_sources(kind, src):
    eng = CrossEngine()
    _resting(eng)
    before = eng.state_hash()
    out = decode(eng.apply_frame(_frame([(src, kind, b"")])))
    events = cc.decode_events(out[0][6])
    assert events[0][0] == cc.EV_REJECTED and events[0][3] == cc.CODES["source_not_operator"]
    assert eng.state_hash() == before
    assert out[0][6] == ReferenceEngine().apply(1, 1, kind, b"", src)


@pytest.mark.parametrize("src", [OPERATOR_SOURCE_MIN, OPERATOR_SOURCE])
def test_crossengine_obeys_the_operator(src):
    eng = CrossEngine()
    _resting(eng)
    out = decode(eng.apply_frame(_frame([(src, cc.HALT, b""), (src, cc.MASS_CANCEL, b"")])))
    assert cc.decode_events(out[0][6])[0][0] == cc.EV_HALTED
    assert cc.decode_events(out[1][6])[0][0] == cc.EV_MASS_CANCELLED
    assert len(eng) == 0


def test_a_refused_halt_leaves_the_market_open():
    eng = CrossEngine()
    eng.apply_frame(_frame([(CLIENT, cc.HALT, b"")]))
    out = decode(eng.apply_frame(_frame([(CLIENT, cc.NEW_ORDER,
                                          cc.new_order(1, cc.BUY, 100, 5, 1))])))
    assert cc.decode_events(out[0][6])[0][0] == cc.EV_ACCEPTED


@pytest.mark.parametrize("kind", [tc.DEPOSIT, tc.WITHDRAW])
@pytest.mark.parametrize("src", [CLIENT, JUST_BELOW])
def test_tradingengine_refuses_transfers_from_other_sources(kind, src):
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    te.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10))]))
    before = te.state_hash()
    recs = [(OPERATOR_SOURCE, tc.KIND_TICK, b""), (src, kind, tc.transfer(7, 2, 10**9))]
    out = decode(te.apply_frame(encode([(10 + i, 5000 + i, s, 10 + i, 1, k, p)
                                        for i, (s, k, p) in enumerate(recs)])))
    events = tc.decode_events(out[1][6])
    assert events[0][0] == tc.REQUEST_REJECTED
    assert events[0][1] == tc.CODES["source_not_operator"]
    # nothing moved: only the log position and the time differ from before
    assert te.accounts[2].balance == 10**10
    assert te.state_hash() != before  # seq and ts moved
    again = TradingEngine(two_specs(), shard=0, n_shards=2)
    again.apply_frame(_frame([(OPERATOR_SOURCE, tc.DEPOSIT, tc.transfer(1, 2, 10**10))]))
    again.apply_frame(encode([(10, 5000, OPERATOR_SOURCE, 10, 1, tc.KIND_TICK, b""),
                              (11, 5001, OPERATOR_SOURCE, 11, 1, tc.KIND_TICK, b"")]))
    assert again.state_hash() == te.state_hash()


def test_tradingengine_obeys_operator_transfers():
    te = TradingEngine(two_specs(), shard=0, n_shards=2)
    out = decode(te.apply_frame(_frame([(OPERATOR_SOURCE_MIN, tc.DEPOSIT,
                                         tc.transfer(1, 2, 10**10))])))
    assert tc.decode_events(out[0][6])[0][0] != tc.REQUEST_REJECTED
    assert te.accounts[2].balance == 10**10
