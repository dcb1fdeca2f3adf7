"""Market data end to end (real processes on 127.0.0.1): `seqex up` with a publisher; orders
flow into in.ce.BTCUSDT; the SDK's local book (binary feed) and a WebSocket client's book
(depth diffs) are sampled all along and each sample equals the CrossEngine's own book at its
seq (the engine re-run from in.ce.BTCUSDT); the publisher is SIGKILLed mid-flow, restarted by
the supervisor, rebuilds from out.ce.BTCUSDT, and both clients resynchronise and go on."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time

import pytest
from websockets.asyncio.client import connect

from crossengine.codec import decode_events
from crossengine.engine import CrossEngine
from deploy.procs import Group, free_port_block
from deploy.supervisor import read_state
from gateway.marketdata.state import SymbolState
from gateway.mdclient import MarketDataClient
from mq.control import wait_until
from mq.producer import Producer
from mq.sources import OPERATOR_SOURCE_MIN
from mq.subscriber import Subscriber
from tests.mdload import Flow
from tests.seed import SEED
from tests.unit.test_md_feeds import WsBook, _as_json, _as_wire

TOPOLOGY = """
[cluster]
tick_ms = 100
[[replicator]]
name = "replicator0"
[[symbol]]
name = "BTCUSDT"
symbol_id = 1
tick_size = "0.5"
lot_size = "0.001"
hot = 1
warm = 0
[marketdata]
"""
N_ORDERS = 6000
SOURCE = OPERATOR_SOURCE_MIN + 21


def _md_pids(feed_port: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "deploy.cli" in cmd and " marketdata " in cmd and f":{feed_port}\"" in cmd:
            out.append(int(pid))
    return out


def _replay(stream: str, pub: str, reps: list[str], last: int | None,
            until_source: tuple[int, int] | None = None) -> list:
    """Records 1 .. last (or up to the record of (source, source_seq))."""
    sub = Subscriber(stream, pub, reps)
    from mq.record import decode
    recs = []
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, f"{stream}: replay stopped at {sub.next_seq}"
            for _f, _l, frame in sub.poll(100):
                for r in decode(frame):
                    if last is None:
                        recs.append(r)
                        if (r[2], r[3]) == until_source:
                            last = r[0]
                    elif r[0] <= last:
                        recs.append(r)
            if last is not None and sub.next_seq > last:
                return recs
    finally:
        sub.close()


async def _ws_follow(url: str, samples: list, stop: asyncio.Event, stats: dict) -> None:
    """A WebSocket client that reconnects and resubscribes; a sample per applied diff."""
    while not stop.is_set():
        try:
            async with connect(url, open_timeout=5) as ws:
                stats["connects"] += 1
                wb = WsBook()
                while not stop.is_set():
                    try:
                        msg = await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        continue
                    wb.on(json.loads(msg)["data"])
                    if wb.synced:
                        samples.append((wb.u, {"bids": dict(wb.bids), "asks": dict(wb.asks)}))
                    stats["gaps"] += 0
        except (OSError, Exception) as exc:   # the publisher is down: try again
            if stop.is_set():
                return
            stats["errors"] = repr(exc)
            await asyncio.sleep(0.1)


async def _rest_follow(url: str, ids: list, stop: asyncio.Event) -> None:
    """REST depth polled every 5 ms: the lastUpdateId of each answer (the publisher down or
    catching up answers nothing or 503)."""
    import urllib.request

    def get():
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())["lastUpdateId"]
        except (OSError, ValueError):
            return None
    while not stop.is_set():
        got = await asyncio.to_thread(get)
        if got is not None:
            ids.append(got)
        await asyncio.sleep(0.005)


async def _traffic(topo, sym, md_conf, group_kill) -> tuple:
    feed_host, _, feed_port = md_conf["feed"].rpartition(":")
    from deploy.trading import demo_passwords
    md = MarketDataClient(feed_host, int(feed_port), user="alice",
                          password=demo_passwords(topo.data_dir).get("alice", ""))
    await md.connect()
    await md.subscribe(1)
    ws_samples: list = []
    ws_stats = {"connects": 0, "gaps": 0}
    stop = asyncio.Event()
    ws_task = asyncio.create_task(_ws_follow(
        f"ws://{md_conf['http']}/stream?streams=depth@BTCUSDT", ws_samples, stop, ws_stats))
    rest_ids: list = []
    ws_stats["rest"] = rest_ids
    rest_task = asyncio.create_task(_rest_follow(
        f"http://{md_conf['http']}/api/v1/depth?symbol=BTCUSDT&limit=5", rest_ids, stop))
    ws_stats["rest_task"] = rest_task
    bin_samples: list = []
    prod = Producer(SOURCE, sym["producers"])
    prod.connect()
    flow = Flow(seed=SEED)
    flow.by_client_id = True
    rng = random.Random(SEED)
    kill_at = rng.randint(N_ORDERS // 4, N_ORDERS // 2)
    killed_at_sample = None
    last = 0
    for i in range(0, N_ORDERS, 100):
        batch = [flow.command() for _ in range(100)]
        _f, last = prod.submit_many(batch)
        prod.flush(timeout_s=30)
        if killed_at_sample is None and i >= kill_at:
            pids = _md_pids(int(feed_port))
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            killed_at_sample = (len(bin_samples), len(ws_samples))
            # the supervisor restarts it; the orders go on once both clients are back
            deadline = time.monotonic() + 120
            while md.stats["connects"] < 2 or ws_stats["connects"] < 2 or not any(
                    ev[0] == "book" and ev[1].synced for ev in md.events):
                assert time.monotonic() < deadline, "the publisher did not come back"
                await asyncio.sleep(0.05)
        for ev in md.drain():
            if ev[0] == "book" and ev[1].synced:
                bin_samples.append((ev[1].rpt_seq, ev[1].levels()))
        await asyncio.sleep(0.02)
    # the end: the out stream reaches the last in seq; the clients catch up with it
    return md, bin_samples, ws_samples, ws_stats, stop, ws_task, last, killed_at_sample


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_books_equal_the_engine_across_a_publisher_kill(tmp_path):
    data = str(tmp_path / "data")
    topo_file = tmp_path / "md.toml"
    topo_file.write_text(TOPOLOGY)
    with Group(str(tmp_path / "logs")) as group:
        group.spawn("up", ["--insecure", "up", "--topology", str(topo_file), "--data", data,
                           "--base-port", str(free_port_block())])
        wait_until(lambda: os.path.exists(os.path.join(data, "seqex.json")), 300, "seqex up")
        topo, _pid = read_state(data)
        md_spec = topo.by_name("marketdata0")
        md_conf = json.loads(md_spec.args[md_spec.args.index("--config") + 1])
        sym = topo.symbols["BTCUSDT"]
        reps = topo.replicator_addrs()

        async def main():
            md, bins, wss, ws_stats, stop, ws_task, last, killed = await _traffic(
                topo, sym, md_conf, None)
            # wait for the out stream's last record to reach both clients
            out = _replay(sym["out"], sym["out_pub"], reps, None, (SOURCE, last))
            last = out[-1][0]
            st = SymbolState("BTCUSDT", 1)
            rpt_seq_of = {}
            for r in out:
                up = st.apply(r[0], r[1], r[6])
                rpt_seq_of[up.last_rpt] = r[0]   # the last seq with this RptSeq
            deadline = time.monotonic() + 120
            last_change = max(u for u, _b in wss) if wss else 0
            for r in out:
                if r[6] and any(e[0] == 7 or (e[0] == 10 and e[1] == 2)
                                for e in decode_events(r[6])):
                    last_change = r[0]      # the last record that changed the book
            while md.books.get(1) is None or md.books[1].rpt_seq < st.rpt_seq \
                    or not wss or wss[-1][0] < last_change:
                if time.monotonic() > deadline:
                    raise AssertionError(f"clients stuck: binary {md.books[1].rpt_seq} of "
                                         f"{st.rpt_seq}, ws {wss[-1][0] if wss else None}")
                for ev in md.drain():
                    if ev[0] == "book" and ev[1].synced:
                        bins.append((ev[1].rpt_seq, ev[1].levels()))
                await asyncio.sleep(0.05)
            for ev in md.drain():
                if ev[0] == "book" and ev[1].synced:
                    bins.append((ev[1].rpt_seq, ev[1].levels()))
            stop.set()
            await ws_task
            await ws_stats.pop("rest_task")
            stats = dict(md.stats)
            await md.close()
            # a sample taken between two messages of one record (a Trade, then the levels)
            # is no state of the engine's: only samples at a record's last RptSeq count
            whole = [(r, b) for r, b in bins if r in rpt_seq_of]
            assert len(whole) > len(bins) // 2
            return whole, wss, ws_stats, stats, killed, rpt_seq_of, last

        bins, wss, ws_stats, md_stats, killed, rpt_seq_of, last = asyncio.run(main())
        # the CrossEngine's own book at every seq: the engine re-run from in.ce.BTCUSDT
        engine = CrossEngine(**json.loads(
            topo.by_name("ce.BTCUSDT.hot0").args[topo.by_name("ce.BTCUSDT.hot0").args.index(
                "--engine-config") + 1]))
        want_seqs = {rpt_seq_of.get(r) for r, _b in bins} | {u for u, _b in wss}
        books = {0: engine.book()}
        for r in _replay(sym["in"], sym["pub"], reps, last):
            engine.apply(r[0], r[1], r[5], r[6], r[2])
            if r[0] in want_seqs:
                books[r[0]] = engine.book()
        assert md_stats["connects"] >= 2 and ws_stats["connects"] >= 2, (md_stats, ws_stats)
        assert killed[0] < len(bins) - 10 and killed[1] < len(wss) - 10, \
            "samples after the restart"
        for r, levels in bins:
            assert levels == _as_wire(books[rpt_seq_of[r]]), f"binary feed at RptSeq {r}"
        for u, book in wss:
            assert book == _as_json(books[u]), f"WebSocket at update id {u}"
        assert bins[-1][1] == _as_wire(engine.book())
        # across the restart no client was served an older book than it had seen: a publisher
        # catching up served an empty book at update id 0, then the replayed history
        rest = ws_stats["rest"]
        assert rest and all(a <= b for a, b in zip(rest, rest[1:], strict=False)), rest
        assert all(a[0] <= b[0] for a, b in zip(wss, wss[1:], strict=False)), \
            [u for u, _b in wss]
        print(f"{len(bins)} binary and {len(wss)} WebSocket samples equal the engine's book; "
              f"publisher killed once; {md_stats}")
