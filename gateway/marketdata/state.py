"""The market-data state of one symbol: a pure function of its out.ce.SYM records.

`SymbolState.apply(seq, ts_ns, payload)` folds one out record (docs/crossengine.md: the events
of one command, or of several for a record from a TradingEngine) into

* the level-2 book, aggregated by price (`bids`, `asks`: price ticks -> (lots, orders));
* `rpt_seq`, PROTOCOL.md §6's RptSeq: +1 for every MarketDataIncremental and every Trade
  message the record produces, so book changes and trades are totally ordered;
* the recent trades (the last `RECENT_TRADES`);
* klines of 1 m, 5 m, 1 h and 1 d (the last `KLINES_KEPT` of each);
* the 24-hour ticker: the trades of the 1,440 one-minute klines that end with the current one.

Time is the records' own: `now` is the highest record ts seen (a record stamped earlier than
one before it counts at `now`), so nothing here reads a clock and two publishers that read
the same records hold the same state, byte for byte. That is what makes a restarted publisher
exact: it replays out.ce.SYM from seq 1 and is where it was.

`apply` returns the record's `Update`: the level changes and trades in event order, which the
feeds encode (gateway/marketdata/binary.py, ws.py). Prices are in ticks and sizes in lots
here; the feeds scale them (tick and lot sizes of the symbol).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from crossengine import codec as c

RECENT_TRADES = 100
KLINES_KEPT = 500
MINUTE_NS = 60 * 10 ** 9
INTERVALS = {"1m": MINUTE_NS, "5m": 5 * MINUTE_NS, "1h": 60 * MINUTE_NS,
             "1d": 1440 * MINUTE_NS}
TICKER_MINUTES = 1440
BID, ASK = c.BUY, c.SELL
# MDUpdateAction (PROTOCOL.md §3, 304)
NEW, CHANGE, DELETE = b"0", b"1", b"2"
# TradingStatus (FIX 326)
STATUS_HALTED, STATUS_READY = 2, 17


@dataclass(slots=True)
class Trade:
    trade_id: int
    price: int          # ticks
    qty: int            # lots
    aggressor: int      # c.BUY / c.SELL
    ts_ns: int          # the record's ts (`now` at the trade)
    seq: int            # the out record
    rpt_seq: int


@dataclass(slots=True)
class Kline:
    start_ns: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0     # lots
    quote: int = 0      # sum of price ticks x lots
    count: int = 0
    first_trade: int = 0
    last_trade: int = 0

    def add(self, t: Trade) -> None:
        if t.price > self.high:
            self.high = t.price
        if t.price < self.low:
            self.low = t.price
        self.close = t.price
        self.volume += t.qty
        self.quote += t.price * t.qty
        self.count += 1
        self.last_trade = t.trade_id


def new_kline(start_ns: int, t: Trade) -> Kline:
    return Kline(start_ns, t.price, t.price, t.price, t.price, t.qty, t.price * t.qty, 1,
                 t.trade_id, t.trade_id)


@dataclass(slots=True)
class Ticker:
    """The 24-hour window: open (first price), last, high, low, volume, quote volume, count."""
    window_start_ns: int
    open: int | None
    last: int | None
    high: int | None
    low: int | None
    volume: int
    quote: int
    count: int

    @property
    def change(self) -> int:
        return 0 if self.last is None else self.last - self.open


@dataclass(slots=True)
class Update:
    """What one record changed, in event order: `items` holds ("levels", [(side, price, lots,
    orders, action)]) runs and ("trade", Trade) entries, each one RptSeq (a run of levels is
    split by the feeds only if it does not fit a frame, and then counts once per frame:
    `rpt_seq` is assigned here, see `LEVELS_PER_MESSAGE`)."""
    seq: int
    ts_ns: int
    items: list = field(default_factory=list)
    first_rpt: int = 0
    last_rpt: int = 0
    status_changed: bool = False

    @property
    def book_changed(self) -> bool:
        return any(k == "levels" for k, _ in self.items)

    @property
    def trades(self) -> list[Trade]:
        return [x for k, x in self.items if k == "trade"]


# The most level entries one MarketDataIncremental frame holds (gateway.wire.max_entries(304)).
LEVELS_PER_MESSAGE = (0xFFFF - 12 - 20 - 4) // 22



def book_levels(bids: dict, asks: dict, depth: int = 0) -> dict[str, list[tuple[int, int, int]]]:
    """{'bids': [(price, lots, orders)], 'asks': [...]}, best first, of two sides kept as
    {price: (lots, orders)}; depth 0: every level. The publisher's books and the SDK's."""
    b = sorted(bids.items(), reverse=True)
    a = sorted(asks.items())
    if depth:
        b, a = b[:depth], a[:depth]
    return {"bids": [(p, q, n) for p, (q, n) in b], "asks": [(p, q, n) for p, (q, n) in a]}


class SymbolState:
    def __init__(self, symbol: str, symbol_id: int):
        self.symbol = symbol
        self.symbol_id = symbol_id
        self.seq = 0                # the last out record applied
        self.now = 0                # the highest record ts seen
        self.rpt_seq = 0
        self.status = STATUS_READY
        self.bids: dict[int, tuple[int, int]] = {}
        self.asks: dict[int, tuple[int, int]] = {}
        self.trades: deque[Trade] = deque(maxlen=RECENT_TRADES)
        self.klines: dict[str, deque[Kline]] = {k: deque(maxlen=KLINES_KEPT) for k in INTERVALS}
        self.minutes: deque[Kline] = deque()   # the 1 m klines of the ticker's window
        self.volume = self.quote = self.count = 0   # running sums over self.minutes

    # -- folding -------------------------------------------------------------------------
    def apply(self, seq: int, ts_ns: int, payload: bytes) -> Update:
        if seq != self.seq + 1 and self.seq:
            raise ValueError(f"{self.symbol}: record {seq} after {self.seq}")
        self.seq = seq
        if ts_ns > self.now:
            self.now = ts_ns
        self._expire()
        up = Update(seq, self.now, first_rpt=self.rpt_seq + 1)
        if payload:
            self._events(payload, up)
        up.last_rpt = self.rpt_seq
        return up

    def _events(self, payload: bytes, up: Update) -> None:
        run: list | None = None
        for ev in c.decode_events(payload):
            kind = ev[0]
            if kind == c.EV_LEVEL:
                _k, side, price, total, orders = ev
                book = self.bids if side == BID else self.asks
                if total == 0:
                    if book.pop(price, None) is None:
                        continue    # cannot happen on a sound stream; nothing to tell
                    action = DELETE
                else:
                    action = CHANGE if price in book else NEW
                    book[price] = (total, orders)
                if run is None:
                    run = []
                    up.items.append(("levels", run))
                run.append((side, price, total, orders, action))
                continue
            run = None
            if kind == c.EV_TRADE:
                self._trade(ev, up)
            elif kind == c.EV_MASS_CANCELLED and ev[1] == c.SCOPE_BOOK:
                gone = [(BID, p, 0, 0, DELETE) for p in self.bids] + \
                       [(ASK, p, 0, 0, DELETE) for p in self.asks]
                self.bids.clear()
                self.asks.clear()
                if gone:
                    up.items.append(("levels", gone))
            elif kind == c.EV_HALTED:
                self.status, up.status_changed = STATUS_HALTED, True
            elif kind == c.EV_RESUMED:
                self.status, up.status_changed = STATUS_READY, True
        # RptSeq: one per Trade, one per Incremental (a long run of levels is several)
        for k, x in up.items:
            if k == "trade":
                self.rpt_seq += 1
                x.rpt_seq = self.rpt_seq
            else:
                self.rpt_seq += -(-len(x) // LEVELS_PER_MESSAGE)

    def _trade(self, ev: tuple, up: Update) -> None:
        (_k, trade_id, _maker, _taker, _ma, _ta, price, qty, aggressor, *_rest) = ev
        t = Trade(trade_id, price, qty, aggressor, self.now, self.seq, 0)
        up.items.append(("trade", t))
        self.trades.append(t)
        for name, width in INTERVALS.items():
            start = self.now - self.now % width
            ks = self.klines[name]
            if ks and ks[-1].start_ns == start:
                ks[-1].add(t)
            else:
                ks.append(new_kline(start, t))
        start = self.now - self.now % MINUTE_NS
        if self.minutes and self.minutes[-1].start_ns == start:
            self.minutes[-1].add(t)
        else:
            self.minutes.append(new_kline(start, t))
        self.volume += t.qty
        self.quote += t.price * t.qty
        self.count += 1

    def _expire(self) -> None:
        """Drop the 1 m klines that left the ticker's window."""
        start = self.window_start()
        ms = self.minutes
        while ms and ms[0].start_ns < start:
            k = ms.popleft()
            self.volume -= k.volume
            self.quote -= k.quote
            self.count -= k.count

    def window_start(self) -> int:
        return self.now - self.now % MINUTE_NS - (TICKER_MINUTES - 1) * MINUTE_NS

    # -- views ---------------------------------------------------------------------------
    def ticker(self) -> Ticker:
        ms = self.minutes
        if not ms:
            return Ticker(self.window_start(), None, None, None, None, 0, 0, 0)
        return Ticker(self.window_start(), ms[0].open, ms[-1].close,
                      max(k.high for k in ms), min(k.low for k in ms),
                      self.volume, self.quote, self.count)

    def book(self, depth: int = 0) -> dict[str, list[tuple[int, int, int]]]:
        """{'bids': [(price, lots, orders)], 'asks': [...]}, best first (as CrossEngine.book)."""
        return book_levels(self.bids, self.asks, depth)
