"""Round twelve of the economic campaign: a restarted maintenance sweep now goes ahead of the symbol's trigger
sweeps. Under a low output budget (the stateful tests run the engine at 0 and 400 bytes, so
that every sweep defers) and a mark in every record, the restarted maintenance sweep takes
each record's first unit, and the trigger sweeps behind it never get one: a stop the mark
reached never fires, and the sweep queue grows by a trigger sweep per mark (§11 says the
first unit of a record always runs, so every sweep ends). Before, the restart went to the back
of the queue and the stop fired at the second mark."""
from __future__ import annotations

from tests.liqcascade import audited_venue
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import UNTRIGGERED

MM, HOLDER, TRADER = 2, 1, 3


def test_a_stop_the_mark_reached_fires_though_a_mark_comes_every_record():
    v = audited_venue(two_specs(HOUR), 10**11)
    v.deposit(MM, 10**15, 2)
    v.deposit(HOLDER, 10**11, 3)
    v.deposit(TRADER, 10**11, 4)
    v.mark(1, 10_000)
    v.run()
    v.order(MM, 1, 1, tc.SELL, 10_000, 200)
    v.order(HOLDER, 2, 1, tc.BUY, 10_000, 100)
    v.order(TRADER, 3, 1, tc.BUY, 10_000, 100)
    v.run()
    v.order(TRADER, 4, 1, tc.SELL, 0, 100, ord_type=tc.MARKET, tif=tc.IOC,
            flags=tc.FLAG_REDUCE_ONLY, trigger_price=9_950, trigger_kind=tc.TRIGGER_STOP)
    v.order(MM, 5, 1, tc.BUY, 9_850, 1000)
    v.run()
    te = v.te[1].engine
    stop = next(o for o in te.accounts[TRADER].orders.values() if o.client_order_id == 4)
    assert stop.state == UNTRIGGERED
    te.output_budget = 0
    for _ in range(50):
        v.mark(1, 9_900)
        v.run()
    assert len(te.sweeps) < 10, f"{len(te.sweeps)} sweeps queued"
    assert te.accounts[TRADER].positions[1].size == 0, \
        f"the stop never fired: {stop.state}, long {te.accounts[TRADER].positions[1].size}"
