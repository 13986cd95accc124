"""Ending background tasks reliably."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended.

    One cancel() is not enough on Python 3.11: asyncio.wait_for swallows a
    cancellation that arrives in the same loop turn as its inner await
    completes (a doorbell ringing, a connect finishing), and the task runs
    on, so `await task` would wait forever. Cancel again until it ends.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())
