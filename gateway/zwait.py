"""Waiting on the asyncio loop for ZeroMQ sockets (the gateway's and the market-data
publisher's), instead of polling them on a timer.

A socket's ZMQ_FD is edge-triggered: it becomes readable when the socket's state may have
changed, and only a look at the socket (ZMQ_EVENTS, a poll, a receive) re-arms it. So
``wait`` looks at every socket (one zero-timeout poll) before it sleeps, and the loop's reader
callback looks at the socket that woke it; a message that arrives in between wakes the loop
through the re-armed FD. Nothing is missed: at worst the caller wakes up for nothing, or after
``timeout_s`` (its timers: stall probes, replay timeouts).
"""
from __future__ import annotations

import asyncio

import zmq

from gateway.aio import wait_set


class SocketWaiter:
    def __init__(self, socks: list[zmq.Socket]):
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.polled = [(s, zmq.POLLIN) for s in socks]
        self.fds: list[int] = []
        for sock in socks:
            fd = sock.getsockopt(zmq.FD)
            self.loop.add_reader(fd, self._ready, sock)
            self.fds.append(fd)

    def _ready(self, sock: zmq.Socket) -> None:
        try:
            sock.getsockopt(zmq.EVENTS)   # takes the socket's pending commands: re-armed
        except zmq.ZMQError:
            pass
        self.wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Return at once if a socket has a message, else when one may have, or after
        timeout_s."""
        if zmq.zmq_poll(self.polled, 0):
            await asyncio.sleep(0)   # the caller's work comes next: let other tasks run first
            return
        self.wake.clear()
        await wait_set(self.wake, timeout_s)

    def close(self) -> None:
        for fd in self.fds:
            self.loop.remove_reader(fd)
        self.fds.clear()
