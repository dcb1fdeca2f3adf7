"""Benchmark of the TradingEngine against the naive ReferenceEngine on the same records.

Method. Set-up (not timed): one shard holding `--accounts` funded accounts on two contracts,
each with a mark price. A seeded flow of client requests is generated up front: 70% limit
orders within 2% of the mark on either side (so about half of them cross), 10% market orders,
12% cancels and 8% amends of orders sent earlier in the flow. Two timed phases, each on a
fresh engine brought to the same state:

* requests: the engine applies the request records, one `apply` call each: the pre-trade risk
  check and the order, cancel or amend it sends to the CrossEngine. The figure is requests/s.
* results: the CrossEngines of the two symbols are run on those commands (not timed) and their
  outputs become CE_EVENTS records; the engine applies them: acceptances, trades (each fill
  books the position, fees, realised PnL, margin, execution report and APO status),
  cancels, amends. The figure is fills/s (trade legs of this shard's accounts applied per
  second), with records/s beside it.

Two baselines apply the same records in the same run: the ReferenceEngine (same rules, every
derived figure recomputed from scratch, no indexes), and the engine's own source run by the
interpreter instead of compiled by Cython ("interpreted"). The ratios are engine / reference
and engine / interpreted. The hash is sha256 over every output of both phases; all three must
give the same one. GC is off while timing. Each phase is run --repeat times; medians are
printed.

Marks (`--marks`). One shard where every account holds a position in symbol 1 (pairs of
accounts long and short 10 lots at the mark, each funded 1.2-20x its initial margin, so the
liquidation prices spread from about 8% below the mark down to zero, and above it for the
shorts), at 10K, 100K and 1M positions (`--positions`); built by restoring a snapshot (not
timed). The engine applies MarkPrice records moving within 0.5% of the first mark, which
liquidate no one; each one queues the maintenance sweep (and the audit, which the engine runs on
the mark path at most once a minute of sequenced time). The figure is marks/s;
the baseline in the same run is the same engine walking every holder at each mark
(`_walk_maintenance`, the sweep before the liquidation-trigger index), the ratio is
engine / walk and the hash (sha256 of every output) must be the same. The runs alternate
(engine, walk, engine, ...) and medians are printed. `--no-audit` leaves out the audit after
each mark (a walk over every account, O(accounts), on both sides) to show the sweep alone.

Run: python bench/bench_tradingengine.py [--requests 200000] [--accounts 20000] [--repeat 3]
     python bench/bench_tradingengine.py --marks [--positions 10000,100000,1000000]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import sys
import time

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crossengine.engine import CrossEngine  # noqa: E402
from tradingengine import codec as c  # noqa: E402
from tradingengine.engine import TradingEngine  # noqa: E402
from tradingengine.margin import ContractSpec, Tier  # noqa: E402
from tradingengine.reference import ReferenceEngine, interpreted  # noqa: E402

SEED = 20261122
HOUR = 3600 * 10**9
MARKS = {1: 2_500_000, 2: 30_000}
T0 = 1_800_000_000 * 10**9


def specs() -> list[ContractSpec]:
    return [
        ContractSpec(1, 100, 10_000, (Tier(10**13, 5_000, 0, 10_000),
                                      Tier(10**15, 10_000, 5 * 10**9, 5_000)),
                     -100, 500, 8 * HOUR, 50_000),
        ContractSpec(2, 1_000, 5_000, (Tier(10**13, 10_000, 0, 5_000),
                                       Tier(10**15, 20_000, 10**11, 2_500)),
                     200, 600, HOUR, 100_000),
    ]


def setup_records(accounts: int) -> list[tuple[int, bytes]]:
    rng = random.Random(SEED)
    recs = [(c.DEPOSIT, c.transfer(a, a, rng.randrange(10**11, 10**13)))
            for a in range(1, accounts + 1)]
    recs += [(c.MARK_PRICE, c.mark_price(s, p)) for s, p in MARKS.items()]
    return recs


def request_records(n: int, accounts: int) -> list[tuple[int, bytes]]:
    rng = random.Random(SEED + 1)
    live: list[tuple[int, int]] = []     # (account, client order id) sent so far
    out = []
    for i in range(1, n + 1):
        r = rng.random()
        if r < 0.80 or not live:
            account = rng.randrange(1, accounts + 1)
            symbol = rng.choice((1, 2))
            mark = MARKS[symbol]
            side = rng.choice((c.BUY, c.SELL))
            qty = rng.randrange(1, 50)
            if r < 0.70:
                price = mark + rng.randrange(-mark // 50, mark // 50)
                payload = c.new_order(i, account, symbol, side, price, qty)
            else:
                payload = c.new_order(i, account, symbol, side, 0, qty, ord_type=c.MARKET,
                                      tif=c.IOC)
            out.append((c.NEW_ORDER, payload))
            live.append((account, i))
        elif r < 0.92:
            account, coid = live.pop(rng.randrange(len(live)))
            out.append((c.CANCEL, c.cancel(i, coid, account)))
        else:
            account, coid = live[rng.randrange(len(live))]
            out.append((c.AMEND, c.amend(i, coid, account, qty=rng.randrange(50, 80))))
    return out


def engine_at_start(cls: type, setup: list[tuple[int, bytes]]) -> TradingEngine:
    te = cls(specs())
    for seq, (kind, payload) in enumerate(setup, 1):
        te.apply(seq, T0 + seq, kind, payload)
    return te


def run_phase(te: TradingEngine, records: list[tuple[int, bytes]], seq0: int) -> tuple[float, list[bytes]]:
    apply = te.apply
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        outs = [apply(seq0 + i, T0 + seq0 + i, kind, payload)
                for i, (kind, payload) in enumerate(records, 1)]
        elapsed = time.perf_counter() - t
    finally:
        gc.enable()
    return elapsed, outs


def crossengine_results(outs: list[bytes]) -> tuple[list[tuple[int, bytes]], int]:
    """Run the CrossEngines on the commands of the request phase: CE_EVENTS records, and how
    many trade legs of this shard's accounts they hold (every account is in this shard)."""
    ces = {s: CrossEngine(symbol_id=s, max_price=10**9) for s in MARKS}
    seqs = dict.fromkeys(MARKS, 0)
    records = []
    legs = 0
    for out in outs:
        for ev in c.decode_events(out):
            if ev[0] != c.CE_COMMAND:
                continue
            symbol = ev[1]
            seqs[symbol] += 1
            result = ces[symbol].apply(seqs[symbol], T0, ev[2], ev[4])
            records.append((c.CE_EVENTS, c.ce_events(symbol, result)))
            off = 0
            while off < len(result):
                kind = result[off]
                legs += 2 if kind == c.CE_TRADE else 0
                off += c.CE_EVENT_STRUCTS[kind].size
    return records, legs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--marks", action="store_true", help="the mark-price benchmark instead")
    ap.add_argument("--positions", default="10000,100000,1000000")
    ap.add_argument("--no-audit", action="store_true",
                    help="marks: leave out the audit after each mark on both sides")
    args = ap.parse_args()
    if args.marks:
        main_marks(args)
        return
    setup = setup_records(args.accounts)
    requests = request_records(args.requests, args.accounts)
    seq0 = len(setup)

    engines = {"engine": TradingEngine, "reference": ReferenceEngine,
               "interpreted": interpreted()}
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    hashes = {}
    results: list[tuple[int, bytes]] = []
    legs = 0
    for rep in range(args.repeat):
        for name, cls in engines.items():
            te = engine_at_start(cls, setup)
            t_req, outs = run_phase(te, requests, seq0)
            if not results:
                results, legs = crossengine_results(outs)
            t_res, outs2 = run_phase(te, results, seq0 + len(requests))
            te.audit()
            h = hashlib.sha256()
            for o in outs + outs2:
                h.update(o)
            hashes.setdefault(name, h.hexdigest()[:16])
            if hashes[name] != h.hexdigest()[:16]:
                raise SystemExit(f"{name}: a repeat gave another result hash")
            f = figures[name]
            f.setdefault("requests/s", []).append(len(requests) / t_req)
            f.setdefault("fills/s", []).append(legs / t_res)
            f.setdefault("result records/s", []).append(len(results) / t_res)
        print(f"repeat {rep + 1}: engine {figures['engine']['requests/s'][-1]:,.0f} requests/s, "
              f"{figures['engine']['fills/s'][-1]:,.0f} fills/s", flush=True)
    if len(set(hashes.values())) != 1:
        raise SystemExit(f"the engines disagree: {hashes}")
    print(f"\n{len(requests):,} requests, {len(results):,} CrossEngine result records holding "
          f"{legs:,} fills; {args.accounts:,} accounts; medians of {args.repeat}")
    print(f"{'figure':<18}{'engine':>11}{'reference':>11}{'ratio':>7}{'interpreted':>13}"
          f"{'ratio':>7}")
    for key in ("requests/s", "fills/s", "result records/s"):
        e, r, i = (statistics.median(figures[n][key]) for n in engines)
        print(f"{key:<18}{e:>11,.0f}{r:>11,.0f}{e / r:>6.2f}x{i:>13,.0f}{e / i:>6.2f}x")
    print(f"result hash {hashes['engine']} (engine, reference and interpreted agree)")


# -- marks: the maintenance sweep at 10K .. 1M positions -----------------------------------------

class WalkEngine(TradingEngine):
    """The baseline: the maintenance sweep walks every holder (the engine's sweep before the
    liquidation-trigger index, kept as _walk_maintenance for the reference engine)."""

    def _sweep_maintenance(self, sw: list) -> bool:
        return self._walk_maintenance(sw)


def positions_snapshot(positions: int) -> bytes:
    """A snapshot of a shard whose ``positions`` accounts each hold a position in symbol 1:
    one pair traded through the engine, then its two account rows copied with new ids and
    balances (the totals and the fee pool scaled to match)."""
    mark = MARKS[1]
    te = TradingEngine(specs())
    seq = 0

    def apply(kind: int, payload: bytes) -> bytes:
        nonlocal seq
        seq += 1
        return te.apply(seq, T0 + seq, kind, payload)

    for a in (1, 2):
        apply(c.DEPOSIT, c.transfer(a, a, 10**12))
    apply(c.MARK_PRICE, c.mark_price(1, mark))
    ce = CrossEngine(symbol_id=1, max_price=10**9)
    for coid, (a, side) in enumerate(((1, c.SELL), (2, c.BUY)), 1):
        for ev in c.decode_events(apply(c.NEW_ORDER, c.new_order(coid, a, 1, side, mark, 10))):
            if ev[0] == c.CE_COMMAND:
                apply(c.CE_EVENTS, c.ce_events(1, ce.apply(coid, T0, ev[2], ev[4])))
    assert te.accounts[1].positions[1].size == -10 and te.accounts[2].positions[1].size == 10
    state = msgpack.unpackb(te.snapshot(), raw=False, strict_map_key=False)
    rows = {r[0]: r for r in state[16]}
    margin = te.accounts[2].positions[1].margin
    rng = random.Random(SEED + 2)
    accounts, deposits = [], 0
    for i in range(positions // 2):
        for a in (1, 2):
            r = msgpack.unpackb(msgpack.packb(rows[a]), raw=False, strict_map_key=False)
            fees = r[4][1]
            amount = margin * rng.randrange(12, 200) // 10 + fees
            r[0] = 2 * i + a
            r[1] = amount - fees
            r[4][0] = amount
            deposits += amount
            accounts.append(r)
    state[16] = accounts
    state[9] = deposits                         # deposits
    state[7] = state[7] * (positions // 2)      # the fee pool: both fees of every pair
    state[15] = [0, []]                         # no transfer ids remembered
    return msgpack.packb(state)


def mark_records(n: int) -> list[tuple[int, bytes]]:
    rng = random.Random(SEED + 3)
    mark = MARKS[1]
    return [(c.MARK_PRICE, c.mark_price(1, mark + rng.randrange(-mark // 200, mark // 200)))
            for _ in range(n)]


def run_marks(te: TradingEngine, marks: list[tuple[int, bytes]]) -> tuple[float, str]:
    """Apply the marks (after the engine's last record); marks/s and the outputs' hash."""
    seq0 = te.seq
    apply = te.apply
    h = hashlib.sha256()
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        for i, (kind, payload) in enumerate(marks, 1):
            h.update(apply(seq0 + i, T0 + 10**12 + seq0 + i, kind, payload))
        elapsed = time.perf_counter() - t
    finally:
        gc.enable()
    if te.sweeps:
        raise SystemExit(f"{type(te).__name__}: a sweep is left over")
    return len(marks) / elapsed, h.hexdigest()[:16]


def main_marks(args) -> None:
    sizes = [int(x) for x in args.positions.split(",")]
    print(f"{'positions':>10}{'engine marks/s':>16}{'walk marks/s':>14}{'ratio':>12}"
          f"{'engine ms/mark':>16}  hash{'  (no audit)' if args.no_audit else ''}")
    for n in sizes:
        snap = positions_snapshot(n)
        # the walk costs about n microseconds a mark: it gets fewer marks, the engine more
        n_walk = max(2, min(50, 2_000_000 // n))
        # the engine's marks cost what they cross: it gets many more marks than the walk
        n_engine = max(200, min(5_000, 50_000_000 // n))
        classes = {"engine": NoAuditEngine if args.no_audit else TradingEngine,
                   "walk": NoAuditWalk if args.no_audit else WalkEngine}
        engines = {name: cls.restore(snap) for name, cls in classes.items()}
        figures: dict[str, list[float]] = {"engine": [], "walk": []}
        hashes: dict[str, list[str]] = {"engine": [], "walk": []}
        for rep in range(args.repeat):
            # the same marks to both (their outputs must hash the same), alternating
            same = mark_records(n_walk + rep)[rep:]
            for name in ("engine", "walk"):
                per_s, hx = run_marks(engines[name], same)
                hashes[name].append(hx)
                if name == "walk":
                    figures[name].append(per_s)
                else:
                    figures[name].append(run_marks(engines[name], mark_records(n_engine))[0])
        if hashes["engine"] != hashes["walk"]:
            raise SystemExit(f"the engine and the walk disagree at {n}: {hashes}")
        e = statistics.median(figures["engine"])
        w = statistics.median(figures["walk"])
        print(f"{n:>10,}{e:>16,.0f}{w:>14,.3f}{e / w:>11,.0f}x{1000 / e:>16.3f}  "
              f"{hashes['engine'][0]}", flush=True)


class NoAuditEngine(TradingEngine):
    def audit(self) -> None:
        pass


class NoAuditWalk(WalkEngine):
    def audit(self) -> None:
        pass


if __name__ == "__main__":
    main()
