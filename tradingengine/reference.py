"""The reference TradingEngines: the naive one, and the engine's source run by the interpreter.

ReferenceEngine has the same rules with no running totals and no indexes.

Every figure the engine keeps incrementally is recomputed here from the orders and positions
themselves at each use (order margin, position margin, the leaves on each side, the number of
reduce-only orders), the maintenance check and funding scan every account for positions
instead of keeping the symbol's holders, and orders are found by scanning instead of through
the CrossEngine id index (for trades and mass cancels). Its outputs and state must equal the
engine's byte for byte (tests/stateful drive both in lockstep), which checks the bookkeeping;
it is also the baseline of bench/bench_tradingengine.py.

``interpreted()`` loads tradingengine/engine.py as plain Python under another module name: the
same source that Cython compiles, run by the interpreter, which the tests hold to the compiled
engine's bytes and the benchmark uses as its second baseline.
"""
from __future__ import annotations

import importlib.util
import pathlib

from tradingengine import codec as c
from tradingengine.engine import (
    UNTRIGGERED,
    Account,
    Order,
    Position,
    TradingEngine,
)
from tradingengine.margin import ContractSpec


class ReferenceEngine(TradingEngine):
    def _sums(self, acct: Account) -> None:
        """Recompute the derived figures of an account before any rule reads them."""
        acct.order_margin = sum(o.margin for o in acct.orders.values())
        acct.position_margin = sum(p.margin for p in acct.positions.values())
        for sym, pos in acct.positions.items():
            live = [o for o in acct.orders.values() if o.symbol == sym and o.state != UNTRIGGERED]
            pos.buy_leaves = sum(o.leaves + o.amend_grow for o in live if o.side == c.BUY)
            pos.sell_leaves = sum(o.leaves + o.amend_grow for o in live if o.side == c.SELL)
            pos.reduce_only = sum(1 for o in live if o.flags & c.FLAG_REDUCE_ONLY)

    def _available(self, acct: Account) -> int:
        self._sums(acct)
        upnl = 0
        for sym, pos in acct.positions.items():
            if pos.size and pos.mode == c.CROSS and sym in self.marks:
                upnl += pos.size * self.marks[sym] * self.specs[sym].value - pos.cost
        return (acct.balance - sum(o.margin for o in acct.orders.values())
                - sum(p.margin for p in acct.positions.values()) + min(0, upnl))

    def _risk_and_send(self, acct: Account, o: Order, spec: ContractSpec) -> int:
        self._sums(acct)
        return super()._risk_and_send(acct, o, spec)

    def _cut_reduce_only(self, acct: Account, symbol: int, pos: Position) -> None:
        self._sums(acct)
        super()._cut_reduce_only(acct, symbol, pos)

    def _adl(self, adl_id: int, account: int, symbol: int, qty: int, price: int) -> None:
        acct = self.accounts.get(account)
        if acct is not None:
            self._sums(acct)
        super()._adl(adl_id, account, symbol, qty, price)

    def _scan_holders(self, symbol: int) -> None:
        """The holders of a symbol found by scanning every account, not kept up to date."""
        self.holders[symbol] = {
            a: None for a in sorted(self.accounts)
            if symbol in self.accounts[a].positions and self.accounts[a].positions[symbol].size}

    def _sweep_maintenance(self, sw: list) -> bool:
        self._scan_holders(sw[1])
        for acct in self.accounts.values():
            self._sums(acct)
        return self._walk_maintenance(sw)    # every holder, not the trigger index

    def _sweep_trigger(self, sw: list) -> bool:
        return self._walk_trigger(sw)    # every waiting order, not the trigger index

    def _settle_funding(self, symbol: int) -> None:
        self._scan_holders(symbol)
        super()._settle_funding(symbol)

    def _scan_ce_orders(self, symbol: int) -> None:
        """The orders the CrossEngine accepted, found by scanning every account."""
        self.ce_orders[symbol] = {
            o.ce_id: o for a in sorted(self.accounts) for o in self.accounts[a].orders.values()
            if o.ce_id and o.symbol == symbol}

    def _mass_cancelled(self, symbol: int, ev: tuple) -> None:
        self._scan_ce_orders(symbol)
        super()._mass_cancelled(symbol, ev)

    def _sweep_mass_cancelled(self, sw: list) -> bool:
        self._scan_ce_orders(sw[1])
        return super()._sweep_mass_cancelled(sw)

    def _trade(self, symbol: int, spec: ContractSpec, ev: tuple) -> None:
        # find the orders by scanning the two accounts' orders, not through the index
        index: dict[int, Order] = {}
        self.ce_orders[symbol] = index
        for account in (ev[4], ev[5]):
            acct = self.accounts.get(account)
            for o in acct.orders.values() if acct is not None else ():
                if o.ce_id and o.symbol == symbol:
                    index[o.ce_id] = o
        super()._trade(symbol, spec, ev)


def interpreted() -> type:
    """TradingEngine from tradingengine/engine.py run by the interpreter, not compiled."""
    import tradingengine.engine as compiled
    if compiled.__file__.endswith(".py"):
        raise ImportError("tradingengine.engine is not compiled: pip install -e .")
    path = pathlib.Path(compiled.__file__).with_name("engine.py")
    spec = importlib.util.spec_from_file_location("tradingengine_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module._COMPILED:
        raise ImportError(f"{path} did not load as the interpreted source")
    return module.TradingEngine
