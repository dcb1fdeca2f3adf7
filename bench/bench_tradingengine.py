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

Run: python bench/bench_tradingengine.py [--requests 200000] [--accounts 20000] [--repeat 3]
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
