"""The LiqEngine's mirrored layouts equal the TradingEngine's and the CrossEngine's byte for
byte (engines never import each other, so a test is what keeps them in step), and its walkers
read every event of a real payload.
"""
import struct

import pytest

from crossengine import codec as cec
from liqengine import codec as lc
from tradingengine import codec as tec


def test_te_events_mirrored_byte_for_byte():
    for kind, s in lc.TE_EVENT_STRUCTS.items():
        theirs = tec.EVENT_STRUCTS.get(kind)
        if theirs is None:
            if kind == lc.TE_ADL_APPLIED:
                continue     # AdlApplied is new: compared once the TradingEngine has it
            pytest.fail(f"TradingEngine has no event {kind}")
        assert s.format == theirs.format, kind
    extra = set(tec.EVENT_STRUCTS) - set(lc.TE_EVENT_STRUCTS)
    assert not extra, f"TradingEngine events the LiqEngine cannot walk: {sorted(extra)}"
    assert lc.TE_P_BLOCK_SIZES == tec.P_BLOCK_SIZES
    assert (lc.TE_ACCOUNT, lc.TE_POSITION, lc.TE_LIQUIDATION, lc.TE_DEFICIT_COVERED) == (
        tec.ACCOUNT, tec.POSITION, tec.LIQUIDATION, tec.DEFICIT_COVERED)
    if hasattr(tec, "ADL_APPLIED"):
        assert tec.ADL_APPLIED == lc.TE_ADL_APPLIED
    if hasattr(tec, "LIQ_ACCOUNT"):
        assert tec.LIQ_ACCOUNT == lc.LIQ_ACCOUNT


def test_ce_events_and_commands_mirrored_byte_for_byte():
    assert {k: s.format for k, s in lc.CE_EVENT_STRUCTS.items()} == {
        k: s.format for k, s in cec.EVENT_STRUCTS.items()}
    assert lc.CE_NEW_ORDER_S.format == cec.NEW_ORDER_S.format
    assert lc.CE_CANCEL_S.format == cec.CANCEL_S.format
    assert (lc.CE_NEW_ORDER, lc.CE_CANCEL) == (cec.NEW_ORDER, cec.CANCEL)
    assert (lc.BUY, lc.SELL, lc.LIMIT, lc.GTC, lc.IOC) == (cec.BUY, cec.SELL, cec.LIMIT,
                                                           cec.GTC, cec.IOC)
    assert (lc.CE_SCOPE_ACCOUNT, lc.CE_SCOPE_BOOK) == (cec.SCOPE_ACCOUNT, cec.SCOPE_BOOK)
    # the CrossEngineCommand a LiqEngine emits is the TradingEngine's CE_COMMAND header
    assert lc.EVENT_STRUCTS[lc.CE_COMMAND].format == tec.EVENT_STRUCTS[tec.CE_COMMAND].format
    cmd = lc.ce_new_order(7, 11, lc.SELL, 650, 20, lc.GTC)
    assert cmd[9:] == cec.new_order(11, cec.SELL, 650, 20, lc.LIQ_ACCOUNT)


def test_output_layouts_as_documented():
    sizes = {lc.CE_COMMAND: "<BIHH", lc.ADL: "<BQIIqq", lc.TAKEOVER: "<BIIIqqq",
             lc.FUND_CHANGED: "<BqqB", lc.ADL_INDICATOR: "<BIIB", lc.REJECTED: "<BHHQ",
             lc.LIQ_POSITION: "<BIqqq"}
    for kind, fmt in sizes.items():
        assert lc.EVENT_STRUCTS[kind].format == fmt
        assert lc.EVENT_STRUCTS[kind].size == struct.calcsize(fmt)
    assert lc.MARK_PRICE_S.format == tec.MARK_PRICE_S.format
    assert lc.MARK_PRICE == tec.MARK_PRICE


def test_walkers_read_variable_events_and_refuse_garbage():
    te = (tec.EVENT_STRUCTS[tec.CE_COMMAND].pack(1, 7, 32, 33) + bytes(33)
          + tec.EVENT_STRUCTS[tec.SESSION_MESSAGE].pack(14, 1, 2, 200) + bytes(112)
          + tec.EVENT_STRUCTS[tec.DEFICIT_COVERED].pack(10, 5, 100))
    assert [k for k, _ in lc.walk_te(te)] == [1, 14, 10]
    with pytest.raises(ValueError):
        lc.walk_te(te[:-1])
    with pytest.raises(ValueError):
        lc.walk_te(b"\x63")
    ce = cec.EVENT_STRUCTS[cec.EV_HALTED].pack(8) + cec.EVENT_STRUCTS[cec.EV_LEVEL].pack(
        7, 1, 5, 6, 1)
    assert [k for k, _ in lc.walk_ce(ce)] == [8, 7]
    with pytest.raises(ValueError):
        lc.walk_ce(ce + b"\x03")
    out = lc.ce_cancel(3, 9, 8) + lc.EVENT_STRUCTS[lc.REJECTED].pack(6, 4001, 99, 0)
    assert lc.decode_events(out) == [(1, 3, 33, 20, lc.CE_CANCEL_S.pack(9, 8, lc.LIQ_ACCOUNT)),
                                     (6, 4001, 99, 0)]
