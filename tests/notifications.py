"""Counting NOTIFY sse_stream on a LISTEN connection of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


class NotificationCounter:
    """Counts NOTIFY sse_stream per sending backend, on a connection of its own."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.by_pid: dict[int, int] = {}
        self.markers: asyncio.Queue[int] = asyncio.Queue()

    def _notified(self, _connection: Any, pid: int, channel: str, _payload: str) -> None:
        if channel == "sse_stream":
            self.by_pid[pid] = self.by_pid.get(pid, 0) + 1
        else:
            self.markers.put_nowait(pid)

    async def settle(self, writer: asyncpg.Connection) -> int:
        """The count for `writer` once everything it committed has arrived.

        Notifications arrive in commit order, so a marker sent after the
        writer's transactions arrives after their notifications.
        """
        await writer.execute("NOTIFY sse_stream_test_marker")
        while await asyncio.wait_for(self.markers.get(), 10) != writer.get_server_pid():
            pass
        return self.by_pid.get(writer.get_server_pid(), 0)


@asynccontextmanager
async def counting(dsn: str) -> AsyncIterator[NotificationCounter]:
    connection = await asyncpg.connect(dsn)
    counter = NotificationCounter(connection)
    await connection.add_listener("sse_stream", counter._notified)
    await connection.add_listener("sse_stream_test_marker", counter._notified)
    try:
        yield counter
    finally:
        await connection.close()
