"""Round twelve of the economic campaign: the ReferenceEngine (tradingengine/reference.py, the naive engine
that tests/stateful hold the TradingEngine to byte for byte) recomputes each side's leaves
from ``o.leaves`` alone (``_sums``), without the growth of an amend in flight (amend_grow)
that round eleven made part of them: it still reserves what the engine was fixed not to, its
state hash leaves the engine's, and its own check_invariants halts ("leaves drifted")."""
from __future__ import annotations

from tests.tradingvenue import HOUR, Venue, two_specs
from tradingengine import codec as c
from tradingengine.reference import ReferenceEngine

MM, TRADER = 2, 4


def test_the_reference_engine_counts_an_amends_growth_in_the_leaves():
    v = Venue(two_specs(HOUR), auto=False, shadows=(ReferenceEngine,))
    ref = v.shadows[0]
    v.deposit(MM, 10**13)
    v.deposit(TRADER, 10**11)
    v.mark(1, 10_000)
    v.order(1, MM, c.SELL, 10_000, 100)
    v.deliver()
    v.order(2, TRADER, c.BUY, 10_000, 100)
    v.deliver()
    v.order(3, TRADER, c.SELL, 10_100, 1)
    v.deliver()
    # the 1-lot close grows to 100 by amend; before the answer, a second close of 100
    v.apply(c.AMEND, c.amend(4, 3, TRADER, 0, 100))
    v.order(5, TRADER, c.SELL, 10_100, 100)
    mine = {o.client_order_id: o.margin for o in v.te.accounts[TRADER].orders.values()}
    theirs = {o.client_order_id: o.margin for o in ref.accounts[TRADER].orders.values()}
    assert theirs == mine, f"engine reserves {mine}, the reference {theirs}"
    ref.check_invariants()
    assert ref.state_hash() == v.te.state_hash()
