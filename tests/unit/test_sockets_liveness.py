"""Liveness of connections (mq/sockets.py): a client notices a frozen server within its
heartbeat timeout (200 ms pings), a server lets go of a frozen client with slower pings of its
own, and a subscriber's replay sockets ping at the slower interval."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from mq import sockets
from mq.subscriber import Subscriber

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE_S = 30.0   # generous: the expected times are ~1.2 s (a client) and ~6 s (a server)

CHILD = r"""
import sys, time, zmq
from mq import sockets
role, addr = sys.argv[1], sys.argv[2]
if role == "client":
    s = sockets.dealer(addr)
    s.send(b"hello")
    print("ready", flush=True)
    while True:
        time.sleep(1)
s = sockets.router(addr)
print(s.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
while True:                     # a server: echoes every request
    s.send_multipart(s.recv_multipart())
"""


ANY = "tcp://127.0.0.1:*"


def _router() -> tuple[zmq.Socket, str]:
    sock = sockets.router(ANY)
    return sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def _child(role: str, addr: str) -> tuple[subprocess.Popen, str]:
    """A client connected to addr, or a server bound to a free port; and its first line
    (the server's endpoint)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, role, addr], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    return proc, proc.stdout.readline().strip()


def _wait_event(mon: zmq.Socket, event: int, deadline_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if mon.poll(100):
            if recv_monitor_message(mon)["event"] == event:
                return time.monotonic() - start
    return None


@pytest.fixture
def stopped_child():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait(10)


def test_a_router_pings_slower_than_a_dealer():
    router, addr = _router()
    dealer = sockets.dealer(addr)
    try:
        assert router.getsockopt(zmq.HEARTBEAT_IVL) == sockets.IDLE_HEARTBEAT_MS
        assert sockets.IDLE_HEARTBEAT_MS > sockets.HEARTBEAT_MS
        assert dealer.getsockopt(zmq.HEARTBEAT_IVL) == sockets.HEARTBEAT_MS
        assert dealer.getsockopt(zmq.HEARTBEAT_TIMEOUT) == sockets.HEARTBEAT_MS * sockets.TIMEOUT_PINGS
        assert dealer.getsockopt(zmq.HEARTBEAT_TTL) == sockets.HEARTBEAT_MS * sockets.TIMEOUT_PINGS
    finally:
        dealer.close(0)
        router.close(0)


def test_a_router_drops_a_frozen_client(stopped_child):
    """Frozen right after its request (so that the TTL of its pings is not armed at the
    server: a message after a ping disarms it), the client is dropped by the server's own
    pings."""
    router, addr = _router()
    mon = router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
    try:
        proc, line = _child("client", addr)
        stopped_child.append(proc)
        assert line == "ready"
        assert _wait_event(mon, zmq.EVENT_ACCEPTED, DEADLINE_S) is not None
        assert router.poll(int(DEADLINE_S * 1000)) and router.recv_multipart()[1] == b"hello"
        proc.send_signal(signal.SIGSTOP)
        took = _wait_event(mon, zmq.EVENT_DISCONNECTED, DEADLINE_S)
        assert took is not None, "the server kept the frozen client's connection"
        print(f"server dropped a frozen client after {took:.1f} s")
    finally:
        router.disable_monitor()
        mon.close(0)
        router.close(0)


def test_a_dealer_notices_a_frozen_server(stopped_child):
    proc, addr = _child("server", ANY)
    stopped_child.append(proc)
    assert addr.startswith("tcp://127.0.0.1:")
    dealer = sockets.dealer(addr)
    mon = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        # A round trip first: the connection is up (a server frozen mid-handshake is dropped
        # by the handshake's own 30 s timeout), and the monitor, attached after the connect
        # began, misses no event that matters.
        dealer.send(b"ping")
        assert dealer.poll(int(DEADLINE_S * 1000)) and dealer.recv() == b"ping"
        proc.send_signal(signal.SIGSTOP)
        took = _wait_event(mon, zmq.EVENT_DISCONNECTED, DEADLINE_S)
        assert took is not None, "the client kept the frozen server's connection"
        assert took < 5.0, f"a frozen server noticed after {took:.1f} s (expected ~1.2 s)"
    finally:
        dealer.disable_monitor()
        mon.close(0)
        dealer.close(0)


def test_a_subscribers_replay_sockets_ping_at_the_idle_interval():
    sub = Subscriber("in.x", "tcp://127.0.0.1:1", ["tcp://127.0.0.1:2", "tcp://127.0.0.1:3"])
    try:
        assert [s.getsockopt(zmq.HEARTBEAT_IVL) for s in sub.replicas] == \
            [sockets.IDLE_HEARTBEAT_MS] * 2
        assert sockets.IDLE_HEARTBEAT_MS > sockets.HEARTBEAT_MS
    finally:
        sub.close()


def test_a_masters_producer_router_keeps_the_fast_pings():
    """It hands a producer's source over once the frozen connection holding it is dropped
    (docs/log.md, "Sequencer"): ~1 s, as before, not the idle interval's ~5 s."""
    from mq.sequencer import Sequencer
    seq = Sequencer("in.x", ANY, ANY, ["tcp://127.0.0.1:3"])
    try:
        assert seq.router.getsockopt(zmq.HEARTBEAT_IVL) == sockets.HEARTBEAT_MS
        assert seq.router.getsockopt(zmq.HEARTBEAT_TIMEOUT) == sockets.HEARTBEAT_MS * sockets.TIMEOUT_PINGS
    finally:
        seq.close()
