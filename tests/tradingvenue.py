"""A TradingEngine shard wired to real CrossEngines in one process, for tests.

The venue plays the streams: each record the TradingEngine outputs may carry CE_COMMANDs; the
venue applies each one to the CrossEngine of its symbol (as in.ce.SYM would) and feeds the
CrossEngine's output back to the TradingEngine as a CE_EVENTS record (as out.ce.SYM reaching
in.te.N would). By default the round trip completes before the next request; with
``auto=False`` the CrossEngine results wait in ``pending`` until ``deliver`` is called, so that
tests can interleave requests with results in flight, as the real streams do.
"""
from __future__ import annotations

import random

from crossengine.engine import CrossEngine
from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE
from tradingengine import codec as c
from tradingengine.engine import TradingEngine
from tradingengine.margin import ContractSpec, Tier

TE_SOURCE = 0x7300_0000     # the source of out.te.N's records in in.ce.SYM, | N (as deploy's)
SECOND = 1_000_000_000
HOUR = 3600 * SECOND
TIMELESS_FUNDING_NS = 10 * 365 * 24 * HOUR   # boundaries in 2020 and 2030: none in a test


def spec(symbol: int = 1, value: int = 1000, max_leverage_x100: int = 10_000,
         tiers: tuple[Tier, ...] | None = None, maker_fee_ppm: int = 100,
         taker_fee_ppm: int = 600, funding_interval_ns: int = 8 * HOUR,
         band_ppm: int = 100_000, **kw) -> ContractSpec:
    if tiers is None:
        tiers = (Tier(10**16, 5_000, 0, max_leverage_x100),
                 Tier(10**18, 10_000, 5 * 10**13, max_leverage_x100 // 2))
    return ContractSpec(symbol, value, max_leverage_x100, tiers, maker_fee_ppm, taker_fee_ppm,
                        funding_interval_ns, band_ppm, **kw)


class Venue:
    def __init__(self, specs: list[ContractSpec], shard: int = 0, n_shards: int = 1,
                 auto: bool = True, check: bool = True, engine: type = TradingEngine,
                 shadows: tuple[type, ...] = (), output_budget: int | None = None,
                 liq_sources: list[int] | None = None) -> None:
        kw = {"liq_sources": liq_sources} if liq_sources else {}
        self.te = engine(specs, shard, n_shards, **kw)
        # engines fed the same records in lockstep: their outputs must be the same bytes
        self.shadows = [cls(specs, shard, n_shards, **kw) for cls in shadows]
        self.output_budget = output_budget
        self.set_budget(self.te)
        # each CrossEngine takes this shard's records as a te_source, as in.ce.SYM does
        self.ces = {s.symbol: CrossEngine(symbol_id=s.symbol, max_price=s.max_price,
                                          max_qty=s.max_qty, te_sources=[TE_SOURCE | shard],
                                          n_shards=n_shards) for s in specs}
        self.ce_seq = dict.fromkeys(self.ces, 0)
        self.seq = 0
        self.ts_ns = 1_700_000_000 * SECOND
        self.auto = auto
        self.check = check
        self.pending: list[bytes] = []     # CE_EVENTS payloads not yet delivered
        # transfer ids grow, as the engine wants them to (an id at or below one it forgot is
        # refused); repeats are of recent ids, which it still remembers
        self.transfer_counter = 1_000_000
        self.recent_transfers: list[int] = []
        self.log: list[tuple[int, int, int, bytes]] = []   # every record the TE applied

    def set_budget(self, te) -> None:
        """Give ``te`` (and the shadows) the venue's output budget, if it has one: a low one
        makes every sweep run one unit a record."""
        if self.output_budget is not None:
            for engine in [te, *self.shadows]:
                engine.output_budget = self.output_budget

    def apply(self, kind: int, payload: bytes, dt_ns: int = 1_000,
              source: int = OPERATOR_SOURCE) -> list[tuple]:
        """One record into the TradingEngine; its CE commands go to the CrossEngines. Returns
        the TE's events (and, with auto, those of the results it got back)."""
        self.ts_ns += dt_ns
        self.seq += 1
        self.log.append((self.seq, self.ts_ns, kind, payload))
        raw = self.te.apply(self.seq, self.ts_ns, kind, payload, source)
        route = self.te.route
        for shadow in self.shadows:
            assert shadow.apply(self.seq, self.ts_ns, kind, payload, source) == raw, \
                f"{type(shadow).__module__}'s output differs at record {self.seq}"
        events = c.decode_events(raw)
        if self.check:
            self.te.check_invariants()
        # As production: the record goes to the CrossEngine of each symbol it commands, which
        # walks it (that symbol's commands, in order) and answers with one record.
        symbols = dict.fromkeys(ev[1] for ev in events if ev[0] == c.CE_COMMAND)
        for symbol in symbols:
            self.ce_seq[symbol] += 1
            n = self.ce_seq[symbol]
            frame = encode([(n, self.ts_ns, TE_SOURCE | self.te.shard, n, 1, kind, raw)])
            out = decode(self.ces[symbol].apply_frame(frame))[0][6]
            self.pending.append(c.ce_events(symbol, out))
        if self.auto:
            events += self.deliver()
        self.route = route       # this record's route (not that of the results delivered)
        return events

    def deliver(self, n: int | None = None) -> list[tuple]:
        """Feed up to ``n`` (all) waiting CrossEngine results back, oldest first."""
        events: list[tuple] = []
        while self.pending and (n is None or n > 0):
            payload = self.pending.pop(0)
            if n is not None:
                n -= 1
            auto, self.auto = self.auto, False
            try:
                events += self.apply(c.CE_EVENTS, payload)
            finally:
                self.auto = auto
        return events

    # -- shorthands ----------------------------------------------------------------------------
    def next_transfer_id(self) -> int:
        self.transfer_counter += 1
        self.recent_transfers = [*self.recent_transfers[-2:], self.transfer_counter]
        return self.transfer_counter

    def deposit(self, account: int, amount: int, transfer_id: int | None = None) -> list[tuple]:
        return self.apply(c.DEPOSIT, c.transfer(transfer_id or self.next_transfer_id(), account,
                                                amount))

    def mark(self, symbol: int, price: int, dt_ns: int = 1_000) -> list[tuple]:
        return self.apply(c.MARK_PRICE, c.mark_price(symbol, price), dt_ns)

    def order(self, coid: int, account: int, side: int, price: int, qty: int, symbol: int = 1,
              **kw) -> list[tuple]:
        return self.apply(c.NEW_ORDER, c.new_order(coid, account, symbol, side, price, qty, **kw))

    def position(self, account: int, symbol: int = 1):
        return self.te.accounts[account].positions[symbol]


def events_of(events: list[tuple], kind: int) -> list[tuple]:
    return [e for e in events if e[0] == kind]


def two_specs(funding_interval_ns: int = HOUR) -> list[ContractSpec]:
    """Two contracts unlike each other: fees with a maker rebate and without, two tiers each,
    an hourly and an 8-hourly funding interval (or the one given for both)."""
    return [
        spec(1, value=100, max_leverage_x100=5_000, maker_fee_ppm=-100, taker_fee_ppm=500,
             funding_interval_ns=funding_interval_ns, band_ppm=50_000,
             tiers=(Tier(2 * 10**11, 10_000, 0, 5_000), Tier(10**13, 20_000, 2 * 10**9, 2_500))),
        spec(2, value=7, max_leverage_x100=2_000, maker_fee_ppm=200, taker_fee_ppm=700,
             funding_interval_ns=max(8 * HOUR, funding_interval_ns), band_ppm=100_000,
             tiers=(Tier(10**11, 25_000, 0, 2_000), Tier(10**13, 40_000, 1_500_000_000, 1_000))),
    ]


MID = {1: 10_000, 2: 50_000}


def random_step(v: Venue, rng, accounts: list[int], foreign: list[int],
                dead_mans_switch: bool = True) -> None:
    """One random action on a venue: the flows of the determinism and process tests.
    ``foreign`` accounts belong to other shards: their orders go straight to the CrossEngine,
    as another shard's would, and reach this shard only as trades."""
    te = v.te
    r = rng.random()
    sym = rng.choice((1, 2))
    mark = te.marks.get(sym, MID[sym])
    acct = rng.choice(accounts)
    if r < 0.40:
        side = rng.choice((c.BUY, c.SELL))
        off = rng.randrange(-mark // 25, mark // 25)
        price = max(1, mark + off)
        kw: dict = {}
        x = rng.random()
        if x < 0.08:
            kw = {"ord_type": c.MARKET, "tif": c.IOC}
            price = 0
        elif x < 0.15:
            kw = {"tif": rng.choice((c.IOC, c.FOK))}
        elif x < 0.22:
            kw = {"flags": c.FLAG_REDUCE_ONLY}
        elif x < 0.27:
            kw = {"flags": c.FLAG_POST_ONLY}
        elif x < 0.33:
            kw = {"trigger_price": max(1, mark + rng.randrange(-mark // 20, mark // 20)),
                  "trigger_kind": rng.choice((c.TRIGGER_STOP, c.TRIGGER_TAKE_PROFIT)),
                  "trigger_by": rng.choice((c.BY_MARK, c.BY_LAST))}
        v.order(rng.randrange(1, 10**9), acct, side, price, rng.randrange(1, 200), sym, **kw)
    elif r < 0.50:
        live = [o for o in te.accounts[acct].orders.values()] if acct in te.accounts else []
        if live:
            o = rng.choice(live)
            v.apply(c.CANCEL, c.cancel(rng.randrange(1, 10**9), o.client_order_id, acct))
    elif r < 0.55:
        live = [o for o in te.accounts[acct].orders.values()] if acct in te.accounts else []
        if live:
            o = rng.choice(live)
            v.apply(c.AMEND, c.amend(rng.randrange(1, 10**9), o.client_order_id, acct,
                                     price=max(1, o.price + rng.randrange(-20, 21)),
                                     qty=o.cum + rng.randrange(1, 100)))
    elif r < 0.65:
        f = rng.choice(foreign)
        side = rng.choice((c.BUY, c.SELL))
        price = max(1, mark + rng.randrange(-mark // 40, mark // 40))
        v.ce_seq[sym] += 1
        out = v.ces[sym].apply(v.ce_seq[sym], v.ts_ns, 32, _CE_NEW(rng.randrange(1, 10**12),
                               price, rng.randrange(1, 300), f, side, c.LIMIT, c.GTC, 0, 0))
        v.pending.append(c.ce_events(sym, out))
        if v.auto:
            v.deliver()
    elif r < 0.75:
        v.mark(sym, max(1, mark + rng.randrange(-mark // 30, mark // 30 + 1)),
               dt_ns=rng.randrange(1, 20 * 60) * SECOND)
    elif r < 0.78:
        v.apply(c.FUNDING_INPUTS, c.funding_inputs(sym, rng.randrange(-3000, 3000),
                                                   rng.randrange(-500, 1000)))
    elif r < 0.84:
        # now and then a repeat of a recent id (a no-op), else a new one: the outcome does not
        # depend on the records' times (an id older than the engine's window is never reused)
        again = v.recent_transfers and rng.random() < 0.3
        tid = rng.choice(v.recent_transfers) if again else v.next_transfer_id()
        v.deposit(acct, rng.randrange(1, 10**9), transfer_id=tid)
    elif r < 0.87:
        v.apply(c.WITHDRAW, c.transfer(v.next_transfer_id(), acct, rng.randrange(1, 10**9)))
    elif r < 0.90:
        v.apply(c.SET_LEVERAGE, c.set_leverage(acct, sym, rng.choice((100, 300, 1000, 2000,
                                                                     5000, 9999))))
    elif r < 0.92:
        v.apply(c.SET_MARGIN_MODE, c.set_margin_mode(acct, sym, rng.choice((0, 1))))
    elif r < 0.94:
        v.apply(c.ADJUST_MARGIN, c.adjust_margin(acct, sym, rng.randrange(-10**8, 10**8)))
    elif r < 0.96 and dead_mans_switch:
        v.apply(c.DEAD_MANS_SWITCH, c.dead_mans_switch(acct, rng.choice((0, 500, 60_000))))
    elif r < 0.97:
        v.apply(c.CANCEL_ALL, c.cancel_all(rng.randrange(1, 10**9), acct, rng.choice((0, sym))))
    elif not v.auto:
        v.deliver(rng.randrange(1, 8))
    else:
        v.apply(c.KIND_TICK, b"", dt_ns=rng.randrange(1, 10**9))


def random_venue(seed: int, steps: int, auto: bool = False, check: bool = False,
                 engine: type = TradingEngine, timeless: bool = False) -> Venue:
    """A shard 0 of 2 driven by ``steps`` random actions from ``seed``; every result delivered
    at the end. ``timeless``: no dead-man's switch and a funding interval of ten years, so the
    outcome does not depend on the records' times (the process tests' sequencer stamps its own
    and the recorded CrossEngine results must still fit)."""
    rng = random.Random(seed)
    specs = two_specs(TIMELESS_FUNDING_NS if timeless else HOUR)
    v = Venue(specs, shard=0, n_shards=2, auto=auto, check=check, engine=engine)
    accounts = [2, 4, 6, 8, 10, 12]
    for a in accounts:
        v.deposit(a, rng.randrange(10**9, 10**11))
    v.mark(1, MID[1])
    v.mark(2, MID[2])
    for _ in range(steps):
        random_step(v, rng, accounts, [1, 3, 5], dead_mans_switch=not timeless)
    v.deliver()
    return v


_CE_NEW = c.CE_NEW_ORDER_S.pack

