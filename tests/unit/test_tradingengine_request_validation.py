"""Field checks of a session's OrderCancelRequest and OrderCancelReplaceRequest against the
order they name (PROTOCOL.md §3, §4.12; docs/tradingengine.md §12).

* A cancel or replace whose SecurityID or Side is not the order's is refused as an unknown order
  (OrderCancelReject, CxlRejReason 1, the FIX convention): OrderID the request's (null when it
  named the order by OrigClOrdID), OrdStatus '8', the request's SecurityID; the order is left
  as it was.
"""
from __future__ import annotations

from tests.unit.test_tradingengine_sessions import (
    E8,
    NULL,
    OCR,
    OCRR,
    Harness,
    ers,
)


def _order(h, coid):
    return next(o for o in h.v.te.orders.values() if o.client_order_id == coid)


def _cancel_reject(ms):
    """The single OrderCancelReject of ms (and no ExecutionReport)."""
    assert [m[2] for m in ms] == [201], ms
    return ms[0][3]


def test_replace_naming_another_security_or_side_is_refused_as_unknown_order():
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 80, side=b"1", price=100 * E8, qty=5, secid=1)
    o = _order(h, 80)
    before = (o.symbol, o.side, o.price, o.qty, o.client_order_id)
    # by OrigClOrdID, SecurityID 2 (the order is on 1)
    rej = _cancel_reject(h.send(1, 9, 102, OCRR.pack(2, 0, 81, 80, NULL, 99 * E8, 8, 2, b"1",
                                                     b"2", b"1", 0)))
    assert rej[2:6] == (81, 80, NULL, 2) and rej[6:9] == (b"8", b"2", 1)
    # by OrderID, Side '2' (the order buys)
    rej = _cancel_reject(h.send(1, 9, 102, OCRR.pack(3, 0, 82, NULL, o.order_id, 99 * E8, 8, 1,
                                                     b"2", b"2", b"1", 0)))
    assert rej[2:6] == (82, NULL, o.order_id, 1) and rej[6:9] == (b"8", b"2", 1)
    assert (o.symbol, o.side, o.price, o.qty, o.client_order_id) == before
    assert h.v.te.sessions[(1, 9)].next_expected == 4
    # the same replace with the order's SecurityID and Side goes through
    (er,) = ers(h.send(1, 9, 102, OCRR.pack(4, 0, 83, 80, NULL, 99 * E8, 8, 1, b"1", b"2",
                                            b"1", 0)), b"5")
    assert er[2:4] == (83, 80) and o.qty == 8


def test_cancel_naming_another_security_or_side_is_refused_as_unknown_order():
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 70, side=b"2", price=101 * E8, secid=1)
    o = _order(h, 70)
    rej = _cancel_reject(h.send(1, 9, 101, OCR.pack(2, 0, 71, 70, NULL, 2, b"2", 0)))
    assert rej[2:6] == (71, 70, NULL, 2) and rej[6:9] == (b"8", b"1", 1)
    rej = _cancel_reject(h.send(1, 9, 101, OCR.pack(3, 0, 72, NULL, o.order_id, 1, b"1", 0)))
    assert rej[2:6] == (72, NULL, o.order_id, 1) and rej[6:9] == (b"8", b"1", 1)
    assert o.order_id in h.v.te.orders and o.leaves == 5 and not o.pending
    # the cancel with the order's SecurityID and Side goes through
    (er,) = ers(h.send(1, 9, 101, OCR.pack(4, 0, 73, 70, NULL, 1, b"2", 0)), b"4")
    assert er[2:4] == (73, 70) and o.order_id not in h.v.te.orders
