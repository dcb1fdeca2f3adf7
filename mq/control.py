"""One-shot requests to any seqex server (PING, STOP, STATE, REPLAY): tools and tests."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from mq import sockets, wire
from mq.record import scan


def call(addr: str, kind: bytes, body: dict[str, Any] | None = None,
         timeout_s: float = 2.0, refused_ends: bool = False
         ) -> tuple[bytes, dict[str, Any], list[bytes]]:
    """Send one request and wait for its answer: (kind, body, further parts).
    Raises TimeoutError when the server does not answer in time. refused_ends: a connection
    refused (nothing listens at addr: the process is down) ends the wait at once with
    ConnectionRefusedError, instead of waiting out timeout_s for a process that is not there
    (a frozen or busy one, whose port is open, is still waited for)."""
    sock = sockets.dealer(addr, heartbeat_ms=0)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED) if refused_ends else None
    try:
        sock.send_multipart([kind, wire.pack(body or {})])
        if monitor is None:
            return _answer(sock, addr, kind, timeout_s)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if sock in ready:
                return _answer(sock, addr, kind, 0)
            if monitor in ready:
                # A refusal missed before the monitor was attached is seen at the next
                # reconnect attempt (ZMQ_RECONNECT_IVL, 100 ms).
                if recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECT_RETRIED:
                    raise ConnectionRefusedError(f"{addr} refused the connection (down?)")
                continue
            if left <= 0:
                raise TimeoutError(f"{addr} did not answer {kind.decode()} in {timeout_s} s")
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(0)
        sock.close(0)


def _answer(sock: Any, addr: str, kind: bytes,
            timeout_s: float) -> tuple[bytes, dict[str, Any], list[bytes]]:
    if not sock.poll(int(timeout_s * 1000)):
        raise TimeoutError(f"{addr} did not answer {kind.decode()} in {timeout_s} s")
    msg = sock.recv_multipart()
    return msg[0], wire.unpack(msg[1]), msg[2:]


def ping(addr: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The server's statistics, or None if it does not answer."""
    try:
        kind, body, _ = call(addr, wire.PING, timeout_s=timeout_s)
    except TimeoutError:
        return None
    return body if kind == wire.PONG else None


def stats(addr: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """ping(), asked again until the server answers (TimeoutError after ``timeout_s``): for a
    figure read once, where one answer slower than ping's second (a busy machine) must not
    read as None."""
    return wait_until(lambda: ping(addr), timeout_s, f"{addr} to answer a PING")


class Pinger:
    """ping() over one kept DEALER per endpoint (one thread's: the supervisor's heartbeats),
    not a new connection, CURVE handshake and ZAP check per PING. An answer that arrives after
    its round gave up is dropped before the next PING; at most one PING waits in a socket whose
    process is down (SNDHWM 1), and it is answered once the process is back."""

    def __init__(self) -> None:
        self.socks: dict[str, Any] = {}

    def ping(self, addr: str, timeout_s: float) -> dict[str, Any] | None:
        import zmq
        sock = self.socks.get(addr)
        if sock is None:
            sock = self.socks[addr] = sockets.dealer(addr, sndhwm=1, heartbeat_ms=0)
        try:
            while sockets.readable(sock):     # late answers to earlier rounds
                sock.recv_multipart(zmq.NOBLOCK)
            sock.send_multipart([wire.PING, wire.pack({})], zmq.NOBLOCK)
        except zmq.Again:
            pass   # the last round's PING still waits for the process: wait for its answer
        try:
            kind, body, _ = _answer(sock, addr, wire.PING, timeout_s)
        except (TimeoutError, IndexError, wire.WireError):
            return None
        return body if kind == wire.PONG else None

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(0)
        self.socks.clear()


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll predicate until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def replay(addr: str, stream: str, seq_from: int = 1, seq_to: int | None = None,
           timeout_s: float = 10.0) -> Iterator[bytes]:
    """Frames of stream seq_from..seq_to (None: to what the replicator holds now)."""
    sock = sockets.dealer(addr, heartbeat_ms=0)
    try:
        seq = seq_from
        while seq_to is None or seq <= seq_to:
            sock.send_multipart([wire.REPLAY, wire.pack(
                {"stream": stream, "from": seq, "to": seq_to, "max_bytes": 4 << 20})])
            if not sock.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"{addr} did not answer REPLAY from {seq}")
            msg = sock.recv_multipart()
            if msg[0] != wire.RECORDS:
                raise RuntimeError(f"{addr} answered {msg[0]!r}: {wire.unpack(msg[1])}")
            if not msg[2]:
                return
            _n, _first, last = scan(msg[2])
            yield msg[2]
            seq = last + 1
    finally:
        sock.close(0)
