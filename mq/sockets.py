"""The ZeroMQ sockets of seqex, configured in one place (DESIGN.md §9 facts):
ROUTERs hand a restarted peer's identity over; nothing lingers on close. Every socket uses
CURVE when the process has an identity (mq.auth.configure) or one is passed as ``curve``.

Liveness (ZMTP heartbeats): a DEALER pings its server every HEARTBEAT_MS and drops the
connection after TIMEOUT_PINGS of them without traffic, so a client notices a frozen server in
~1.2 s (DESIGN.md §9). A ROUTER pings each client every IDLE_HEARTBEAT_MS (timeout 5 of
them) unless told otherwise: it only has to let go of a frozen client's connection in the end,
and with both ends at 200 ms every connection cost 20 messages a second, each a wake-up of an
I/O thread at both ends, on connections that are mostly idle. A master's producer ROUTER keeps
200 ms: it hands a source over once the frozen connection holding it is dropped (docs/log.md,
"Sequencer"). A DEALER whose requests have timeouts of their own (a subscriber's replay sockets,
idle once it is live) pings every IDLE_HEARTBEAT_MS too. (A client's pings also carry a TTL,
but a server arms it only when a ping is the last thing it received: a client frozen right
after a request would keep its connection for good.)

No receive high-water mark on a socket with heartbeats (RCVHWM 0). libzmq 4.3.5 aborts the
process (``Assertion failed: !_io_error``, stream_engine_base.cpp) when a connection whose
input it stopped at the high-water mark (the process was not reading) meets an error (the peer
closed, a reset) and a heartbeat is then due: the ping timer writes to the errored connection
without looking. With no high-water mark the input never stops. What bounds a socket's inbound
queue instead is the protocol on it: a producer sends at most its in-flight window and resends
only when the master answers; a master sends a replicator at most MAX_INFLIGHT records and,
when it stalls, one record until it answers (mq/master.py); every other socket carries
requests and their answers (docs/log.md, "A libzmq abort under load")."""
from __future__ import annotations

import time

import zmq

from mq import auth

HWM = 100_000
HEARTBEAT_MS = 200
IDLE_HEARTBEAT_MS = 1000
TIMEOUT_PINGS = 5        # a connection silent for this many ping intervals is dropped


def _heartbeats(sock: zmq.Socket, ms: int, ttl: bool) -> None:
    """Ping every ms (0: no pings, the receive high-water mark stays), drop the connection
    after TIMEOUT_PINGS silent intervals; ttl: the pings also ask the peer to drop it after as
    long. A socket that pings takes no receive high-water mark (the module's docstring)."""
    if not ms:
        return
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms * TIMEOUT_PINGS)
    if ttl:
        sock.setsockopt(zmq.HEARTBEAT_TTL, ms * TIMEOUT_PINGS)


def dealer(addr: str, *, immediate: bool = False, sndhwm: int = HWM,
           routing_id: bytes | None = None, heartbeat_ms: int = HEARTBEAT_MS,
           curve: auth.Identity | None = None, server_key: bytes | None = None) -> zmq.Socket:
    """A DEALER connected to addr. immediate: sends fail (EAGAIN) while not connected,
    instead of queueing for a peer that may never come back. heartbeat_ms: the ping interval
    (0: none). curve / server_key: the client identity and the server's public key (default:
    the process's, and the policy's for addr)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    _heartbeats(sock, heartbeat_ms, ttl=True)
    auth.secure_client(sock, addr, curve, server_key)
    sock.connect(addr)
    return sock


# pyzmq's own send and receive under its Python wrappers (zmq.Socket subclasses the compiled
# socket): send_multipart / recv_multipart add, per message, a type check of every part and
# an ``enum.Flag`` operation per part (SNDMORE | flags, and the RCVMORE option looked up as an
# enum), which cost the log's masters more than the sends themselves (bench/count_master.py).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
POLLIN = int(zmq.POLLIN)


def send_parts(sock: zmq.Socket, parts: list, flags: int = 0, copy: bool = True) -> None:
    """``sock.send_multipart(parts, flags, copy=copy)`` for parts that are bytes (or
    buffers), flags a plain int (NOBLOCK). Raises as send_multipart does: a multipart message
    is queued whole or not at all, so zmq.Again (or EHOSTUNREACH) comes from the first part."""
    last = len(parts) - 1
    more = flags | SNDMORE
    for i in range(last):
        _send(sock, parts[i], more, copy)
    _send(sock, parts[last], flags, copy)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """``sock.recv_multipart(flags, copy=False)``: every part of one message, as Frames."""
    f = _recv(sock, flags, False)
    out = [f]
    while f.more:
        f = _recv(sock, flags, False)
        out.append(f)
    return out


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """``sock.recv_multipart(flags)``: every part of one message, as bytes."""
    return [f.bytes for f in recv_frames(sock, flags)]


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting. A drain loop asks this before each receive after the first,
    instead of receiving until EAGAIN: a receive that fails raises an exception, which costs
    several times a zero-timeout poll, once per wake-up of every process on the log's path."""
    return bool(zmq.zmq_poll([(sock, POLLIN)], 0))


def router(bind: str, curve: auth.Identity | None = None,
           heartbeat_ms: int = IDLE_HEARTBEAT_MS) -> zmq.Socket:
    """A ROUTER bound to bind, pinging each client every heartbeat_ms."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SNDHWM, HWM)
    _heartbeats(sock, heartbeat_ms, ttl=False)
    auth.secure_server(sock, curve)
    sock.bind(bind)
    return sock


def publisher(bind: str) -> zmq.Socket:
    """A stream's live feed (a master's, or a replicator's that fans out): a PUB bound to
    bind; a subscriber that falls HWM behind loses frames and fills them by replay."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    auth.secure_server(sock)
    sock.bind(bind)
    return sock


class Spin:
    """--spin-us: after input, a loop polls again at once (timeout 0) for spin_us before it
    sleeps in its poll. Off (0) by default: docs/log.md "Levers weighed and not taken"."""

    __slots__ = ("ns", "active_ns")

    def __init__(self, spin_us: int = 0):
        self.ns = spin_us * 1000
        self.active_ns = 0

    def timeout_ms(self, wait_ms: int) -> int:
        """The poll's timeout: wait_ms, or 0 within the window after the last input."""
        if self.ns and time.monotonic_ns() - self.active_ns < self.ns:
            return 0
        return wait_ms

    def polled(self, events) -> None:
        """After the poll: input came now (the window starts when it came)."""
        if events and self.ns:
            self.active_ns = time.monotonic_ns()
