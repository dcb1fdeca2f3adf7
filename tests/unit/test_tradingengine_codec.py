"""The TradingEngine's codec: layouts of the stated sizes, the CrossEngine layouts it mirrors
identical to crossengine/codec.py (engines never import each other, so a test compares them),
and malformed output payloads refused."""
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossengine import codec as ce
from tradingengine import codec as c


def test_crossengine_layouts_are_mirrored_byte_for_byte():
    assert c.CE_NEW_ORDER_S.format == ce.NEW_ORDER_S.format
    assert c.CE_CANCEL_S.format == ce.CANCEL_S.format
    assert c.CE_AMEND_S.format == ce.AMEND_S.format
    assert c.CE_CANCEL_ALL_S.format == ce.CANCEL_ALL_S.format
    assert (c.CE_NEW_ORDER, c.CE_CANCEL, c.CE_AMEND, c.CE_CANCEL_ALL) == \
        (ce.NEW_ORDER, ce.CANCEL, ce.AMEND, ce.CANCEL_ALL)
    assert {k: s.format for k, s in c.CE_EVENT_STRUCTS.items()} == \
        {k: s.format for k, s in ce.EVENT_STRUCTS.items()}
    assert (c.BUY, c.SELL, c.MARKET, c.LIMIT, c.GTC, c.IOC, c.FOK) == \
        (ce.BUY, ce.SELL, ce.MARKET, ce.LIMIT, ce.GTC, ce.IOC, ce.FOK)
    assert c.FLAG_POST_ONLY == ce.FLAG_POST_ONLY


def test_new_order_matches_an_independent_struct_mirror():
    mirror = struct.Struct("<Q I I q Q q B B B B B B")
    raw = c.new_order(9, 7, 1, c.SELL, 12_345, 10, ord_type=c.LIMIT, tif=c.IOC,
                      flags=c.FLAG_REDUCE_ONLY, trigger_price=12_000,
                      trigger_kind=c.TRIGGER_STOP, trigger_by=c.BY_LAST)
    assert raw == mirror.pack(9, 7, 1, 12_345, 10, 12_000, ord("2"), ord("2"), ord("3"), 1, 1, 2)


def test_reject_codes_are_2xxx_and_unique_names():
    assert all(2000 < k < 3000 for k in c.REJECT_CODES)
    assert len(c.CODES) == len(c.REJECT_CODES)


def test_decode_events_reads_a_command_with_its_bytes():
    cmd = c.CE_CANCEL_S.pack(0, 5, 7)
    payload = c.EVENT_STRUCTS[c.CE_COMMAND].pack(c.CE_COMMAND, 1, c.CE_CANCEL, len(cmd)) + cmd
    assert c.decode_events(payload) == [(c.CE_COMMAND, 1, c.CE_CANCEL, len(cmd), cmd)]
    with pytest.raises(ValueError):
        c.decode_events(payload[:-1])


@given(st.binary(max_size=200))
def test_decode_events_never_crashes_otherwise(data):
    try:
        c.decode_events(data)
    except ValueError:
        pass
