"""Adversarial checks of the per-session ClOrdID index (acct.by_client keyed by (ClOrdID,
session key or None)): at most one open order per key, and a restored engine holds the same
index as the engine it was taken from."""
from __future__ import annotations

import os

import pytest

from tests.unit.test_tradingengine_sessions import E8, NULL, OCR, OCRR, TICK, Harness, ers
from tradingengine import codec as c
from tradingengine.engine import TradingEngine
from tradingengine.reference import interpreted


def index(te):
    return {a: {k: o.order_id for k, o in acct.by_client.items()}
            for a, acct in te.accounts.items() if acct.by_client}


def check_index(te):
    """Every open order is indexed under its (ClOrdID, session), and no two share one."""
    for acct in te.accounts.values():
        keys = [(o.client_order_id, o.sess) for o in acct.orders.values()]
        assert len(keys) == len(set(keys)), sorted(keys, key=repr)
        for o in acct.orders.values():
            assert acct.by_client.get((o.client_order_id, o.sess)) is o
        assert len(acct.by_client) == len(acct.orders)
        pending = {(o.rpl[0], o.sess): o for o in acct.orders.values() if o.rpl is not None}
        assert getattr(acct, "replacing", pending) == pending


def oid_of(h, clordid, sid):
    """The OrderID of the open order that goes by clordid, entered by session (1, sid) (None:
    without a session): another session names it so (PROTOCOL.md §4.3: ClOrdIDs are the
    session's own)."""
    (o,) = [o for acct in h.v.te.accounts.values() for o in acct.orders.values()
            if o.client_order_id == clordid
            and (o.sess[1] if o.sess is not None else None) == sid]
    return o.order_id


def test_a_new_order_racing_another_sessions_replace_to_its_clordid_does_not_share_it():
    """Session T replaces session S's order A to ClOrdID 7; while the replace is at the
    CrossEngine, S enters a new order with ClOrdID 7 (its own, never used). Both cannot go by
    (7, S): the index would keep one of them by the order of events, and a restore (which
    rebuilds the index from the orders) the other, so a later cancel by OrigClOrdID 7 would
    cancel different orders on the engine and on a replica restored from its snapshot."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.v.auto = False
    h.send(1, 10, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 1, 9), 99 * E8, 8, 1, b"1", b"2",
                                 b"1", 0))
    ms = h.nos(1, 9, 2, 7, price=98 * E8)
    assert [er[19] for er in ers(ms, b"8")] == [6]     # the ClOrdID is taken (reason 6)
    h.v.deliver()
    h.v.auto = True
    te = h.v.te
    back = TradingEngine.restore(te.snapshot())
    assert back.state_hash() == te.state_hash()
    assert index(back) == index(te)
    check_index(te)
    check_index(back)


def test_two_sessions_replacing_orders_to_one_clordid_at_once_do_not_share_it():
    """Sessions T and U each replace one of S's orders to ClOrdID 7 while the other replace is
    still at the CrossEngine: at most one of the orders may go by (7, S)."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.logon(1, 11, conn=3)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 9, 2, 2, price=101 * E8)
    h.v.auto = False
    h.send(1, 10, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 1, 9), 99 * E8, 8, 1, b"1", b"2",
                                 b"1", 0))
    (m,) = h.send(1, 11, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 2, 9), 98 * E8, 8, 1, b"1",
                                        b"2", b"1", 0))
    assert m[2] == 201 and m[3][8] == 6                 # OrderCancelReject, duplicate
    h.v.deliver()
    h.v.auto = True
    te = h.v.te
    back = TradingEngine.restore(te.snapshot())
    assert index(back) == index(te)
    check_index(te)


def test_the_key_a_replace_takes_is_free_again_once_it_is_answered_or_the_order_is_gone():
    """A replace refused by the CrossEngine, or an order filled while its replace is in
    flight, frees the ClOrdID it was to take: a new order may use it, on the engine and on a
    restored one."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.logon(2, 20, conn=3)
    h.nos(1, 9, 1, 1, price=100 * E8, qty=5)
    h.nos(1, 9, 2, 2, price=100 * E8, qty=5)
    h.v.auto = False
    h.nos(2, 20, 1, 1, side=b"2", price=100 * E8, qty=5)     # fills order 1 (first in time)
    h.send(1, 10, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 1, 9), 99 * E8, 8, 1, b"1", b"2",
                                 b"1", 0))
    assert h.v.te.accounts[1].replacing                          # 7 is taken meanwhile
    (m,) = h.send(1, 9, 102, OCRR.pack(3, 0, 7, 2, NULL, 98 * E8, 8, 1, b"1", b"2", b"1", 0))
    assert m[2] == 201 and m[3][8] == 6
    check_index(h.v.te)
    back = TradingEngine.restore(h.v.te.snapshot())
    check_index(back)
    assert index(back) == index(h.v.te)
    h.v.deliver()
    h.v.auto = True
    te = h.v.te
    check_index(te)
    assert not te.accounts[1].replacing
    h.logon(1, 11, conn=4)
    ms = h.send(1, 11, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 2, 9), 97 * E8, 8, 1, b"1",
                                      b"2", b"1", 0))
    assert [er[2:4] for er in ers(ms, b"5")] == [(7, 2)] * 2    # to session 11 and to S
    assert te.accounts[1].by_client[7, (1, 9)].price * TICK == 97 * E8
    check_index(te)
    assert index(TradingEngine.restore(te.snapshot())) == index(te)


def test_a_raw_new_order_racing_a_sessions_replace_of_a_raw_order_to_its_clordid():
    """An order entered without a session goes by (ClOrdID, None); a session's replace of it
    to ClOrdID 7 takes (7, None) at once, so a raw NewOrder with ClOrdID 7 meanwhile is refused
    (client_order_id in use), and the raw Cancel by 7 after the answer finds the replaced
    order, on the engine and on a restored one."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 10, conn=2)
    h.v.order(5, 1, c.BUY, 100 * E8 // TICK, 5)
    h.v.auto = False
    h.send(1, 10, 102, OCRR.pack(1, 0, 7, NULL, oid_of(h, 5, None), 99 * E8, 8, 1, b"1", b"2",
                                 b"1", 0))
    ev = h.v.order(7, 1, c.BUY, 98 * E8 // TICK, 5)
    rej = [e for e in ev if e[0] == c.EXEC_REPORT]
    assert len(rej) == 1 and rej[0][16] == 2015 and len(h.v.te.orders) == 1, ev
    h.v.deliver()
    h.v.auto = True
    te = h.v.te
    check_index(te)
    back = TradingEngine.restore(te.snapshot())
    assert index(back) == index(te) == {1: {(7, None): next(iter(te.orders))}}
    h.v.apply(c.CANCEL, c.cancel(8, 7, 1))
    assert not te.orders


def _flow(seed: int, steps: int) -> None:
    """Three sessions of user 1 on accounts 1 and 3 and raw commands, all drawing ClOrdIDs
    from one small range: new orders, cancels and replaces by OrigClOrdID (own, another
    session's, unknown), raw cancels and amends, counter orders that fill, the CrossEngine's
    answers held back and delivered at random. After every step no two open orders share a
    key, and a restore holds the same index (and replacing keys)."""
    import random
    rng = random.Random(seed)
    h = Harness(shadows=(interpreted(),))
    sids = (9, 10, 11)
    for k, sid in enumerate(sids):
        h.logon(1, sid, conn=k + 1, accounts=[1, 3])
    h.logon(2, 20, conn=9)
    seqs = dict.fromkeys([*sids, 20], 1)
    used: dict[int, set] = {sid: set() for sid in sids}

    def fresh(sid):
        """A ClOrdID this session has not used (sessions reuse each other's)."""
        k = rng.choice([n for n in range(1, 200) if n not in used[sid]][:12])
        used[sid].add(k)
        return k

    def clid():
        """Mostly the ClOrdID of an open order (of any session, or raw)."""
        live = [o.client_order_id for o in h.v.te.orders.values()]
        return rng.choice(live) if live and rng.random() < 0.85 else rng.randint(1, 20)

    px = lambda: rng.choice([99, 100, 101]) * E8      # noqa: E731

    def send(user, sid, template, block):
        seqs[sid] += 1
        return h.send(user, sid, template, block)

    for step in range(steps):
        h.v.auto = rng.random() < 0.4
        k = rng.random()
        sid = rng.choice(sids)
        if k < 0.3:
            seq = seqs[sid]
            seqs[sid] += 1
            h.nos(1, sid, seq, fresh(sid), price=px(), qty=rng.randint(1, 5), account=rng.choice([1, 3]))
        elif k < 0.45:
            send(1, sid, 101, OCR.pack(seqs[sid], 0, fresh(sid), clid(), NULL, 1, b"1", 0))
        elif k < 0.65:
            send(1, sid, 102, OCRR.pack(seqs[sid], 0, fresh(sid), clid(), NULL, px(),
                                        rng.randint(1, 9), 1, b"1", b"2", b"1", 0))
        elif k < 0.72:
            h.v.order(rng.randint(1, 20), rng.choice([1, 3]), c.BUY, px() // TICK, rng.randint(1, 5))
        elif k < 0.78:
            h.v.apply(c.CANCEL, c.cancel(rng.randint(10, 99), clid(), rng.choice([1, 3])))
        elif k < 0.84:
            h.v.apply(c.AMEND, c.amend(rng.randint(10, 99), clid(), rng.choice([1, 3]),
                                       px() // TICK, rng.randint(1, 9)))
        elif k < 0.9:
            seq = seqs[20]
            seqs[20] += 1
            h.nos(2, 20, seq, rng.randint(1, 10**9), side=b"2", price=px(),
                  qty=rng.randint(1, 8), account=2, tif=b"3")
        else:
            h.v.deliver(rng.randint(1, 5))
        te = h.v.te
        check_index(te)
        if step % 10 == 0:
            back = TradingEngine.restore(te.snapshot())
            assert back.state_hash() == te.state_hash()
            assert index(back) == index(te)
            check_index(back)
    h.v.deliver()
    check_index(h.v.te)


@pytest.mark.parametrize("seed", range(20 if os.environ.get("SEQEX_SLOW") != "1" else 400))
def test_random_flows_keep_one_open_order_per_key_and_restore_the_same_index(seed):
    _flow(seed, 150)


def _open(te, clordid, sid):
    """The open orders that go by clordid, entered by session (1, sid)."""
    return [o for acct in te.accounts.values() for o in acct.orders.values()
            if o.client_order_id == clordid and o.sess is not None and o.sess[1] == sid]


def test_a_cancel_right_behind_the_sessions_own_replace_cancels_its_own_order():
    """Session 9 replaces its order 1 to ClOrdID 5 and, before the replace is answered, cancels
    OrigClOrdID 5. Session 10 of the same user has an open order of its own that goes by 5.
    The cancel named session 9's order (the replace in flight took 5 at once); it cancelled
    session 10's order instead (an adversarial client written from PROTOCOL.md found it)."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 10, 1, 5, price=90 * E8)
    h.v.auto = False
    h.send(1, 9, 102, OCRR.pack(2, 0, 5, 1, NULL, 99 * E8, 8, 1, b"1", b"2", b"1", 0))
    h.send(1, 9, 101, OCR.pack(3, 0, 6, 5, NULL, 1, b"1", 0))
    (m,) = h.send(1, 9, 102, OCRR.pack(4, 0, 7, 5, NULL, 98 * E8, 8, 1, b"1", b"2", b"1", 0))
    assert m[2] == 201 and m[3][7:9] == (b"2", 3)          # replace of it: already pending
    h.v.deliver()
    h.v.auto = True
    te = h.v.te
    assert len(_open(te, 5, 10)) == 1, "session 10's order was cancelled"
    assert _open(te, 5, 9) == [] and _open(te, 1, 9) == []
    check_index(te)


def test_a_cancel_of_the_sessions_finished_order_is_too_late_not_another_sessions():
    """Session 9's order 1 is cancelled; session 10 has an open order 1 of its own. Session 9
    cancelling OrigClOrdID 1 again is too late (reason 0); it cancelled session 10's order."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 10, 1, 1, price=90 * E8)
    (er,) = ers(h.send(1, 9, 101, OCR.pack(2, 0, 2, 1, NULL, 1, b"1", 0)), b"4")
    assert er[2:4] == (2, 1)
    (m,) = h.send(1, 9, 101, OCR.pack(3, 0, 3, 1, NULL, 1, b"1", 0))
    assert m[2] == 201 and m[3][6:9] == (b"4", b"1", 0)
    assert len(_open(h.v.te, 1, 10)) == 1
    # an id session 11 never used names none of its orders: unknown (reason 1), never another
    # session's order that goes by it; by its OrderID session 11 cancels it
    h.logon(1, 11, conn=3)
    assert _rej(h.send(1, 11, 101, OCR.pack(1, 0, 9, 1, NULL, 1, b"1", 0)), 11) == (b"1", 1)
    assert len(_open(h.v.te, 1, 10)) == 1
    ms = h.send(1, 11, 101, OCR.pack(2, 0, 10, NULL, oid_of(h, 1, 10), 1, b"1", 0))
    (er,) = ers([m for m in ms if m[1] == 11], b"4")
    assert er[2:4] == (10, 1) and _open(h.v.te, 1, 10) == []


def test_orderid_and_origclordid_naming_two_orders_name_none():
    """FIX: both given must name one order. The OrderID won, silently."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 9, 2, 2, price=99 * E8)
    te = h.v.te
    oid2 = _open(te, 2, 9)[0].order_id
    (m,) = h.send(1, 9, 101, OCR.pack(3, 0, 3, 1, oid2, 1, b"1", 0))
    assert m[2] == 201 and m[3][8] == 1                     # unknown order
    (m,) = h.send(1, 9, 102, OCRR.pack(4, 0, 4, 1, oid2, 98 * E8, 8, 1, b"1", b"2", b"1", 0))
    assert m[2] == 201 and m[3][7:9] == (b"2", 1)
    assert len(_open(te, 1, 9)) == 1 and len(_open(te, 2, 9)) == 1
    (er,) = ers(h.send(1, 9, 101, OCR.pack(5, 0, 5, 2, oid2, 1, b"1", 0)), b"4")   # agree
    assert er[2:5] == (5, 2, oid2)


def test_a_replace_asking_post_only_of_an_order_entered_without_it_is_refused():
    """Template 102's Flags bit1 (PostOnly): the CrossEngine keeps the PostOnly an order was
    entered with, so a replace cannot add it; it was ignored, and a replace meant to rest
    crossed and took. Refused now (OrderCancelReject 99); restating PostOnly on a post-only
    order is a plain replace."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 9, 2, 2, price=90 * E8, flags=2)
    (m,) = h.send(1, 9, 102, OCRR.pack(3, 0, 3, 1, NULL, 99 * E8, 5, 1, b"1", b"2", b"1", 2))
    assert m[2] == 201 and m[3][7:9] == (b"2", 99)
    assert len(_open(h.v.te, 1, 9)) == 1 and _open(h.v.te, 1, 9)[0].price == 100 * E8 // TICK
    ms = h.send(1, 9, 102, OCRR.pack(4, 0, 4, 2, NULL, 91 * E8, 5, 1, b"1", b"2", b"1", 2))
    (er,) = ers(ms, b"5")
    assert er[2:4] == (4, 2)


def _cxl(h, sid, seq, coid, orig, oid=NULL, user=1):
    return h.send(user, sid, 101, OCR.pack(seq, 0, coid, orig, oid, 1, b"1", 0))


def _rpl(h, sid, seq, coid, orig, price, oid=NULL, user=1, qty=5):
    """A replace to ``price``, the quantity kept (the orders here are entered at 5)."""
    return h.send(user, sid, 102, OCRR.pack(seq, 0, coid, orig, oid, price, qty, 1, b"1",
                                            b"2", b"1", 0))


def _rej(ms, sid):
    """The OrderCancelReject to session sid: (CxlRejResponseTo, reason)."""
    (m,) = [m for m in ms if m[1] == sid and m[2] == 201]
    return m[3][7:9]


def test_the_clordid_another_sessions_replace_gave_the_order_is_the_orders_sessions():
    """Session 11 replaces session 9's order 1 to ClOrdID 7; it fills. Session 9 cancelling 7
    (its order, racing the fill) is too late; it cancelled session 10's own open order 7,
    because session 9 had never sent 7 itself (a reviewer found it)."""
    h = Harness(shadows=(interpreted(),))
    for sid, conn in ((9, 1), (10, 2), (11, 3)):
        h.logon(1, sid, conn=conn)
    h.logon(2, 20, conn=4)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 10, 1, 7, price=90 * E8)
    ers(_rpl(h, 11, 1, 7, NULL, 101 * E8, oid=oid_of(h, 1, 9)), b"5")
    h.nos(2, 20, 1, 1, side=b"2", price=101 * E8, account=2)
    assert _open(h.v.te, 7, 9) == []                        # filled
    assert _rej(_cxl(h, 9, 2, 2, 7), 9) == (b"1", 0)        # too late
    assert len(_open(h.v.te, 7, 10)) == 1
    check_index(h.v.te)


def test_a_replace_cannot_give_an_order_a_clordid_of_another_open_order_of_its_session():
    """ClOrdIDs are the session's: session 10 replacing session 9's order to an id an open
    order of session 9 goes by on another account is a duplicate (reason 6), and session 9
    cannot then enter a new order with the id another session's replace gave one of its
    orders. Either gave session 9 two open orders that went by one ClOrdID, on two accounts."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1, accounts=[1, 3])
    h.logon(1, 10, conn=2, accounts=[1, 3])
    h.nos(1, 9, 1, 1, price=100 * E8, account=1)
    h.nos(1, 9, 2, 5, price=99 * E8, account=3)
    a = _open(h.v.te, 1, 9)[0].order_id
    assert _rej(_rpl(h, 10, 1, 5, NULL, 98 * E8, oid=a), 10) == (b"2", 6)
    ers(_rpl(h, 10, 2, 7, NULL, 98 * E8, oid=a), b"5")
    (er,) = ers([m for m in h.nos(1, 9, 3, 7, price=97 * E8, account=3) if m[1] == 9], b"8")
    assert er[19] == 6
    te = h.v.te
    keys = [(o.client_order_id, o.sess) for x in te.accounts.values() for o in x.orders.values()]
    assert len(keys) == len(set(keys)) == 2
    check_index(te)


def test_an_orderid_of_a_finished_order_with_another_orders_clordid_names_none():
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9)
    h.nos(1, 9, 1, 1, price=100 * E8)
    h.nos(1, 9, 2, 2, price=99 * E8)
    x = _open(h.v.te, 1, 9)[0].order_id
    ers(_cxl(h, 9, 3, 3, 1), b"4")
    assert _rej(_cxl(h, 9, 4, 4, 2, oid=x), 9) == (b"1", 1)     # unknown, not too late
    assert _rej(_cxl(h, 9, 5, 5, 1, oid=x), 9) == (b"1", 0)     # agree: too late
    assert len(_open(h.v.te, 2, 9)) == 1


def test_another_sessions_order_is_never_named_by_its_clordid():
    """Sessions of one user number their ClOrdIDs alike (the SDK starts each at 1): a cancel or
    replace by a ClOrdID that names none of the session's own orders is unknown (reason 1),
    whatever other sessions' orders go by it. It took the oldest of them: a session whose own
    order 4 had been refused cancelled a sibling strategy's order 4 (an overload round found
    6 of 3,680 requests answered so, under shedding)."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1, accounts=[1, 3])
    h.logon(1, 10, conn=2, accounts=[1, 3])
    h.logon(1, 11, conn=3, accounts=[1, 3])
    h.nos(1, 9, 1, 4, price=100 * E8, account=3)
    h.nos(1, 10, 1, 4, price=99 * E8, account=1)
    assert _rej(_cxl(h, 11, 1, 1, 4), 11) == (b"1", 1)
    assert _rej(_rpl(h, 11, 2, 2, 4, 98 * E8), 11) == (b"2", 1)
    assert len(_open(h.v.te, 4, 9)) == len(_open(h.v.te, 4, 10)) == 1


def test_an_order_another_sessions_replace_renamed_goes_by_its_own_sessions_clordid():
    """Session 10 replaces session 9's order (by OrderID) to ClOrdID 7: the order goes by 7 of
    session 9, its own. Session 10 names it by its OrderID (by 7: unknown), session 9 by 7."""
    h = Harness(shadows=(interpreted(),))
    h.logon(1, 9, conn=1)
    h.logon(1, 10, conn=2)
    h.nos(1, 9, 1, 1, price=100 * E8)
    a = _open(h.v.te, 1, 9)[0].order_id
    ers(_rpl(h, 10, 1, 7, NULL, 99 * E8, oid=a), b"5")
    assert _rej(_cxl(h, 10, 2, 8, 7), 10) == (b"1", 1)
    (er,) = ers([m for m in _cxl(h, 10, 3, 9, NULL, oid=a) if m[1] == 10], b"4")
    assert er[2:5] == (9, 7, a) and not h.v.te.orders
