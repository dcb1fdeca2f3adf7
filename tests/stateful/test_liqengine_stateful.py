"""Random flows through a LiqEngine and the naive ReferenceLiqEngine in lockstep: handoffs,
marks, client positions and balances, the CrossEngine's answers to LIQ's orders (accepted with
fills at or better than the order's price, rejected, hit as maker, cancels answered), AdlApplied
full and partial, IOCs that find nothing (held by the fund, retried each window, deleveraged
once a mark takes the held exposure past the fund), deficits, deposits and withdrawals, ticks
short and past the close-out window.

Proves, after every record (LiqVenue checks): the two outputs and routes are equal byte for
byte, both audits hold (the fund never below zero, the books balance to the minor unit, LIQ's
position is the sum of its close-outs), and nothing raises on a sound flow. A snapshot taken at
any step restores to the same state hash and carries on identically (the engine is replaced by
its restored copy)."""
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from liqengine import codec as c
from liqengine.engine import LiqEngine, LiqSpec
from liqengine.reference import ReferenceLiqEngine
from liqengine.sim import LiqVenue, te_account, te_deficit

WINDOW = 1_000_000
SYMBOLS = st.sampled_from([1, 2])
CLIENTS = st.integers(1, 6)
PRICES = st.integers(80, 120)


class LiqFlow(RuleBasedStateMachine):
    @initialize(interval=st.sampled_from([1, 500_000, 10**9]),
                budget=st.sampled_from([None, None, 0]), max_qty=st.sampled_from([10**9, 7]))
    def setup(self, interval, budget, max_qty):
        # a budget of 0 defers Adls and indicators to later records, one a record; a max_qty
        # of 7 cuts the bigger close-outs into orders of 7 lots
        self.v = LiqVenue(specs=(LiqSpec(1, 1, max_qty=max_qty), LiqSpec(2, 10)), n_shards=2,
                          shadows=(ReferenceLiqEngine,), window_ns=WINDOW,
                          interval_ns=interval, output_budget=budget)
        self.tid = 0
        self.victim = 100

    @rule(symbol=SYMBOLS, price=PRICES)
    def mark(self, symbol, price):
        self.v.mark(symbol, price)

    @rule(account=CLIENTS, symbol=SYMBOLS, size=st.integers(-30, 30), entry=PRICES,
          balance=st.integers(-500, 50_000))
    def client_position(self, account, symbol, size, entry, balance):
        self.v.position(account, symbol, size, entry, balance=balance)

    @rule(account=CLIENTS, balance=st.integers(-500, 50_000))
    def client_balance(self, account, balance):
        self.v.te(account % 2, te_account(account, balance))

    @rule(symbol=SYMBOLS, size=st.integers(1, 40), long=st.booleans(), bp=PRICES,
          residue=st.integers(0, 3000))
    def hand_off(self, symbol, size, long, bp, residue):
        self.victim += 1
        self.v.hand_off(self.victim, symbol, size if long else -size, bp, residue)

    def _sent(self):
        return sorted(k for k, o in self.v.orders.items() if o["order_id"] == 0)

    def _live(self):
        return sorted(k for k, o in self.v.orders.items() if o["order_id"] and o["qty"])

    @precondition(lambda self: self._sent())
    @rule(data=st.data())
    def accept(self, data):
        coid = data.draw(st.sampled_from(self._sent()))
        o = self.v.orders[coid]
        fills = []
        left = o["qty"]
        for _ in range(data.draw(st.integers(0, 3))):
            if not left:
                break
            qty = data.draw(st.integers(1, left))
            better = data.draw(st.integers(0, 5))
            fills.append((qty, o["price"] + better if o["side"] == c.SELL
                          else max(1, o["price"] - better)))
            left -= qty
        self.v.accept(coid, fills=fills)

    @precondition(lambda self: self._sent())
    @rule(data=st.data())
    def reject(self, data):
        self.v.reject(data.draw(st.sampled_from(self._sent())))

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def fill_as_maker(self, data):
        coid = data.draw(st.sampled_from(self._live()))
        self.v.fill(coid, data.draw(st.integers(1, self.v.orders[coid]["qty"])))

    @precondition(lambda self: self.v.cancels)
    @rule()
    def answer_cancel(self):
        _symbol, coid = self.v.cancels[0]
        if coid in self.v.orders and self.v.orders[coid]["order_id"] == 0:
            self.v.accept(coid)     # the CrossEngine took the order before its cancel
        if self.v.cancels and self.v.cancels[0][1] == coid:
            self.v.answer_cancel()

    @precondition(lambda self: self.v.adls)
    @rule(data=st.data(), full=st.booleans())
    def adl_applied(self, data, full):
        adl_id = data.draw(st.sampled_from(sorted(self.v.adls)))
        account, symbol, qty, _price = self.v.adls[adl_id]
        size, _cost = self.v.positions.get((account, symbol), (0, 0))
        can = abs(size) if size and (size > 0) != (qty > 0) else 0
        most = min(abs(qty), can)
        closed = most if full else data.draw(st.integers(0, most))
        self.v.apply_adl(adl_id, closed)

    @rule(account=CLIENTS, amount=st.integers(1, 5000))
    def deficit(self, account, amount):
        self.v.te(account % 2, te_deficit(account, amount))

    @rule(amount=st.integers(-3000, 5000))
    def deposit(self, amount):
        self.tid += 1
        self.v.deposit(self.tid, amount)

    @rule(dt=st.sampled_from([1, 1000, WINDOW // 2, WINDOW, 3 * WINDOW]))
    def tick(self, dt):
        self.v.tick(dt)

    @rule()
    def snapshot_and_restore(self):
        e = self.v.engine
        restored = LiqEngine.restore(e.snapshot())
        assert restored.state_hash() == e.state_hash()
        restored.output_budget = e.output_budget
        self.v.engine = restored


TestLiqFlow = LiqFlow.TestCase
TestLiqFlow.settings = settings(max_examples=40, stateful_step_count=50, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])
