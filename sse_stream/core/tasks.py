"""Waiting, retrying and ending background tasks reliably.

Every timed wait here uses `asyncio.timeout`, never `asyncio.wait_for`: on
Python 3.11 wait_for swallows a cancellation that arrives in the same loop
turn as its inner await completes (a doorbell ringing, a connect finishing),
and the task runs on, so stopping it would wait forever.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class Backoff:
    """Delays between retries of a failing step: `first`, doubling up to
    `longest`; `reset()` after a success."""

    __slots__ = ("first", "longest", "_next")

    def __init__(self, first: float = 0.1, longest: float = 5.0) -> None:
        self.first = first
        self.longest = longest
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.longest)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Signal:
    """asyncio.Event's set, clear, is_set and wait, for one waiter at a time
    and without Event's deque of waiters: one per open stream, so its size
    counts (docs/scaling.md, idle streams)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def wait(self) -> asyncio.Future[None]:
        """A future done once the signal is set (already done if it is).

        A plain method, not a coroutine: an idle stream's task awaits the
        future itself, all its life, with no coroutine frame in between.
        One waiter at a time: a cancelled wait (a timeout) cancels the
        future, and the next wait makes another.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._set:
                waiter.set_result(None)
        return waiter


Waitable = asyncio.Event | Signal


async def wait_set(event: Waitable, timeout: float) -> bool:
    """Wait until `event` is set, at most `timeout` seconds; True if it was.
    The event is left as it is (the caller clears it when it has acted)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_first(*events: Waitable) -> None:
    """Wait until one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended (one cancel() may be
    swallowed, see above: cancel again until it ends)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())
