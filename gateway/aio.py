"""asyncio helpers the gateway, its SDK client and the drills share.

``wait_set`` waits for an asyncio.Event with a timeout without losing a cancellation. On
Python 3.11 ``asyncio.wait_for`` returns normally when the task is cancelled in the same turn
its awaitable completes (the cancellation is lost), so a loop around it goes on after
``cancel()`` and whoever awaits the task waits for ever: the gateway's socket loop did, and a
gateway given SIGTERM then never exited.
"""
from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until event is set or timeout_s has passed (None: no limit); True if it is set.
    A cancellation of the waiting task is always raised, whatever else happened that turn."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
