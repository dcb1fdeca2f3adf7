"""The CrossEngine's semantics in plain Python: the test oracle, never used at run time.

It must stay obviously correct rather than fast: the compiled engine (crossengine/engine.pyx)
is checked against it event for event and snapshot for snapshot.

Rules (docs/crossengine.md has the worked cases):
* Price-time priority. A taker matches the best opposite level first, and within a level
  the oldest order first; the trade price is the maker's.
* Validation order of NewOrder: halted, side, order type, time in force, stp mode, flags,
  price (range, then tick; market orders ignore price), qty (min, max), post-only
  combination, client order id in use, capacity, post-only crossing, FOK fillability.
* Market orders never rest: the unfilled rest expires (IOC semantics; FOK allowed).
* Self-trade prevention is the taker's mode, applied when the head maker of the best
  level has the taker's account: cancel newest (the taker's rest), cancel oldest (the maker,
  then go on), cancel both, or decrement and cancel (both lose min(qty); whichever reaches
  zero is gone; reported as cancels of that quantity).
* FOK is fillable when walking the book in matching order fills it fully, where a
  self-trade stops the walk, except in cancel-oldest mode, which skips the maker.
* Amend: a pure reduction of quantity at the same price keeps priority; anything else
  takes the order out and enters it again at the tail, matching first if it crosses.
* Level-2 deltas are emitted last, one per level the command changed, in first-touch order.
* Bounds: a taker meets at most max_fills makers (a trade or a self-trade step each); if more
  of the book still crosses it then, its rest expires (reason 6), whatever its time in force,
  and a FOK counts as fillable only within those makers. An account rests at most
  max_account_orders orders (a GTC limit order beyond is refused). CancelAll and MassCancel
  answer with one MassCancelled event and the count; MassCancel lists no level.
* Order ids run out at symbol_id << 40 | (2**40 - 1): NewOrder is refused after that.
* MassCancel, Halt and Resume are the operator's: from a source id below
  mq.sources.OPERATOR_SOURCE_MIN they are refused (source_not_operator) and change nothing.
"""
from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass

from crossengine import codec as c
from mq.sources import OPERATOR_SOURCE, is_operator

SNAP_HEADER = c.SNAP_HEADER_V3
SNAP_ORDER = struct.Struct("<QQIBqQQBB")
MAGIC = b"SQCE"
VERSION = 3
REASON_ADMIN = c.REASON_ADMIN


@dataclass
class Order:
    order_id: int
    client_order_id: int
    account: int
    side: int
    price: int
    leaves: int
    filled: int
    flags: int
    stp: int


class ReferenceEngine:
    def __init__(self, symbol_id: int = 1, tick_size: int = 1, min_qty: int = 1,
                 max_qty: int = 10**9, max_price: int = 2**62, max_orders: int = 10_000_000,
                 max_fills: int = c.MAX_FILLS_LIMIT,
                 max_account_orders: int = c.DEFAULT_ACCOUNT_ORDERS,
                 te_sources: tuple[int, ...] | list[int] = (), n_shards: int = 1):
        # Configuration kept in the snapshot; the oracle applies commands only (routes and
        # TradingEngine payloads are the compiled engine's, tested on their own).
        self.te_sources = list(te_sources)
        self.n_shards = n_shards
        self.symbol_id = symbol_id
        self.tick_size = tick_size
        self.min_qty = min_qty
        self.max_qty = max_qty
        self.max_price = max_price
        self.max_orders = max_orders
        self.max_fills = max_fills
        self.max_account_orders = max_account_orders
        self.order_counter = 0
        self.trade_id = 0
        self.halted = False
        self.orders: dict[int, Order] = {}
        self.by_client: dict[tuple[int, int], int] = {}
        self.resting: dict[int, int] = {}   # account -> its orders in the book
        # price -> FIFO list of order ids; prices kept sorted ascending per side
        self.levels = {c.BUY: {}, c.SELL: {}}
        self.prices = {c.BUY: [], c.SELL: []}

    # -- book helpers ---------------------------------------------------------------------
    def _best(self, side: int) -> int | None:
        prices = self.prices[side]
        if not prices:
            return None
        return prices[-1] if side == c.BUY else prices[0]

    def _level_order_prices(self, side: int) -> list[int]:
        """Prices best first."""
        return list(reversed(self.prices[side])) if side == c.BUY else list(self.prices[side])

    def _add(self, o: Order, touched: list) -> None:
        lv = self.levels[o.side]
        if o.price not in lv:
            lv[o.price] = []
            bisect.insort(self.prices[o.side], o.price)
        lv[o.price].append(o.order_id)
        self.orders[o.order_id] = o
        self.resting[o.account] = self.resting.get(o.account, 0) + 1
        self.by_client[(o.account, o.client_order_id)] = o.order_id
        self._touch(touched, o.side, o.price)

    def _remove(self, o: Order, touched: list) -> None:
        lv = self.levels[o.side]
        queue = lv[o.price]
        queue.remove(o.order_id)
        if not queue:
            del lv[o.price]
            self.prices[o.side].remove(o.price)
        del self.orders[o.order_id]
        del self.by_client[(o.account, o.client_order_id)]
        self.resting[o.account] -= 1
        self._touch(touched, o.side, o.price)

    @staticmethod
    def _touch(touched: list, side: int, price: int) -> None:
        if (side, price) not in touched:
            touched.append((side, price))

    def _level_events(self, touched: list) -> bytes:
        out = b""
        for side, price in touched:
            ids = self.levels[side].get(price, [])
            total = sum(self.orders[i].leaves for i in ids)
            out += c.EVENT_STRUCTS[c.EV_LEVEL].pack(c.EV_LEVEL, side, price, total, len(ids))
        return out

    def _price_ok(self, price: int) -> int:
        if price <= 0 or price > self.max_price:
            return c.CODES["price_out_of_range"]
        if price % self.tick_size:
            return c.CODES["price_not_on_tick"]
        return 0

    @staticmethod
    def _crosses(side: int, price: int, best_opposite: int | None, market: bool) -> bool:
        if best_opposite is None:
            return False
        if market:
            return True
        return best_opposite <= price if side == c.BUY else best_opposite >= price

    # -- events ---------------------------------------------------------------------------
    @staticmethod
    def _reject(client_order_id: int, account: int, code: int, order_id: int = 0) -> bytes:
        return c.EVENT_STRUCTS[c.EV_REJECTED].pack(c.EV_REJECTED, client_order_id, account,
                                                   code, order_id)

    @staticmethod
    def _cancelled(kind: int, o: Order, qty: int, reason: int) -> bytes:
        return c.EVENT_STRUCTS[kind].pack(kind, o.order_id, o.client_order_id, o.account, qty,
                                          reason)

    # -- apply ----------------------------------------------------------------------------
    def apply(self, seq: int, ts_ns: int, kind: int, payload: bytes,
              source: int = OPERATOR_SOURCE) -> bytes:
        if kind in (c.MASS_CANCEL, c.HALT, c.RESUME) and not is_operator(source):
            return self._reject(0, 0, c.CODES["source_not_operator"])
        handler = {c.NEW_ORDER: self._new_order, c.CANCEL: self._cancel, c.AMEND: self._amend,
                   c.CANCEL_ALL: self._cancel_all, c.MASS_CANCEL: self._mass_cancel,
                   c.HALT: self._halt, c.RESUME: self._resume}.get(kind)
        if kind == c.KIND_TICK:
            return b""
        if handler is None:
            return self._reject(0, 0, c.CODES["command_malformed"])
        s = c.COMMAND_STRUCTS[kind]
        if len(payload) != (s.size if s else 0):
            return self._reject(0, 0, c.CODES["command_malformed"])
        return handler(*(s.unpack(payload) if s else ()))

    def _new_order(self, cl_id: int, price: int, qty: int, account: int, side: int,
                   ord_type: int, tif: int, flags: int, stp: int) -> bytes:
        code = 0
        market = ord_type == c.MARKET
        if self.halted:
            code = c.CODES["symbol_halted"]
        elif side not in (c.BUY, c.SELL):
            code = c.CODES["side_invalid"]
        elif ord_type not in (c.MARKET, c.LIMIT):
            code = c.CODES["order_type_invalid"]
        elif tif not in (c.GTC, c.IOC, c.FOK):
            code = c.CODES["time_in_force_invalid"]
        elif stp > c.STP_DECREMENT:
            code = c.CODES["stp_mode_invalid"]
        elif flags & ~(c.FLAG_REDUCE_ONLY | c.FLAG_POST_ONLY):
            code = c.CODES["command_malformed"]
        elif not market and self._price_ok(price):
            code = self._price_ok(price)
        elif qty < self.min_qty:
            code = c.CODES["qty_below_min"]
        elif qty > self.max_qty:
            code = c.CODES["qty_above_max"]
        elif flags & c.FLAG_POST_ONLY and (market or tif != c.GTC):
            code = c.CODES["time_in_force_invalid"]
        elif (account, cl_id) in self.by_client:
            code = c.CODES["client_order_id_in_use"]
        elif len(self.orders) >= self.max_orders:
            code = c.CODES["book_full"]
        elif self.order_counter >= c.ORDER_COUNTER_MAX:
            code = c.CODES["order_ids_exhausted"]
        elif not market and tif == c.GTC and \
                self.resting.get(account, 0) >= self.max_account_orders:
            code = c.CODES["account_order_limit"]
        if code:
            return self._reject(cl_id, account, code)
        if market:
            price = 0
        opposite = c.SELL if side == c.BUY else c.BUY
        if flags & c.FLAG_POST_ONLY and self._crosses(side, price, self._best(opposite), False):
            return self._reject(cl_id, account, c.CODES["post_only_would_take"])
        if tif == c.FOK and not self._fok_fillable(side, price, market, qty, account, stp):
            return self._reject(cl_id, account, c.CODES["fok_not_fillable"])
        self.order_counter += 1
        order_id = (self.symbol_id << 40) | self.order_counter
        out = c.EVENT_STRUCTS[c.EV_ACCEPTED].pack(c.EV_ACCEPTED, order_id, cl_id, account, side,
                                                  ord_type, price, qty, tif, flags)
        taker = Order(order_id, cl_id, account, side, price, qty, 0, flags, stp)
        touched: list = []
        events, limited = self._match(taker, market, touched)
        out += events
        if taker.leaves:
            if limited:
                out += self._cancelled(c.EV_EXPIRED, taker, taker.leaves, c.REASON_MATCH_LIMIT)
            elif not market and tif == c.GTC:
                self._add(taker, touched)
            else:
                out += self._cancelled(c.EV_EXPIRED, taker, taker.leaves, c.REASON_IOC_REMAINDER)
        return out + self._level_events(touched)

    def _fok_fillable(self, side, price, market, qty, account, stp) -> bool:
        opposite = c.SELL if side == c.BUY else c.BUY
        got = 0
        steps = 0
        for lp in self._level_order_prices(opposite):
            if not self._crosses(side, price, lp, market):
                break
            for oid in self.levels[opposite][lp]:
                if steps == self.max_fills:
                    return False
                steps += 1
                o = self.orders[oid]
                if o.account == account and stp != c.STP_NONE:
                    if stp == c.STP_CANCEL_OLDEST:
                        continue
                    return got >= qty
                got += o.leaves
                if got >= qty:
                    return True
        return got >= qty

    def _match(self, taker: Order, market: bool, touched: list) -> tuple[bytes, bool]:
        """Match the taker against the book; taker.leaves is what is left. A taker
        cancelled by self-trade prevention ends with leaves 0. The flag says it stopped at
        max_fills makers with the book still crossing it."""
        out = b""
        steps = 0
        opposite = c.SELL if taker.side == c.BUY else c.BUY
        trade_s = c.EVENT_STRUCTS[c.EV_TRADE]
        while taker.leaves:
            best = self._best(opposite)
            if not self._crosses(taker.side, taker.price, best, market):
                break
            if steps == self.max_fills:
                return out, True
            steps += 1
            maker = self.orders[self.levels[opposite][best][0]]
            if maker.account == taker.account and taker.stp != c.STP_NONE:
                mode = taker.stp
                if mode == c.STP_CANCEL_NEWEST:
                    out += self._cancelled(c.EV_CANCELLED, taker, taker.leaves, c.REASON_SELF_TRADE)
                    taker.leaves = 0
                elif mode == c.STP_CANCEL_OLDEST:
                    out += self._cancelled(c.EV_CANCELLED, maker, maker.leaves, c.REASON_SELF_TRADE)
                    self._remove(maker, touched)
                elif mode == c.STP_CANCEL_BOTH:
                    out += self._cancelled(c.EV_CANCELLED, maker, maker.leaves, c.REASON_SELF_TRADE)
                    self._remove(maker, touched)
                    out += self._cancelled(c.EV_CANCELLED, taker, taker.leaves, c.REASON_SELF_TRADE)
                    taker.leaves = 0
                else:  # decrement and cancel
                    d = min(maker.leaves, taker.leaves)
                    out += self._cancelled(c.EV_CANCELLED, maker, d, c.REASON_SELF_TRADE)
                    out += self._cancelled(c.EV_CANCELLED, taker, d, c.REASON_SELF_TRADE)
                    taker.leaves -= d
                    if maker.leaves == d:
                        self._remove(maker, touched)
                    else:
                        maker.leaves -= d
                        self._touch(touched, maker.side, maker.price)
                continue
            q = min(maker.leaves, taker.leaves)
            self.trade_id += 1
            maker.leaves -= q
            maker.filled += q
            taker.leaves -= q
            taker.filled += q
            out += trade_s.pack(c.EV_TRADE, self.trade_id, maker.order_id, taker.order_id,
                                maker.account, taker.account, maker.price, q, taker.side,
                                maker.leaves, taker.leaves, maker.flags, taker.flags)
            if maker.leaves == 0:
                self._remove(maker, touched)
            else:
                self._touch(touched, maker.side, maker.price)
        return out, False

    def _find(self, order_id: int, cl_id: int, account: int) -> Order | None:
        if order_id:
            o = self.orders.get(order_id)
            if o is None or (account and o.account != account):
                return None
            return o
        oid = self.by_client.get((account, cl_id))
        return self.orders[oid] if oid is not None else None

    def _cancel(self, order_id: int, cl_id: int, account: int) -> bytes:
        o = self._find(order_id, cl_id, account)
        if o is None:
            return self._reject(cl_id, account, c.CODES["order_unknown"], order_id)
        touched: list = []
        self._remove(o, touched)
        return self._cancelled(c.EV_CANCELLED, o, o.leaves, c.REASON_CLIENT) + \
            self._level_events(touched)

    def _amend(self, order_id: int, cl_id: int, account: int, price: int, qty: int) -> bytes:
        if self.halted:
            return self._reject(cl_id, account, c.CODES["symbol_halted"], order_id)
        o = self._find(order_id, cl_id, account)
        if o is None:
            return self._reject(cl_id, account, c.CODES["order_unknown"], order_id)
        new_price = price or o.price
        total = o.leaves + o.filled
        new_total = qty or total
        code = self._price_ok(new_price)
        if not code:
            if new_total != total and new_total > self.max_qty:
                code = c.CODES["qty_above_max"]
            elif new_total != total and new_total < self.min_qty:
                code = c.CODES["qty_below_min"]
            elif new_total <= o.filled:
                code = c.CODES["amend_qty_not_above_filled"]
            elif new_price == o.price and new_total == total:
                code = c.CODES["amend_nothing_to_change"]
        opposite = c.SELL if o.side == c.BUY else c.BUY
        if not code and o.flags & c.FLAG_POST_ONLY and \
                self._crosses(o.side, new_price, self._best(opposite), False):
            code = c.CODES["post_only_would_take"]
        if code:
            return self._reject(o.client_order_id, o.account, code, o.order_id)
        new_leaves = new_total - o.filled
        touched: list = []
        amended = c.EVENT_STRUCTS[c.EV_AMENDED]
        if new_price == o.price and new_leaves < o.leaves:
            o.leaves = new_leaves
            self._touch(touched, o.side, o.price)
            return amended.pack(c.EV_AMENDED, o.order_id, o.client_order_id, o.account,
                                o.price, o.leaves, new_total, 1) + self._level_events(touched)
        self._remove(o, touched)
        o.price = new_price
        o.leaves = new_leaves
        out = amended.pack(c.EV_AMENDED, o.order_id, o.client_order_id, o.account, o.price,
                           o.leaves, new_total, 0)
        events, limited = self._match(o, False, touched)
        out += events
        if o.leaves and limited:
            # stopped at max_fills with the book still crossing it: it cannot rest
            out += self._cancelled(c.EV_EXPIRED, o, o.leaves, c.REASON_MATCH_LIMIT)
        elif o.leaves:
            self._add(o, touched)
        return out + self._level_events(touched)

    def _cancel_all(self, account: int, side: int) -> bytes:
        if side not in (0, c.BUY, c.SELL):
            return self._reject(0, account, c.CODES["side_invalid"])
        touched: list = []
        n = 0
        for oid in sorted(self.orders):
            o = self.orders[oid]
            if o.account == account and side in (0, o.side):
                self._remove(o, touched)
                n += 1
        return self._mass_event(c.SCOPE_ACCOUNT, account, side, c.REASON_MASS_CANCEL, n) + \
            self._level_events(touched)

    def _mass_cancel(self) -> bytes:
        n = len(self.orders)
        for oid in sorted(self.orders):
            self._remove(self.orders[oid], [])
        return self._mass_event(c.SCOPE_BOOK, 0, 0, REASON_ADMIN, n)

    def _mass_event(self, scope: int, account: int, side: int, reason: int, n: int) -> bytes:
        last_id = (self.symbol_id << 40) | self.order_counter
        return c.EVENT_STRUCTS[c.EV_MASS_CANCELLED].pack(c.EV_MASS_CANCELLED, scope, account,
                                                         side, reason, n, last_id)

    def _halt(self) -> bytes:
        self.halted = True
        return bytes([c.EV_HALTED])

    def _resume(self) -> bytes:
        self.halted = False
        return bytes([c.EV_RESUMED])

    def book(self, depth: int = 0) -> dict[str, list[tuple[int, int, int]]]:
        """{'bids': [(price, total, count)], 'asks': [...]}, best first (as the engine's)."""
        if depth < 0:
            raise ValueError(f"book depth {depth}: 0 (every level) or a positive count")
        out = {}
        for side, name in ((c.BUY, "bids"), (c.SELL, "asks")):
            rows = [(p, sum(self.orders[i].leaves for i in self.levels[side][p]),
                     len(self.levels[side][p])) for p in self._level_order_prices(side)]
            out[name] = rows[:depth] if depth else rows
        return out

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Canonical: config, counters, then orders side by side (buys then sells), levels
        best first, each level in time priority."""
        parts = [SNAP_HEADER.pack(MAGIC, VERSION, self.symbol_id, self.tick_size, self.min_qty,
                                  self.max_qty, self.max_price, self.max_orders,
                                  self.max_fills, self.max_account_orders,
                                  self.order_counter, self.trade_id, int(self.halted),
                                  len(self.orders), self.n_shards, len(self.te_sources)),
                 struct.pack(f"<{len(self.te_sources)}I", *self.te_sources)]
        for side in (c.BUY, c.SELL):
            for price in self._level_order_prices(side):
                for oid in self.levels[side][price]:
                    o = self.orders[oid]
                    parts.append(SNAP_ORDER.pack(o.order_id, o.client_order_id, o.account,
                                                 o.side, o.price, o.leaves, o.filled, o.flags,
                                                 o.stp))
        return b"".join(parts)

    @classmethod
    def restore(cls, data: bytes) -> ReferenceEngine:
        data = c.upgrade_snapshot(data)
        (magic, version, symbol_id, tick, min_qty, max_qty, max_price, max_orders, max_fills,
         max_account_orders, counter, trade_id, halted, n, n_shards,
         n_te) = SNAP_HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise ValueError("not a CrossEngine snapshot of this version")
        te_sources = struct.unpack_from(f"<{n_te}I", data, SNAP_HEADER.size)
        eng = cls(symbol_id, tick, min_qty, max_qty, max_price, max_orders, max_fills,
                  max_account_orders, te_sources, n_shards)
        eng.order_counter, eng.trade_id, eng.halted = counter, trade_id, bool(halted)
        off = SNAP_HEADER.size + 4 * n_te
        for _ in range(n):
            eng._add(Order(*SNAP_ORDER.unpack_from(data, off)), [])
            off += SNAP_ORDER.size
        # dict order = id order, as if the orders had been entered in that order
        eng.orders = dict(sorted(eng.orders.items()))
        return eng

    def state_hash(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()
