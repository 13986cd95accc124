"""The database capacity of one process, split by kind of work, and the
bounded wait for a share of it (docs/scaling.md, "Database capacity")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..core.errors import Overloaded


@dataclass(frozen=True)
class StoreLimits:
    """The database capacity of one process, split by kind of work.

    The live read has a connection of its own; publishing and heavy reads
    (catch-ups, pages) each have a pool of their own, so that no amount of
    one kind can take the connections of another. A page or publish waits
    at most `wait` seconds for a connection of its kind, then is refused
    (503); a replaying stream waits its turn page by page, holding no
    connection while it waits (a reconnect storm is served in turn, not
    refused: EventSource does not retry after a 503). Every statement ends
    within `statement_timeout`
    seconds; a page or catch-up read examines at most `scan_rows` rows of its
    streams and returns about `page_bytes` of data at most.
    """

    read_connections: int = 4
    publish_connections: int = 2
    wait: float = 2.0
    statement_timeout: float = 10.0
    scan_rows: int = 10_000
    page_bytes: int = 1 << 20
    # Retention and webhook delivery (see `EventStore.background`).
    background_connections: int = 1


class Capacity:
    """At most `size` statements of one kind at once, FIFO; a caller waits at
    most `wait` seconds for its turn, then is refused with Overloaded."""

    def __init__(self, name: str, size: int, wait: float) -> None:
        self.name = name
        self.size = size
        self.wait = wait
        self.waiting = 0
        self.refused = 0
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def slot(self, wait: float | None = None) -> AsyncIterator[None]:
        """Hold one of the slots; `wait` None waits as long as it takes."""
        self.waiting += 1
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            assert wait is not None
            self.refused += 1
            raise Overloaded(f"the server's {self.name} capacity stayed busy for {wait:g} s; "
                             "retry shortly", retry_after=max(1, round(wait))) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
