"""The market-data publisher's Prometheus metrics, served for real on 127.0.0.1 and parsed
back (prometheus_client.parser): its applied seq and lag per out stream, clients connected per
feed, messages sent, snapshot requests, slow-consumer disconnects; and `seqex marketdata`
serves them on SEQEX_METRICS as every other process does."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

from websockets.asyncio.client import connect

from deploy import metrics
from deploy.procs import free_port
from gateway.marketdata.publisher import Publisher
from gateway.mdclient import MarketDataClient
from mq.control import wait_until
from tests.mdload import LocalEngine

T0 = 1_800_000_000 * 10 ** 9
CONF = {"feed": "127.0.0.1:0", "http": "127.0.0.1:0", "replicators": [],
        "symbols": [{"symbol": "BTCUSDT", "symbol_id": 1, "tick": "0.5", "lot": "0.001",
                     "out": "out.ce.BTCUSDT"}]}
P = (("process", "marketdata0"),)


def _scrape(address: str) -> dict:
    return metrics.scrape(address, timeout_s=5)


def _v(got: dict, name: str, **labels) -> float:
    return got[(name, tuple(sorted({"process": "marketdata0", **labels}.items())))]


async def _run() -> tuple[dict, dict, dict]:
    pub = Publisher(CONF)
    await pub.start(follow=False)
    address = f"127.0.0.1:{free_port()}"
    server, _thread = metrics.serve(address, pub.status, "marketdata0", "marketdata")
    md = MarketDataClient("127.0.0.1", pub.feed_port)
    ws = None
    try:
        before = await asyncio.to_thread(_scrape, address)
        await md.connect()
        await md.subscribe(1)
        ws = await connect(f"ws://127.0.0.1:{pub.http_port}/stream?streams=depth@BTCUSDT",
                           max_queue=None)             # reads all: a quick close
        await ws.recv()                                  # the depth snapshot
        url = f"http://127.0.0.1:{pub.http_port}/api/v1/depth?symbol=BTCUSDT"
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        e = LocalEngine(seed=3, keep_books=False)
        for i in range(300):
            seq, ts, out = e.step(T0 + i * 10 ** 6)
            pub.apply("BTCUSDT", seq, ts, out)
            if i % 50 == 0:
                await asyncio.sleep(0)
        pub.seen["BTCUSDT"] = e.seq + 7                  # the feed has shown 7 more records
        during = await asyncio.to_thread(_scrape, address)
        # a binary client that stops reading is disconnected as a slow consumer
        pub.binary.stale_limit_s = 0.0
        next(iter(pub.binary.conns)).stale_since = 1.0
        pub.binary.tick()
        after = await asyncio.to_thread(_scrape, address)
        return before, during, after
    finally:
        server.shutdown()
        if ws is not None:
            await ws.close()
        await md.close()
        await pub.close()


def test_the_publisher_serves_seq_lag_clients_and_counters():
    before, during, after = asyncio.run(_run())
    assert _v(before, "seqex_up", role="marketdata") == 1
    assert _v(before, "seqex_marketdata_clients", feed="binary") == 0
    assert _v(before, "seqex_marketdata_applied_seq", stream="out.ce.BTCUSDT") == 0
    assert _v(during, "seqex_marketdata_applied_seq", stream="out.ce.BTCUSDT") == 300
    assert _v(during, "seqex_marketdata_seen_seq", stream="out.ce.BTCUSDT") == 307
    assert _v(during, "seqex_marketdata_lag_records", stream="out.ce.BTCUSDT") == 7
    assert _v(during, "seqex_marketdata_clients", feed="binary") == 1
    assert _v(during, "seqex_marketdata_clients", feed="websocket") == 1
    sent_bin = _v(during, "seqex_marketdata_messages_sent_total", feed="binary")
    sent_ws = _v(during, "seqex_marketdata_messages_sent_total", feed="websocket")
    assert sent_bin > 300 and sent_ws > 10, (sent_bin, sent_ws)
    assert _v(during, "seqex_marketdata_snapshot_requests_total", feed="binary") == 1
    assert _v(during, "seqex_marketdata_snapshot_requests_total", feed="http") == 1
    assert _v(during, "seqex_marketdata_slow_consumer_disconnects_total", feed="binary") == 0
    assert _v(after, "seqex_marketdata_slow_consumer_disconnects_total", feed="binary") == 1
    assert _v(after, "seqex_marketdata_clients", feed="binary") == 0
    assert _v(after, "seqex_marketdata_slow_consumer_disconnects_total", feed="websocket") == 0


def test_seqex_marketdata_serves_metrics_on_its_address(tmp_path):
    # no replicator answers: the publisher keeps asking, and its metrics say where it is
    conf = dict(CONF, feed=f"127.0.0.1:{free_port()}", http=f"127.0.0.1:{free_port()}",
                replicators=[f"tcp://127.0.0.1:{free_port()}"],
                symbols=[dict(CONF["symbols"][0], pub=f"tcp://127.0.0.1:{free_port()}")])
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, SEQEX_METRICS=address, SEQEX_PROCESS="marketdata0")
    p = subprocess.Popen([sys.executable, "-m", "deploy.cli", "--insecure", "marketdata",
                          "--config", json.dumps(conf)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        got: dict = {}

        def served() -> bool:
            nonlocal got
            try:
                got = _scrape(address)
            except OSError:
                return p.poll() is not None
            return True
        wait_until(served, 30, "the publisher's metrics")
        assert p.poll() is None, p.stderr.read().decode()
        assert _v(got, "seqex_up", role="marketdata") == 1
        assert _v(got, "seqex_marketdata_applied_seq", stream="out.ce.BTCUSDT") == 0
        assert _v(got, "seqex_marketdata_replaying", stream="out.ce.BTCUSDT") == 1
        assert _v(got, "seqex_marketdata_caught_up") == 0
    finally:
        p.terminate()
        p.wait(30)
