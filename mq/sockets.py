"""The ZeroMQ sockets of seqex, configured in one place (DESIGN.md §9 facts):
ROUTERs hand a restarted peer's identity over; every socket to a peer that may die or freeze
uses ZMQ heartbeats (200 ms / 1 s); nothing lingers on close."""
from __future__ import annotations

import zmq

HWM = 100_000


def dealer(addr: str, *, immediate: bool = False, sndhwm: int = HWM,
           routing_id: bytes | None = None, heartbeat: bool = True) -> zmq.Socket:
    """A DEALER connected to addr. immediate: sends fail (EAGAIN) while not connected,
    instead of queueing for a peer that may never come back."""
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
    sock.connect(addr)
    return sock


def router(bind: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
    sock.bind(bind)
    return sock
