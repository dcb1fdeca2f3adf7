"""Benchmark of the CrossEngine against the pure-Python reference on the same flow.

Method. A seeded flow of operations on one symbol is generated up front (not timed), with a
generator engine that tracks which orders are live, so that cancels and amends name real
orders. It is encoded as sequenced mq frames of 1,024 records, as a replica receives them. The
Cython engine applies the frames (`apply_frame`, one call per frame), handing each output frame
on before the next, as a replica does; the outputs for the hash come from one more, untimed
run. The reference applies the same commands one by one. Both run in this process, GC off, after a warm-up. Each reports
ops/s; the hash is sha256 over every Trade event in order, and both must give the same one.

Flows:
* `core`: 55% limit orders around a drifting mid (10% of them aggressive), 35% cancels of
  live orders, 10% market / IOC; a few thousand resting orders over about 100 levels a side.
* `mixed`: 35% limit (a third post-only), 20% cancels, 15% amends, 10% FOK, 10% IOC,
  10% market.

* `independent`: issue 16's flow, from its description (`independent_flow`): 55% limit
  orders (8% aggressive), 35% cancels by client order id, 5% market, 5% IOC, about 4,000
  resting over about 110 levels a side. Its baseline is not the reference but `HeapBook`, a
  lean pure-Python heapq + deque book with no events, run alternately with the engine in the
  same process; their fills must be identical.

Width sweep: resting orders at prices drawn from 100 / 10,000 / 100,000 / 1,000,000 ticks
behind the touch (`--widths`), ns per order, live levels a side and the book's state hash.

Run: python bench/bench_crossengine.py [--ops 1000000] [--repeat 3]
     [--flow core|mixed|independent|all] [--sweep-orders 400000] [--snapshot-orders 1000000]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import heapq
import math
import os
import random
import statistics
import sys
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crossengine import codec as c  # noqa: E402
from crossengine.engine import CrossEngine  # noqa: E402
from crossengine.reference import ReferenceEngine  # noqa: E402
from mq.record import HEADER_SIZE, encode, offset_of  # noqa: E402

FRAME = 1024
MARKET_SIZE = 1.0         # market and IOC quantities: the limit law times this (independent flow)
MID_STEP = 0.03           # chance that the mid moves a tick at a step (independent flow)
INDEPENDENT = {"max_qty": 1_000_000, "capacity": 1 << 16}
TRADE = c.EVENT_STRUCTS[c.EV_TRADE]


def generate(flow: str, ops: int, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    gen = CrossEngine(max_qty=1_000_000)
    live: list[tuple[int, int, int]] = []   # (order_id, account, client id)
    where: dict[int, int] = {}              # order_id -> index in live
    mid = 100_000
    cl_id = 0
    out: list[tuple[int, bytes]] = []

    def drop(oid: int) -> None:
        i = where.pop(oid, None)
        if i is not None:
            last = live.pop()
            if i < len(live):
                live[i] = last
                where[last[0]] = i

    for _ in range(ops):
        mid += rng.choice((-1, 0, 0, 1))
        r = rng.random()
        account = rng.randint(1, 200)
        cl_id += 1
        side = c.BUY if rng.random() < 0.5 else c.SELL
        sign = -1 if side == c.BUY else 1
        if flow == "core":
            if r < 0.55:
                off = -rng.randint(1, 3) if rng.random() < 0.10 else rng.randint(0, 100)
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, mid + sign * off,
                                                rng.randint(1, 50), account))
            elif r < 0.90 and live:
                oid, acct, _ = live[rng.randrange(len(live))]
                cmd = (c.CANCEL, c.cancel(order_id=oid, account=acct))
            else:
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, mid - sign * 5, rng.randint(1, 80),
                                                account, c.MARKET if r < 0.95 else c.LIMIT,
                                                c.IOC))
        else:
            if r < 0.35:
                post = rng.random() < 0.33
                off = rng.randint(1, 100) if post else (
                    -rng.randint(1, 3) if rng.random() < 0.1 else rng.randint(0, 100))
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, mid + sign * off, rng.randint(1, 50),
                                                account, flags=c.FLAG_POST_ONLY if post else 0))
            elif r < 0.55 and live:
                oid, acct, _ = live[rng.randrange(len(live))]
                cmd = (c.CANCEL, c.cancel(order_id=oid, account=acct))
            elif r < 0.70 and live:
                oid, acct, _ = live[rng.randrange(len(live))]
                if rng.random() < 0.5:
                    cmd = (c.AMEND, c.amend(order_id=oid, account=acct, qty=rng.randint(1, 60)))
                else:
                    cmd = (c.AMEND, c.amend(order_id=oid, account=acct,
                                            price=mid + rng.randint(-100, 100)))
            elif r < 0.80:
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, mid - sign * rng.randint(0, 10),
                                                rng.randint(1, 200), account, tif=c.FOK))
            elif r < 0.90:
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, mid - sign * 3, rng.randint(1, 80),
                                                account, tif=c.IOC))
            else:
                cmd = (c.NEW_ORDER, c.new_order(cl_id, side, 0, rng.randint(1, 80), account,
                                                c.MARKET, c.IOC))
        out.append(cmd)
        for ev in c.decode_events(gen.apply(0, 0, *cmd)):
            t = ev[0]
            if t == c.EV_ACCEPTED:
                pending = ev
            elif t == c.EV_TRADE and ev[9] == 0:
                drop(ev[2])
            elif t in (c.EV_CANCELLED, c.EV_EXPIRED):
                drop(ev[1])
        if cmd[0] == c.NEW_ORDER and out and ev_rested(gen, cmd):
            oid = pending[1]
            where[oid] = len(live)
            live.append((oid, pending[3], pending[2]))
    return out


def ev_rested(gen: CrossEngine, cmd: tuple[int, bytes]) -> bool:
    """Whether the last NEW_ORDER left an order in the book (its client id is live)."""
    cl_id, _p, _q, account, *_ = c.NEW_ORDER_S.unpack(cmd[1])
    probe = gen.apply(0, 0, c.AMEND, c.amend(client_order_id=cl_id, account=account))
    # An amend that changes nothing is refused with amend_nothing_to_change iff the order lives.
    return c.decode_events(probe)[0][3] == c.CODES["amend_nothing_to_change"]


def frames(cmds: list[tuple[int, bytes]]) -> list[bytes]:
    out = []
    for i in range(0, len(cmds), FRAME):
        out.append(encode([(i + k + 1, 1_700_000_000_000_000_000 + i + k, 1, i + k + 1, 1, kind,
                            payload) for k, (kind, payload) in enumerate(cmds[i:i + FRAME])]))
    return out


def fills_hash_of_events(chunks) -> str:
    h = hashlib.sha256()
    for payload in chunks:
        for ev in c.decode_events(payload):
            if ev[0] == c.EV_TRADE:
                h.update(TRADE.pack(*ev))
    return h.hexdigest()[:16]


def payloads_of_frames(out_frames: list[bytes]):
    for frame in out_frames:
        off = 0
        while off < len(frame):
            nxt = offset_of(frame[off:], 1) + off
            yield frame[off + HEADER_SIZE:nxt]
            off = nxt


def run_engine(fr: list[bytes], config: dict | None = None,
               keep: bool = False) -> tuple[float, list[bytes], bytes]:
    """Timed as a replica runs: each output frame is handed on (here: dropped) before the next
    frame is applied. keep=True collects the outputs for the fills hash, untimed."""
    eng = CrossEngine(**(config or {"max_qty": 1_000_000}))
    outs: list[bytes] = []
    apply = eng.apply_frame
    t0 = time.perf_counter()
    if keep:
        outs = [apply(f) for f in fr]
    else:
        for f in fr:
            apply(f)
    return time.perf_counter() - t0, outs, eng.state_hash()


def run_reference(cmds: list[tuple[int, bytes]]) -> tuple[float, list[bytes], bytes]:
    ref = ReferenceEngine(max_qty=1_000_000)
    apply = ref.apply
    t0 = time.perf_counter()
    outs = [apply(i, 0, kind, payload) for i, (kind, payload) in enumerate(cmds)]
    return time.perf_counter() - t0, outs, ref.state_hash()


def resting_book(orders: int) -> list[tuple[int, bytes]]:
    """NewOrders that all rest: buys below 1,000,000, sells from it, 20,000 levels a side."""
    rng = random.Random(11)
    cmds = []
    for i in range(orders):
        side = c.BUY if i % 2 else c.SELL
        price = 1_000_000 - rng.randint(1, 20_000) if side == c.BUY else \
            1_000_000 + rng.randint(0, 19_999)
        cmds.append((c.NEW_ORDER, c.new_order(i + 1, side, price, rng.randint(1, 100),
                                              rng.randint(1, 5000))))
    return cmds


def snapshot_bench(orders: int, repeat: int) -> None:
    """Snapshot and restore of a book of `orders` resting orders over 20,000 levels a side."""
    cmds = resting_book(orders)
    eng = CrossEngine(max_qty=1_000_000, capacity=orders + 16)
    for f in frames(cmds):
        eng.apply_frame(f)
    if len(eng) != orders:
        raise SystemExit(f"expected {orders} resting orders, the book holds {len(eng)}")
    snaps, restores, checked = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = eng.snapshot()
        snaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = CrossEngine.restore(data, check=False)
        restores.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = CrossEngine.restore(data, check=True)
        checked.append(time.perf_counter() - t0)
    same = back.state_hash() == eng.state_hash()
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"[snapshot] {orders:,} resting orders, {len(data) / 1e6:.1f} MB: snapshot "
          f"{ms(snaps):.0f} ms, restore (verified in its one pass) {ms(restores):.0f} ms, "
          f"restore and a second walk by check_invariants {ms(checked):.0f} ms (medians of "
          f"{repeat}); state hash "
          f"{eng.state_hash().hex()[:16]} {'identical after restore' if same else 'DIFFERENT'}",
          flush=True)
    if not same:
        sys.exit(1)


# -- the independent flow (issue 16) and a lean pure-Python baseline ---------------------------
class HeapBook:
    """A price-time book in plain Python, the straightforward way: per side a heap of prices
    and a dict price -> deque of orders; a cancel marks the order dead (lazy deletion, skipped
    when matching reaches it). No events, no validation: it records the fills only, as
    (maker id, taker id, price, qty), ids counting accepted orders from 1 as the engine's do."""

    __slots__ = ("heaps", "levels", "by_client", "counter", "fills")

    def __init__(self) -> None:
        self.heaps: tuple[list[int], list[int]] = ([], [])   # bids as -price, asks as price
        self.levels: tuple[dict, dict] = ({}, {})            # price -> deque of [qty, id, key]
        self.by_client: dict = {}                            # (account, client id) -> order
        self.counter = 0
        self.fills: list[tuple[int, int, int, int]] = []

    def new(self, cl_id: int, account: int, side: int, price: int, qty: int, kind: int) -> None:
        """kind 0: limit GTC, 1: limit IOC, 2: market."""
        self.counter += 1
        oid = self.counter
        buy = side == c.BUY
        heap = self.heaps[1 if buy else 0]
        book = self.levels[1 if buy else 0]
        fills = self.fills
        while qty and heap:
            p = heap[0] if buy else -heap[0]
            if kind != 2 and (p > price if buy else p < price):
                break
            q = book[p]
            while q and qty:
                o = q[0]
                if o[0] == 0:
                    q.popleft()
                    continue
                t = o[0] if o[0] < qty else qty
                o[0] -= t
                qty -= t
                fills.append((o[1], oid, p, t))
                if o[0] == 0:
                    q.popleft()
                    del self.by_client[o[2]]
            if not q:
                heapq.heappop(heap)
                del book[p]
        if qty and kind == 0:
            mine = self.levels[0 if buy else 1]
            q = mine.get(price)
            if q is None:
                q = mine[price] = deque()
                heapq.heappush(self.heaps[0 if buy else 1], -price if buy else price)
            key = (account, cl_id)
            o = [qty, oid, key]
            q.append(o)
            self.by_client[key] = o

    def cancel(self, cl_id: int, account: int) -> None:
        o = self.by_client.pop((account, cl_id), None)
        if o is not None:
            o[0] = 0


def independent_flow(ops: int, seed: int) -> tuple[list[tuple[int, bytes]], list[tuple]]:
    """The issue's flow, from its description alone: 55% limit orders (8% of them aggressive,
    0-3 ticks through the mid, the rest 1 + Exp(mean 20) ticks behind it), quantities
    1 + lognormal (median 10) capped at 5,000; 35% cancels by client order id of uniformly
    random live orders; 5% market and 5% IOC (IOC limits 3 ticks through the mid), with the
    limit orders' quantity law. The mid random-walks: one tick up or down at a step with chance
    MID_STEP. That holds about 4,000 orders resting over about 110 levels a side. Returns the
    commands and, for the baseline, the same operations as tuples."""
    rng = random.Random(seed)
    book = HeapBook()
    live: list[tuple[int, int]] = []        # (account, client id) of live orders
    where: dict[tuple[int, int], int] = {}
    id_key: dict[int, tuple[int, int]] = {}
    mid = 1_000_000
    cmds: list[tuple[int, bytes]] = []
    plain: list[tuple] = []
    mu = math.log(10)

    def drop(key: tuple[int, int]) -> None:
        i = where.pop(key)
        last = live.pop()
        if i < len(live):
            live[i] = last
            where[last] = i

    for n in range(1, ops + 1):
        if rng.random() < MID_STEP:
            mid += rng.choice((-1, 1))
        r = rng.random()
        if 0.55 <= r < 0.90 and live:
            account, cl_id = live[rng.randrange(len(live))]
            drop((account, cl_id))
            cmds.append((c.CANCEL, c.cancel(client_order_id=cl_id, account=account)))
            plain.append((1, cl_id, account))
            book.cancel(cl_id, account)
            continue
        account = rng.randint(1, 1000)
        side = c.BUY if rng.random() < 0.5 else c.SELL
        sign = 1 if side == c.BUY else -1
        qty = min(5000, 1 + int(rng.lognormvariate(mu, 1.0)))
        if r < 0.55:
            if rng.random() < 0.08:
                price = mid + sign * rng.randint(0, 3)
            else:
                price = mid - sign * (1 + int(rng.expovariate(1 / 20)))
            kind = 0
            cmd = c.new_order(n, side, price, qty, account)
        else:
            qty = min(5000, int(qty * MARKET_SIZE))
            if r < 0.95:
                price, kind = 0, 2
                cmd = c.new_order(n, side, 0, qty, account, c.MARKET, c.IOC)
            else:
                price, kind = mid + sign * 3, 1
                cmd = c.new_order(n, side, price, qty, account, c.LIMIT, c.IOC)
        cmds.append((c.NEW_ORDER, cmd))
        plain.append((0, n, account, side, price, qty, kind))
        before = len(book.fills)
        book.new(n, account, side, price, qty, kind)
        id_key[book.counter] = (account, n)
        for maker, _t, _p, _q in book.fills[before:]:
            key = id_key[maker]
            if key in where and key not in book.by_client:
                drop(key)
        if (account, n) in book.by_client:
            where[(account, n)] = len(live)
            live.append((account, n))
    return cmds, plain


def run_heapbook(plain: list[tuple]) -> tuple[float, HeapBook]:
    book = HeapBook()
    new, cancel = book.new, book.cancel
    t0 = time.perf_counter()
    for op in plain:
        if op[0]:
            cancel(op[1], op[2])
        else:
            new(op[1], op[2], op[3], op[4], op[5], op[6])
    return time.perf_counter() - t0, book


def engine_fills(out_frames: list[bytes]) -> list[tuple[int, int, int, int]]:
    mask = (1 << 40) - 1
    return [(ev[2] & mask, ev[3] & mask, ev[6], ev[7]) for p in payloads_of_frames(out_frames)
            for ev in c.decode_events(p) if ev[0] == c.EV_TRADE]


def independent_bench(ops: int, repeat: int, seed: int) -> None:
    cmds, plain = independent_flow(ops, seed)
    fr = frames(cmds)
    gc.collect()
    gc.disable()
    run_engine(fr[:20], INDEPENDENT)
    eng_s, base_s, ratios = [], [], []
    for _ in range(repeat):       # alternate, so that both see the same noise
        e = run_engine(fr, INDEPENDENT)[0]
        b, book = run_heapbook(plain)
        eng_s.append(e)
        base_s.append(b)
        ratios.append(b / e)
    gc.enable()
    _t, kept, _h = run_engine(fr, INDEPENDENT, keep=True)
    eng = CrossEngine(**INDEPENDENT)
    for f in fr:
        eng.apply_frame(f)
    book_now = eng.book()
    same = engine_fills(kept) == book.fills
    e, b = statistics.median(eng_s), statistics.median(base_s)
    print(f"[independent] {ops:,} ops ({len(book.fills):,} fills), {len(eng):,} resting at the "
          f"end over {len(book_now['bids'])} bid / {len(book_now['asks'])} ask levels: engine "
          f"{ops / e:,.0f} ops/s, heapq+deque baseline {ops / b:,.0f} ops/s, ratio "
          f"{statistics.median(ratios):.1f}x (medians of {repeat}, alternating); fills "
          f"{'identical' if same else 'DIFFERENT'}, hash "
          f"{hashlib.sha256(repr(book.fills).encode()).hexdigest()[:16]}, state "
          f"{eng.state_hash().hex()[:16]}", flush=True)
    if not same:
        sys.exit(1)


def width_sweep(orders: int, repeat: int, widths=(100, 10_000, 100_000, 1_000_000)) -> None:
    """Resting orders at prices drawn uniformly from `width` ticks behind the touch on each
    side: ns per order (apply_frame, frames of 1,024), the live levels a side at the end and
    the book's state hash (the same for every build: compare builds on it). Widths alternate
    within each repeat; medians."""
    flows = {}
    for w in widths:
        rng = random.Random(3)
        cmds = []
        for i in range(orders):
            side = c.BUY if i % 2 else c.SELL
            d = 1 + rng.randrange(w)
            cmds.append((c.NEW_ORDER, c.new_order(i + 1, side, 10_000_000 - d if side == c.BUY
                                                  else 10_000_000 + d, 1 + rng.randrange(50),
                                                  1 + rng.randrange(5000))))
        flows[w] = frames(cmds)
    times: dict[int, list[float]] = {w: [] for w in widths}
    levels, hashes = {}, {}
    for _ in range(repeat):
        for w in widths:
            eng = CrossEngine(max_qty=1_000_000, capacity=orders + 16)
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for f in flows[w]:
                eng.apply_frame(f)
            times[w].append(time.perf_counter() - t0)
            gc.enable()
            book = eng.book()
            levels[w] = (len(book["bids"]) + len(book["asks"])) // 2
            h = eng.state_hash().hex()[:16]
            if hashes.setdefault(w, h) != h:
                raise SystemExit(f"width {w}: two runs of the same orders gave different books")
    base = statistics.median(times[widths[0]]) / orders * 1e9
    for w in widths:
        ns = statistics.median(times[w]) / orders * 1e9
        print(f"[width] {orders:,} resting orders over {w:,} ticks a side: {ns:,.0f} ns/order, "
              f"{levels[w]:,} live levels a side, {ns / base:.2f}x the narrowest (median of "
              f"{repeat}); state hash {hashes[w]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flow", default="all", choices=["core", "mixed", "independent", "all"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--snapshot-orders", type=int, default=1_000_000)
    ap.add_argument("--sweep-orders", type=int, default=400_000,
                    help="resting orders per width of the width sweep (0: no sweep)")
    ap.add_argument("--widths", default="100,10000,100000,1000000",
                    help="the sweep's widths in ticks, comma-separated (the first is the base)")
    ap.add_argument("--sweep-only", action="store_true",
                    help="with --flow independent: the width sweep alone, no flow")
    a = ap.parse_args()
    try:
        widths = tuple(int(w) for w in a.widths.split(","))
    except ValueError:
        raise SystemExit(f"--widths: comma-separated tick counts, not {a.widths!r}") from None
    if a.flow in ("independent", "all"):
        if not a.sweep_only:
            independent_bench(a.ops, a.repeat, a.seed)
        if a.sweep_orders:
            width_sweep(a.sweep_orders, a.repeat, widths)
        if a.flow == "independent":
            return
    if a.snapshot_orders:
        snapshot_bench(a.snapshot_orders, a.repeat)
    for flow in (["core", "mixed"] if a.flow == "all" else [a.flow]):
        cmds = generate(flow, a.ops, a.seed)
        fr = frames(cmds)
        gc.collect()
        gc.disable()
        run_engine(fr[:20])  # warm-up
        eng_runs = [run_engine(fr) for _ in range(a.repeat)]
        ref_s, ref_out, ref_state = run_reference(cmds)
        gc.enable()
        eng_s = statistics.median(r[0] for r in eng_runs)
        _t, kept, kept_state = run_engine(fr, keep=True)
        eng_hash = fills_hash_of_events(payloads_of_frames(kept))
        ref_hash = fills_hash_of_events(ref_out)
        trades = sum(1 for p in ref_out for ev in c.decode_events(p) if ev[0] == c.EV_TRADE)
        same = eng_hash == ref_hash and eng_runs[0][2] == ref_state == kept_state
        print(f"[{flow}] {a.ops:,} ops, {trades:,} trades: engine {a.ops / eng_s:,.0f} ops/s "
              f"(median of {a.repeat}), reference {a.ops / ref_s:,.0f} ops/s, ratio "
              f"{ref_s / eng_s:.1f}x; fills hash engine {eng_hash} reference {ref_hash}; "
              f"state {'identical' if same else 'DIFFERENT'}", flush=True)
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
