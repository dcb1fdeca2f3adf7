"""Adversarial checks of a finalized session whose cancel-on-disconnect outruns the output
budget (tradingengine/engine.py _finalize): it stays, finalized, until its cancels are out,
and nothing may bring it back meanwhile, not even the end of the 7 days a finalized session id
is remembered."""
from __future__ import annotations

import collections
import random

import pytest

from mq.sources import OPERATOR_SOURCE
from tests.unit.test_tradingengine_sessions import E8, Harness, msgs
from tradingengine import codec as c
from tradingengine.engine import FINALIZED_TTL_NS, TradingEngine
from tradingengine.reference import interpreted

SECOND = 10**9


def check_sessions(te):
    assert te.user_sessions == collections.Counter(u for u, _ in te.sessions)
    for key in te.sessions:
        if key in te.finalized:
            assert key in te.cod            # kept only while its cancels go on


def test_a_finalized_session_still_cancelling_seven_days_on_is_not_resumed():
    """The session's cancels outrun the budget at the finalize and again at the next record,
    7 days later, a Logon: the session id was still finalized (its session is there), so the
    Logon is refused, and the session goes once its cancels are out."""
    h = Harness(shadows=(interpreted(),))
    h.v.deposit(4, 10**12)
    h.logon(1, 9, conn=1, accounts=[1, 3, 4], cod=c.COD_ON_DISCONNECT_OR_LOGOUT, cod_ms=5_000)
    h.nos(1, 9, 1, 300, account=1)
    h.nos(1, 9, 2, 301, account=3)
    h.nos(1, 9, 3, 302, account=4)
    for te in (h.v.te, *h.v.shadows):
        te.output_budget = 0
    h.v.auto = False
    h.apply(c.SESSION_END, c.session_end(1, 9, 1, c.END_FINALIZE))
    te = h.v.te
    assert (1, 9) in te.sessions and (1, 9) in te.finalized
    check_sessions(te)
    ev = h.apply(c.SESSION_LOGON, c.session_logon(1, 9, 2, 1, [1, 3, 4], 0, 0),
                 FINALIZED_TTL_NS + SECOND)
    states = [e for e in ev if e[0] == c.SESSION_STATE]
    assert [s[6] for s in states] == [c.SESSION_FINALIZED], states
    check_sessions(te)
    back = TradingEngine.restore(te.snapshot())
    assert back.state_hash() == te.state_hash()
    for _ in range(3):
        h.apply(c.KIND_TICK, b"", SECOND)
    check_sessions(te)
    assert (1, 9) not in te.sessions and 1 not in te.user_sessions
    assert [o.pending for o in te.orders.values()] == [1, 1, 1]
    h.v.deliver()
    assert not te.orders


def _flow(seed: int, steps: int):
    """A random session flow on a Harness with a low output budget: logons with every
    cancel-on-disconnect mode, orders, cancels, SessionEnds of every reason (and bad ones),
    client messages to finalized sessions, time jumps past the grace and past 7 days, and the
    CrossEngine's answers held back and delivered at random."""
    rng = random.Random(seed)
    h = Harness(shadows=(interpreted(),))
    h.v.deposit(4, 10**12)
    budget = rng.choice([0, 0, 1, 2, None])
    if budget is not None:
        for te in (h.v.te, *h.v.shadows):
            te.output_budget = budget
    users = {1: [1, 3, 4], 2: [2]}
    coid = [500]
    for _ in range(steps):
        te = h.v.te
        user = rng.choice([1, 1, 2])
        sid = rng.choice([9, 10, 11])
        key = (user, sid)
        k = rng.random()
        h.v.auto = rng.random() < 0.5
        if k < 0.2:
            # remembered for 7 days (and while its session is still there, cancelling)
            was_final = key in te.finalized and \
                te.finalized[key] > h.v.ts_ns + 1_000 - FINALIZED_TTL_NS
            accts = users[user]
            mode = rng.choice([c.COD_OFF, c.COD_ON_DISCONNECT_OR_LOGOUT, c.COD_ON_DISCONNECT])
            ev = h.apply(c.SESSION_LOGON, c.session_logon(
                user, sid, rng.randint(1, 3), accts[0], accts, mode, rng.choice([0, 5_000])))
            states = [e[6] for e in ev if e[0] == c.SESSION_STATE and e[1:3] == key]
            if was_final:
                assert states[:1] == [c.SESSION_FINALIZED], states
            if states[:1] != [c.SESSION_FINALIZED]:
                assert key not in te.finalized
        elif k < 0.55:
            sess = te.sessions.get(key)
            seq = sess.next_expected if sess is not None else 1
            coid[0] += 1
            accts = users[user]
            final = key in te.finalized
            ms = h.nos(user, sid, seq, coid[0], side=rng.choice([b"1", b"2"]),
                       price=rng.choice([99, 100, 101]) * E8, qty=rng.randint(1, 5),
                       account=rng.choice(accts))
            if final:
                assert [m for m in ms if (m[0], m[1]) == key] == []
        elif k < 0.7:
            sess = te.sessions.get(key)
            conn = sess.conn_id if sess is not None and rng.random() < 0.8 else 99
            final = key in te.finalized
            ev = h.apply(c.SESSION_END, c.session_end(user, sid, conn,
                                                      rng.choice([0, 1, 2, 2, 3])))
            if final:
                assert msgs(ev, user, sid) == []
        elif k < 0.9:
            h.apply(c.KIND_TICK, b"", rng.choice([1_000, SECOND, 6 * SECOND,
                                                  FINALIZED_TTL_NS + SECOND]))
        else:
            h.v.deliver(rng.randint(1, 4))
        check_sessions(h.v.te)
    h.v.deliver()
    check_sessions(h.v.te)
    return h


def _replay(log, budget_of, cut=None):
    te = TradingEngine(*budget_of[0])
    if budget_of[1] is not None:
        te.output_budget = budget_of[1]
    outs = []
    for k, (seq, ts, kind, payload) in enumerate(log):
        if k == cut:
            te = TradingEngine.restore(te.snapshot())
            if budget_of[1] is not None:
                te.output_budget = budget_of[1]      # configuration (as Venue.set_budget)
        outs.append(te.apply(seq, ts, kind, payload, OPERATOR_SOURCE))
        check_sessions(te)
    return outs, te.state_hash()


@pytest.mark.parametrize("seed", range(12))
def test_random_session_flows_agree_interpreted_and_restored_anywhere(seed):
    """The compiled and interpreted engines give the same bytes at every record (the
    Harness's shadow), user_sessions counts the sessions there are, a finalized session id is
    refused while it is remembered, and a restore at any record continues as the engine
    that was not interrupted."""
    h = _flow(seed, 120)
    log = h.v.log
    budget = h.v.te.output_budget
    from tests.unit.test_tradingengine_sessions import specs
    cfg = ((specs(), 0, 1), budget)
    # the budget is given from the first record here and after the setup records in the
    # flow: the replays are compared with each other only
    want, want_hash = _replay(log, cfg)
    rng = random.Random(seed)
    for cut in sorted(rng.sample(range(1, len(log)), 4)):
        got, got_hash = _replay(log, cfg, cut)
        assert got == want, cut
        assert got_hash == want_hash
