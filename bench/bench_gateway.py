"""Benchmark of the gateway's order-entry path over TCP on 127.0.0.1, against the tests' fake
Core (so the figure is the gateway's own cost: framing, session checks, throttle and shed
decisions, the ClientMessage record, the engine's output walked, indexed and written back).

Method. One gateway (uvloop when installed), K clients in the same process, each logged on to
its own session. Each client sends --orders NewOrderSingles in pipelined windows of --window
and reads the ExecutionReport of each; the fake Core answers every ClientMessage with one
ExecutionReport, in the next turn of the loop. Reported: orders/s over all clients (send of
the first to the last report), and the p50/p99 round trip of the orders that were timed one at
a time afterwards (--probe of them, one in flight).

Run: python bench/bench_gateway.py [--clients 4] [--orders 50000] [--window 256]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import server as gs  # noqa: E402
from gateway import wire  # noqa: E402
from gateway.accounts import Accounts, make_user  # noqa: E402
from tests.gateway_fakes import FakeCore  # noqa: E402


async def client(port, session, n, window, probe, lat):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(wire.encode(wire.LOGON, session, 0, 1, 30000, 0, 0, 0, b"bench", b"pw"))
    await read_until(r, wire.LOGON_ACK)
    seq = 0
    sent = 0
    while sent < n:
        k = min(window, n - sent)
        w.write(b"".join(wire.encode(100, seq + i + 1, 0, seq + i + 1, 10**9, 1, 1, 0, b"1",
                                     b"2", b"1", 0) for i in range(k)))
        seq += k
        sent += k
        for _ in range(k):
            await read_until(r, wire.EXECUTION_REPORT)
    for _ in range(probe):
        seq += 1
        t0 = time.perf_counter_ns()
        w.write(wire.encode(100, seq, 0, seq, 10**9, 1, 1, 0, b"1", b"2", b"1", 0))
        await read_until(r, wire.EXECUTION_REPORT)
        lat.append(time.perf_counter_ns() - t0)
    w.close()


async def read_until(r, tid):
    while True:
        head = await r.readexactly(4)
        length = struct.unpack_from("<H", head)[0]
        body = await r.readexactly(length - 4)
        if struct.unpack_from("<H", body, 2)[0] == tid:
            return body


async def main(a):
    user = make_user("bench", 1, "pw", [1], max_msgs_per_sec=10**9)
    gw = gs.Gateway(FakeCore(), Accounts({"bench": user}),
                    gs.Config(max_depth=10**9, heartbeat_ms=30000))
    _h, port = await gw.start()
    lat: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(*[client(port, s + 1, a.orders, a.window, 0, lat)
                           for s in range(a.clients)])
    took = time.perf_counter() - t0
    total = a.clients * a.orders
    await client(port, 10_000, 0, 1, a.probe, lat)
    await gw.close()
    lat.sort()
    print(f"gateway: {total} orders from {a.clients} clients in {took:.2f} s: "
          f"{total / took:,.0f} orders/s; one in flight: p50 {lat[len(lat) // 2] / 1000:.0f} us, "
          f"p99 {lat[int(len(lat) * 0.99)] / 1000:.0f} us "
          f"(mean {statistics.mean(lat) / 1000:.0f} us)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--orders", type=int, default=50_000)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--probe", type=int, default=2000)
    args = p.parse_args()
    loop = gs.new_event_loop()
    try:
        loop.run_until_complete(main(args))
    finally:
        loop.close()
