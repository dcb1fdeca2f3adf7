"""Upstream events for the LiqEngine, and a small venue that drives it (tests and bench).

The encoders write the TradingEngine's and the CrossEngine's events in the layouts
liqengine/codec.py mirrors. ``LiqVenue`` feeds one LiqEngine (and, in lockstep, any shadow
engines: the naive reference) with sequenced records, compares every shadow's output with the
engine's byte for byte, audits after every record, and plays the CrossEngine's part for LIQ's
orders (it answers the commands the engine sends when the test says so).
"""
from __future__ import annotations

from liqengine import codec as c
from liqengine.engine import LiqEngine, LiqSpec

OPERATOR = 0xFFFF_FFFE
ORACLE = c.ORACLE_SOURCE_BASE
_TE = c.TE_EVENT_STRUCTS
_CE = c.CE_EVENT_STRUCTS
DEFAULT_SPECS = (LiqSpec(1, 1), LiqSpec(2, 100))


def te_account(account: int, balance: int) -> bytes:
    return _TE[4].pack(4, account, balance, balance, 0, 0)


def te_position(account: int, symbol: int, size: int, cost: int) -> bytes:
    return _TE[5].pack(5, account, symbol, size, cost, 0, 0, 0, 0, 1000, 0)


def te_liquidation(account: int, symbol: int, size: int, bp: int, value: int,
                   residue: int) -> bytes:
    return _TE[8].pack(8, account, symbol, size, bp, size * bp * value, residue)


def te_deficit(account: int, amount: int) -> bytes:
    return _TE[10].pack(10, account, amount)


def te_adl_applied(adl_id: int, account: int, symbol: int, qty: int, price: int,
                   realised: int = 0) -> bytes:
    return _TE[15].pack(15, adl_id, account, symbol, qty, price, realised)


def ce_accepted(order_id: int, coid: int, side: int, price: int, qty: int, tif: int) -> bytes:
    return _CE[1].pack(1, order_id, coid, c.LIQ_ACCOUNT, side, c.LIMIT, price, qty, tif, 0)


def ce_rejected(coid: int, code: int = 3002, order_id: int = 0) -> bytes:
    return _CE[2].pack(2, coid, c.LIQ_ACCOUNT, code, order_id)


def ce_trade(trade_id: int, maker_order: int, taker_order: int, maker_account: int,
             taker_account: int, price: int, qty: int, aggressor: int) -> bytes:
    return _CE[3].pack(3, trade_id, maker_order, taker_order, maker_account, taker_account,
                       price, qty, aggressor, 0, 0, 0, 0)


def ce_cancelled(order_id: int, coid: int, qty: int, kind: int = c.CE_CANCELLED,
                 reason: int = 0) -> bytes:
    return _CE[kind].pack(kind, order_id, coid, c.LIQ_ACCOUNT, qty, reason)


class LiqVenue:
    """One LiqEngine on ``n_shards`` TradingEngines and one CrossEngine per symbol."""

    def __init__(self, specs=DEFAULT_SPECS, n_shards: int = 2,
                 shadows=(), check: bool = True, window_ns: int = 200_000_000,
                 interval_ns: int = 1_000_000_000, output_budget: int | None = None) -> None:
        self.specs = {s.symbol: s for s in specs}
        self.n_shards = n_shards
        args = (list(specs), n_shards, {c.TE_SOURCE_BASE | n: n for n in range(n_shards)},
                {c.CE_SOURCE_BASE | s.symbol: s.symbol for s in specs}, [ORACLE])
        self.engine = LiqEngine(*args, close_out_window_ns=window_ns,
                                indicator_interval_ns=interval_ns)
        self.shadows = [cls(*args, close_out_window_ns=window_ns,
                            indicator_interval_ns=interval_ns) for cls in shadows]
        if output_budget is not None:
            for e in (self.engine, *self.shadows):
                e.output_budget = output_budget
        self.check = check
        self.seq = 0
        self.ts_ns = 1_000_000_000
        self.next_order_id = 1 << 40
        self.next_trade_id = 1
        self.orders: dict[int, dict] = {}    # LIQ's orders by client order id (sent or live)
        self.sent: list[int] = []            # client order ids of orders sent, in order
        self.cancels: list[tuple[int, int]] = []   # (symbol, coid) of cancels not answered
        self.adls: dict[int, tuple] = {}     # adl id -> (account, symbol, qty, price)
        self.indicators: dict[tuple[int, int], int] = {}
        self.outputs: list[bytes] = []
        self.log: list[tuple] = []           # every input record: (seq, ts_ns, kind, payload, source)
        self.positions: dict[tuple[int, int], tuple[int, int]] = {}   # the TradingEngines'

    # -- records ---------------------------------------------------------------------------------

    def apply(self, kind: int, payload: bytes, source: int = OPERATOR, dt_ns: int = 1000) -> list:
        self.seq += 1
        self.ts_ns += dt_ns
        self.log.append((self.seq, self.ts_ns, kind, payload, source))
        out = self.engine.apply(self.seq, self.ts_ns, kind, payload, source)
        route = self.engine.route
        for shadow in self.shadows:
            theirs = shadow.apply(self.seq, self.ts_ns, kind, payload, source)
            if theirs != out or shadow.route != route:
                raise AssertionError(f"record {self.seq}: {type(shadow).__name__} differs\n"
                                     f"{c.decode_events(theirs)}\n{c.decode_events(out)}")
        if self.check:
            self.engine.audit()
            for shadow in self.shadows:
                shadow.audit()
        self.outputs.append(out)
        events = c.decode_events(out)
        if self.check:
            self._check_adls(events)
        self._track(events)
        return events

    def _check_adls(self, events: list) -> None:
        """ADL only once the fund cannot hold the close-out: at the end of every record that
        sends an Adl (Adls go out last, after every credit of the record), its close-out's
        exposure at mark, max(0, (bp - mark) x side x lots x value), is above the free fund
        (fund - debt - reserves), or the free fund is at or below zero, or its lots are fewer than the
        contract's min_qty (the market cannot take them)."""
        e = self.engine
        free = e.fund - e.fund_debt - e.reserved
        for ev in events:
            if ev[0] != c.ADL:
                continue
            co = e.closeouts[e.adls[ev[1]][0]]
            spec = e.specs[co.symbol]
            mark = e.marks.get(co.symbol, 0)
            exposure = max(0, (co.bp - mark) * co.side * co.qty * spec.value) if mark else 0
            if not (free <= 0 or free < exposure or co.qty < spec.min_qty):
                raise AssertionError(f"record {self.seq}: Adl {ev[1]} of close-out {co.cid} "
                                     f"with {free} of the fund free, its exposure {exposure}")

    def _track(self, events: list) -> None:
        for ev in events:
            if ev[0] == c.CE_COMMAND:
                symbol, kind, cmd = ev[1], ev[2], ev[4]
                if kind == c.CE_NEW_ORDER:
                    coid, price, qty, _acct, side, _t, tif, _f, _s = c.CE_NEW_ORDER_S.unpack(cmd)
                    self.orders[coid] = {"symbol": symbol, "side": side, "price": price,
                                         "qty": qty, "tif": tif, "order_id": 0}
                    self.sent.append(coid)
                else:
                    _oid, coid, _acct = c.CE_CANCEL_S.unpack(cmd)
                    self.cancels.append((symbol, coid))
            elif ev[0] == c.ADL:
                self.adls[ev[1]] = ev[2:]
            elif ev[0] == c.ADL_INDICATOR:
                self.indicators[(ev[1], ev[2])] = ev[3]

    def tick(self, dt_ns: int = 1000) -> list:
        return self.apply(c.KIND_TICK, b"", OPERATOR, dt_ns)

    def mark(self, symbol: int, price: int) -> list:
        return self.apply(c.MARK_PRICE, c.mark_price(symbol, price), ORACLE)

    def deposit(self, transfer_id: int, amount: int) -> list:
        return self.apply(c.FUND_DEPOSIT, c.fund_deposit(transfer_id, amount), OPERATOR)

    def te(self, shard: int, *events: bytes) -> list:
        return self.apply(0, b"".join(events), c.TE_SOURCE_BASE | shard)

    def ce(self, symbol: int, *events: bytes) -> list:
        return self.apply(0, b"".join(events), c.CE_SOURCE_BASE | symbol)

    # -- TradingEngine's part --------------------------------------------------------------------

    def position(self, account: int, symbol: int, size: int, entry: int,
                 balance: int | None = None) -> list:
        cost = size * entry * self.specs[symbol].value
        self.positions[(account, symbol)] = (size, cost)
        evs = [te_position(account, symbol, size, cost)]
        if balance is not None:
            evs.append(te_account(account, balance))
        return self.te(account % self.n_shards, *evs)

    def hand_off(self, account: int, symbol: int, size: int, bp: int, residue: int = 0) -> list:
        return self.te(account % self.n_shards,
                       te_liquidation(account, symbol, size, bp, self.specs[symbol].value,
                                      residue),
                       te_position(account, symbol, 0, 0))

    def apply_adl(self, adl_id: int, closed: int | None = None) -> list:
        """The TradingEngine applies Adl ``adl_id``, closing ``closed`` lots (all by default)."""
        account, symbol, qty, price = self.adls.pop(adl_id)
        n = abs(qty) if closed is None else closed
        signed = n if qty > 0 else -n
        size, cost = self.positions.get((account, symbol), (0, 0))
        if n and (n > abs(size) or (size > 0) == (signed > 0)):
            raise ValueError(f"Adl {adl_id} cannot close {n} of a position of {size}")
        if n:
            cost -= cost * n // abs(size) if n < abs(size) else cost
            size += signed
        self.positions[(account, symbol)] = (size, cost)
        return self.te(account % self.n_shards,
                       te_adl_applied(adl_id, account, symbol, signed, price),
                       te_position(account, symbol, size, cost))

    # -- the CrossEngine's part for LIQ's orders --------------------------------------------------

    def accept(self, coid: int, fills: tuple = (), reason: int = 0) -> list:
        """The CrossEngine takes order ``coid``: accepted, then it takes ``fills`` [(qty,
        price)] as taker; an IOC's rest expires (for ``reason``: 6 is the CrossEngine's
        matching limit, with the book still crossing it)."""
        o = self.orders[coid]
        o["order_id"] = self.next_order_id
        self.next_order_id += 1
        evs = [ce_accepted(o["order_id"], coid, o["side"], o["price"], o["qty"], o["tif"])]
        for qty, price in fills:
            evs.append(self._trade(o, qty, price, taker=True))
        if o["tif"] == c.IOC:
            if o["qty"]:
                evs.append(ce_cancelled(o["order_id"], coid, o["qty"], c.CE_EXPIRED, reason))
            del self.orders[coid]
        elif o["qty"] == 0:
            del self.orders[coid]
        return self.ce(o["symbol"], *evs)

    def reject(self, coid: int) -> list:
        o = self.orders.pop(coid)
        return self.ce(o["symbol"], ce_rejected(coid))

    def _trade(self, o: dict, qty: int, price: int, taker: bool) -> bytes:
        other = 77
        liq_side = o["side"]
        other_side = c.BUY if liq_side == c.SELL else c.SELL
        o["qty"] -= qty
        self.next_trade_id += 1
        if taker:
            return ce_trade(self.next_trade_id, 9, o["order_id"], other, c.LIQ_ACCOUNT, price,
                            qty, liq_side)
        return ce_trade(self.next_trade_id, o["order_id"], 9, c.LIQ_ACCOUNT, other, price,
                        qty, other_side)

    def fill(self, coid: int, qty: int, price: int | None = None) -> list:
        """A resting order of LIQ is hit (as maker, at its own price unless told)."""
        o = self.orders[coid]
        ev = self._trade(o, qty, o["price"] if price is None else price, taker=False)
        if o["qty"] == 0:
            del self.orders[coid]
        return self.ce(o["symbol"], ev)

    def answer_cancel(self) -> list:
        symbol, coid = self.cancels.pop(0)
        o = self.orders.pop(coid, None)
        if o is None:
            return self.ce(symbol, ce_rejected(coid, 3005))
        return self.ce(symbol, ce_cancelled(o["order_id"], coid, o["qty"]))
