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


def test_stop_task_ends_a_task_and_bounds_one_that_will_not_end(caplog):
    from gateway.aio import stop_task

    async def main():
        async def forever():
            await asyncio.sleep(3600)
        t = asyncio.create_task(forever())
        await asyncio.sleep(0)
        await stop_task(t, "the sleeper")
        assert t.cancelled()

        swallow = [True]

        async def stubborn():         # swallows every cancel while swallow[0]
            while swallow[0]:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass
        s = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        t0 = asyncio.get_running_loop().time()
        await stop_task(s, "the stubborn one", timeout_s=0.1)
        assert asyncio.get_running_loop().time() - t0 < 5
        assert "the stubborn one did not end" in caplog.text
        swallow[0] = False
        s.cancel()
        await asyncio.wait([s], timeout=2)
        assert s.done()
    asyncio.run(main())


def test_stop_task_keeps_the_callers_own_cancellation():
    from gateway.aio import stop_task

    async def main():
        async def slow_to_end():
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.2)   # cleans up for a while after its cancel
        inner = asyncio.create_task(slow_to_end())
        await asyncio.sleep(0)
        closer = asyncio.create_task(stop_task(inner, "inner"))
        await asyncio.sleep(0.01)
        closer.cancel()                    # the caller's own cancel, while it waits
        done, _ = await asyncio.wait([closer], timeout=2)
        assert done == {closer} and closer.cancelled()
        await asyncio.wait([inner], timeout=2)
    asyncio.run(main())
