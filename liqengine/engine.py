"""The LiqEngine: takeover, close-out, insurance fund and auto-deleveraging (docs/liqengine.md).

Contract. ``apply(seq, ts_ns, kind, payload, source) -> bytes`` takes one record of ``in.liq``
(ticks, marks, the operator's FundDeposit, the output payloads of ``out.te.N`` and
``out.ce.SYM``) and returns the events it caused (liqengine/codec.py); ``route`` is then the
route of that output (bit ``symbol % 64`` for a CrossEngineCommand, bit ``account % n_shards``
for an Adl). ``apply_frame`` does the same for a whole mq frame. No clock (time is the
record's ``ts_ns``), no I/O, no randomness, integers only, every iteration whose order reaches
the output is over insertion-ordered dicts or sorted keys. Business rejections are Rejected
events with 4xxx codes; a payload of a configured engine source that does not parse, or an
event that contradicts the books (a fill of more than an order's rest, an AdlApplied for no
Adl), raises ``EngineHalted``.

What it keeps: the insurance fund (LIQ's wallet balance, never below zero) and the fund's debt
(a deficit the fund could not pay: every later credit repays it first); one *close-out* per
takeover (symbol, side, quantity left, bankruptcy price, phase, its live order, its Adls in
flight); the Adls in flight; its view of every client position and balance (from the
TradingEngines' status events) and of the marks; the ADL indicators it published; clearing's
balance and positions (the other engines' side of every leg, so the books balance alone).

Close-out of one takeover (docs/liqengine.md §6, §8): LIMIT (a GTC limit at the bankruptcy
price) → after ``close_out_window_ns`` of sequenced time, CANCELLING (a cancel sent) → IOC (an
IOC at the worst price the free fund can pay for) → HOLD while the free fund (fund - debt -
reserves) is above zero (the fund takes the rest over, reserving its exposure at mark, and a window later
sends a fresh IOC) → ADL once the fund is exhausted (the rest, at the bankruptcy price, to the
opposite side ranked by score; held close-outs newest first when a mark or a new hold takes
the reserves past the fund) → done when nothing is left. Each phase that ends with its order
gone moves on; a rejected order or cancel moves on too.

Indexes (the naive liqengine/reference.py has none): the close-outs of each CrossEngine order
id and client order id, the close-outs in HOLD, the deadlines in a queue (they come in order: the window is fixed and
sequenced time never runs backwards), the holders of each symbol and the symbols of each
account, and a cached ranking per (symbol, side) that a change of any figure it reads drops.
A ranking sorts by an integer key (the score scaled by 2**64, floored) and sorts each run of
equal keys again by the exact rational score, so the order is exactly the rationals' order.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections import deque
from fractions import Fraction
from typing import NamedTuple

import msgpack

from liqengine import codec as c
from mq.record import decode, encode
from mq.sources import OPERATOR_SOURCE, OPERATOR_SOURCE_MIN

PPM = 1_000_000
SNAPSHOT_VERSION = 4
SNAPSHOT_VERSIONS = (1, 2, 3, 4)     # 1: before HOLD; 2: before orders were cut to max_qty;
#                                      3: before the specs kept band_ppm
CLOSE_OUT_WINDOW_NS = 200_000_000      # a limit at the bankruptcy price rests this long
INDICATOR_INTERVAL_NS = 1_000_000_000  # ADL indicators are recomputed at most this often
OUTPUT_BUDGET = 256 << 10              # bytes after which a record defers ADL and indicators
# The output (a quarter of the budget) after which a record defers the close-outs it sends to
# the market: the cancel of a limit whose window ended, and every IOC (a window's end, a cancel
# or a matching limit answered, a return from ADL): they go in the next record (docs/liqengine.md)
COMMAND_SHARE = 4
MAX_ADLS_PER_SHARD = 4                 # Adls for one shard in one record (the TradingEngine's
#                                        MAX_ADLS_PER_RECORD: more stops it, docs/liqengine.md §5)
MAX_MONEY = 1 << 62
LIMIT, CANCELLING, IOC_PHASE, ADL_PHASE, HOLD = 1, 2, 3, 4, 5
SCALE_BITS = 64

_PACK = {k: s.pack for k, s in c.EVENT_STRUCTS.items()}
_TE = {k: s.unpack_from for k, s in c.TE_EVENT_STRUCTS.items()}
_CE = {k: s.unpack_from for k, s in c.CE_EVENT_STRUCTS.items()}
_CODE = c.CODES
_ADL_SIZE = c.EVENT_SIZES[c.ADL]
_IND_SIZE = c.EVENT_SIZES[c.ADL_INDICATOR]


class EngineHalted(RuntimeError):
    """A broken invariant or a deployment mismatch: the engine must not go on."""


class LiqSpec(NamedTuple):
    """What the LiqEngine reads of a contract spec (tradingengine.margin.ContractSpec has it)."""
    symbol: int
    value: int                  # minor units per tick per lot
    max_price: int = 1_000_000_000
    max_qty: int = 1_000_000_000   # the CrossEngine's largest order: bigger close-outs go in parts
    min_qty: int = 1               # its smallest: fewer lots cannot trade, they are deleveraged
    band_ppm: int = 0              # an IOC's price stays within mark * (1 -/+ band) (0: no band)


class CloseOut:
    """The close-out of one takeover. ``side`` is LIQ's (+1 long, -1 short); ``qty`` the lots
    LIQ still holds of it (> 0); ``unassigned`` the lots in ADL phase not yet sent in an Adl;
    ``adl_out`` the lots in Adls in flight; ``reserved`` the most the live IOC can lose, or in
    HOLD the held lots' exposure at mark; ``order_left`` the lots of the live order not yet
    filled (an order is at most the contract's max_qty: a bigger close-out goes in parts)."""
    __slots__ = ("cid", "shard", "account", "symbol", "side", "qty", "bp", "phase", "coid",
                 "order_id", "deadline", "arm", "unassigned", "adl_out", "reserved", "tried",
                 "ioc_price", "order_left")

    def __init__(self, cid, shard, account, symbol, side, qty, bp) -> None:
        self.cid = cid
        self.shard = shard
        self.account = account
        self.symbol = symbol
        self.side = side
        self.qty = qty
        self.bp = bp
        self.phase = LIMIT
        self.coid = 0            # client order id of the live order or cancel (0: none)
        self.order_id = 0        # the CrossEngine's id of the live order (0: not accepted yet)
        self.deadline = 0        # ts_ns at which the phase times out (0: none)
        self.arm = 0             # the order in which deadlines were armed (ties of deadline)
        self.unassigned = 0
        self.adl_out = 0
        self.reserved = 0
        self.tried: dict[int, None] = {}   # accounts whose Adl fell short for this close-out
        self.ioc_price = 0
        self.order_left = 0

    def row(self) -> list:
        return [self.cid, self.shard, self.account, self.symbol, self.side, self.qty, self.bp,
                self.phase, self.coid, self.order_id, self.deadline, self.arm, self.unassigned,
                self.adl_out, self.reserved, list(self.tried), self.ioc_price, self.order_left]

    @classmethod
    def from_row(cls, r: list) -> CloseOut:
        co = cls(*r[:7])
        (co.phase, co.coid, co.order_id, co.deadline, co.arm, co.unassigned, co.adl_out,
         co.reserved, tried, co.ioc_price) = r[7:17]
        co.tried = dict.fromkeys(tried)
        # versions 1 and 2 sent the whole close-out in one order
        co.order_left = r[17] if len(r) > 17 else (co.qty if co.coid else 0)
        return co


def _score(size: int, cost: int, mark: int, value: int, equity: int) -> tuple[int, int]:
    """The ADL score of a position as a rational (num, den > 0): PNL% x effective leverage,
    or PNL% / effective leverage when PNL% < 0. PNL% = upnl / |cost|, effective leverage =
    |size| x mark x value / equity; an equity at or below zero counts as 1 minor unit (the
    highest leverage), and with no mark the position is valued at cost (PNL 0)."""
    abs_cost = cost if cost > 0 else -cost
    if mark:
        notional = size * mark * value
        upnl = notional - cost
        notional = notional if notional > 0 else -notional
    else:
        upnl = 0
        notional = abs_cost
    if equity <= 0:
        equity = 1
    if upnl >= 0:
        return upnl * notional, abs_cost * equity
    return upnl * equity, abs_cost * notional


class _Exact:
    """A score num / den (den > 0) that sorts higher first, comparing exactly (no rounding).
    It is the second item of a ranking key, compared only when the scaled keys tie."""
    __slots__ = ("num", "den")

    def __init__(self, num: int, den: int) -> None:
        self.num = num
        self.den = den

    def __lt__(self, other: _Exact) -> bool:
        return self.num * other.den > other.num * self.den

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Exact) and self.num * other.den == other.num * self.den

    __hash__ = None   # type: ignore[assignment]


class LiqEngine:
    """Pure: the same records give the same outputs and state_hash(). See the module doc."""

    def __init__(self, specs: list, n_shards: int, te_sources: dict | None = None,
                 ce_sources: dict | None = None, oracle_sources: list | None = None,
                 close_out_window_ns: int = CLOSE_OUT_WINDOW_NS,
                 indicator_interval_ns: int = INDICATOR_INTERVAL_NS,
                 output_budget: int = OUTPUT_BUDGET) -> None:
        if not 1 <= n_shards <= c.MAX_SHARDS:
            raise ValueError(f"n_shards {n_shards} not in 1 .. {c.MAX_SHARDS} (bit 63 is LIQ's)")
        self.specs: dict[int, LiqSpec] = {}
        for s in sorted(specs, key=lambda s: s.symbol):
            if s.symbol in self.specs:
                raise ValueError("two contract specs share a symbol")
            spec = LiqSpec(s.symbol, s.value, getattr(s, "max_price", 1_000_000_000),
                           getattr(s, "max_qty", 1_000_000_000), getattr(s, "min_qty", 1),
                           getattr(s, "band_ppm", 0))
            if spec.value <= 0 or spec.max_price <= 0 or not 0 < spec.min_qty <= spec.max_qty \
                    or not 0 <= spec.band_ppm < PPM:
                raise ValueError(f"contract spec of symbol {s.symbol}: value and max_price "
                                 "must be above 0, 0 < min_qty <= max_qty and "
                                 "0 <= band_ppm < 1,000,000")
            self.specs[s.symbol] = spec
        self.n_shards = n_shards
        self.te_sources = {int(k): int(v) for k, v in sorted((te_sources or {}).items())}
        self.ce_sources = {int(k): int(v) for k, v in sorted((ce_sources or {}).items())}
        self.oracle_sources = (None if oracle_sources is None
                               else sorted(int(x) for x in oracle_sources))
        if any(not 0 <= v < n_shards for v in self.te_sources.values()):
            raise ValueError("te_sources names a shard out of range")
        if any(v not in self.specs for v in self.ce_sources.values()):
            raise ValueError("ce_sources names a symbol with no contract spec")
        self._oracle = dict.fromkeys(self.oracle_sources or ())
        self.close_out_window_ns = close_out_window_ns
        self.indicator_interval_ns = indicator_interval_ns
        self.output_budget = output_budget   # bytes of output after which ADL waits
        self.seq = 0
        self.ts_ns = 0
        self.fund = 0
        self.fund_debt = 0
        self.reserved = 0            # sum of the live IOCs' reserves
        self.deposits = 0            # the operator's net FundDeposits
        self.clearing_balance = 0
        self.clearing: dict[int, list[int]] = {s: [0, 0] for s in self.specs}   # size, cost
        self.liq: dict[int, list[int]] = {s: [0, 0, 0] for s in self.specs}  # size, cost, realised
        self.transfers: dict[int, None] = {}
        self.marks: dict[int, int] = {}
        self.positions: dict[tuple[int, int], tuple[int, int]] = {}  # (account, symbol) ->
        #                                                              (size, cost), size != 0
        self.balances: dict[int, int] = {}
        self.closeouts: dict[int, CloseOut] = {}   # by cid, oldest first
        self.next_cid = 1
        self.next_adl = 1
        self.next_arm = 1
        self.adls: dict[int, list[int]] = {}       # adl id -> [cid, account, symbol, qty asked]
        self.adl_pending: dict[tuple[int, int], int] = {}   # (account, symbol) -> lots asked
        self.adl_queue: dict[int, None] = {}       # close-outs with lots to assign, in order
        self.published: dict[tuple[int, int], int] = {}     # (account, symbol) -> quintile
        self.ind_pending: dict[tuple[int, int], int] = {}   # indicators owed, in order
        self.ind_next = 0            # ts_ns of the next recomputation of the indicators
        self.ind_dirty: dict[int, None] = {}       # symbols whose figures changed since
        self.route = 0
        self._out: list[bytes] = []
        self._size = 0
        self._touched: dict[int, None] = {}
        # read-only diagnostics of the last record (not state): each close-out that entered
        # ADL phase in it, with the free fund (fund - debt - reserves), its exposure at mark and its
        # lots at that moment (what _exhausted_for decides on)
        self.last_adl_entries: list[tuple[int, int, int, int]] = []
        self._init_indexes()

    def _init_indexes(self) -> None:
        """The derived indexes (rebuilt by restore)."""
        self._by_coid: dict[int, int] = {}
        self._by_order: dict[int, int] = {}
        self._deadlines: deque = deque()
        # IOCs deferred to the next record (deadline = the ts of the record that deferred them)
        # and due close-outs a record left for the next: every entry is due, in (deadline, arm)
        self._soon: deque = deque()
        self._holders: dict[int, dict[int, None]] = {s: {} for s in self.specs}
        self._acct_syms: dict[int, dict[int, None]] = {}
        # (symbol, side) -> the ranking keys in order, and each account's key: built when
        # first needed, kept up to date one account at a time, dropped when a mark changes
        self._rank_cache: dict[tuple[int, int], list[tuple]] = {}
        self._rank_index: dict[tuple[int, int], dict[int, tuple]] = {}
        self._held: dict[int, None] = {}           # close-outs in HOLD (cids)
        self._held_reserved = 0                    # their reserves (the rest are live IOCs')
        for co in self.closeouts.values():
            if co.phase == HOLD:
                self._held[co.cid] = None
                self._held_reserved += co.reserved
            if co.coid:
                self._by_coid[co.coid] = co.cid
            if co.order_id:
                self._by_order[co.order_id] = co.cid
        for co in sorted(self.closeouts.values(), key=lambda co: (co.deadline, co.arm)):
            if co.deadline:
                self._deadlines.append((co.deadline, co.arm, co.cid))
        for (account, symbol) in self.positions:
            self._holders[symbol][account] = None
            self._acct_syms.setdefault(account, {})[symbol] = None

    # -- the state machine contract --------------------------------------------------------------

    def apply(self, seq: int, ts_ns: int, kind: int, payload: bytes,
              source: int = OPERATOR_SOURCE) -> bytes:
        if seq <= self.seq:
            raise EngineHalted(f"record {seq} after {self.seq}: the log went backwards")
        self.seq = seq
        if ts_ns > self.ts_ns:
            self.ts_ns = ts_ns       # sequenced time never runs backwards inside the engine
        out = self._out = []
        self._size = 0
        self.route = 0
        self._touched = {}
        if self.last_adl_entries:
            self.last_adl_entries = []
        self._fire_deadlines()
        if source in self.te_sources:
            self._te_payload(self.te_sources[source], payload)
        elif source in self.ce_sources:
            self._ce_payload(self.ce_sources[source], payload)
        elif kind == c.KIND_TICK:
            pass
        elif kind == c.MARK_PRICE:
            if len(payload) != c.MARK_PRICE_S.size:
                self._reject(_CODE["command_malformed"], kind, 0)
            elif not (self.oracle_sources is None or source in self._oracle
                      or source >= OPERATOR_SOURCE_MIN):
                self._reject(_CODE["source_not_allowed"], kind, 0)
            else:
                self._mark(*c.MARK_PRICE_S.unpack(payload))
        elif kind == c.FUND_DEPOSIT:
            if len(payload) != c.FUND_DEPOSIT_S.size:
                self._reject(_CODE["command_malformed"], kind, 0)
            elif source < OPERATOR_SOURCE_MIN:
                self._reject(_CODE["source_not_allowed"], kind,
                             c.FUND_DEPOSIT_S.unpack(payload)[0])
            else:
                self._fund_deposit(*c.FUND_DEPOSIT_S.unpack(payload))
        else:
            self._reject(_CODE["kind_unknown"], kind & 0xFFFF, 0)
        if self._over():
            # the held exposure passed the fund (while a live IOC reserves part of it and the
            # held reserves alone fit, the IOC's outcome decides: it may cost far less)
            self._exhaust()
        if self.fund_debt:
            self._repay_debt()
        self._run_adl_queue()
        for symbol in self._touched:
            size, cost, realised = self.liq[symbol]
            out.append(_PACK[c.LIQ_POSITION](c.LIQ_POSITION, symbol, size, cost, realised))
            self._size += 29
        self._indicators()
        return b"".join(out)

    def apply_frame(self, frame: bytes) -> bytes:
        """Apply every record of a sequenced frame; one output record per input record, with the
        same header fields, the events as payload and the route of each output."""
        apply = self.apply
        out = []
        for seq, ts, src, src_seq, epoch, kind, payload, _route in decode(frame):
            events = apply(seq, ts, kind, payload, src)
            out.append((seq, ts, src, src_seq, epoch, kind, events, self.route))
        return encode(out)

    # -- output helpers ------------------------------------------------------------------------

    def _emit(self, ev: bytes) -> None:
        self._out.append(ev)
        self._size += len(ev)

    def _reject(self, code: int, kind: int, ref: int) -> None:
        self._emit(_PACK[c.REJECTED](c.REJECTED, code, kind, ref))

    def _fund_change(self, change: int, reason: int) -> None:
        """Credit (> 0) or debit the fund, under its own reason; a credit then repays the
        fund's debt (a FundChanged of reason 4 of its own). A debit below zero is a broken
        invariant (every debit is bounded by the free fund), and so is a fund beyond int64:
        FundDeposits keep the fund's own money below 2**62 and the TradingEngines keep each
        shard's money below 2**62 / 64, so the fund stays below 2**63."""
        if change == 0:
            return
        self.fund += change
        if not 0 <= self.fund < 1 << 63:
            raise EngineHalted(f"the insurance fund left 0 .. 2**63 ({self.fund})")
        self._emit(_PACK[c.FUND_CHANGED](c.FUND_CHANGED, self.fund, change, reason))
        if change > 0 and self.fund_debt:
            self._repay_debt()

    # -- operator and oracle ---------------------------------------------------------------------

    def _mark(self, symbol: int, mark: int) -> None:
        if symbol not in self.specs:
            self._reject(_CODE["symbol_unknown"], c.MARK_PRICE, symbol)
            return
        if not 0 < mark <= self.specs[symbol].max_price:
            self._reject(_CODE["price_invalid"], c.MARK_PRICE, symbol)
            return
        if self.marks.get(symbol) != mark:
            self.marks[symbol] = mark
            self._dirty_all()
            for co in self._held_closeouts():
                if co.symbol == symbol:
                    self._hold_reserve(co)

    def _fund_deposit(self, transfer_id: int, amount: int) -> None:
        if amount == 0 or not -MAX_MONEY < amount < MAX_MONEY \
                or not -MAX_MONEY < self.deposits + amount < MAX_MONEY \
                or self.fund + amount >= MAX_MONEY:
            # the fund's own money stays within +-2**62 (its credits from the shards add at
            # most 2**62 more: the fund never leaves int64)
            self._reject(_CODE["amount_invalid"], c.FUND_DEPOSIT, transfer_id)
        elif transfer_id in self.transfers:
            self._reject(_CODE["transfer_id_in_use"], c.FUND_DEPOSIT, transfer_id)
        elif amount < 0 and -amount > self._free():
            self._reject(_CODE["fund_insufficient"], c.FUND_DEPOSIT, transfer_id)
        else:
            self.transfers[transfer_id] = None
            self.deposits += amount
            self._fund_change(amount, c.FUND_DEPOSIT_REASON)

    # -- TradingEngine output --------------------------------------------------------------------

    def _te_payload(self, shard: int, payload: bytes) -> None:
        try:
            events = c.walk_te(payload)
        except ValueError as exc:
            raise EngineHalted(f"out.te.{shard}: {exc}") from None
        for kind, off in events:
            if kind == c.TE_POSITION:
                ev = _TE[kind](payload, off)
                self._position_status(ev[1], ev[2], ev[3], ev[4])
            elif kind == c.TE_ACCOUNT:
                ev = _TE[kind](payload, off)
                self._account_status(ev[1], ev[2])
            elif kind == c.TE_LIQUIDATION:
                self._takeover(shard, _TE[kind](payload, off))
            elif kind == c.TE_DEFICIT_COVERED:
                ev = _TE[kind](payload, off)
                self._deficit(ev[2], c.FUND_DEFICIT)
            elif kind == c.TE_ADL_APPLIED:
                self._adl_applied(_TE[kind](payload, off))
            elif kind == c.TE_FUNDING:
                ev = _TE[kind](payload, off)
                if ev[1] == c.LIQ_ACCOUNT:
                    self._clearing_funding(ev[4])

    def _position_status(self, account: int, symbol: int, size: int, cost: int) -> None:
        if symbol not in self.specs or account >= c.RESERVED_ACCOUNT_MIN:
            return
        key = (account, symbol)
        if size:
            if self.positions.get(key) == (size, cost):
                return
            self.positions[key] = (size, cost)
            self._holders[symbol][account] = None
            self._acct_syms.setdefault(account, {})[symbol] = None
        else:
            if self.positions.pop(key, None) is None:
                return
            self._holders[symbol].pop(account, None)
            syms = self._acct_syms.get(account)
            if syms is not None:
                syms.pop(symbol, None)
                if not syms:
                    del self._acct_syms[account]
            self.published.pop(key, None)
            self.ind_pending.pop(key, None)
        # the account's equity changed with its position: every symbol it holds ranks anew
        self.ind_dirty[symbol] = None
        for sym in self._account_symbols(account):
            self.ind_dirty[sym] = None
        self._rekey(account, symbol)

    def _account_status(self, account: int, balance: int) -> None:
        if account >= c.RESERVED_ACCOUNT_MIN or self.balances.get(account) == balance:
            return
        self.balances[account] = balance
        for sym in self._account_symbols(account):
            self.ind_dirty[sym] = None
        self._rekey(account, 0)

    def _takeover(self, shard: int, ev: tuple) -> None:
        """TE event 8: LIQ takes the position at the bankruptcy price; the fund receives the
        residue; a limit order at that price starts the close-out."""
        _, account, symbol, size, bp, value, residue = ev
        spec = self.specs.get(symbol)
        if spec is None or size == 0 or bp <= 0 or value != size * bp * spec.value:
            raise EngineHalted(f"out.te.{shard}: handoff of account {account} symbol {symbol} "
                               f"size {size} at {bp} does not fit the contract specs")
        cid = self.next_cid
        self.next_cid += 1
        side = 1 if size > 0 else -1
        co = CloseOut(cid, shard, account, symbol, side, size * side, bp)
        self.closeouts[cid] = co
        self._book_liq(symbol, size, bp, 0)
        self.clearing_balance -= residue
        self._emit(_PACK[c.TAKEOVER](c.TAKEOVER, shard, account, symbol, size, bp, residue))
        if residue:
            self._fund_change(residue, c.FUND_RESIDUE)
        if co.qty < spec.min_qty:
            self._to_adl(co, self._free())   # the market cannot take it
            return
        self._send_order(co, c.GTC, bp)
        self._arm(co, self.ts_ns + self.close_out_window_ns)

    def _deficit(self, amount: int, reason: int) -> None:
        """TE event 10: the fund pays a client's deficit; what the free fund cannot pay
        becomes the fund's debt (the fund never goes below zero). (And a clearing account's
        funding payment, under its own reason.)"""
        if amount <= 0:
            raise EngineHalted(f"DeficitCovered of {amount}")
        self.clearing_balance += amount
        paid = min(amount, self.fund - self.reserved)
        if paid < 0:
            paid = 0
        self.fund_debt += amount - paid
        if paid:
            self.fund -= paid
            self._emit(_PACK[c.FUND_CHANGED](c.FUND_CHANGED, self.fund, -paid, reason))

    def _clearing_funding(self, amount: int) -> None:
        """TE event 7 for LIQ_ACCOUNT: a shard's clearing account paid (> 0) or received
        funding at a boundary, on the lots LIQ took over from it and the mirror legs of
        trades between shards (which net across shards to rounding). The fund is its other
        side: it pays what clearing paid (what the free fund cannot pay becomes its debt, as
        for a deficit) and takes what clearing received. The LiqEngine's clearing books the
        mirror, so that funding nets across engines."""
        if amount > 0:
            self._deficit(amount, c.FUND_FUNDING)
        elif amount < 0:
            self.clearing_balance += amount
            self._fund_change(-amount, c.FUND_FUNDING)

    def _adl_applied(self, ev: tuple) -> None:
        _, adl_id, account, symbol, qty, price, _realised = ev
        adl = self.adls.pop(adl_id, None)
        if adl is None or adl[1] != account or adl[2] != symbol:
            raise EngineHalted(f"AdlApplied {adl_id} for account {account} symbol {symbol}: "
                               "no such Adl in flight")
        cid, _account, _symbol, asked = adl
        co = self.closeouts[cid]
        closed = qty * co.side         # the Adl asked for qty x side: the same sign
        if not 0 <= closed <= asked:
            raise EngineHalted(f"AdlApplied {adl_id} closed {qty} of {asked} asked")
        key = (account, symbol)
        left = self.adl_pending[key] - asked
        if left:
            self.adl_pending[key] = left
        else:
            del self.adl_pending[key]
        co.adl_out -= asked
        if closed:
            self._fill(co, closed, price)
        if closed < asked:
            # the rest goes to the next in line (this account is not asked again for it)
            co.tried[account] = None
            co.unassigned += asked - closed
            if co.qty:
                self._adl_again(co)
        self._maybe_done(co)

    # -- CrossEngine output ----------------------------------------------------------------------

    def _ce_payload(self, symbol: int, payload: bytes) -> None:
        try:
            events = c.walk_ce(payload)
        except ValueError as exc:
            raise EngineHalted(f"out.ce.{symbol}: {exc}") from None
        liq = c.LIQ_ACCOUNT
        for kind, off in events:
            if kind == c.CE_TRADE:
                ev = _CE[kind](payload, off)
                if ev[4] == liq:
                    self._ce_fill(symbol, ev[2], ev[7], ev[6])
                if ev[5] == liq:
                    self._ce_fill(symbol, ev[3], ev[7], ev[6])
            elif kind == c.CE_ACCEPTED:
                ev = _CE[kind](payload, off)
                if ev[3] == liq:
                    co = self._closeout_of_coid(ev[2])
                    if co is not None:
                        co.order_id = ev[1]
                        self._by_order[ev[1]] = co.cid
            elif kind == c.CE_CANCELLED or kind == c.CE_EXPIRED:
                ev = _CE[kind](payload, off)
                if ev[3] == liq:
                    co = self._closeout_of_coid(ev[2])
                    if co is not None:
                        self._order_gone(co, kind == c.CE_EXPIRED
                                         and ev[5] == c.CE_REASON_MATCH_LIMIT)
            elif kind == c.CE_REJECTED:
                ev = _CE[kind](payload, off)
                if ev[2] == liq:
                    co = self._closeout_of_coid(ev[1])
                    if co is not None:
                        self._order_gone(co)
            elif kind == c.CE_MASS_CANCELLED:
                ev = _CE[kind](payload, off)
                if ev[1] == c.CE_SCOPE_BOOK or ev[2] == liq:
                    for co in self._live_orders(symbol, ev[6]):
                        self._order_gone(co)

    def _ce_fill(self, symbol: int, order_id: int, qty: int, price: int) -> None:
        co = self._closeout_of_order(order_id)
        if co is None or co.symbol != symbol:
            raise EngineHalted(f"a fill of LIQ's order {order_id} that no close-out holds")
        if qty > co.qty - co.unassigned - co.adl_out or qty > co.order_left or qty <= 0:
            raise EngineHalted(f"LIQ's order {order_id} filled {qty} with {co.order_left} "
                               f"of {co.qty} left")
        self._fill(co, qty, price)
        co.order_left -= qty
        if co.phase == IOC_PHASE:
            # the reserve shrinks with the lots left: a fill lost at most what it reserved
            self.reserved -= co.reserved
            co.reserved = self._ioc_reserve(co)
            self.reserved += co.reserved
        if co.qty == 0:
            # filled: the order left the book (a cancel already sent is refused, and ignored)
            self._forget_order(co)
            self._release(co)
        elif co.order_left == 0:
            # one part of a close-out bigger than max_qty filled: the next part, in the same
            # phase (a cancel sent for the filled part is refused: on to the IOC)
            self._forget_order(co)
            if co.qty < self.specs[symbol].min_qty:
                self._release(co)
                co.deadline = 0
                self._to_adl(co, self._free())
            elif co.phase == LIMIT:
                self._send_order(co, c.GTC, co.bp)
            elif co.phase == IOC_PHASE:
                self._send_order(co, c.IOC, co.ioc_price)
            else:
                self._order_gone(co)
        self._maybe_done(co)

    def _fill(self, co: CloseOut, qty: int, price: int) -> None:
        """LIQ closes ``qty`` lots of the close-out at ``price``: the fund realises
        (price - takeover price) x qty x value on a long, the opposite on a short."""
        value = self.specs[co.symbol].value
        realised = (price - co.bp) * qty * value * co.side
        co.qty -= qty
        self._book_liq(co.symbol, -qty * co.side, price, realised)
        self.clearing_balance -= realised
        if realised:
            self._fund_change(realised, c.FUND_CLOSE_OUT)

    def _book_liq(self, symbol: int, signed: int, price: int, realised: int) -> None:
        """LIQ's position moves by ``signed`` lots; a takeover opens at ``price``, a close
        removes the close-out's own cost (lots x its bankruptcy price), so the cost is always
        the sum over the open close-outs and realised is exact. Clearing takes the mirror."""
        value = self.specs[symbol].value
        pos = self.liq[symbol]
        clr = self.clearing[symbol]
        cost_change = signed * price * value + realised
        pos[0] += signed
        pos[1] += cost_change
        pos[2] += realised
        clr[0] -= signed
        clr[1] -= cost_change
        self._touched[symbol] = None

    # -- the close-out schedule --------------------------------------------------------------------

    def _send_order(self, co: CloseOut, tif: int, price: int) -> None:
        """An order of the lots left, at most max_qty of them (the next part goes when this
        one has filled). Its client order id is free: the part before it left the book."""
        attempt = 1 if tif == c.GTC else 2
        co.coid = co.cid * 4 + attempt
        co.order_id = 0
        co.order_left = min(co.qty, self.specs[co.symbol].max_qty)
        self._by_coid[co.coid] = co.cid
        self._emit(c.ce_new_order(co.symbol, co.coid, c.SELL if co.side > 0 else c.BUY, price,
                                  co.order_left, tif))
        self.route |= 1 << (co.symbol & 63)

    def _arm(self, co: CloseOut, deadline: int, soon: bool = False) -> None:
        """Give the close-out a deadline; soon: one already due, first in the next record."""
        co.deadline = deadline
        co.arm = self.next_arm
        self.next_arm += 1
        (self._soon if soon else self._deadlines).append((deadline, co.arm, co.cid))

    def _fire_deadlines(self) -> None:
        """The close-outs due, in (deadline, arm) order, while the output is under the command
        budget (the first always goes); the rest stay due for the next record. Thousands of
        windows end together after a cascade (a TradingEngine record hands off hundreds of
        positions): at once, their cancels and IOCs were a record over MAX_PAYLOAD, here or in
        the CrossEngine's answer to it."""
        due = self._due()
        budget = self.output_budget // COMMAND_SHARE
        for i, co in enumerate(due):
            if i and self._size >= budget:
                self._defer_due(due[i:])
                return
            co.deadline = 0
            if co.phase == IOC_PHASE:
                self._send_ioc(co)          # an IOC a record deferred
            elif co.phase == LIMIT:
                co.phase = CANCELLING
                self._emit(c.ce_cancel(co.symbol, co.order_id, co.coid))
                self.route |= 1 << (co.symbol & 63)
            elif co.phase == HOLD:
                # a window held: a fresh IOC of the rest at the worst price the free fund can
                # now pay for (the held reserve is released, the IOC reserves anew)
                self._unhold(co)
                self._send_ioc(co)
            elif co.phase == ADL_PHASE:
                # no one was left to take the rest, or the fund had money again: ask again
                co.tried = {}
                self._adl_again(co)

    def _defer_due(self, rest: list[CloseOut]) -> None:
        """Due close-outs a record did not fire: first in line for the next record."""
        self._soon.extendleft((co.deadline, co.arm, co.cid) for co in reversed(rest))

    def _due(self) -> list[CloseOut]:
        """The close-outs whose deadline has come, by deadline, then in the order their
        deadlines were armed."""
        entries = list(self._soon)
        self._soon.clear()
        dq = self._deadlines
        ts = self.ts_ns
        if dq and dq[0][0] <= ts:
            while dq and dq[0][0] <= ts:
                entries.append(dq.popleft())
            entries.sort()
        due = []
        closeouts = self.closeouts
        for deadline, arm, cid in entries:
            co = closeouts.get(cid)
            if co is not None and co.arm == arm and co.deadline == deadline:
                due.append(co)
        return due

    def _order_gone(self, co: CloseOut, stopped: bool = False) -> None:
        """The close-out's live order left the book (cancelled, expired, rejected, or its
        cancel was refused because it is gone): on to the next phase. stopped: an IOC that
        the CrossEngine stopped at its matching limit with the book still crossing it (it
        met max_fills makers, or the other takers of its record used them up): the book is
        not exhausted, so a fresh IOC goes at once, neither a hold nor ADL."""
        self._forget_order(co)
        if stopped and co.phase == IOC_PHASE and co.qty:
            self._release(co)
            co.order_left = 0
            self._send_ioc(co)
            return
        if co.phase == LIMIT or co.phase == CANCELLING:
            co.deadline = 0
            if co.qty == 0:
                self._maybe_done(co)
                return
            self._send_ioc(co)
        elif co.phase == IOC_PHASE:
            self._release(co)
            co.order_left = 0
            free = self._free()
            if co.qty and (free > 0 or self.fund - self.fund_debt > 0
                           and self.reserved > self._held_reserved):
                # the fund is not exhausted: free money, or money reserved by live IOCs that
                # may well not need it. The fund holds the rest a window.
                self._hold(co)
            else:
                self._to_adl(co, free)

    def _send_ioc(self, co: CloseOut) -> None:
        if co.qty < self.specs[co.symbol].min_qty:
            co.deadline = 0
            self._to_adl(co, self._free())   # the market cannot take it
            return
        co.phase = IOC_PHASE
        if self._size and self._size >= self.output_budget // COMMAND_SHARE:
            # over the command budget: the IOC goes first thing in the next record (a due
            # close-out is the first thing a record does: it goes then, whatever the budget)
            self._arm(co, self.ts_ns or 1, soon=True)
            return
        co.ioc_price = self._ioc_price(co)
        co.reserved = self._ioc_reserve(co)
        self.reserved += co.reserved
        self._send_order(co, c.IOC, co.ioc_price)

    def _hold(self, co: CloseOut) -> None:
        """The IOC left lots and the fund is not exhausted: the fund takes them over. LIQ
        holds them, their exposure at mark is reserved, and a window later a fresh IOC goes."""
        co.phase = HOLD
        self._held[co.cid] = None
        self._hold_reserve(co)
        self._arm(co, self.ts_ns + self.close_out_window_ns)

    def _hold_reserve(self, co: CloseOut) -> None:
        """A held close-out reserves max(0, (bp - mark) x side x lots x value) at the last
        mark of its symbol (no mark: 0)."""
        r = self._exposure(co)
        self.reserved += r - co.reserved
        self._held_reserved += r - co.reserved
        co.reserved = r

    def _unhold(self, co: CloseOut) -> None:
        del self._held[co.cid]
        self._held_reserved -= co.reserved
        self._release(co)

    def _exhaust(self) -> None:
        """The held exposure passed the fund (reserves > fund): the fund is exhausted. Held
        close-outs with exposure go to ADL, newest takeover first (the oldest keep the fund's
        cover), until the reserves fit the fund again (one with none costs the fund nothing
        while held: it stays)."""
        for co in sorted(self._held_closeouts(), key=lambda co: co.cid, reverse=True):
            if not self._over():
                return
            if co.reserved == 0:
                continue
            free = self._free()
            self._unhold(co)
            co.deadline = 0
            self._to_adl(co, free)

    def _free(self) -> int:
        """The free fund: the fund less its debt and its reserves. What the fund decides to
        take on (a hold at the end of an IOC, an IOC's price, whether a close-out in ADL goes
        back to the market) counts the debt first: a fund that owes more than its free money
        holds nothing new, so a held close-out goes to ADL at the end of its next IOC instead
        of holding on while its funding grows a debt no one pays. (A debt does not exhaust
        the fund at once, _over: at a funding boundary the shards' payments and receipts
        come in separate records, and a debt that the next record repays is no reason to
        deleverage anyone.)"""
        return self.fund - self.fund_debt - self.reserved

    def _over(self) -> bool:
        """The held exposure does not fit the fund: the reserves exceed it, and either no live
        IOC reserves part of it (its outcome could only lower the fund) or the held reserves
        alone exceed it."""
        if self.reserved <= self.fund:
            return False
        return self.reserved == self._held_reserved or self._held_reserved > self.fund

    def _exposure(self, co: CloseOut) -> int:
        """max(0, (bp - mark) x side x lots x value) at the symbol's last mark (none: 0)."""
        mark = self.marks.get(co.symbol, 0)
        r = (co.bp - mark) * co.side * co.qty * self.specs[co.symbol].value if mark else 0
        return r if r > 0 else 0

    def _exhausted_for(self, co: CloseOut) -> bool:
        """May the close-out be deleveraged now? Only if the fund cannot hold it: the free
        fund (fund - debt - reserves) is at or below zero, or below the close-out's exposure at
        mark; or the market cannot take its lots at all (fewer than min_qty)."""
        free = self._free()
        return free <= 0 or free < self._exposure(co) \
            or co.qty < self.specs[co.symbol].min_qty

    def _back_to_market(self, co: CloseOut) -> None:
        """The fund can hold the close-out again (a top-up, a credit, a release): its lots
        not yet in an Adl go back to the market (an IOC) once its Adls in flight are
        answered; until then it waits a window."""
        self.adl_queue.pop(co.cid, None)
        if co.adl_out == 0:
            co.unassigned = 0
            co.tried = {}
            co.deadline = 0
            self._send_ioc(co)
        elif not co.deadline:
            self._arm(co, self.ts_ns + self.close_out_window_ns)

    def _adl_again(self, co: CloseOut) -> None:
        """A close-out in ADL phase has lots to assign again (an Adl fell short, or its window
        came round): to the ranking if the fund is still exhausted for it; if the fund can
        hold it again, back to the market."""
        if not self._exhausted_for(co):
            self._back_to_market(co)
            return
        self.adl_queue[co.cid] = None
        self.last_adl_entries.append((co.cid, self._free(), self._exposure(co),
                                      co.qty))

    def _held_closeouts(self) -> list[CloseOut]:
        closeouts = self.closeouts
        return [closeouts[cid] for cid in self._held]

    def _to_adl(self, co: CloseOut, free: int) -> None:
        """The fund is exhausted (``free``, the free fund, is <= 0): what is left of the
        close-out is auto-deleveraged at its bankruptcy price."""
        co.phase = ADL_PHASE
        co.unassigned = co.qty
        if co.qty:
            self.adl_queue[co.cid] = None
            self.last_adl_entries.append((co.cid, free, self._exposure(co), co.qty))
        self._maybe_done(co)

    def _forget_order(self, co: CloseOut) -> None:
        self._by_coid.pop(co.coid, None)
        self._by_order.pop(co.order_id, None)
        co.coid = 0
        co.order_id = 0

    def _ioc_price(self, co: CloseOut) -> int:
        """The worst price whose loss against the bankruptcy price the free fund can pay:
        for LIQ long (selling) bp - free / (qty x value) rounded up, for LIQ short (buying)
        bp + free / (qty x value) rounded down; both round towards bp, so the fund stays
        >= 0. Bounded by the price range of the contract, and by the symbol's price band
        around its last mark, as a market order is: a bid far below the mark (an
        accomplice's, on a thin book) is not the market, and the fund does not pay it the
        difference. Lots the band leaves unfilled are held and deleveraged."""
        spec = self.specs[co.symbol]
        free = self._free()
        step = free // (co.qty * spec.value) if free > 0 else 0
        mark = self.marks.get(co.symbol, 0)
        band = mark * spec.band_ppm // PPM if spec.band_ppm and mark else -1
        if co.side > 0:
            price = max(1, co.bp - step)
            return max(price, mark - band) if band >= 0 else price
        price = min(spec.max_price, co.bp + step)
        return min(price, mark + band) if band >= 0 else price

    def _ioc_reserve(self, co: CloseOut) -> int:
        """The most the live IOC can lose against bp on the lots left: |bp - price| x lots x
        value, 0 when the band put its price on the fund's side of bp."""
        return max(0, (co.bp - co.ioc_price) * co.side) * co.qty * self.specs[co.symbol].value

    def _release(self, co: CloseOut) -> None:
        self.reserved -= co.reserved
        co.reserved = 0

    def _repay_debt(self) -> None:
        """At the end of a record, a free fund repays the fund's debt (reserves released by
        IOCs that ended are free again)."""
        free = self.fund - self.reserved
        if free > 0:
            repay = min(free, self.fund_debt)
            self.fund_debt -= repay
            self.fund -= repay
            self._emit(_PACK[c.FUND_CHANGED](c.FUND_CHANGED, self.fund, -repay, c.FUND_DEFICIT))

    def _maybe_done(self, co: CloseOut) -> None:
        if co.qty == 0 and co.adl_out == 0 and co.coid == 0:
            self._release(co)
            del self.closeouts[co.cid]
            self.adl_queue.pop(co.cid, None)
        elif co.qty == 0 and co.phase == ADL_PHASE:
            self.adl_queue.pop(co.cid, None)

    def _live_orders(self, symbol: int, last_id: int) -> list[CloseOut]:
        return [self.closeouts[cid] for _oid, cid in sorted(self._by_order.items())
                if _oid <= last_id and self.closeouts[cid].symbol == symbol]

    def _closeout_of_coid(self, coid: int) -> CloseOut | None:
        cid = self._by_coid.get(coid)
        return None if cid is None else self.closeouts.get(cid)

    def _closeout_of_order(self, order_id: int) -> CloseOut | None:
        cid = self._by_order.get(order_id)
        return None if cid is None else self.closeouts.get(cid)

    # -- ADL ---------------------------------------------------------------------------------------

    def _run_adl_queue(self) -> None:
        """Send Adls for the close-outs in ADL phase, oldest first, to the opposite side in
        ranking order, while the output is under budget (the rest waits for the next
        record; one Adl at least per record)."""
        queue = self.adl_queue
        if not queue:
            return
        budget = self.output_budget
        sent = False
        per_shard: dict[int, int] = {}
        for cid in list(queue):
            co = self.closeouts[cid]
            if not self._exhausted_for(co):
                # the fund can hold it again since it entered ADL (a credit or a release
                # later in the record, or in a record before this one): not deleveraged
                self._back_to_market(co)
                continue
            ranking = self._rank(co.symbol, -co.side)
            pending = self.adl_pending
            positions = self.positions
            symbol = co.symbol
            for item in ranking:
                account = item[-1]
                if co.unassigned == 0:
                    break
                if account in co.tried:
                    continue
                if sent and self._size + _ADL_SIZE > budget:
                    return
                size = positions[(account, symbol)][0]
                held = (size if size > 0 else -size) - pending.get((account, symbol), 0)
                if held <= 0:
                    continue
                shard = account % self.n_shards
                if per_shard.get(shard, 0) >= MAX_ADLS_PER_SHARD:
                    return          # this shard has its share of this record: the next one
                per_shard[shard] = per_shard.get(shard, 0) + 1
                qty = co.unassigned if co.unassigned < held else held
                adl_id = self.next_adl
                self.next_adl += 1
                self.adls[adl_id] = [cid, account, symbol, qty]
                pending[(account, symbol)] = pending.get((account, symbol), 0) + qty
                co.unassigned -= qty
                co.adl_out += qty
                self._emit(_PACK[c.ADL](c.ADL, adl_id, account, symbol, qty * co.side, co.bp))
                self.route |= 1 << (account % self.n_shards)
                sent = True
            del queue[cid]
            if co.unassigned and not co.deadline:
                # no one left in line: try again after a close-out window
                self._arm(co, self.ts_ns + self.close_out_window_ns)

    def _equity(self, account: int) -> int:
        equity = self.balances.get(account, 0)
        for sym in self._account_symbols(account):
            mark = self.marks.get(sym)
            if mark:
                size, cost = self.positions[(account, sym)]
                equity += size * mark * self.specs[sym].value - cost
        return equity

    def _account_symbols(self, account: int):
        return self._acct_syms.get(account, ())

    def _side_holders(self, symbol: int, side: int) -> list[int]:
        positions = self.positions
        return [a for a in self._holders[symbol] if (positions[(a, symbol)][0] > 0) == (side > 0)]

    def ranking(self, symbol: int, side: int) -> list[int]:
        """The accounts holding ``side`` (+1 longs, -1 shorts) of ``symbol``, first in line
        first (docs/liqengine.md §6)."""
        return [item[-1] for item in self._rank(symbol, side)]

    def _key(self, account: int, symbol: int, size: int, cost: int, equity: int) -> tuple:
        num, den = _score(size, cost, self.marks.get(symbol, 0), self.specs[symbol].value,
                          equity)
        return (-((num << SCALE_BITS) // den), _Exact(num, den), account)

    def _rank(self, symbol: int, side: int) -> list[tuple]:
        """The ranking keys of a side, in order; the account is each key's last item. A key
        is (minus the score scaled by 2**64 and floored, the exact score, the account): the
        integer decides unless two scores share it, then the exact rationals, then the id."""
        ck = (symbol, side)
        cached = self._rank_cache.get(ck)
        if cached is not None:
            return cached
        positions = self.positions
        balances = self.balances
        acct_syms = self._acct_syms
        # per symbol: mark x value (0 with no mark: valued at cost, no PnL)
        mv = {s: self.marks.get(s, 0) * spec.value for s, spec in self.specs.items()}
        mark = self.marks.get(symbol, 0)
        m_v = mv[symbol]
        index = {}
        for account in self._holders[symbol]:
            size, cost = positions[(account, symbol)]
            if (size > 0) != (side > 0):
                continue
            equity = balances.get(account, 0)
            for sym in acct_syms[account]:
                z, k = positions[(account, sym)]
                if mv[sym]:
                    equity += z * mv[sym] - k
            if equity <= 0:
                equity = 1
            # _score() written out (this loop runs over every position of the side)
            abs_cost = cost if cost > 0 else -cost
            if mark:
                notional = size * m_v
                upnl = notional - cost
                if notional < 0:
                    notional = -notional
            else:
                upnl = 0
                notional = abs_cost
            if upnl >= 0:
                num, den = upnl * notional, abs_cost * equity
            else:
                num, den = upnl * equity, abs_cost * notional
            index[account] = (-((num << SCALE_BITS) // den), _Exact(num, den), account)
        keys = sorted(index.values())
        self._rank_cache[ck] = keys
        self._rank_index[ck] = index
        return keys

    def _rekey(self, account: int, symbol: int) -> None:
        """The account's position in ``symbol`` or its equity changed: move its keys in the
        rankings built so far (its equity reaches every symbol it holds)."""
        cache = self._rank_cache
        if not cache:
            return
        syms = list(self._account_symbols(account))
        if symbol and symbol not in syms:
            syms.append(symbol)
        equity = None
        for sym in syms:
            pos = self.positions.get((account, sym))
            for side in (1, -1):
                keys = cache.get((sym, side))
                if keys is None:
                    continue
                index = self._rank_index[(sym, side)]
                old = index.pop(account, None)
                if old is not None:
                    del keys[bisect_left(keys, old)]
                if pos is not None and (pos[0] > 0) == (side > 0):
                    if equity is None:
                        equity = self._equity(account)
                    new = self._key(account, sym, pos[0], pos[1], equity)
                    insort(keys, new)
                    index[account] = new

    def _dirty_all(self) -> None:
        self._rank_cache.clear()
        self._rank_index.clear()
        for s in self.specs:
            self.ind_dirty[s] = None

    # -- ADL indicators ----------------------------------------------------------------------------

    def _indicators(self) -> None:
        """Every INDICATOR_INTERVAL_NS, the quintiles of the symbols whose figures changed
        are computed again and each one that changed is owed; owed ones are published while
        the output is under budget (rank r of n, 0 first: quintile 5 - 5r // n)."""
        if self.ts_ns >= self.ind_next and self.ind_dirty:
            self.ind_next = self.ts_ns + self.indicator_interval_ns
            for symbol in self._indicator_symbols():
                for side in (1, -1):
                    ranking = self._rank(symbol, side)
                    n = len(ranking)
                    for r, item in enumerate(ranking):
                        account = item[-1]
                        q = 5 - 5 * r // n
                        k = (account, symbol)
                        if self.published.get(k) != q:
                            self.published[k] = q
                            self.ind_pending[k] = q
            self.ind_dirty = {}
        pending = self.ind_pending
        if not pending:
            return
        budget = self.output_budget
        done = []
        for k, q in pending.items():
            if done and self._size + _IND_SIZE > budget:
                break
            self._emit(_PACK[c.ADL_INDICATOR](c.ADL_INDICATOR, k[0], k[1], q))
            done.append(k)
        for k in done:
            del pending[k]

    def _indicator_symbols(self) -> list[int]:
        return sorted(self.ind_dirty)

    # -- audit and snapshots -----------------------------------------------------------------------

    def audit(self) -> None:
        """The books balance to the minor unit and every derived figure agrees with the state;
        raises EngineHalted naming what disagrees."""
        problems = []
        if self.fund < 0 or self.fund_debt < 0 or self.fund_debt and self.fund > self.reserved:
            problems.append(f"fund {self.fund} debt {self.fund_debt}")
        if self.fund - self.fund_debt + self.clearing_balance != self.deposits:
            problems.append(f"fund {self.fund} - debt {self.fund_debt} + clearing "
                            f"{self.clearing_balance} != deposits {self.deposits}")
        if self.reserved < 0 or self.reserved - self._held_reserved > self.fund:
            problems.append(f"reserved {self.reserved} ({self._held_reserved} held) of fund "
                            f"{self.fund}")
        sums = {s: [0, 0] for s in self.specs}
        reserved = held_reserved = 0
        out = {}
        for co in self.closeouts.values():
            value = self.specs[co.symbol].value
            sums[co.symbol][0] += co.qty * co.side
            sums[co.symbol][1] += co.qty * co.side * co.bp * value
            reserved += co.reserved
            if co.phase == HOLD:
                held_reserved += co.reserved
            if co.coid and not 0 < co.order_left <= min(co.qty, self.specs[co.symbol].max_qty):
                problems.append(f"close-out {co.cid}: order of {co.order_left} lots, "
                                f"{co.qty} left")
            if co.qty < 0 or co.unassigned < 0 or co.adl_out < 0 \
                    or co.unassigned + co.adl_out > co.qty:
                problems.append(f"close-out {co.cid}: qty {co.qty} unassigned "
                                f"{co.unassigned} in Adls {co.adl_out}")
            if co.qty == 0 and co.adl_out == 0 and co.coid == 0:
                problems.append(f"close-out {co.cid} is done but kept")
            if co.phase == HOLD:
                mark = self.marks.get(co.symbol, 0)
                want = max(0, (co.bp - mark) * co.side * co.qty * value) if mark else 0
                if co.reserved != want or co.coid or not co.deadline or co.adl_out \
                        or co.unassigned or co.qty <= 0 or co.cid not in self._held:
                    problems.append(f"close-out {co.cid} held: reserve {co.reserved} of "
                                    f"{want}, lots {co.qty}, order {co.coid}")
            elif co.reserved and co.phase != IOC_PHASE or co.cid in self._held:
                problems.append(f"close-out {co.cid} in phase {co.phase} reserves "
                                f"{co.reserved}")
        for adl_id, (cid, account, symbol, asked) in self.adls.items():
            if cid not in self.closeouts:
                problems.append(f"Adl {adl_id} of no close-out")
            out[(account, symbol)] = out.get((account, symbol), 0) + asked
            out[cid] = out.get(cid, 0) + asked
        for co in self.closeouts.values():
            if out.get(co.cid, 0) != co.adl_out:
                problems.append(f"close-out {co.cid}: Adls in flight disagree")
        if {k: v for k, v in out.items() if isinstance(k, tuple)} != self.adl_pending:
            problems.append("pending Adls per account disagree")
        if reserved != self.reserved or held_reserved != self._held_reserved:
            problems.append(f"reserves {reserved} ({held_reserved} held) != {self.reserved} "
                            f"({self._held_reserved} held)")
        for s in self.specs:
            liq, clr = self.liq[s], self.clearing[s]
            if [liq[0], liq[1]] != sums[s] or clr[0] != -liq[0] or clr[1] != -liq[1]:
                problems.append(f"symbol {s}: LIQ {liq}, clearing {clr}, close-outs {sums[s]}")
        if problems:
            raise EngineHalted("LiqEngine audit failed: " + "; ".join(problems))

    def _state(self) -> list:
        return [SNAPSHOT_VERSION, self.n_shards,
                [[s.symbol, s.value, s.max_price, s.max_qty, s.min_qty, s.band_ppm]
                 for s in self.specs.values()],
                sorted(self.te_sources.items()), sorted(self.ce_sources.items()),
                self.oracle_sources, self.close_out_window_ns, self.indicator_interval_ns,
                self.seq, self.ts_ns, self.fund, self.fund_debt, self.reserved, self.deposits,
                self.clearing_balance, [[s, *v] for s, v in self.clearing.items()],
                [[s, *v] for s, v in self.liq.items()], list(self.transfers),
                sorted(self.marks.items()),
                sorted([a, s, z, k] for (a, s), (z, k) in self.positions.items()),
                sorted(self.balances.items()),
                [co.row() for co in self.closeouts.values()],
                self.next_cid, self.next_adl, self.next_arm,
                [[i, *v] for i, v in self.adls.items()],
                [[a, s, q] for (a, s), q in self.adl_pending.items()],
                list(self.adl_queue),
                sorted([a, s, q] for (a, s), q in self.published.items()),
                [[a, s, q] for (a, s), q in self.ind_pending.items()],
                self.ind_next, sorted(self.ind_dirty), self.output_budget]

    def snapshot(self) -> bytes:
        return msgpack.packb(self._state(), use_bin_type=True)

    def state_hash(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()

    @classmethod
    def restore(cls, data: bytes, configured: list | None = None) -> LiqEngine:
        """The engine a snapshot holds. ``specs``, the configured contract specs, give the
        order limits (max_qty, min_qty), which an older snapshot did not keep; one that differs
        in symbol, value or max price is another configuration, refused."""
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state[0] not in SNAPSHOT_VERSIONS:
            raise ValueError(f"snapshot version {state[0]} is not one of {SNAPSHOT_VERSIONS} "
                             "(a LiqEngine of another version wrote it)")
        (_, n_shards, specs, te_sources, ce_sources, oracle_sources, window, interval,
         seq, ts_ns, fund, debt, reserved, deposits, clearing_balance, clearing, liq,
         transfers, marks, positions, balances, closeouts, next_cid, next_adl, next_arm,
         adls, adl_pending, adl_queue, published, ind_pending, ind_next, ind_dirty) = state[:32]
        budget = state[32] if len(state) > 32 else OUTPUT_BUDGET
        kept = [LiqSpec(*r) for r in specs]
        if configured is not None:
            conf = {s.symbol: s for s in configured}
            if sorted(conf) != [k.symbol for k in kept] or any(
                    (conf[k.symbol].value, getattr(conf[k.symbol], "max_price", k.max_price))
                    != (k.value, k.max_price) for k in kept):
                raise ValueError("the snapshot's contract specs are not the configured ones")
            kept = [k._replace(max_qty=getattr(conf[k.symbol], "max_qty", k.max_qty),
                               min_qty=getattr(conf[k.symbol], "min_qty", k.min_qty),
                               band_ppm=getattr(conf[k.symbol], "band_ppm", k.band_ppm))
                    for k in kept]
        eng = cls(kept, n_shards, dict(te_sources), dict(ce_sources),
                  oracle_sources, window, interval, budget)
        eng.seq, eng.ts_ns = seq, ts_ns
        eng.fund, eng.fund_debt, eng.reserved, eng.deposits = fund, debt, reserved, deposits
        eng.clearing_balance = clearing_balance
        eng.clearing = {r[0]: list(r[1:]) for r in clearing}
        eng.liq = {r[0]: list(r[1:]) for r in liq}
        eng.transfers = dict.fromkeys(transfers)
        eng.marks = dict(marks)
        eng.positions = {(a, s): (z, k) for a, s, z, k in positions}
        eng.balances = dict(balances)
        eng.closeouts = {r[0]: CloseOut.from_row(r) for r in closeouts}
        eng.next_cid, eng.next_adl, eng.next_arm = next_cid, next_adl, next_arm
        eng.adls = {r[0]: list(r[1:]) for r in adls}
        eng.adl_pending = {(a, s): q for a, s, q in adl_pending}
        eng.adl_queue = dict.fromkeys(adl_queue)
        eng.published = {(a, s): q for a, s, q in published}
        eng.ind_pending = {(a, s): q for a, s, q in ind_pending}
        eng.ind_next = ind_next
        eng.ind_dirty = dict.fromkeys(ind_dirty)
        eng._init_indexes()
        return eng


def exact_score(size: int, cost: int, mark: int, value: int, equity: int) -> Fraction:
    """The ADL score as a Fraction (tests and the reference)."""
    num, den = _score(size, cost, mark, value, equity)
    return Fraction(num, den)
