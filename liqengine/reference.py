"""A naive LiqEngine: the same rules as liqengine/engine.py with none of its indexes.

It finds a close-out by scanning all of them (by client order id, by order id, for a mass
cancel, for a deadline, the held ones), the holders of a symbol and the symbols of an account
by scanning every position, ranks with ``fractions.Fraction`` and ``sorted`` afresh every time (no cache,
no scaled integer keys), and recomputes the indicators of every symbol. The stateful test runs
it in lockstep with the engine and compares outputs byte for byte; the benchmark measures the
engine against it. The rules themselves (phases, prices, the fund) are the engine's code.
"""
from __future__ import annotations

from fractions import Fraction

from liqengine.engine import HOLD, CloseOut, LiqEngine, _score


class ReferenceLiqEngine(LiqEngine):
    def _closeout_of_coid(self, coid: int) -> CloseOut | None:
        for co in self.closeouts.values():
            if co.coid and co.coid == coid:
                return co
        return None

    def _closeout_of_order(self, order_id: int) -> CloseOut | None:
        for co in self.closeouts.values():
            if co.coid and co.order_id == order_id:
                return co
        return None

    def _live_orders(self, symbol: int, last_id: int) -> list[CloseOut]:
        return sorted((co for co in self.closeouts.values()
                       if co.coid and co.order_id and co.order_id <= last_id
                       and co.symbol == symbol), key=lambda co: co.order_id)

    def _held_closeouts(self) -> list[CloseOut]:
        return [co for co in self.closeouts.values() if co.phase == HOLD]

    def _defer_due(self, rest: list[CloseOut]) -> None:
        pass                 # they keep their deadlines: the next scan finds them due

    def _due(self) -> list[CloseOut]:
        return sorted((co for co in self.closeouts.values()
                       if co.deadline and co.deadline <= self.ts_ns),
                      key=lambda co: (co.deadline, co.arm))

    def _account_symbols(self, account: int):
        return [s for (a, s) in self.positions if a == account]

    def _side_holders(self, symbol: int, side: int) -> list[int]:
        return [a for (a, s), (size, _cost) in self.positions.items()
                if s == symbol and (size > 0) == (side > 0)]

    def _rank(self, symbol: int, side: int) -> list[tuple]:
        mark = self.marks.get(symbol, 0)
        value = self.specs[symbol].value
        # every account's equity, from one pass over every position (nothing kept between calls)
        equity = dict(self.balances)
        for (a, s), (z, k) in self.positions.items():
            if self.marks.get(s):
                equity[a] = equity.get(a, 0) + z * self.marks[s] * self.specs[s].value - k
        scored = []
        for account in self._side_holders(symbol, side):
            size, cost = self.positions[(account, symbol)]
            scored.append((-Fraction(*_score(size, cost, mark, value, equity.get(account, 0))),
                           account))
        return sorted(scored)

    def _rekey(self, account: int, symbol: int) -> None:
        pass

    def _indicator_symbols(self) -> list[int]:
        return sorted(self.specs)
