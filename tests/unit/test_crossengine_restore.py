"""CrossEngine.restore refuses every snapshot that breaks an invariant of the book, and says
which, in the one pass that builds the engine (no second walk over it).

How: a small book (both sides, several levels and accounts, one level of two orders) is
snapshotted; each test rewrites the orders of that snapshot to break one rule (the side, the
quantities, the id space, stp and flags, the levels' canonical order, the price range and
tick, uniqueness of order ids and of an account's client order ids, a crossed book, the order
count) and expects ValueError naming it. The untouched snapshot restores to the same bytes,
and passes check_invariants() (restore's check=True), so the refusals are not of everything.
"""
import struct

import pytest

from crossengine import codec as c
from crossengine.engine import CrossEngine

ORDER = struct.Struct("<QQIBqQQBB")   # one order of a snapshot (47 bytes)
ID = 1 << 40                          # order ids of symbol 1 are 1 << 40 | n


def book() -> CrossEngine:
    eng = CrossEngine(tick_size=5, max_qty=1000, max_price=100_000, max_orders=100)
    for cl, side, price, qty, acct in [(1, c.BUY, 100, 5, 1), (2, c.BUY, 100, 3, 2),
                                       (3, c.BUY, 95, 7, 1), (4, c.SELL, 110, 4, 3),
                                       (5, c.SELL, 120, 6, 2), (6, c.SELL, 125, 2, 1)]:
        eng.apply(0, 0, c.NEW_ORDER, c.new_order(cl, side, price, qty, acct))
    return eng


def split(snap: bytes) -> tuple[bytes, list[list]]:
    n = c.SNAP_HEADER_V3.unpack_from(snap)[13]
    head = len(snap) - n * ORDER.size
    return snap[:head], [list(ORDER.unpack_from(snap, head + k * ORDER.size)) for k in range(n)]


def join(head: bytes, orders: list[list]) -> bytes:
    return head + b"".join(ORDER.pack(*o) for o in orders)


def edited(edit) -> bytes:
    head, orders = split(book().snapshot())
    edit(orders)
    return join(head, orders)


# fields of an order: 0 id, 1 client id, 2 account, 3 side, 4 price, 5 leaves, 6 filled,
# 7 flags, 8 stp. Snapshot order: bids 100 (orders 0, 1), 95 (2); asks 110 (3), 120, 125.
def test_the_untouched_snapshot_restores_to_the_same_bytes_and_passes_the_second_walk():
    snap = book().snapshot()
    assert [o[4] for o in split(snap)[1]] == [100, 100, 95, 110, 120, 125]
    assert CrossEngine.restore(snap).snapshot() == snap
    assert CrossEngine.restore(snap, check=True).snapshot() == snap


def test_the_same_client_order_id_in_two_accounts_is_fine():
    snap = edited(lambda o: o[1].__setitem__(1, 1))    # account 2 also uses client id 1
    assert CrossEngine.restore(snap, check=True).snapshot() == snap


def _set(k: int, field: int, value):
    return lambda orders: orders[k].__setitem__(field, value)


def _move(src: int, dst: int):
    return lambda orders: orders.insert(dst, orders.pop(src))


@pytest.mark.parametrize("edit, reason", [
    (_set(2, 3, ord("3")), "has no side"),
    (_set(1, 5, 0), "lots open"),
    (_set(1, 5, 1001), "lots open"),
    (_set(1, 6, 998), "lots open"),                      # 3 open + 998 filled > max_qty
    (_set(1, 0, 7), "not one this symbol issued"),       # another symbol's id space
    (_set(1, 0, ID), "not one this symbol issued"),      # counter part 0
    (_set(1, 0, ID | 7), "not one this symbol issued"),  # not issued yet (counter 6)
    (_set(3, 8, 5), "stp"),
    (_set(3, 7, 4), "flags"),
    (_move(2, 0), "out of order"),                       # bid 95 before bid 100
    (_move(5, 3), "out of order"),                       # ask 125 before ask 110
    (_move(3, 0), "out of order"),                       # a sell before the buys
    (_move(1, 2), "out of order"),                       # bid 100 twice, 95 between
    (_set(2, 4, 96), "off the tick"),
    (_set(5, 4, 100_005), "out of range"),
    (_set(2, 0, ID | 1), "twice"),                       # two orders with one id
    (_set(2, 1, 1), "client order id 1 twice"),          # account 1: client id 1 twice
    (lambda o: [o[k].__setitem__(4, 115) for k in (0, 1)], "crossed"),
], ids=["side", "leaves-0", "leaves-over-max", "filled-over-max", "id-other-symbol",
        "id-counter-0", "id-not-issued", "stp", "flags", "bids-misordered", "asks-misordered",
        "sell-before-buys", "level-twice", "off-tick", "price-range", "order-id-twice",
        "client-id-twice", "crossed"])
def test_a_snapshot_that_breaks_an_invariant_is_refused_with_the_reason(edit, reason):
    with pytest.raises(ValueError, match=reason):
        CrossEngine.restore(edited(edit))


def test_more_orders_than_max_orders_is_refused():
    head, orders = split(book().snapshot())
    fields = list(c.SNAP_HEADER_V3.unpack_from(head))
    fields[7] = 5                                        # max_orders below the 6 orders
    snap = c.SNAP_HEADER_V3.pack(*fields) + head[c.SNAP_HEADER_V3.size:]
    with pytest.raises(ValueError, match="more than max_orders"):
        CrossEngine.restore(join(snap, orders))


def test_a_refused_snapshot_leaves_no_engine_behind_and_a_good_one_still_restores():
    """The failure is an exception out of restore, never a half-built engine in use."""
    good = book().snapshot()
    for _ in range(3):
        with pytest.raises(ValueError):
            CrossEngine.restore(edited(_set(2, 0, ID | 1)))
        assert CrossEngine.restore(good).snapshot() == good


# -- found by tests/property/test_crossengine_restore_fuzz.py -----------------------------------

def _header(snap: bytes, **changes) -> bytes:
    """snap with header fields (by index, as f7=5) changed."""
    fields = list(c.SNAP_HEADER_V3.unpack_from(snap))
    for key, value in changes.items():
        fields[int(key[1:])] = value
    return c.SNAP_HEADER_V3.pack(*fields) + snap[c.SNAP_HEADER_V3.size:]


def test_an_account_over_max_account_orders_is_refused():
    """Account 1 rests 3 orders. check_invariants() compared each account's count with its
    list but not with the bound, and restore accepted the book: an account over it could make
    a CancelAll list more levels than one output record holds (codec.worst_case_sizes)."""
    snap = book().snapshot()
    with pytest.raises(ValueError, match="account 1 rests more than max_account_orders"):
        CrossEngine.restore(_header(snap, f9=2))
    with pytest.raises(ValueError, match="account 1 rests more than max_account_orders"):
        CrossEngine.restore(_header(snap, f9=2), check=True)
    at_bound = _header(snap, f9=3)
    assert CrossEngine.restore(at_bound, check=True).snapshot() == at_bound


def test_a_halted_byte_other_than_0_or_1_is_refused():
    """halted 2 restored to a halted engine whose snapshot says 1: bytes that were not a
    snapshot() (the format is canonical, state_hash its SHA-256)."""
    snap = book().snapshot()
    with pytest.raises(ValueError, match="not canonical"):
        CrossEngine.restore(_header(snap, f12=2))
    assert CrossEngine.restore(_header(snap, f12=1)).snapshot() == _header(snap, f12=1)


def test_version_4_without_liq_sources_is_refused():
    """snapshot() writes version 4 only with liq_sources; one with none restored to an engine
    that writes version 3."""
    snap = book().snapshot()
    fields = list(c.SNAP_HEADER_V3.unpack_from(snap))
    v4 = c.SNAP_HEADER_V4.pack(fields[0], 4, *fields[2:], 0) + snap[c.SNAP_HEADER_V3.size:]
    with pytest.raises(ValueError, match="not canonical"):
        CrossEngine.restore(v4)


def test_a_version_1_header_counting_past_its_bytes_is_refused_without_walking_the_count():
    """Flipping bit 1 of a version 3 snapshot's version makes it version 1, whose order count
    is read from the version 3 trade id and halted bytes: for a halted engine about 2**56.
    codec.upgrade_snapshot counted the accounts over that many (empty) orders before anything
    checked the length: restore never returned."""
    eng = book()
    eng.apply(0, 0, c.HALT, b"")
    flipped = bytearray(eng.snapshot())
    flipped[4] ^= 2
    assert c.SNAP_HEADER_V1.unpack_from(flipped)[11] >= 1 << 56
    with pytest.raises(ValueError, match="wrong length"):
        CrossEngine.restore(bytes(flipped))
    v1 = c.SNAP_HEADER_V1.pack(b"SQCE", 1, 1, 1, 1, 1000, 1 << 20, 100, 0, 0, 0, (1 << 64) - 1)
    with pytest.raises(ValueError, match="wrong length"):
        c.upgrade_snapshot(v1)


@pytest.mark.parametrize("trade_id", [2**63, 2**64 - 1])
def test_a_trade_id_past_the_trade_id_space_is_refused(trade_id):
    """At 2**64 - 1 the next trade's id would wrap (the checked build raised OverflowError in
    the first match after the restore); a live engine never comes near 2**63."""
    snap = book().snapshot()
    with pytest.raises(ValueError, match="trade id"):
        CrossEngine.restore(_header(snap, f11=trade_id))


def test_the_last_trade_id_below_2_63_restores_and_trades():
    snap = book().snapshot()
    eng = CrossEngine.restore(_header(snap, f11=2**63 - 1), check=True)
    out = c.decode_events(eng.apply(0, 0, c.NEW_ORDER, c.new_order(9, c.BUY, 110, 1, 7)))
    assert [e for e in out if e[0] == c.EV_TRADE][0][1] == 2**63
