"""Field checks of a session's NewOrderSingle, OrderCancelRequest and OrderCancelReplaceRequest
against the order they name (PROTOCOL.md §3, §4.12; docs/tradingengine.md §12).

* A cancel or replace whose SecurityID or Side is not the order's is refused as an unknown order
  (OrderCancelReject, CxlRejReason 1, the FIX convention): OrderID the request's (null when it
  named the order by OrigClOrdID), OrdStatus '8', the request's SecurityID; the order is left
  as it was.
* A ClOrdID of 2^64 - 1 (the null of OrigClOrdID: such an order could never be cancelled by it)
  is refused: ExecutionReport '8' OrdRejReason 99 for a NewOrderSingle, OrderCancelReject
  reason 99 for a cancel or replace; the SeqNo is consumed, the id is not recorded as used.
"""
from __future__ import annotations

from tests.unit.test_tradingengine_sessions import (
    E8,
    NOS,
    NULL,
    OCR,
    OCRR,
    Harness,
    ers,
    msgs,
)
from tradingengine import codec as c


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


def test_new_order_with_the_null_clordid_is_rejected_and_consumes_its_seqno():
    h = Harness()
    h.logon(1, 9)
    for seq in (1, 2):       # the null id is not recorded as used: the second is 99 too, not 6
        ev = h.apply(c.CLIENT_MESSAGE, c.client_message(
            1, 9, 100, NOS.pack(seq, 0, NULL, 100 * E8, 5, 1, 0, b"1", b"2", b"1", 0)))
        (er,) = ers(msgs(ev))
        assert er[0] == seq and er[2] == NULL and er[4] == NULL
        assert er[14:16] == (b"8", b"8") and er[19] == 99
        # the engine's own ExecutionReport gives the detailed code
        assert [e[16] for e in ev if e[0] == c.EXEC_REPORT] == [2039]
    assert not h.v.te.orders
    assert h.v.te.sessions[(1, 9)].next_expected == 3
    assert NULL not in h.v.te.sessions[(1, 9)].clordids


def test_cancel_or_replace_with_the_null_clordid_is_refused():
    h = Harness()
    h.logon(1, 9)
    h.nos(1, 9, 1, 60, price=100 * E8, qty=5)
    o = _order(h, 60)
    rej = _cancel_reject(h.send(1, 9, 102, OCRR.pack(2, 0, NULL, 60, NULL, 99 * E8, 8, 1, b"1",
                                                     b"2", b"1", 0)))
    assert rej[2:4] == (NULL, 60) and rej[7:9] == (b"2", 99)
    rej = _cancel_reject(h.send(1, 9, 101, OCR.pack(3, 0, NULL, 60, NULL, 1, b"1", 0)))
    assert rej[2:4] == (NULL, 60) and rej[7:9] == (b"1", 99)
    assert o.order_id in h.v.te.orders and o.client_order_id == 60 and o.qty == 5
    assert h.v.te.sessions[(1, 9)].next_expected == 4
    assert NULL not in h.v.te.sessions[(1, 9)].clordids
