"""The whole engine side of a venue in one process, routed as the default topology routes it.

``RoutedVenue`` runs ``n_shards`` TradingEngines, one CrossEngine per symbol and the LiqEngine,
each on its in stream, and plays the sequencers and their upstreams exactly as
deploy/topology.py wires them (docs/order-path.md §1-2, docs/liqengine.md §1-2): every output
record of an engine goes through the real ``apply_frame`` (so its route is the engine's) and
then through ``mq.record.rebase`` with each upstream's source id and route mask, into the
streams that take it:

    in.te.N  <- out.ce.SYM (0x7000_0000 | SYM, route 1 << N), out.liq (0x7600_0000, 1 << N)
    in.ce.S  <- out.te.N (0x7300_0000 | N, route 1 << S % 64), out.liq (0x7600_0000, same bit)
    in.liq   <- out.te.N (0x7400_0000 | N, route 1 << 63), out.ce.SYM (0x7500_0000 | SYM, 1 << 63)

Marks come from oracle source 0x7100_0000 into every in.te.N and in.liq. Records are applied
breadth first in the order they were produced; ``run`` drains the queue. ``on_record`` is
called after every record of every engine (the cascade test's global audit).

After every record of in.liq the venue notes, from the LiqEngine's ``last_adl_entries``, the
free fund (fund - reserves), the close-out's exposure at mark and its lots at the moment each
close-out entered ADL phase (``adl_entry_free``, by close-out id), and for each Adl of that
record the entry of its close-out (``adl_free``: one (adl id, close-out id, (free fund,
exposure, lots) at entry) per Adl sent).
"""
from __future__ import annotations

from collections import deque

from crossengine.engine import CrossEngine
from deploy.audit import liq_books, te_books
from liqengine import codec as lc
from liqengine.engine import HOLD, LiqEngine
from mq.record import decode, encode, rebase
from mq.sources import OPERATOR_SOURCE
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine

SRC_CE_OUT = 0x7000_0000
SRC_ORACLE = 0x7100_0000
SRC_GATEWAY = 0x7200_0000
SRC_TE_OUT = 0x7300_0000
SRC_TE_TO_LIQ = 0x7400_0000
SRC_CE_TO_LIQ = 0x7500_0000
SRC_LIQ_OUT = 0x7600_0000
LIQ_ROUTE = 1 << 63


class Stream:
    """An in stream, its sequencer's numbering and the engine that applies it."""

    def __init__(self, name: str, engine) -> None:
        self.name = name
        self.engine = engine
        self.seq = 0
        self.source_seq: dict[int, int] = {}
        self.out: list[bytes] = []        # every output frame (one record each), in order
        self.inputs: list[bytes] = []     # every sequenced input frame, in order


class RoutedVenue:
    def __init__(self, specs: list, n_shards: int = 2, window_ns: int = 200_000_000,
                 on_record=None, self_trade: int = 0) -> None:
        self.specs = {s.symbol: s for s in specs}
        self.n_shards = n_shards
        ce_sources = {SRC_CE_OUT | s.symbol: s.symbol for s in specs}
        self.te = [Stream(f"in.te.{n}", TradingEngine(
            specs, n, n_shards, ce_sources=ce_sources, oracle_sources=[SRC_ORACLE],
            gateway_sources=[SRC_GATEWAY], liq_sources=[SRC_LIQ_OUT], self_trade=self_trade))
            for n in range(n_shards)]
        self.ce = {s.symbol: Stream(f"in.ce.{s.symbol}", CrossEngine(
            symbol_id=s.symbol, max_price=s.max_price, max_qty=s.max_qty,
            te_sources=[SRC_TE_OUT | n for n in range(n_shards)], n_shards=n_shards,
            liq_sources=[SRC_LIQ_OUT])) for s in specs}
        self.liq = Stream("in.liq", LiqEngine(
            specs, n_shards, te_sources={SRC_TE_TO_LIQ | n: n for n in range(n_shards)},
            ce_sources={SRC_CE_TO_LIQ | s.symbol: s.symbol for s in specs},
            oracle_sources=[SRC_ORACLE], close_out_window_ns=window_ns))
        # the upstreams of each engine's out stream: (target, source id, route mask)
        self.ups: dict[str, list] = {}
        for n, st in enumerate(self.te):
            self.ups[st.name] = [(self.ce[s], SRC_TE_OUT | n, 1 << (s % 64)) for s in self.ce]
            self.ups[st.name].append((self.liq, SRC_TE_TO_LIQ | n, LIQ_ROUTE))
        for s, st in self.ce.items():
            self.ups[st.name] = [(te, SRC_CE_OUT | s, 1 << n) for n, te in enumerate(self.te)]
            self.ups[st.name].append((self.liq, SRC_CE_TO_LIQ | s, LIQ_ROUTE))
        self.ups[self.liq.name] = [
            *((self.ce[s], SRC_LIQ_OUT, 1 << (s % 64)) for s in self.ce),
            *((te, SRC_LIQ_OUT, 1 << n) for n, te in enumerate(self.te))]
        self.ts_ns = 1_700_000_000_000_000_000
        self.queue: deque = deque()
        self.on_record = on_record
        self.records = 0
        self.adl_entry_free: dict[int, int] = {}
        self.adl_free: list[tuple[int, int, int]] = []

    # -- the streams -----------------------------------------------------------------------------

    def streams(self) -> list[Stream]:
        return [*self.te, *self.ce.values(), self.liq]

    def put(self, st: Stream, source: int, kind: int, payload: bytes,
            route: int = 0) -> None:
        self.queue.append((st, source, kind, bytes(payload), route))

    def _apply(self, st: Stream, source: int, kind: int, payload: bytes, route: int) -> None:
        st.seq += 1
        if source:
            st.source_seq[source] = ss = st.source_seq.get(source, 0) + 1
        else:
            ss = 0
        frame = encode([(st.seq, self.ts_ns, source, ss, 1, kind, payload, route)])
        st.inputs.append(frame)
        out = st.engine.apply_frame(frame)
        st.out.append(out)
        self.records += 1
        if st is self.liq:
            self._note_adls(out)
        for target, src, mask in self.ups[st.name]:
            for rec in decode(rebase(out, src, b"", mask)):
                self.put(target, src, rec[5], rec[6], rec[7])
        if self.on_record is not None:
            self.on_record(self, st)

    def _note_adls(self, out: bytes) -> None:
        eng = self.liq.engine
        for cid, free, exposure, qty in eng.last_adl_entries:
            self.adl_entry_free[cid] = (free, exposure, qty)
        for rec in decode(out):
            for ev in lc.decode_events(rec[6]):
                if ev[0] == lc.ADL:
                    cid = eng.adls[ev[1]][0]
                    self.adl_free.append((ev[1], cid, self.adl_entry_free[cid]))

    def run(self, limit: int = 10_000_000) -> int:
        """Apply every record queued and every record they cause; the number applied."""
        n = 0
        while self.queue:
            self._apply(*self.queue.popleft())
            n += 1
            if n > limit:
                raise AssertionError(f"no quiescence after {limit} records")
        return n

    def step_until(self, cond) -> None:
        """Apply queued records one at a time until ``cond()`` holds, or nothing is queued
        (a race a test builds may go otherwise once its bug is fixed)."""
        while self.queue:
            self._apply(*self.queue.popleft())
            if cond():
                return

    def next_in_te(self, account: int, kind: int, payload: bytes) -> None:
        """An operator record that the account's in.te sequences next, ahead of what is
        queued (for races between a shard's requests and the CrossEngine's answers)."""
        self.queue.appendleft((self.te[account % self.n_shards], OPERATOR_SOURCE, kind,
                               payload, 0))

    # -- inputs ----------------------------------------------------------------------------------

    def tick(self, dt_ns: int = 10_000_000) -> int:
        """The sequencers' idle Ticks into every stream, ``dt_ns`` later; then run."""
        self.ts_ns += dt_ns
        for st in self.streams():
            self.put(st, 0, tc.KIND_TICK, b"")
        return self.run()

    def operator_te(self, account: int, kind: int, payload: bytes) -> None:
        self.put(self.te[account % self.n_shards], OPERATOR_SOURCE, kind, payload)

    def deposit(self, account: int, amount: int, transfer_id: int) -> None:
        self.operator_te(account, tc.DEPOSIT, tc.transfer(transfer_id, account, amount))

    def order(self, account: int, coid: int, symbol: int, side: int, price: int, qty: int,
              **kw) -> None:
        self.operator_te(account, tc.NEW_ORDER, tc.new_order(coid, account, symbol, side, price,
                                                             qty, **kw))

    def leverage(self, account: int, symbol: int, x100: int) -> None:
        self.operator_te(account, tc.SET_LEVERAGE, tc.set_leverage(account, symbol, x100))

    def fund_deposit(self, transfer_id: int, amount: int) -> None:
        self.put(self.liq, OPERATOR_SOURCE, lc.FUND_DEPOSIT, lc.fund_deposit(transfer_id, amount))

    def mark(self, symbol: int, price: int) -> None:
        """A MarkPrice from the oracle into every in.te.N and in.liq (as deploy/oracle.py)."""
        payload = tc.mark_price(symbol, price)
        for st in (*self.te, self.liq):
            self.put(st, SRC_ORACLE, tc.MARK_PRICE, payload)

    # -- views -----------------------------------------------------------------------------------

    def quiet(self) -> bool:
        """Nothing left to do: no record queued, no sweep running, no close-out open."""
        return not self.queue and not any(st.engine.sweeps for st in self.te) \
            and not self.liq.engine.closeouts

    def settled(self) -> bool:
        """Nothing left to do but what the insurance fund holds: no record queued, no sweep
        running, every open close-out held (HOLD, retried each close-out window)."""
        return not self.queue and not any(st.engine.sweeps for st in self.te) \
            and all(co.phase == HOLD for co in self.liq.engine.closeouts.values())

    def books(self) -> list:
        marks = dict(self.liq.engine.marks)
        return [*(te_books(st.engine, st.name, st.name, marks) for st in self.te),
                liq_books(self.liq.engine, "liq", "in.liq", marks)]

    def liq_events(self) -> list[list]:
        """out.liq's events, one list per record."""
        return [lc.decode_events(rec[6]) for frame in self.liq.out for rec in decode(frame)]


__all__ = ["RoutedVenue", "Stream"]


def te_events(stream: Stream, kinds, last=None) -> list[tuple]:
    """The TradingEngine events of ``kinds`` in a stream's output (its ``last`` frames)."""
    frames = stream.out if last is None else stream.out[-last:]
    return [x for fr in frames for r in decode(fr) for x in tc.decode_events(r[6])
            if x[0] in kinds]


def check_books(v: RoutedVenue, st: Stream) -> None:
    """After every record of every engine (``on_record``): its own audit, the fund never
    below zero, and the books of all engines together equal to what was deposited."""
    if st is v.liq or st in v.te:
        st.engine.audit()
    if st is v.liq:
        assert st.engine.fund >= 0, f"fund {st.engine.fund} below zero at in.liq {st.seq}"
    books = v.books()
    assert sum(b.total() for b in books) == sum(b.deposits for b in books), \
        f"money created or lost after {st.name} seq {st.seq}"


def audited_venue(specs: list, fund: int) -> RoutedVenue:
    """Two shards, every record checked (check_books), the insurance fund holding ``fund``."""
    v = RoutedVenue(specs, n_shards=2, on_record=check_books)
    v.fund_deposit(1, fund)
    return v


def trader_long(trader: int, qty: int, mm: int = 2, accomplice: int = 4, fund: int = 10**11,
                deposit: int = 10**11, leverage_x100: int = 0, mark2: int = 0):
    """An audited venue (tradingvenue.two_specs, hourly funding; a fund of 100,000 USDT) where
    ``trader`` (100,000 USDT) is long ``qty`` lots of symbol 1 bought from ``mm`` at the mark,
    10,000 (at ``leverage_x100`` if given; symbol 2 marked at ``mark2`` if given), and
    ``accomplice`` has money to lift the trader's orders: (venue, the trader's engine, its
    account, its position)."""
    from tests.tradingvenue import HOUR, two_specs
    v = audited_venue(two_specs(HOUR), fund)
    v.deposit(mm, 10**15, 2)
    v.deposit(accomplice, 10**13, 4)
    v.deposit(trader, deposit, 3)
    v.mark(1, 10_000)
    if mark2:
        v.mark(2, mark2)
    v.run()
    if leverage_x100:
        v.leverage(trader, 1, leverage_x100)
    v.order(mm, 1, 1, tc.SELL, 10_000, qty)
    v.order(trader, 2, 1, tc.BUY, 10_000, qty)
    v.run()
    te = v.te[trader % v.n_shards].engine
    acct = te.accounts[trader]
    return v, te, acct, acct.positions[1]

