"""Adversarial lockstep of the CrossEngine's level map and rungs against the reference.

Each run draws a tick size (1, small, a power of two, large ones up to a quarter of the price
range), a max_price and a hash multiplier (the default, or a poor one that makes every level
and rung key share one probe run: all homes in the last slot so runs wrap around the table,
all in slot 0, or two clusters). Prices come from a pool of ticks on the engine's rung (512)
and word (64) boundaries, +-1, near 1 and near max_price, and clusters 2**40 and more ticks
apart. Rules add orders of every kind, cancel, amend across levels and rungs, cancel all,
mass cancel, lay down hundreds of levels at a stride and sweep them with one taker, and
snapshot/restore: the restored copy is kept as a shadow and fed every later command, and must
stay byte-identical (events, snapshot, state hash) to the engine it came from. After every step
the events, book, snapshot hash and check_invariants() must agree with the reference, and the
level map, rung map and rung pool must not hold more than the live book needs."""
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from crossengine import codec as c
from crossengine import engine as ce
from crossengine.engine import CrossEngine
from crossengine.reference import ReferenceEngine
from mq.sources import OPERATOR_SOURCE

TOP = 1 << 62
RUNG = 512
WORD = 64
MASK64 = (1 << 64) - 1

TICKS = [1, 1, 3, 7, 64, 512, 513, (1 << 20) + 1, (1 << 40) + 1, 1 << 50, (1 << 61) // 3,
         1 << 60]
# default (None), every small key's home the last slot (runs wrap), slot 0, two clusters
MULTIPLIERS = [None, MASK64, 1, (1 << 63) + 1, (1 << 32) + 1]


def tick_pool(last: int) -> list[int]:
    """Ticks (1 .. last) on and around rung and word boundaries at both ends, in the middle,
    and 2**40+ apart; asks count side ticks down from 2**62, a multiple of 512, so the same
    ticks are boundaries for both sides."""
    ticks = set()
    for base in (0, RUNG, 2 * RUNG, 7 * RUNG):
        for d in (-1, 0, 1, WORD - 1, WORD, WORD + 1, 2 * WORD, RUNG - WORD, RUNG - 1):
            ticks.add(base + d)
    for top in (last, last - last % RUNG, last - last % WORD):
        for d in (0, 1, 2, WORD - 1, WORD, WORD + 1, RUNG - 1, RUNG, RUNG + 1):
            ticks.add(top - d)
    mid = (last // 2) // RUNG * RUNG
    for far in (0, 1 << 40, (1 << 40) + RUNG, 1 << 41, 1 << 45, 1 << 52):
        for d in (-RUNG - 1, -RUNG, -1, 0, 1, WORD, RUNG - 1, RUNG):
            ticks.add(mid + far + d)
            ticks.add(mid - far + d)
    return sorted(t for t in ticks if 1 <= t <= last)


class LevelsAdversary(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.eng = None
        self.shadows: list[CrossEngine] = []
        self.steps = 0
        self.ids: list[int] = []

    @initialize(tick=st.sampled_from(TICKS), mul=st.sampled_from(MULTIPLIERS),
                small=st.booleans(), max_fills=st.sampled_from([3, 1000]))
    def setup(self, tick, mul, small, max_fills):
        ce.seed_hashes(multiplier=mul)
        last = TOP // tick
        if small:
            last = min(last, 3 * RUNG + 5)
        self.cfg = dict(tick_size=tick, max_price=last * tick, max_qty=10_000,
                        max_orders=100_000, max_fills=max_fills, max_account_orders=20_000)
        self.tick = tick
        self.last = last
        self.pool = tick_pool(last)
        self.eng = CrossEngine(**self.cfg)
        self.ref = ReferenceEngine(**self.cfg)

    def teardown(self):
        ce.seed_hashes()

    # -- driving ------------------------------------------------------------------------
    def both(self, kind, payload=b"", src=OPERATOR_SOURCE):
        self.steps += 1
        a = self.eng.apply(self.steps, 0, kind, payload, source=src)
        b = self.ref.apply(self.steps, 0, kind, payload, source=src)
        assert a == b, (kind, c.decode_events(a), c.decode_events(b))
        for sh in self.shadows:
            assert sh.apply(self.steps, 0, kind, payload, source=src) == a
        for ev in c.decode_events(a):
            if ev[0] == c.EV_ACCEPTED:
                self.ids.append(ev[1])
        if len(self.ids) > 400:
            live = set(self.ref.orders)
            self.ids = [i for i in self.ids if i in live]
        return a

    def price(self, data, side=None):
        p = data.draw(st.sampled_from(self.pool)) * self.tick
        return p

    # -- rules --------------------------------------------------------------------------
    @rule(data=st.data(), side=st.sampled_from([c.BUY, c.SELL]), qty=st.integers(1, 20),
          acct=st.integers(1, 4), cl=st.integers(1, 10**6),
          kind=st.sampled_from(["gtc"] * 6 + ["ioc", "fok", "mkt", "post"]),
          stp=st.integers(0, 4))
    def new_order(self, data, side, qty, acct, cl, kind, stp):
        p = self.price(data)
        ot, tif, fl = c.LIMIT, c.GTC, 0
        if kind == "ioc":
            tif = c.IOC
        elif kind == "fok":
            tif = c.FOK
        elif kind == "mkt":
            ot, tif = c.MARKET, c.IOC
        elif kind == "post":
            fl = c.FLAG_POST_ONLY
        self.both(c.NEW_ORDER, c.new_order(cl, side, p, qty, acct, ot, tif, fl, stp))

    @rule(data=st.data())
    @precondition(lambda self: self.eng is not None and self.ids)
    def cancel(self, data):
        self.both(c.CANCEL, c.cancel(order_id=data.draw(st.sampled_from(self.ids))))

    @rule(data=st.data(), qty=st.sampled_from([0, 0, 1, 5, 30]), same=st.booleans())
    @precondition(lambda self: self.eng is not None and self.ids)
    def amend(self, data, qty, same):
        oid = data.draw(st.sampled_from(self.ids))
        self.both(c.AMEND, c.amend(order_id=oid, price=0 if same else self.price(data),
                                   qty=qty))

    @rule(acct=st.integers(1, 4), side=st.sampled_from([0, c.BUY, c.SELL]))
    @precondition(lambda self: self.eng is not None)
    def cancel_all(self, acct, side):
        self.both(c.CANCEL_ALL, c.cancel_all(acct, side))

    @rule()
    @precondition(lambda self: self.eng is not None)
    def mass_cancel(self):
        self.both(c.MASS_CANCEL)

    @rule(data=st.data(), side=st.sampled_from([c.BUY, c.SELL]), n=st.integers(20, 700),
          stride=st.sampled_from([1, 7, 63, 64, 65, 511, 512, 513, 4099, 1 << 30, 1 << 41]),
          acct=st.integers(1, 4), sweep=st.sampled_from(["none", "market", "limit", "amend", "fok", "fok_short"]),
          stp=st.integers(0, 4))
    @precondition(lambda self: self.eng is not None)
    def ladder_and_sweep(self, data, side, n, stride, acct, sweep, stp):
        """n levels at a stride from a pool tick (bids downwards, asks upwards, so that they
        stay apart from the opposite side's), then perhaps a taker through them."""
        start = data.draw(st.sampled_from(self.pool))
        step = -stride if side == c.BUY else stride
        ticks = [start + k * step for k in range(n)]
        ticks = [t for t in ticks if 1 <= t <= self.last]
        for k, t in enumerate(ticks):
            self.both(c.NEW_ORDER, c.new_order(10**7 + self.steps, side, t * self.tick,
                                               1 + k % 3, acct))
        if not ticks or sweep == "none":
            return
        other = c.SELL if side == c.BUY else c.BUY
        far = ticks[-1] * self.tick
        total = sum(1 + k % 3 for k in range(len(ticks)))
        if sweep == "market":
            self.both(c.NEW_ORDER, c.new_order(10**8 + self.steps, other, 0, total + 3,
                                               acct % 4 + 1, c.MARKET, c.IOC, 0, stp))
        elif sweep in ("fok", "fok_short"):
            # a FOK walking every rung of the ladder: fillable, or short by one lot
            self.both(c.NEW_ORDER, c.new_order(10**8 + self.steps, other, far,
                                               total + (1 if sweep == "fok_short" else 0),
                                               acct if stp == 2 else acct % 4 + 1, c.LIMIT,
                                               c.FOK, 0, stp))
        elif sweep == "limit":
            self.both(c.NEW_ORDER, c.new_order(10**8 + self.steps, other, far, total + 3,
                                               acct % 4 + 1 if stp < 2 else acct, c.LIMIT,
                                               c.GTC, 0, stp))
        elif self.ids:
            # an existing order amended to reach through the ladder
            oid = data.draw(st.sampled_from(self.ids))
            self.both(c.AMEND, c.amend(order_id=oid, price=far, qty=total))

    @rule(data=st.data(), k=st.integers(1, 40))
    @precondition(lambda self: self.eng is not None and self.ids)
    def churn_one_level(self, data, k):
        """A level emptied and refilled k times: its rung freed and re-opened, its map slot
        deleted (backward shift) and re-entered."""
        p = self.price(data)
        side = data.draw(st.sampled_from([c.BUY, c.SELL]))
        for _j in range(k):
            out = self.both(c.NEW_ORDER, c.new_order(2 * 10**7 + self.steps, side, p, 1, 4))
            evs = c.decode_events(out)
            mine = [e[1] for e in evs if e[0] == c.EV_ACCEPTED]
            rest = [e for e in evs if e[0] in (c.EV_TRADE,)]
            if mine and not rest and mine[0] in self.ref.orders:
                self.both(c.CANCEL, c.cancel(order_id=mine[0]))

    @rule(keep=st.booleans(), check=st.booleans())
    @precondition(lambda self: self.eng is not None)
    def snapshot_restore(self, keep, check):
        snap = self.eng.snapshot()
        assert snap == self.ref.snapshot()
        back = CrossEngine.restore(snap, check=check)
        assert back.snapshot() == snap
        assert back.state_hash() == self.eng.state_hash()
        assert back.book() == self.eng.book()
        back.check_invariants()
        if keep:
            # go on with the restored one, the original as the shadow
            self.shadows = [self.eng] + self.shadows[:1]
            self.eng = back
        else:
            self.shadows = [back] + self.shadows[:1]

    # -- checks -------------------------------------------------------------------------
    @invariant()
    def agree(self):
        if self.eng is None:
            return
        self.eng.check_invariants()
        h = self.eng.state_hash()
        assert h == self.ref.state_hash()
        for sh in self.shadows:
            assert sh.state_hash() == h
            sh.check_invariants()
        assert self.eng.book(8) == self.ref.book(8)
        stats = self.eng.index_stats()
        for name, s in (("bid", c.BUY), ("ask", c.SELL)):
            n_levels = len(self.ref.prices[s])
            lv, cap, run = stats[f"{name}_levels"]
            assert lv == n_levels and 2 * lv <= cap, stats
            n_rungs = len({(p // self.tick) >> 9 if s == c.BUY else
                           ((TOP - p // self.tick) >> 9) for p in self.ref.prices[s]})
            assert stats[f"{name}_rungs"][0] == n_rungs, (stats, n_rungs)


class LevelsAdversaryFull(LevelsAdversary):
    """The same with the whole book compared after every step (slower, fewer steps)."""

    @invariant()
    def whole_book(self):
        if self.eng is not None:
            assert self.eng.book() == self.ref.book()


TestLevelsAdversary = LevelsAdversary.TestCase
TestLevelsAdversary.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestLevelsAdversaryFull = LevelsAdversaryFull.TestCase
TestLevelsAdversaryFull.settings = settings(max_examples=60, stateful_step_count=30,
                                            deadline=None)
