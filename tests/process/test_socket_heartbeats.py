"""A seqex socket with heartbeats survives peers that flood it and go away (real processes).

libzmq 4.3.5 aborts a process (``Assertion failed: !_io_error``) when a connection whose input
it stopped at the receive high-water mark (the process was not reading) meets an error and a
heartbeat is then due (mq/sockets.py; docs/log.md, "A libzmq abort under load"). A master
recovering while its producers kept sending died of it. Here a child process holds one of
mq/sockets.py's sockets and never reads it; this process floods it, round after round, with
more messages than the old high-water mark (100,000) and closes at a different delay each
round, so that some close lands while the child's pings are due. The child must be alive after
every round. (With the old high-water mark the child died in these rounds; which round killed
it depended on timing.)
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import zmq

from deploy.procs import free_port

FLOOD = 160_000                                # messages a round: over the old RCVHWM
CLOSE_AFTER_S = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
CHILD = """
import sys, time
from mq import sockets
kind, addr = sys.argv[1], sys.argv[2]
if kind == "router":
    s = sockets.router(addr, heartbeat_ms=100)
else:
    s = sockets.dealer(addr, heartbeat_ms=100, routing_id=b"child")
print("ready", flush=True)
sys.stdin.readline()       # never reads the socket
"""


def _flood_and_close(sock: zmq.Socket, parts: list[bytes], close_after_s: float) -> None:
    deadline = time.monotonic() + 30
    for _ in range(FLOOD):
        while True:
            try:
                sock.send_multipart(parts, zmq.NOBLOCK)
                break
            except zmq.Again:
                assert time.monotonic() < deadline, "the child took nothing for 30 s"
                time.sleep(0.001)
    time.sleep(close_after_s)
    sock.close(linger=0)


def _rounds(kind: str, flood_round) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, f"tcp://127.0.0.1:{port}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        ctx = zmq.Context()
        for delay in CLOSE_AFTER_S:
            flood_round(ctx, port, delay)
            end = time.monotonic() + 1.0        # ten ping intervals
            while time.monotonic() < end and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, (f"the child died ({proc.returncode}) after a close "
                                         f"{delay} s after the flood: {proc.stderr.read()}")
        ctx.term()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(300)
def test_a_router_that_is_not_read_survives_flooding_clients_that_leave():
    def flood_round(ctx, port, delay):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        _flood_and_close(sock, [b"x" * 16], delay)
    _rounds("router", flood_round)


@pytest.mark.timeout(300)
def test_a_dealer_that_is_not_read_survives_flooding_servers_that_leave():
    def flood_round(ctx, port, delay):
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # unknown peer: an error, not a drop
        sock.bind(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:                                  # until the child has (re)connected
            try:
                sock.send_multipart([b"child", b"x" * 16])
                break
            except zmq.ZMQError:
                assert time.monotonic() < deadline, "the child never connected"
                time.sleep(0.01)
        _flood_and_close(sock, [b"child", b"x" * 16], delay)
    _rounds("dealer", flood_round)
