"""deploy/client.py without a cluster (a state file whose supervisor is this process): source
ids are locked so that two clients never share one, values are checked and converted to
ticks and lots at the edge (the limit and one past it), outcomes are typed from the out
record, a record that is not this client's raises SourceClash, and the sequencer's ERROR
replies, which the producer drops, reach the caller."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest

from crossengine import codec
from deploy import client as cl
from deploy import topology
from mq import wire
from tests.fakeup import fake_up

TOML = """
[[replicator]]
name = "r0"
[[symbol]]
name = "BTCUSDT"
tick_size = "0.5"
lot_size = "0.001"
"""


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(TOML)
    topo = topology.load(str(path), str(tmp_path / "data"), 40000)
    os.makedirs(topo.data_dir)
    fake_up(topo.data_dir, json.loads(topo.to_json()))
    return topo.data_dir


def test_concurrent_clients_get_distinct_locked_sources(data):
    a, b = cl.Client(data), cl.Client(data)
    try:
        assert (a.source, b.source) == (cl.AUTO_SOURCE_FIRST, cl.AUTO_SOURCE_FIRST + 1)
        # another process cannot take a held source either
        other = subprocess.run([sys.executable, "-c", (
            "import sys; from deploy.client import Client\n"
            f"c = Client({data!r}); print(c.source)")], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert int(other.stdout) == cl.AUTO_SOURCE_FIRST + 2, other.stderr
        with pytest.raises(cl.SourceInUse, match=rf"source {a.source} is in use by another "
                                                 rf"client \(pid {os.getpid()}\)"):
            cl.Client(data, source=a.source)
    finally:
        a.close()
    c = cl.Client(data, source=cl.AUTO_SOURCE_FIRST)   # free again once closed
    c.close()
    b.close()
    for bad in (0, -1, 1 << 32, True, "5"):
        with pytest.raises(ValueError, match="source must be an integer in 1 .. 4294967295"):
            cl.Client(data, source=bad)


def test_orders_are_checked_and_converted_at_the_edge(data):
    with cl.Client(data) as c:
        assert c.order("BTCUSDT", "BUY", "0.005", "100.5") == (
            codec.BUY, 201, 5, 1, codec.LIMIT, codec.GTC)
        assert c.order("BTCUSDT", "Sell", 1, Decimal("2"), account=7, tif="IOC") == (
            codec.SELL, 4, 1000, 7, codec.LIMIT, codec.IOC)
        assert c.order("BTCUSDT", "buy", "0", market=True)[:3] == (codec.BUY, 0, 0)
        assert c.order("BTCUSDT", "buy", "0.001", str(Decimal((1 << 63) - 1) / 2))[1] \
            == (1 << 63) - 1
        assert c.order("BTCUSDT", "buy", str(Decimal((1 << 64) - 1) / 1000), 1)[2] \
            == (1 << 64) - 1
        for args, kw, msg in [
            (("up", 1, 1), {}, "side must be 'buy' or 'sell'"),
            (("buy", 1, 1), {"tif": "day"}, "tif must be"),
            (("buy", "-1", 1), {}, "qty must not be negative"),
            (("buy", 1, "-0.5"), {}, "price must not be negative"),
            (("buy", "0.0005", 1), {}, "qty 0.0005 is not a multiple of the lot 0.001"),
            (("buy", 1, "100.25"), {}, "price 100.25 is not a multiple of the tick 0.5"),
            (("buy", 1, str(Decimal(1 << 63) / 2)), {}, "price .* is out of range"),
            (("buy", str(Decimal(1 << 64) / 1000), 1), {}, "qty .* is out of range"),
            (("buy", 1.5, 1), {}, "floats are inexact"),
            (("buy", "abc", 1), {}, "qty must be a number"),
            (("buy", "inf", 1), {}, "qty must be a number"),
            (("buy", 1, None), {}, "a limit order needs a price"),
            (("buy", 1, 5), {"market": True}, "a market order takes no price"),
            (("buy", 1, 1), {"account": 0}, "account must be an integer in 1 .. 4294967295"),
            (("buy", 1, 1), {"account": 1 << 32}, "account must be"),
            (("buy", 1, 1), {"client_order_id": 0}, "client_order_id must be"),
            (("buy", 1, 1), {"client_order_id": 1 << 64}, "client_order_id must be"),
        ]:
            with pytest.raises(ValueError, match=msg):
                c.order("BTCUSDT", *args, **kw)
        with pytest.raises(ValueError, match="unknown symbol 'ETH'; the cluster has BTCUSDT"):
            c.order("ETH", "buy", 1, 1)


def ticket(c: cl.Client, lots: int = 5) -> cl.Ticket:
    return cl.Ticket("BTCUSDT", 3, (c.source << 32) | 3, 2, codec.BUY, 201, lots)


def out_record(c: cl.Client, events: bytes, src: int | None = None, ss: int = 3) -> tuple:
    return (40, 0, c.source if src is None else src, ss, 1, codec.NEW_ORDER, events)


def ev(kind: int, *fields) -> bytes:
    return codec.EVENT_STRUCTS[kind].pack(kind, *fields)


def test_outcomes_are_typed_in_contract_units(data):
    with cl.Client(data) as c:
        t = ticket(c)
        units = c.units[1]
        acc = ev(codec.EV_ACCEPTED, 77, t.client_order_id, 2, codec.BUY, codec.LIMIT, 201, 5,
                 codec.GTC, 0)
        o = c._outcome(t, out_record(c, acc), units)
        assert o == cl.Accepted(40, 77, t.client_order_id, Decimal("100.5"), Decimal("0.005"))

        def trade(price: int, qty: int, trade_id: int) -> bytes:
            return ev(codec.EV_TRADE, trade_id, 5, 77, 1, 2, price, qty, codec.BUY, 0, 0, 0, 0)
        o = c._outcome(t, out_record(c, acc + trade(200, 2, 1) + trade(201, 1, 2)), units)
        assert isinstance(o, cl.Filled) and o.qty == Decimal("0.003")
        assert o.price == (Decimal("100") * 2 + Decimal("100.5")) / 3
        assert o.resting == Decimal("0.002") and o.expired == 0 and len(o.fills) == 2
        o = c._outcome(t, out_record(c, acc + trade(200, 2, 1) + ev(
            codec.EV_EXPIRED, 77, t.client_order_id, 2, 3, codec.REASON_IOC_REMAINDER)), units)
        assert (o.qty, o.resting, o.expired) == (Decimal("0.002"), 0, Decimal("0.003"))
        o = c._outcome(t, out_record(c, acc + ev(codec.EV_EXPIRED, 77, t.client_order_id, 2,
                                                  5, codec.REASON_IOC_REMAINDER)), units)
        assert o == cl.Expired(40, 77, t.client_order_id, Decimal("0.005"), "ioc_remainder")
        o = c._outcome(t, out_record(c, ev(codec.EV_REJECTED, t.client_order_id, 2, 3003, 0)),
                       units)
        assert o == cl.Rejected(40, t.client_order_id, 3003, "qty_below_min",
                                "the quantity is below the symbol's minimum")
        assert cl.describe(o, "BTCUSDT").startswith("rejected at seq 40 ")


def test_a_record_that_is_not_this_clients_raises_source_clash(data):
    with cl.Client(data) as c:
        t = ticket(c)
        units = c.units[1]
        theirs = ev(codec.EV_ACCEPTED, 77, t.client_order_id, 9, codec.BUY, codec.LIMIT, 201,
                    5, codec.GTC, 0)
        for rec in (out_record(c, theirs), out_record(c, ev(
                codec.EV_REJECTED, 1, 2, 3003, 0)), out_record(c, b"", src=5),
                out_record(c, ev(codec.EV_REJECTED, t.client_order_id, 2, 3003, 0), ss=4)):
            with pytest.raises(cl.SourceClash, match="another producer uses source"):
                c._outcome(t, rec, units)


def test_the_sequencers_error_replies_reach_the_caller(data):
    with cl.Client(data) as c:
        prod = cl._Producer(c.source, "tcp://127.0.0.1:9")
        try:
            prod._on_message([wire.ERROR, wire.pack({"error": "batch of 9 MB exceeds 8 MB"})])
            prod._on_message([wire.ERROR, wire.pack({"error": "not ours", "src": 1})])
            with pytest.raises(cl.Refused, match="refused source .*: batch of 9 MB"):
                c._raise_refusals(prod)
            c._raise_refusals(prod)   # another source's ERROR is not this client's
            prod._on_message([wire.ERROR, wire.pack({"error": "in use", "src": c.source,
                                                     "reason": "source_clash"})])
            prod.connect(5, clash_grace_s=0)   # stops at the first ERROR, does not wait
            with pytest.raises(cl.SourceClash, match="refused source .*: in use"):
                c._raise_refusals(prod)
        finally:
            prod.close()


def test_the_producers_clash_alarm_becomes_source_clash(data):
    class Clashing:
        acked_next = 1
        errors: list = []

        def poll(self, timeout_ms):
            raise RuntimeError("source 5: the master expects 9, beyond 3: another producer "
                               "uses this source id")

    with cl.Client(data) as c:
        c.producers["BTCUSDT"] = Clashing()
        c.pending["BTCUSDT"], c.by_seq["BTCUSDT"] = {3: ticket(c)}, {}
        with pytest.raises(cl.SourceClash, match="another producer uses this source id"):
            c._pump("BTCUSDT", 0)
        c.producers.clear()


def test_clients_made_in_threads_at_once_read_the_state_one_at_a_time(monkeypatch, tmp_path):
    """Client() reads seqex.json and, for a cluster with keys, configures the process's CURVE
    identity and starts its one ZAP authenticator: two threads doing it at once both started
    one, and the second died binding inproc://zeromq.zap.01 (ZMQError)."""
    import threading
    import time as time_

    from deploy import client as client_mod
    inside, most = [0], [0]
    barrier = threading.Barrier(2)

    def slow_read_state(_data):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time_.sleep(0.2)
        inside[0] -= 1
        raise LookupError("stop here")
    monkeypatch.setattr(client_mod, "read_state", slow_read_state)

    def make():
        barrier.wait()
        with pytest.raises(LookupError):
            client_mod.Client(str(tmp_path))
    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_fills_at_one_price_are_one_part_of_the_line():
    """A taker that sweeps many makers at one price printed '1 @ 2000' once per maker: a
    market order through 1,000 resting orders gave a line of 1,000 parts."""
    fills = tuple(cl.Fill(Decimal(p), Decimal(1), i, i) for i, p in
                  enumerate(["2000"] * 1000 + ["2001", "2001", "2000.5"]))
    o = cl.Filled(7, 1, 2, Decimal("2000.0039"), Decimal(1003), fills, Decimal(0), Decimal(0))
    line = cl.describe(o, "BTCUSDT")
    assert "(1000 @ 2000 in 1000 fills, 2 @ 2001 in 2 fills, 1 @ 2000.5)" in line
    assert len(line) < 200


def test_a_closed_client_sends_nothing(data):
    """close() frees the source id for the next client; a closed client that kept sending
    would share that id with it (a source clash, or one's order taken for the other's)."""
    c = cl.Client(data)
    c.close()
    c.close()   # twice is fine
    for call in (lambda: c.send("BTCUSDT", "buy", "0.001", "1"),
                 lambda: c.send_many("BTCUSDT", [dict(side="buy", qty="0.001", price="1")]),
                 lambda: c.submit("BTCUSDT", "buy", "0.001", "1")):
        with pytest.raises(cl.ClientError, match=rf"this client \(source {c.source}\) is "
                                                 "closed"):
            call()
    with pytest.raises(cl.ClientError, match="is closed"):   # was a KeyError
        c.wait([cl.Ticket("BTCUSDT", 1, 1, 1, codec.BUY, 2, 1)], 0.1)
    with cl.Client(data) as d:
        pass
    with pytest.raises(cl.ClientError, match="is closed"):
        d.send("BTCUSDT", "buy", "0.001", "1")
