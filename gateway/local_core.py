"""LocalCore: the order path in one process, synchronous, for tests and benchmarks.

It plays the topology of docs/order-path.md with real engines and no mq/: TradingEngine shards
(``in.te.N`` → ``out.te.N``) and one CrossEngine per symbol (``in.ce.SYM`` → ``out.ce.SYM``).
It stamps each record like a sequencer (a seq per stream, ts from the injected clock, never
running backwards), gives each record its source id (docs/order-path.md §2), and routes:

* every CrossEngineCommand event of an ``out.te.N`` record goes to the CrossEngine of its
  symbol as a record of the CrossEngine's command kind, from source ``0x7300_0000 | N``;
* every ``out.ce.SYM`` record goes to the shards whose accounts its events name (both sides of
  a trade; every shard for a book-wide event), as a record from ``0x7000_0000 | SYM`` with the
  CrossEngine's input kind and its output payload as it is.

A record is applied, with all the round trips it causes (breadth first, in the order the
records were produced), before ``send``, ``operator`` or ``tick`` returns; subscribers see
every ``out.te.N`` record in order, synchronously. The gateway server uses the same interface
against the real streams; ``depth`` is always 0 here.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from crossengine import codec as cc
from crossengine.engine import CrossEngine
from mq.sources import OPERATOR_SOURCE
from tradingengine import codec as tc
from tradingengine.engine import TradingEngine
from tradingengine.margin import ContractSpec

CE_SOURCE = 0x7000_0000        # | symbol_id: out.ce.SYM into in.te.N
ORACLE_SOURCE = 0x7100_0000    # | i: a mark-price oracle
GATEWAY_SOURCE = 0x7200_0000   # | g: a gateway
TE_SOURCE = 0x7300_0000        # | N: out.te.N into in.ce.SYM
SEQUENCER_SOURCE = 0           # Ticks

_BOOK_WIDE = (cc.EV_HALTED, cc.EV_RESUMED)
_ACCOUNT_AT = {cc.EV_ACCEPTED: (3,), cc.EV_REJECTED: (2,), cc.EV_TRADE: (4, 5),
               cc.EV_CANCELLED: (3,), cc.EV_AMENDED: (3,), cc.EV_EXPIRED: (3,)}


class LocalCore:
    """See the module doc. ``specs``: the TradingEngine's contract specs (their symbol ids are
    the CrossEngines' symbol ids)."""

    def __init__(self, specs: list[ContractSpec], n_shards: int = 1,
                 clock: Callable[[], int] = time.time_ns, gateway: int = 0) -> None:
        if not 1 <= n_shards <= 63:       # route bit 63 is the LiqEngine's (docs/liqengine.md)
            raise ValueError(f"n_shards {n_shards} not in 1 .. 63")
        self.n_shards = n_shards
        self.clock = clock
        self.gateway_source = GATEWAY_SOURCE | gateway
        ce_sources = {CE_SOURCE | s.symbol: s.symbol for s in specs}
        self.shards = [TradingEngine(specs, n, n_shards, ce_sources=ce_sources,
                                     oracle_sources=[ORACLE_SOURCE],
                                     gateway_sources=[self.gateway_source])
                       for n in range(n_shards)]
        self.ces = {s.symbol: CrossEngine(symbol_id=s.symbol, max_price=s.max_price,
                                          max_qty=s.max_qty) for s in specs}
        self.te_seq = [0] * n_shards
        self.ce_seq = dict.fromkeys(self.ces, 0)
        self.ts_ns = 0
        self._subscribers: list[Callable[[int, int, int, bytes], None]] = []
        self.out_log: list[list[bytes]] = [[] for _ in range(n_shards)]  # out.te.N's payloads
        self._queue: deque = deque()
        self._running = False

    # -- the interface the gateway uses ------------------------------------------------------

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, shard: int, kind: int, payload: bytes) -> None:
        """A record from the gateway's source into in.te.N, applied with all it causes."""
        self._submit(shard, self.gateway_source, kind, payload)

    def depth(self, shard: int) -> int:
        return 0

    def subscribe(self, callback: Callable[[int, int, int, bytes], None]) -> None:
        """callback(shard, out_seq, ts_ns, payload) for every out.te.N record, in order."""
        self._subscribers.append(callback)

    async def fetch(self, shard: int, seqs: list[int]) -> dict[int, bytes]:
        """Records of out.te.N read back (the gateway's journal holds only the newest)."""
        log = self.out_log[shard]
        return {s: log[s - 1] for s in seqs if 1 <= s <= len(log)}

    def tick(self, ts_ns: int | None = None) -> None:
        """A Tick into every shard at ``ts_ns`` (default: the clock): timers fire."""
        self._stamp(ts_ns)
        for n in range(self.n_shards):
            self._queue.append(("te", n, SEQUENCER_SOURCE, tc.KIND_TICK, b""))
        self._drain()

    def operator(self, shard: int, kind: int, payload: bytes) -> None:
        """A record from the operator's source (e.g. Deposit, MarkPrice) into in.te.N."""
        self._submit(shard, OPERATOR_SOURCE, kind, payload)

    # -- more for tests ------------------------------------------------------------------------

    def oracle(self, kind: int, payload: bytes) -> None:
        """A MarkPrice or FundingInputs from oracle 0 into every shard."""
        self._stamp(None)
        for n in range(self.n_shards):
            self._queue.append(("te", n, ORACLE_SOURCE, kind, payload))
        self._drain()

    def shard_of(self, account: int) -> int:
        return account % self.n_shards

    # -- the streams ---------------------------------------------------------------------------

    def _stamp(self, ts_ns: int | None) -> None:
        now = self.clock() if ts_ns is None else ts_ns
        if now > self.ts_ns:
            self.ts_ns = now      # a sequencer's time never runs backwards

    def _submit(self, shard: int, source: int, kind: int, payload: bytes) -> None:
        if not 0 <= shard < self.n_shards:
            raise ValueError(f"shard {shard} not in 0 .. {self.n_shards - 1}")
        self._stamp(None)
        self._queue.append(("te", shard, source, kind, bytes(payload)))
        self._drain()

    def _drain(self) -> None:
        if self._running:
            return               # a callback sent a record: the running drain applies it
        self._running = True
        try:
            queue = self._queue
            while queue:
                where, target, source, kind, payload = queue.popleft()
                if where == "te":
                    self._apply_te(target, source, kind, payload)
                else:
                    self._apply_ce(target, source, kind, payload)
        finally:
            self._running = False

    def _apply_te(self, n: int, source: int, kind: int, payload: bytes) -> None:
        te = self.shards[n]
        self.te_seq[n] += 1
        seq = self.te_seq[n]
        out = te.apply(seq, self.ts_ns, kind, payload, source)
        if te.route:
            for ev in tc.decode_events(out):
                if ev[0] == tc.CE_COMMAND and ev[1] in self.ces:
                    self._queue.append(("ce", ev[1], TE_SOURCE | n, ev[2], ev[4]))
        self.out_log[n].append(out)
        for cb in self._subscribers:
            cb(n, seq, self.ts_ns, out)

    def _apply_ce(self, symbol: int, source: int, kind: int, payload: bytes) -> None:
        self.ce_seq[symbol] += 1
        out = self.ces[symbol].apply(self.ce_seq[symbol], self.ts_ns, kind, payload, source)
        shards: dict[int, None] = {}
        for ev in cc.decode_events(out):
            t = ev[0]
            if t in _BOOK_WIDE or t == cc.EV_MASS_CANCELLED and ev[1] == cc.SCOPE_BOOK:
                shards = dict.fromkeys(range(self.n_shards))
                break
            if t == cc.EV_MASS_CANCELLED:
                shards[ev[2] % self.n_shards] = None
            for i in _ACCOUNT_AT.get(t, ()):
                shards[ev[i] % self.n_shards] = None
        for n in sorted(shards):
            self._queue.append(("te", n, CE_SOURCE | symbol, kind, out))


__all__ = ["CE_SOURCE", "GATEWAY_SOURCE", "ORACLE_SOURCE", "TE_SOURCE", "LocalCore"]
