"""Benchmark of the market-data fan-out on 127.0.0.1: 1,000 WebSocket and 100 binary-feed
subscribers of one symbol while a CrossEngine produces records.

Method. The publisher (gateway/marketdata, uvloop when installed) runs in this process and is
fed by a CrossEngine run here too (tests/mdload.py's seeded order flow), --records records at
--rate per second; each record is stamped with the wall clock when the engine produced it
(its ts, which both feeds carry: the binary TransactTime, the WebSocket depthUpdate's "ts").
The subscribers run in --workers other processes (asyncio), each holding its share of the
WebSocket connections (`depth@BTCUSDT`) and binary-feed connections (MarketDataRequest for the
book and trades), and note, for every update, its arrival time minus the record's ts: the
update latency from the out-stream record to the subscriber. Every subscriber also checks its
stream: WebSocket update ids contiguous (U = previous u + 1), binary RptSeq contiguous; a jump
must follow a snapshot (the publisher's re-snapshot of a consumer that fell behind), and a
jump without one is a silent gap, which must be zero, as must be a subscriber that ends behind
the last record.

Baseline, in the same run: the same engine, rate and subscribers, but instead of the
publisher, a fan-out of raw pre-encoded frames (a WebSocket message and a binary Incremental
of the sizes the feeds send, with only ts and the ids patched in): the cost of the fan-out
alone. Reported: p50/p99 of both, the ratio of the p99s (target <= 2), the re-snapshots and
silent gaps, and a hash of the publisher's final state (sha256 of its book, RptSeq and the
ticker's prices, volumes and count; equal across runs of the same --records and --seed).

Run: python bench/bench_md.py [--ws 1000] [--bin 100] [--records 600] [--rate 40]
                              [--workers 4] [--seed 1]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import wire  # noqa: E402

SYMBOL = "BTCUSDT"
CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": SYMBOL, "symbol_id": 1, "tick": "0.5", "lot": "0.001"}]}
INCR_BLOCK = wire.TEMPLATES[wire.MARKET_DATA_INCREMENTAL].block


# -- subscribers (worker processes) ------------------------------------------------------------

class Tally:
    def __init__(self):
        self.lat: list[int] = []
        self.snapshots = 0
        self.silent_gaps = 0
        self.disconnects = 0
        self.last_ws: list[int] = []
        self.last_bin: list[int] = []


def _num_after(msg: str, key: str, start: int = 0) -> int:
    i = msg.find(key, start) + len(key)
    j = i
    while msg[j].isdigit():
        j += 1
    return int(msg[i:j])


async def ws_sub(url: str, t: Tally, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect
    u = None
    for attempt in range(20):     # a handshake that times out on a busy host is tried again
        try:
            ws = await connect(url, max_size=None, compression=None, open_timeout=60)
            break
        except (OSError, TimeoutError, Exception):
            if stop.is_set() or attempt == 19:
                t.disconnects += 1
                t.last_ws.append(0)
                return
            await asyncio.sleep(0.5)
    try:
        async with ws:
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.time_ns()
                if '"depthSnapshot"' in msg:
                    t.snapshots += 1
                    u = _num_after(msg, '"lastUpdateId":')
                    continue
                first = _num_after(msg, '"U":')
                last = _num_after(msg, '"u":')
                if u is not None and first != u + 1:
                    t.silent_gaps += 1
                u = last
                t.lat.append(now - _num_after(msg, '"ts":'))
    except Exception:
        t.disconnects += 1
    t.last_ws.append(u or 0)


async def bin_sub(port: int, t: Tally, stop: asyncio.Event) -> None:
    for attempt in range(20):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 60)
            break
        except (OSError, TimeoutError):
            if attempt == 19:
                t.disconnects += 1
                t.last_bin.append(0)
                return
            await asyncio.sleep(0.5)
    w.write(wire.encode(wire.LOGON, 0, 0, 0, 30000, 0, 0, 0, b"bench", b""))
    w.write(wire.encode(wire.MARKET_DATA_REQUEST, 1, 1, wire.SUBSCRIPTION_SNAPSHOT_UPDATES, 0, 3))
    buf = bytearray()
    rpt = None
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(r.read(1 << 16), 0.5)
            except TimeoutError:
                continue
            if not data:
                t.disconnects += 1
                break
            now = time.time_ns()
            buf += data
            pos = 0
            n = len(buf)
            while n - pos >= 12:
                length, _e, _bl, tid = struct.unpack_from("<HHHH", buf, pos)
                if n - pos < length:
                    break
                if tid == wire.MARKET_DATA_INCREMENTAL or tid == wire.TRADE:
                    ts, seq = struct.unpack_from("<QQ", buf, pos + 12)
                    if rpt is not None and seq != rpt + 1:
                        t.silent_gaps += 1
                    rpt = seq
                    t.lat.append(now - ts)
                elif tid == wire.MARKET_DATA_SNAPSHOT:
                    flags = buf[pos + 12 + 28]
                    if flags & wire.FLAG_LAST_FRAGMENT:
                        t.snapshots += 1
                        rpt = struct.unpack_from("<Q", buf, pos + 12 + 8)[0]
                elif tid == wire.LOGOUT:
                    t.disconnects += 1
                pos += length
            del buf[:pos]
    finally:
        w.close()
    t.last_bin.append(rpt or 0)


async def worker(a) -> None:
    t = Tally()
    stop = asyncio.Event()
    url = f"ws://127.0.0.1:{a.http_port}/stream?streams=depth@{SYMBOL}"
    tasks = []
    for i in range(a.ws):
        tasks.append(asyncio.create_task(ws_sub(url, t, stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    for _ in range(a.bin):
        tasks.append(asyncio.create_task(bin_sub(a.feed_port, t, stop)))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)    # "stop" from the parent
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"lat": t.lat, "snapshots": t.snapshots, "silent_gaps": t.silent_gaps,
                      "disconnects": t.disconnects, "last_ws": t.last_ws,
                      "last_bin": t.last_bin}), flush=True)


# -- the publisher side -------------------------------------------------------------------------

class Raw:
    """The baseline: pre-encoded frames to the same connections, ts and ids patched in."""

    def __init__(self, pub, ws_size: int, incr_entries: int):
        self.pub = pub
        pad = "x" * max(0, ws_size - 120)
        self.ws_template = ('{"stream":"depth@' + SYMBOL + '","data":{"e":"depthUpdate","ts":%d,'
                            '"U":%d,"u":%d,"b":[],"a":[],"pad":"' + pad + '"}}')
        frame = wire.encode(wire.MARKET_DATA_INCREMENTAL, 0, 0, 1,
                            entries=[(100, 1, 1, b"0", b"1")] * incr_entries)
        self.bin_frame = bytearray(frame)
        self.rpt = 0

    def apply(self, seq: int, ts_ns: int) -> None:
        from websockets.asyncio.server import broadcast
        conns = [c for s in self.pub.ws.subs.values() for c in s]
        broadcast(conns, self.ws_template % (ts_ns, seq, seq))
        self.rpt += 1
        INCR_BLOCK.pack_into(self.bin_frame, 12, ts_ns, self.rpt, 1)
        f = bytes(self.bin_frame)
        for conn in self.pub.binary.by_symbol[1]:
            conn.transport.write(f)

    def snapshot_to_new(self) -> None:
        """New binary subscribers start at RptSeq 0 here."""


async def phase(a, mode: str) -> dict:
    from gateway.marketdata.publisher import Publisher
    from tests.mdload import LocalEngine
    pub = Publisher(CONF)
    await pub.start(follow=False)
    engine = LocalEngine(seed=a.seed, keep_books=False)
    per = [(a.ws * k // a.workers, a.ws * (k + 1) // a.workers, a.bin * k // a.workers,
            a.bin * (k + 1) // a.workers) for k in range(a.workers)]
    procs = []
    for w0, w1, b0, b1 in per:
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--worker", "--http-port",
            str(pub.http_port), "--feed-port", str(pub.feed_port), "--ws", str(w1 - w0),
            "--bin", str(b1 - b0), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            limit=1 << 28))
    for p in procs:
        line = await asyncio.wait_for(p.stdout.readline(), 120)
        assert line.strip() == b"ready", line
    deadline = time.monotonic() + 600
    while (sum(len(s) for s in pub.ws.subs.values()) < a.ws
           or len(pub.binary.by_symbol[1]) < a.bin):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_md: only {sum(len(s) for s in pub.ws.subs.values())} "
                             f"WebSocket and {len(pub.binary.by_symbol[1])} binary "
                             f"subscribers connected in 600 s")
        await asyncio.sleep(0.05)
    raw = Raw(pub, a.raw_ws_bytes, a.raw_entries) if mode == "raw" else None
    # warm up the engine's book without subscribers' cost being measured twice: both modes
    # start from the same state
    interval = 1 / a.rate
    t_next = time.monotonic()
    t0 = time.monotonic()
    sizes = []
    for i in range(a.records):
        ts = time.time_ns()
        seq, _ts, out = engine.step(ts)
        if raw is None:
            up = pub.apply(SYMBOL, seq, ts, out)
            if i < 50 and up.book_changed:
                sizes.append(len(json.dumps(pub.views[SYMBOL].depth(0))))
        else:
            pub.states[1].apply(seq, ts, out)     # keep the state (and hash) alike
            raw.apply(seq, ts)
        t_next += interval
        delay = t_next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
    took = time.monotonic() - t0
    await asyncio.sleep(1.0)       # the last updates reach everybody
    results = []
    for p in procs:
        p.stdin.write(b"stop\n")
        await p.stdin.drain()
    for p in procs:
        out = await asyncio.wait_for(p.stdout.readline(), 120)
        results.append(json.loads(out))
        await p.wait()
    st = pub.states[1]
    stats = {"ws": dict(pub.ws.stats), "bin": dict(pub.binary.stats)}
    await pub.close()
    lat = sorted(x for r in results for x in r["lat"])
    t = st.ticker()    # its window's start is wall-clock time: left out of the hash
    h = hashlib.sha256(json.dumps([st.book(), st.rpt_seq, t.open, t.last, t.high, t.low,
                                   t.volume, t.quote, t.count]).encode())
    # everybody ends at the last update: nobody fell behind without being told
    want_ws = engine.seq if raw else pub.views[SYMBOL].last_depth_u
    want_bin = raw.rpt if raw else st.rpt_seq
    behind = sum(1 for r in results for x in r["last_ws"] if x != want_ws) + \
        sum(1 for r in results for x in r["last_bin"] if x != want_bin)
    return {"mode": mode, "took": took, "lat": lat, "n": len(lat),
            "snapshots": sum(r["snapshots"] for r in results),
            "silent_gaps": sum(r["silent_gaps"] for r in results),
            "disconnects": sum(r["disconnects"] for r in results),
            "behind": behind, "stats": stats, "hash": h.hexdigest()[:16]}


def pct(lat: list[int], q: float) -> float:
    return lat[min(len(lat) - 1, int(len(lat) * q))] / 1e6 if lat else float("nan")


def show(r: dict) -> None:
    print(f"  {r['mode']:>3}: {r['n']} updates received in {r['took']:.1f} s; latency p50 "
          f"{pct(r['lat'], 0.5):.2f} ms p99 {pct(r['lat'], 0.99):.2f} ms; snapshots "
          f"{r['snapshots']}, silent gaps {r['silent_gaps']}, disconnects "
          f"{r['disconnects']}, behind at the end {r['behind']}", flush=True)


async def main(a) -> int:
    base = await phase(a, "raw")
    show(base)
    md = await phase(a, "md")
    show(md)
    ratio = pct(md["lat"], 0.99) / pct(base["lat"], 0.99)
    ok = all(r["silent_gaps"] == 0 and r["disconnects"] == 0 and r["behind"] == 0
             for r in (base, md))
    print(f"marketdata: {a.ws} WebSocket + {a.bin} binary subscribers, {a.records} records at "
          f"{a.rate}/s: update latency p50 {pct(md['lat'], 0.5):.2f} ms, p99 "
          f"{pct(md['lat'], 0.99):.2f} ms; raw pre-encoded fan-out p50 "
          f"{pct(base['lat'], 0.5):.2f} ms, p99 {pct(base['lat'], 0.99):.2f} ms; p99 ratio "
          f"{ratio:.2f} (target <= 2); re-snapshots {md['stats']['ws']['resnapshots']} ws / "
          f"{md['stats']['bin']['resnapshots']} binary, silent gaps {md['silent_gaps']}, "
          f"behind at the end {md['behind']}; "
          f"hash {md['hash']}; load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ws", type=int, default=1000)
    p.add_argument("--bin", type=int, default=100)
    p.add_argument("--records", type=int, default=600)
    p.add_argument("--rate", type=float, default=40)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--raw-ws-bytes", type=int, default=220,
                   help="size of the baseline's WebSocket message (a depthUpdate's typical)")
    p.add_argument("--raw-entries", type=int, default=2,
                   help="level entries of the baseline's binary Incremental")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--feed-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.worker:
        run(worker(args))
        sys.exit(0)
    sys.exit(run(main(args)))
