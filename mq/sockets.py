"""The ZeroMQ sockets of seqex, configured in one place (DESIGN.md §9 facts):
ROUTERs hand a restarted peer's identity over; every socket to a peer that may die or freeze
uses ZMQ heartbeats (200 ms / 1 s); nothing lingers on close. Every socket uses CURVE when
the process has an identity (mq.auth.configure) or one is passed as ``curve``."""
from __future__ import annotations

import zmq

from mq import auth

HWM = 100_000


def dealer(addr: str, *, immediate: bool = False, sndhwm: int = HWM,
           routing_id: bytes | None = None, heartbeat: bool = True,
           curve: auth.Identity | None = None, server_key: bytes | None = None) -> zmq.Socket:
    """A DEALER connected to addr. immediate: sends fail (EAGAIN) while not connected,
    instead of queueing for a peer that may never come back. curve / server_key: the client
    identity and the server's public key (default: the process's, and the policy's for addr)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if heartbeat:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
    auth.secure_client(sock, addr, curve, server_key)
    sock.connect(addr)
    return sock


# pyzmq's flags are enum.Flag members: send_multipart computes SNDMORE | flags for every part
# but the last, and each such | builds an enum member (about 1 us); recv_multipart asks
# getsockopt(RCVMORE) after every part (about 1.5 us). On the log's path (a few messages a
# record in every process) plain ints halve the cost of a send, and Frame.more saves a third
# of a receive.
NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def send(sock: zmq.Socket, parts: list, flags: int = 0, copy: bool = True) -> None:
    """sock.send_multipart(parts, flags, copy=copy) for parts that are bytes, with int flags.
    A message is atomic in ZeroMQ: once its first part is taken (or refused with EAGAIN), so
    is the rest."""
    more = _SNDMORE | flags
    last = len(parts) - 1
    for i in range(last):
        sock.send(parts[i], more, copy=copy)
    sock.send(parts[last], flags, copy=copy)


def recv(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """sock.recv_multipart(flags), with int flags, the end of the message read from each
    part (Frame.more) instead of a getsockopt(RCVMORE) per part, which costs more than the
    part's receive."""
    frame = sock.recv(flags, copy=False)
    parts = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        parts.append(frame.bytes)
    return parts


_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket, timeout_ms: int = 0) -> bool:
    """A message is waiting (or arrives within timeout_ms). A drain loop asks this before
    each receive after the first, instead of receiving until EAGAIN: a receive that fails
    raises an exception, which costs several times a zero-timeout poll, once per wake-up of
    every process on the log's path. It is also sock.poll(timeout_ms, POLLIN) without the
    Poller object that pyzmq builds on every call."""
    return bool(zmq.zmq_poll([(sock, _POLLIN)], int(timeout_ms)))


def router(bind: str, curve: auth.Identity | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
    auth.secure_server(sock, curve)
    sock.bind(bind)
    return sock
