"""Order flow for the market-data tests and benchmark: a seeded random stream of CrossEngine
commands around a mid price, and a local CrossEngine that turns it into out records."""
from __future__ import annotations

import random

from crossengine import codec as c
from crossengine.engine import CrossEngine


class Flow:
    """Seeded commands: limit orders around a drifting mid (some crossing), cancels of live
    orders, an occasional CancelAll, IOC and market order; all for accounts 1..8."""

    def __init__(self, seed: int = 1, mid: int = 100_000, spread: int = 20):
        self.rng = random.Random(seed)
        self.mid = mid
        self.spread = spread
        self.next_cl = 1
        self.live: list[tuple[int, int]] = []     # (order id, account)
        self.by_client_id = False    # cancel by client order id (no engine output to read)

    def command(self) -> tuple[int, bytes]:
        r = self.rng
        x = r.random()
        if x < 0.25 and self.live:
            oid, acct = self.live.pop(r.randrange(len(self.live)))
            if self.by_client_id:
                return c.CANCEL, c.cancel(0, oid, acct)
            return c.CANCEL, c.cancel(oid, 0, acct)
        if x < 0.26:
            return c.CANCEL_ALL, c.cancel_all(r.randint(1, 8))
        self.mid += r.choice((-1, 0, 0, 1))
        side = r.choice((c.BUY, c.SELL))
        off = r.randint(-3, self.spread)
        price = self.mid - off if side == c.BUY else self.mid + off
        self.next_cl += 1
        tif = c.IOC if x > 0.95 else c.GTC
        ot = c.MARKET if x > 0.98 else c.LIMIT
        acct = r.randint(1, 8)
        if self.by_client_id and tif == c.GTC and ot == c.LIMIT:
            self.live.append((self.next_cl, acct))
        return c.NEW_ORDER, c.new_order(self.next_cl, side, max(1, price), r.randint(1, 50),
                                        acct, ord_type=ot, tif=tif)

    def note(self, out: bytes) -> None:
        """Track accepted orders (for cancels) from the engine's events."""
        for ev in c.decode_events(out):
            if ev[0] == c.EV_ACCEPTED and ev[8] == c.GTC:
                self.live.append((ev[1], ev[3]))


class LocalEngine:
    """A CrossEngine run in this process: out records (seq, ts_ns, payload) and its book and
    trades at every seq, the oracle of the market-data tests."""

    def __init__(self, seed: int = 1, keep_books: bool = True):
        self.engine = CrossEngine(symbol_id=1, tick_size=1)
        self.flow = Flow(seed)
        self.seq = 0
        self.books: dict[int, dict] = {}
        self.trades: list[tuple[int, int, int, int]] = []   # (seq, trade id, price, qty)
        self.keep_books = keep_books

    def step(self, ts_ns: int) -> tuple[int, int, bytes]:
        kind, payload = self.flow.command()
        self.seq += 1
        out = self.engine.apply(self.seq, ts_ns, kind, payload)
        self.flow.note(out)
        for ev in c.decode_events(out):
            if ev[0] == c.EV_TRADE:
                self.trades.append((self.seq, ev[1], ev[6], ev[7]))
        if self.keep_books:
            self.books[self.seq] = self.engine.book()
        return self.seq, ts_ns, out
