"""Every LiqEngine output record, and the CrossEngine's answer to it, must fit MAX_PAYLOAD
(the CrossEngine answers a whole LiqEngine record with one record). The close-outs a record
sends to the market are bounded: the due ones fire, and IOCs go, while the record's output is
under output_budget // COMMAND_SHARE (the first always goes); the rest go in the next record.

Found by a hunt for records that stop a stream: a firm's 16,000 one-lot longs at 100x,
liquidated by one mark, were handed off within one tick interval; their close-out windows
ended together and one LiqEngine record cancelled 10,000 limits (LIQ's resting limit in the
CrossEngine) and sent 6,000 held close-outs' IOCs: the CrossEngine's answer was 1.14 MB and it
halted (every replica of in.ce.1); with 40,000 the LiqEngine's own record was 1.55 MB.
"""
from __future__ import annotations

from liqengine import codec as c
from liqengine.engine import COMMAND_SHARE, IOC_PHASE, LiqEngine
from liqengine.reference import ReferenceLiqEngine
from liqengine.sim import OPERATOR, LiqVenue, ce_cancelled
from mq.record import MAX_PAYLOAD, decode

WINDOW = 200_000_000


def test_a_cascade_whose_windows_end_together_fits_one_record_in_every_engine():
    from tests.liqcascade import RoutedVenue
    from tests.tradingvenue import spec
    from tradingengine import codec as tc

    n = 16_000
    v = RoutedVenue([spec(max_leverage_x100=10_000)], n_shards=2)
    v.mark(1, 10_000)
    v.fund_deposit(1, 10**15)
    v.deposit(1, 10**15, 1)
    v.leverage(1, 1, 10_000)
    v.order(1, 1, 1, tc.SELL, 10_000, n)
    v.run()
    for a in range(2, n + 2):
        v.deposit(a, 150_000, a)
        v.leverage(a, 1, 10_000)
        v.order(a, 1, 1, tc.BUY, 10_000, 1)
    v.run()
    v.mark(1, 9_800)                  # every long below maintenance, no bid
    v.run()
    while any(st.engine.sweeps for st in v.te):
        v.tick(1_000_000)             # the maintenance sweeps hand them off
    assert len(v.liq.engine.closeouts) == n
    for _ in range(3):
        v.tick(WINDOW)                # their windows end together, then the holds' windows
    worst = max(len(rec[6]) for st in v.streams() for frame in st.out for rec in decode(frame))
    assert worst <= MAX_PAYLOAD // 2, f"{worst} bytes in one record"
    assert all(co.coid == 0 or co.phase == IOC_PHASE
               for co in v.liq.engine.closeouts.values())   # every limit was cancelled


def test_due_close_outs_and_iocs_past_the_command_budget_go_in_the_next_record():
    """output_budget 400: commands go while the output is under 100 bytes. Ten limits whose
    windows end together are cancelled four a record; the CrossEngine's answer to all ten
    sends three IOCs and defers seven, which go first thing in the next records; the naive
    engine in lockstep, and a snapshot taken with IOCs deferred restores the same."""
    v = LiqVenue(shadows=(ReferenceLiqEngine,), output_budget=400)
    assert 400 // COMMAND_SHARE == 100
    v.deposit(1, 10**12)
    v.mark(1, 95)
    for a in range(10):
        v.hand_off(100 + a, 1, 5, 100 - a)
        v.accept(max(v.orders))
    limits = list(v.orders)
    cancels = [len(kinds(v.tick(WINDOW), c.CE_COMMAND))]
    while len(v.cancels) < 10:
        cancels.append(len(kinds(v.tick(1), c.CE_COMMAND)))
    assert cancels == [4, 4, 2]
    answer = [ce_cancelled(v.orders[coid]["order_id"], coid, 5) for coid in limits]
    v.cancels.clear()
    sent = [len(kinds(v.ce(1, *answer), c.CE_COMMAND))]
    deferred = [co for co in v.engine.closeouts.values() if co.phase == IOC_PHASE and not co.coid]
    assert sent == [3] and len(deferred) == 7 and all(co.deadline for co in deferred)
    restored = LiqEngine.restore(v.engine.snapshot())
    restored.output_budget = v.engine.output_budget
    assert restored.state_hash() == v.engine.state_hash()
    out = restored.apply(v.seq + 1, v.ts_ns + 1, c.KIND_TICK, b"", OPERATOR)
    while len(sent) < 4:
        sent.append(len(kinds(v.tick(1), c.CE_COMMAND)))
        if len(sent) == 2:
            assert out == v.outputs[-1] and restored.state_hash() == v.engine.state_hash()
    assert sent == [3, 3, 3, 1]
    assert all(co.coid for co in v.engine.closeouts.values())   # every close-out's IOC out


def kinds(events, kind):
    return [e for e in events if e[0] == kind]
