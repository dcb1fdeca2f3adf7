"""gateway.aio.wait_set: a cancellation that comes in the turn the event is set is raised
(asyncio.wait_for on Python 3.11 lost it, and the gateway's socket loop ran on after cancel());
and the gateway core's socket loop ends on cancel() at such a moment."""
from __future__ import annotations

import asyncio

import zmq

from gateway.aio import wait_set
from gateway.zwait import SocketWaiter


def test_wait_set_times_out_and_sees_the_event():
    async def main():
        ev = asyncio.Event()
        assert await wait_set(ev, 0.01) is False
        asyncio.get_running_loop().call_later(0.01, ev.set)
        assert await wait_set(ev, 10) is True
        assert await wait_set(ev, 0) is True
    asyncio.run(main())


def test_a_cancel_in_the_turn_the_event_is_set_ends_the_loop():
    async def main():
        ev = asyncio.Event()
        turns = 0

        async def loop_():
            nonlocal turns
            while True:
                ev.clear()
                await wait_set(ev, 0.05)
                turns += 1
        t = asyncio.create_task(loop_())
        await asyncio.sleep(0.01)
        ev.set()
        t.cancel()
        done, _ = await asyncio.wait([t], timeout=2)
        assert done == {t} and t.cancelled()
    asyncio.run(main())


def test_socket_waiter_loop_ends_on_cancel_as_a_message_arrives():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://wake")
    b.connect("inproc://wake")

    async def main():
        waiter = SocketWaiter([b])

        async def loop_():
            try:
                while True:
                    await waiter.wait(0.05)
                    while b.poll(0):
                        b.recv()
            finally:
                waiter.close()
        t = asyncio.create_task(loop_())
        for _ in range(50):      # cancel as messages wake the waiter, turn after turn
            a.send(b"x")
            await asyncio.sleep(0)
            waiter.wake.set()
            t.cancel()
            done, _ = await asyncio.wait([t], timeout=2)
            assert done == {t}, "the loop ran on after cancel()"
            t = asyncio.create_task(loop_())
            await asyncio.sleep(0.001)
        t.cancel()
        await asyncio.wait([t], timeout=2)
    try:
        asyncio.run(main())
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
