"""`seqex audit`: one global check of the books of a cluster, rebuilt from the logs alone.

Every TradingEngine shard and the LiqEngine is rebuilt by replaying its in stream from seq 1
into a fresh engine (the configuration the cluster runs, from its seqex.json), and its own
audit runs **after every record**: a shard's wallets, positions at mark, fee pool, funding in
flight and clearing account sum to its deposits minus withdrawals, and the LiqEngine's fund,
LIQ's position and its clearing account sum to the fund's deposits. A failure names the engine,
the seq and the accounts whose books are off.

Across engines, each engine's clearing account is the mirror of the others' trades with it
(docs/liqengine.md §5). At the end of the logs the report adds every engine up:

    users' wallets + unrealised PnL + fee pools + insurance fund + clearing
        == deposits - withdrawals (+ the fund's deposits)

to the minor unit. Once every engine has applied every record that concerns it (a cluster at
rest), the clearing positions of all engines net to zero per symbol and their clearing money to
zero (``Report.at_rest``): each trade, funding payment and takeover between engines has its two
sides booked. A cluster under load shows the records still in flight as a clearing difference,
which the report names as such; one that stays at rest is money made or lost between engines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from mq.control import replay
from mq.record import decode


@dataclass
class EngineBooks:
    """One engine's figures at the end of its log, in minor units."""
    name: str
    stream: str
    seq: int = 0
    records: int = 0
    deposits: int = 0             # deposits - withdrawals (the fund's own for the LiqEngine)
    wallets: int = 0              # users' wallet balances
    upnl: int = 0                 # users' unrealised PnL at the engine's marks
    fees: int = 0                 # fee pool, rounding dust and funding in flight
    fund: int = 0                 # the insurance fund (the LiqEngine's LIQ wallet and PnL)
    clearing: int = 0             # the clearing account's equity: the other engines' side
    clearing_positions: dict[int, int] = field(default_factory=dict)   # symbol -> net size
    error: str = ""

    def total(self) -> int:
        return self.wallets + self.upnl + self.fees + self.fund + self.clearing


def _equity(acct, marks: dict, specs: dict) -> tuple[int, int]:
    """(balance, unrealised PnL at mark) of a TradingEngine or LiqEngine account."""
    upnl = 0
    for sym, pos in acct.positions.items():
        if pos.size or pos.cost:
            upnl += pos.size * marks.get(sym, 0) * specs[sym].value - pos.cost
    return acct.balance, upnl


def te_books(te, name: str, stream: str, marks: dict | None = None) -> EngineBooks:
    """A shard's figures, its positions valued at ``marks`` (one set for every engine, so that
    the clearing accounts of two engines cancel; a shard's own total does not depend on it)."""
    from tradingengine.engine import SWEEP_FUNDING
    marks = {**te.marks, **(marks or {})}
    b = EngineBooks(name, stream, seq=te.seq)
    b.deposits = te.deposits - te.withdrawals
    for acct in te.accounts.values():
        bal, upnl = _equity(acct, marks, te.specs)
        b.wallets += bal
        b.upnl += upnl
    b.fees = te.fee_pool + te.dust
    for sw in te.sweeps:
        if sw[0] == SWEEP_FUNDING:       # taken in, not yet paid out
            b.fees += sw[5] - sw[6]
    for acct in (te.clearing, te.liquidation):
        bal, upnl = _equity(acct, marks, te.specs)
        b.clearing += bal + upnl
        for sym, pos in acct.positions.items():
            if pos.size:
                b.clearing_positions[sym] = b.clearing_positions.get(sym, 0) + pos.size
    return b


def liq_books(liq, name: str, stream: str, marks: dict | None = None) -> EngineBooks:
    """The LiqEngine: the fund (net of what it owes), LIQ's positions at mark, and its clearing
    account (the shards' side of every takeover, deficit, ADL and close-out fill)."""
    marks = {**liq.marks, **(marks or {})}
    b = EngineBooks(name, stream, seq=liq.seq)
    b.deposits = liq.deposits
    b.fund = liq.fund - liq.fund_debt
    b.clearing = liq.clearing_balance
    for sym, (size, cost, _realised) in liq.liq.items():
        b.fund += size * marks.get(sym, 0) * liq.specs[sym].value - cost
    for sym, (size, cost) in liq.clearing.items():
        b.clearing += size * marks.get(sym, 0) * liq.specs[sym].value - cost
        if size:
            b.clearing_positions[sym] = size
    return b


def rebuild(engine_name: str, config: dict, replicator: str, stream: str, upto: int | None,
            every: int = 1, progress=None):
    """A fresh engine fed the stream record by record, its audit run every ``every`` records
    and at the end. Returns (engine, records, error) where error is the audit's report."""
    from deploy.engines import make
    eng, _restore = make(engine_name, config)
    n = 0
    for frame in replay(replicator, stream, 1, upto):
        for seq, ts, src, _ss, _epoch, kind, payload, _route in decode(frame):
            eng.apply(seq, ts, kind, bytes(payload), src)
            n += 1
            if n % every == 0:
                try:
                    eng.audit()
                except Exception as exc:      # EngineHalted: the engine's own report
                    return eng, n, f"{stream} at seq {seq}: {exc}"
        if progress is not None:
            progress(stream, n)
    try:
        eng.audit()
    except Exception as exc:
        return eng, n, f"{stream} at its end: {exc}"
    return eng, n, ""


@dataclass
class Report:
    engines: list[EngineBooks]
    seconds: float
    units: dict = field(default_factory=dict)   # symbol id -> deploy.decode.Units (names, lots)

    @property
    def expected(self) -> int:
        return sum(e.deposits for e in self.engines)

    @property
    def total(self) -> int:
        return sum(e.total() for e in self.engines)

    def clearing_net(self) -> dict[int, int]:
        net: dict[int, int] = {}
        for e in self.engines:
            for sym, n in e.clearing_positions.items():
                net[sym] = net.get(sym, 0) + n
        return {s: n for s, n in sorted(net.items()) if n}

    @property
    def clearing_money(self) -> int:
        """Every engine's clearing account together (at the same marks): 0 at rest."""
        return sum(e.clearing for e in self.engines)

    @property
    def at_rest(self) -> bool:
        """Nothing between engines is in flight, or lost: the clearing positions net to zero
        per symbol and the clearing money to zero."""
        return not self.clearing_net() and self.clearing_money == 0

    @property
    def ok(self) -> bool:
        return not any(e.error for e in self.engines) and self.total == self.expected

    def to_dict(self) -> dict:
        return {"ok": self.ok, "total": self.total, "expected": self.expected,
                "clearing_net": {str(k): v for k, v in self.clearing_net().items()},
                "clearing_money": self.clearing_money, "at_rest": self.at_rest,
                "seconds": round(self.seconds, 3),
                "engines": [{"name": e.name, "stream": e.stream, "seq": e.seq,
                             "records": e.records, "deposits": e.deposits,
                             "wallets": e.wallets, "upnl": e.upnl, "fees": e.fees,
                             "fund": e.fund, "clearing": e.clearing,
                             "error": e.error} for e in self.engines]}


def audit(topo, every: int = 1, progress=None) -> Report:
    """Rebuild every shard and the LiqEngine of a running cluster from its logs; the report."""
    from deploy.cli import _replica_config
    started = time.monotonic()
    replicator = _first_answering(topo.replicator_addrs())
    streams = [(f"te{sh['shard']}", sh["in"], "tradingengine")
               for sh in topo.trading["shards"]]
    if topo.trading.get("liq"):
        streams.append(("liq", topo.trading["liq"]["in"], "liqengine"))
    built = []
    for name, stream, engine in streams:
        config = _replica_config(topo, stream, engine)
        if config is None:
            raise RuntimeError(f"the cluster's seqex.json has no configuration for {stream}")
        built.append((name, stream, engine, *rebuild(engine, config, replicator, stream, None,
                                                     every, progress)))
    marks = dict(built[0][3].marks) if built else {}
    books = []
    for name, stream, engine, eng, n, error in built:
        b = te_books(eng, name, stream, marks) if engine == "tradingengine" else \
            liq_books(eng, name, stream, marks)
        b.records, b.error = n, error
        books.append(b)
    from deploy.decode import units_of
    return Report(books, time.monotonic() - started, units_of(topo.symbols))


def usdt(minor: int) -> str:
    from deploy.trading import usdt as fmt
    return ("-" if minor < 0 else "") + fmt(abs(minor))


def render(r: Report) -> list[str]:
    """The report as a person reads it (amounts in USDT)."""
    per = ", ".join(f"{e.stream} {e.records:,} records" for e in r.engines)
    lines = [f"seqex audit: every engine rebuilt from its log ({per}), its books checked after "
             f"every record, in {r.seconds:.1f} s"]
    for e in r.engines:
        if e.error:
            lines.append(f"  {e.name}: FAILED {e.error}")
    sums = {k: sum(getattr(e, k) for e in r.engines)
            for k in ("wallets", "upnl", "fees", "fund", "clearing")}
    rows = [("users' wallets", sums["wallets"]), ("users' unrealised PnL", sums["upnl"]),
            ("fee pools, dust, funding in flight", sums["fees"]),
            ("insurance fund", sums["fund"]),
            ("clearing between engines (0 at rest)", sums["clearing"]),
            ("sum", r.total), ("deposits - withdrawals", r.expected)]
    for label, v in rows:
        lines.append(f"  {label:<38} {usdt(v):>24} USDT")
    net = r.clearing_net()
    if net:
        def size(sym: int, lots: int) -> str:
            u = r.units.get(sym)
            if u is None:
                return f"symbol {sym} {lots:+,} lots"
            return f"{u.name} {'+' if lots > 0 else '-'}{u.qty(abs(lots))}"
        lines.append("  clearing positions between engines do not net to zero: "
                     + ", ".join(size(sym, n) for sym, n in net.items())
                     + " (records in flight, a lost one, or orders put straight into a "
                     "CrossEngine: `seqex submit --bypass-risk`)")
    elif r.clearing_money:
        lines.append(f"  clearing money between engines does not sum to zero though their "
                     f"positions net: {usdt(r.clearing_money)} USDT (records in flight, or "
                     f"money made or lost between engines)")
    if r.ok:
        lines.append("  balanced: the sum equals deposits minus withdrawals to the minor unit")
    elif r.total != r.expected:
        lines.append(f"  UNBALANCED by {usdt(r.total - r.expected)} USDT")
        for e in r.engines:
            if e.total() != e.deposits:
                lines.append(f"  {e.name} ({e.stream}): its books {usdt(e.total())} vs its "
                             f"deposits {usdt(e.deposits)} USDT (off by "
                             f"{usdt(e.total() - e.deposits)})")
    return lines


def _first_answering(addrs: list[str]) -> str:
    from mq.control import ping
    for a in addrs:
        if ping(a, timeout_s=2.0) is not None:
            return a
    raise RuntimeError(f"no replicator answers ({', '.join(addrs)}): is the cluster up?")
