"""asyncio helpers the gateway, its SDK client and the drills share.

``wait_set`` waits for an asyncio.Event with a timeout without losing a cancellation. On
Python 3.11 ``asyncio.wait_for`` returns normally when the task is cancelled in the same turn
its awaitable completes (the cancellation is lost), so a loop around it goes on after
``cancel()`` and whoever awaits the task waits for ever: the gateway's socket loop did, and a
gateway given SIGTERM then never exited.

``stop_task`` cancels a task and waits a bounded time for it to end. `await task` inside
``contextlib.suppress(asyncio.CancelledError)`` would swallow a cancellation of the caller
itself, and waits for ever on a task that does not end.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("seqex.gateway")


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


async def stop_task(task: asyncio.Task | None, what: str, timeout_s: float = 5.0) -> None:
    """Cancel task and wait at most timeout_s for it to end; its failure, or its not ending,
    is logged (what names it). A cancellation of the caller is raised, not swallowed."""
    if task is None:
        return
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if not done:
        log.error("%s did not end on cancel() in %g s; going on without it", what, timeout_s)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %r", what, task.exception())
