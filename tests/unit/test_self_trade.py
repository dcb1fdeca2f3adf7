"""Self-trade prevention ([trading] self_trade, docs/tradingengine.md §4): every order a shard
sends carries the venue's STP mode, and the CrossEngine applies it when an order meets a
resting order of its own account. Driven through both TradingEngine shards, the CrossEngines
and the LiqEngine (tests/liqcascade.py), every engine's audit and money conservation checked
after every record."""
from __future__ import annotations

import pytest

from deploy import topology
from tests.liqcascade import RoutedVenue, check_books
from tests.liqcascade import te_events as events
from tests.tradingvenue import HOUR, two_specs
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine

TRADER, OTHER = 11, 13      # both on shard 1


def venue(mode: int) -> RoutedVenue:
    v = RoutedVenue(two_specs(HOUR), n_shards=2, on_record=check_books, self_trade=mode)
    v.fund_deposit(1, 10**11)
    for account, tid in ((TRADER, 2), (OTHER, 3)):
        v.deposit(account, 10**13, tid)
    v.mark(1, 10_000)
    v.run()
    return v


def reports(v: RoutedVenue, account: int) -> list[tuple]:
    """(ClOrdID, exec type, reason or code, last qty) of the account's execution reports."""
    return [(e[5], chr(e[1]), e[16], e[12]) for e in events(v.te[account % 2], (tc.EXEC_REPORT,))
            if e[3] == account]


def position(v: RoutedVenue, account: int) -> int:
    return v.te[account % 2].engine.accounts[account].positions[1].size


def test_allow_lets_an_account_trade_with_itself():
    v = venue(0)
    v.order(TRADER, 1, 1, tc.SELL, 10_000, 5)
    v.order(TRADER, 2, 1, tc.BUY, 10_000, 5)
    v.run()
    assert (2, "F", 0, 5) in reports(v, TRADER)
    assert position(v, TRADER) == 0


@pytest.mark.parametrize("mode, taker_left, maker_left", [
    (1, False, True),    # cancel newest: the incoming order's rest is cancelled
    (2, True, False),    # cancel oldest: the resting order is cancelled, the taker goes on
    (3, False, False),   # cancel both
])
def test_an_order_meeting_its_own_resting_order(mode, taker_left, maker_left):
    """The trader's own ask rests at the best price, another account's behind it. The
    trader's bid meets its own ask first: no trade between them, whatever the mode; the
    cancelled order gets ExecutionReport '4' with reason 4 (self-trade prevention). Only in
    cancel oldest does the bid go on to trade with the other account's ask."""
    v = venue(mode)
    v.order(TRADER, 1, 1, tc.SELL, 10_000, 5)
    v.order(OTHER, 1, 1, tc.SELL, 10_001, 5)
    v.run()
    v.order(TRADER, 2, 1, tc.BUY, 10_001, 5)
    v.run()
    mine = reports(v, TRADER)
    assert not any(coid == 1 and x == "F" for coid, x, _r, _q in mine), mine
    assert ((1, "4", tc.REASON_SELF_TRADE, 0) in mine) is not maker_left, mine
    if taker_left:
        assert (2, "F", 0, 5) in mine and position(v, TRADER) == 5
        assert (1, "F", 0, 5) in reports(v, OTHER)
    else:
        assert (2, "4", tc.REASON_SELF_TRADE, 0) in mine and position(v, TRADER) == 0
        assert not any(x == "F" for _c, x, _r, _q in reports(v, OTHER))
    te = v.te[1].engine
    held = {o.client_order_id for o in te.accounts[TRADER].orders.values()}
    assert held == ({1} if maker_left else set()), held
    assert te.accounts[TRADER].order_margin == (
        sum(o.margin for o in te.accounts[TRADER].orders.values()))


def test_the_mode_survives_a_snapshot_and_allow_keeps_the_snapshot_as_before():
    specs = two_specs(HOUR)
    for mode in (1, 2, 3):
        te = TradingEngine(specs, 1, 2, self_trade=mode)
        assert TradingEngine.restore(te.snapshot()).stp == mode
    plain, allow = TradingEngine(specs, 1, 2), TradingEngine(specs, 1, 2, self_trade=0)
    assert plain.snapshot() == allow.snapshot()
    assert TradingEngine.restore(plain.snapshot()).stp == 0
    with pytest.raises(ValueError, match="self_trade must be one of"):
        TradingEngine(specs, 1, 2, self_trade=4)


def _te_configs(topo) -> list[dict]:
    import json
    return [json.loads(p.args[p.args.index("--engine-config") + 1]) for p in topo.procs
            if "--engine" in p.args and p.args[p.args.index("--engine") + 1] == "tradingengine"]


def test_the_topology_names_the_modes(tmp_path):
    """[trading] self_trade reaches every TradingEngine replica's configuration ("allow", the
    default, adds nothing to it); a name it does not know is one clear error."""
    conf = tmp_path / "t.toml"
    default = topology.DEFAULT
    assert 'self_trade = "allow"' in default
    conf.write_text(default.replace('self_trade = "allow"', 'self_trade = "cancel_oldest"'))
    configs = _te_configs(topology.load(str(conf), str(tmp_path / "a"), 22000))
    assert len(configs) == 6 and all(c["self_trade"] == 2 for c in configs)
    assert all("self_trade" not in c
               for c in _te_configs(topology.load(None, str(tmp_path / "b"), 22000)))
    conf.write_text(default.replace('self_trade = "allow"', 'self_trade = "never"'))
    with pytest.raises(topology.TopologyError, match="self_trade"):
        topology.load(str(conf), str(tmp_path / "c"), 22000)
