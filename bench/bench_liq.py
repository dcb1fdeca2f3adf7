"""Benchmark of the LiqEngine against the naive ReferenceLiqEngine, and a liquidation cascade.

Method. Set-up (not timed): `--positions` client positions (half long, half short, entries
spread around the mark, balances giving leverages from 1x to 50x) on symbol 1 across two
TradingEngine shards, fed as PositionStatus and AccountStatus records, then a tick that
computes every ADL indicator (so the timed phases start with nothing owed). The reference is
restored from the engine's snapshot, so both start from the same state. Three phases:

* liquidations: `--liquidations` handoffs (TE event 8, ten a record) each followed by the
  CrossEngine's answer to LIQ's limit order (accepted, and filled at the bankruptcy price as
  maker, ten a record). The figure is liquidations/s: takeovers and their close-out fills
  applied per second of `apply` time. The reference applies the same records (all of them, or
  its first `--reference-liquidations` when that is fewer: it scans every close-out).
* rankings: the ADL ranking of both sides of symbol 1 over all the positions, after a mark
  change dropped every cached ranking: rankings/s (one ranking = every position ranked once).
  The reference ranks with Fractions. The hash covers the rankings, which must agree.
* cascade: a mark crash (the mark to 7,000, under every bankruptcy price) hands `--cascade`
  longs to the LiqEngine within 20 ms of sequenced time across the two shards (positions and
  indicators as in the set-up). The CrossEngine fills 60% of each limit at once, the rest
  rests; after the close-out window the engine cancels it; each IOC fills half of what is
  left (rounded up) and the rest expires; the fund holds that rest and sends a fresh IOC a
  window later while it covers the held exposure at mark, and once it does not the held rests
  are auto-deleveraged against the shorts; the TradingEngines apply every Adl in the next
  record. Records arrive every 100 us of sequenced time (a tick when nothing else is due). The
  figure is the sequenced time from the first handoff until no close-out is left (target
  < 1 s), with the wall time the engine took.

The hash is sha256 over every output of the liquidations phase (engine and reference agree on
the records both applied) and the rankings. GC is off while timing; times are the CPU time of
this process (time.process_time), which a shared machine distorts less than wall time.
Medians of `--repeat`.

Run: python bench/bench_liq.py [--positions 100000] [--liquidations 10000] [--cascade 10000]
                               [--reference-liquidations 10000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from liqengine import codec as c  # noqa: E402
from liqengine import sim  # noqa: E402
from liqengine.engine import LiqEngine, LiqSpec  # noqa: E402
from liqengine.reference import ReferenceLiqEngine  # noqa: E402

SPECS = [LiqSpec(1, 100), LiqSpec(2, 1000)]
N_SHARDS = 2
MARK = 10_000
WINDOW_NS = 200_000_000
T0 = 1_800_000_000 * 10**9
VICTIM0 = 1_000_000


def new_engine(cls=LiqEngine) -> LiqEngine:
    return cls(SPECS, N_SHARDS, {c.TE_SOURCE_BASE | n: n for n in range(N_SHARDS)},
               {c.CE_SOURCE_BASE | s.symbol: s.symbol for s in SPECS}, [sim.ORACLE],
               close_out_window_ns=WINDOW_NS)


def setup_records(n: int) -> list[tuple]:
    """(kind, payload, source) records: a mark, then n positions and balances."""
    recs = [(c.MARK_PRICE, c.mark_price(1, MARK), sim.ORACLE)]
    per_shard: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(n):
        account = i + 1
        long = i % 2 == 0
        size = 1 + i % 37
        entry = MARK - 400 + (i * 7919) % 800
        cost = (size if long else -size) * entry * SPECS[0].value
        notional = size * MARK * SPECS[0].value
        balance = notional // (1 + i % 50)
        per_shard[account % 2].append(sim.te_position(account, 1, size if long else -size, cost)
                                      + sim.te_account(account, balance))
    for shard, evs in per_shard.items():
        for k in range(0, len(evs), 1000):
            recs.append((0, b"".join(evs[k:k + 1000]), c.TE_SOURCE_BASE | shard))
    recs.append((c.KIND_TICK, b"", sim.OPERATOR))
    return recs


def run_records(engine: LiqEngine, recs: list[tuple], seq: int, ts: int,
                dt: int = 1000) -> tuple[int, int, list[bytes]]:
    out = []
    for kind, payload, source in recs:
        seq += 1
        ts += dt
        out.append(engine.apply(seq, ts, kind, payload, source))
    return seq, ts, out


def prepared(n_positions: int) -> tuple[bytes, int, int]:
    e = new_engine()
    seq, ts, _ = run_records(e, setup_records(n_positions), 0, T0)
    while e.ind_pending:     # publish every indicator owed before timing
        seq, ts, _ = run_records(e, [(c.KIND_TICK, b"", sim.OPERATOR)], seq, ts)
    return e.snapshot(), seq, ts


def liquidation_records(n: int) -> list[tuple]:
    """Ten handoffs a record, each record followed by the CrossEngine's fills of the ten."""
    recs = []
    value = SPECS[0].value
    for k in range(0, n, 10):
        te, ce = [], []
        for i in range(k, min(n, k + 10)):
            victim = VICTIM0 + i
            bp = MARK - 1000 - i % 300
            te.append(sim.te_liquidation(victim, 1, 10, bp, value, 500))
            te.append(sim.te_position(victim, 1, 0, 0))
            coid = (i + 1) * 4 + 1              # close-out i + 1, its limit order
            order_id = (1 << 40) + i
            ce.append(sim.ce_accepted(order_id, coid, c.SELL, bp, 10, c.GTC))
            ce.append(sim.ce_trade(i + 1, order_id, 9, c.LIQ_ACCOUNT, 77, bp, 10, c.BUY))
        recs.append((0, b"".join(te), c.TE_SOURCE_BASE | (k // 10) % 2))
        recs.append((0, b"".join(ce), c.CE_SOURCE_BASE | 1))
    return recs


def timed(fn):
    gc.disable()
    try:
        t = time.process_time()
        result = fn()
        return time.process_time() - t, result
    finally:
        gc.enable()


def bench_liquidations(snap: bytes, seq: int, ts: int, recs: list, cls) -> tuple[float, list]:
    e = cls.restore(snap)
    secs, (_s, _t, out) = timed(lambda: run_records(e, recs, seq, ts))
    e.audit()
    if e.closeouts:
        raise SystemExit("bench: close-outs left after the liquidations phase")
    return secs, out


def bench_rankings(snap: bytes, cls, rounds: int) -> tuple[float, list]:
    e = cls.restore(snap)

    def go():
        rankings = []
        for r in range(rounds):
            e.marks[1] = MARK + 1 + r
            e._dirty_all()
            rankings.append((e.ranking(1, 1), e.ranking(1, -1)))
        return rankings
    return timed(go)


def cascade(snap: bytes, seq: int, ts: int, n: int) -> dict:
    """The mark crash of the module doc; returns sequenced and wall time."""
    v = sim.LiqVenue(specs=SPECS, n_shards=N_SHARDS, check=False, window_ns=WINDOW_NS)
    v.engine = LiqEngine.restore(snap)
    for (a, s), (z, k) in v.engine.positions.items():
        v.positions[(a, s)] = (z, k)
    v.seq, v.ts_ns = seq, ts
    step = 100_000      # 100 us between records
    value = SPECS[0].value
    start_ts = v.ts_ns + step
    wall = 0.0
    handed = 0
    adls = 0

    engine_apply = v.engine.apply

    def timed_apply(*a):
        nonlocal wall
        t = time.process_time()
        out = engine_apply(*a)
        wall += time.process_time() - t
        return out
    v.engine.apply = timed_apply     # only the engine's own time is counted

    def apply(kind, payload, source):
        v.apply(kind, payload, source, dt_ns=step)

    gc.disable()
    try:
        apply(c.MARK_PRICE, c.mark_price(1, MARK * 7 // 10), sim.ORACLE)    # the crash
        while handed < n or v.engine.closeouts:
            did = False
            if handed < n:      # 50 handoffs a record, the shards in turn: 20 ms for 10,000
                te = []
                for i in range(handed, min(n, handed + 50)):
                    bp = MARK - 1500 - i % 500
                    te.append(sim.te_liquidation(VICTIM0 + i, 1, 10, bp, value, 2_000))
                shard = (handed // 50) % 2
                handed = min(n, handed + 50)
                apply(0, b"".join(te), c.TE_SOURCE_BASE | shard)
                did = True
            sent = [k for k in v.sent if k in v.orders and v.orders[k]["order_id"] == 0]
            v.sent = []
            if sent:            # the CrossEngine answers every order sent
                evs = []
                for coid in sent:
                    o = v.orders[coid]
                    o["order_id"] = v.next_order_id
                    v.next_order_id += 1
                    evs.append(sim.ce_accepted(o["order_id"], coid, o["side"], o["price"],
                                               o["qty"], o["tif"]))
                    take = o["qty"] * 6 // 10 if o["tif"] == c.GTC else (o["qty"] + 1) // 2
                    if take:
                        evs.append(v._trade(o, take, o["price"], taker=True))
                    if o["tif"] == c.IOC:
                        if o["qty"]:
                            evs.append(sim.ce_cancelled(o["order_id"], coid, o["qty"],
                                                        c.CE_EXPIRED))
                        del v.orders[coid]
                for k in range(0, len(evs), 4000):
                    apply(0, b"".join(evs[k:k + 4000]), c.CE_SOURCE_BASE | 1)
                did = True
            if v.cancels:
                evs = []
                for _symbol, coid in v.cancels:
                    o = v.orders.pop(coid, None)
                    evs.append(sim.ce_rejected(coid, 3005) if o is None else
                               sim.ce_cancelled(o["order_id"], coid, o["qty"]))
                v.cancels = []
                for k in range(0, len(evs), 4000):
                    apply(0, b"".join(evs[k:k + 4000]), c.CE_SOURCE_BASE | 1)
                did = True
            if v.adls:          # the TradingEngines apply every Adl
                by_shard: dict[int, list[bytes]] = {0: [], 1: []}
                for adl_id in sorted(v.adls):
                    account, symbol, qty, price = v.adls.pop(adl_id)
                    size, cost = v.positions[(account, symbol)]
                    closed = min(abs(qty), abs(size))
                    signed = closed if qty > 0 else -closed
                    cost -= cost * closed // abs(size) if closed < abs(size) else cost
                    size += signed
                    v.positions[(account, symbol)] = (size, cost)
                    by_shard[account % 2].append(
                        sim.te_adl_applied(adl_id, account, symbol, signed, price)
                        + sim.te_position(account, symbol, size, cost))
                    adls += 1
                for shard, evs in by_shard.items():
                    for k in range(0, len(evs), 2000):
                        apply(0, b"".join(evs[k:k + 2000]), c.TE_SOURCE_BASE | shard)
                did = True
            if not did:
                apply(c.KIND_TICK, b"", sim.OPERATOR)
            if v.ts_ns - start_ts > 60 * 10**9:
                raise SystemExit("bench: the cascade did not clear within 60 s of sequenced time")
    finally:
        gc.enable()
    v.engine.audit()
    return {"sequenced_s": (v.ts_ns - start_ts) / 1e9, "wall_s": wall, "records": v.seq - seq,
            "adls": adls, "fund": v.engine.fund}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--liquidations", type=int, default=10_000)
    ap.add_argument("--reference-liquidations", type=int, default=10_000)
    ap.add_argument("--rankings", type=int, default=3)
    ap.add_argument("--cascade", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t = time.process_time()
    snap, seq, ts = prepared(args.positions)
    print(f"set-up: {args.positions:,} positions in {time.process_time() - t:.1f} s")
    recs = liquidation_records(args.liquidations)
    n_ref = min(args.liquidations, args.reference_liquidations)
    ref_recs = recs[:2 * ((n_ref + 9) // 10)]
    h = hashlib.sha256()
    fig: dict[str, list[float]] = {"liq_engine": [], "liq_reference": [], "rank_engine": [],
                                   "rank_reference": []}
    for rep in range(args.repeat):
        secs, out = bench_liquidations(snap, seq, ts, recs, LiqEngine)
        fig["liq_engine"].append(args.liquidations / secs)
        rsecs, rout = bench_liquidations(snap, seq, ts, ref_recs, ReferenceLiqEngine)
        fig["liq_reference"].append(n_ref / rsecs)
        if rout != out[:len(rout)]:
            raise SystemExit("bench: the reference's outputs differ from the engine's")
        secs, rank = bench_rankings(snap, LiqEngine, args.rankings)
        fig["rank_engine"].append(args.rankings / secs)
        rsecs, rrank = bench_rankings(snap, ReferenceLiqEngine, args.rankings)
        fig["rank_reference"].append(args.rankings / rsecs)
        if rank != rrank:
            raise SystemExit("bench: the reference ranks differently")
        if rep == 0:
            for o in out:
                h.update(o)
            for longs, shorts in rank:
                h.update(repr((longs, shorts)).encode())
        print(f"repeat {rep + 1}: {fig['liq_engine'][-1]:,.0f} liquidations/s, "
              f"{fig['rank_engine'][-1]:.2f} rankings/s", flush=True)
    med = {k: statistics.median(v) for k, v in fig.items()}
    print(f"\n{'figure':<32}{'engine':>12}{'reference':>12}{'ratio':>8}")
    print(f"{'liquidations/s':<32}{med['liq_engine']:>12,.0f}{med['liq_reference']:>12,.0f}"
          f"{med['liq_engine'] / med['liq_reference']:>7.2f}x")
    print(f"{f'ADL rankings/s ({args.positions:,} pos.)':<32}{med['rank_engine']:>12.2f}"
          f"{med['rank_reference']:>12.2f}{med['rank_engine'] / med['rank_reference']:>7.2f}x")
    print(f"result hash {h.hexdigest()[:16]} (engine and reference agree; reference on "
          f"{n_ref:,} liquidations)")
    runs = [cascade(snap, seq, ts, args.cascade) for _ in range(args.repeat)]
    seq_s = statistics.median(r["sequenced_s"] for r in runs)
    wall_s = statistics.median(r["wall_s"] for r in runs)
    r0 = runs[0]
    print(f"cascade: {args.cascade:,} liquidations over {args.positions:,} positions cleared in "
          f"{seq_s:.3f} s of sequenced time (target < 1 s), {wall_s:.2f} s of engine CPU time, "
          f"{r0['records']:,} records, {r0['adls']:,} Adls, fund {r0['fund']:,}")


if __name__ == "__main__":
    main()
