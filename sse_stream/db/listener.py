"""The one LISTEN connection of a process: doorbell, keepalive, reconnect.

A notification only says "read the table". When the connection is lost the
listener reconnects with backoff and rings the doorbell once connected
again, so the hub reads everything committed while nobody listened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from ..core.tasks import Backoff, cancel_and_wait, wait_set

log = logging.getLogger(__name__)
CHANNEL = "sse_stream"
# Shown in pg_stat_activity: the LISTEN connection, apart from the pool.
APPLICATION_NAME = "sse-stream-listener"


class Listener:
    def __init__(self, dsn: str, on_notify: Callable[[], None], *, keepalive: float = 10.0) -> None:
        self.dsn = dsn
        self.on_notify = on_notify
        self.keepalive = keepalive
        self.connected = False
        self.reconnects = 0
        self.notifications = 0
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sse-stream listener")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (for tests)."""
        return None if self._connection is None else self._connection.get_server_pid()

    def _notified(self, *_: Any) -> None:
        # asyncpg calls this from its protocol; it must not block or await.
        self.notifications += 1
        self.on_notify()

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            lost = asyncio.Event()
            try:
                async with asyncio.timeout(10):  # not wait_for: see tasks.py
                    connection = await asyncpg.connect(
                        self.dsn, server_settings={"application_name": APPLICATION_NAME})
                self._connection = connection
                # Bound now: a connection ended later must not mark its successor lost.
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._notified)
                log.info("listener connected")
                self.connected = True
                backoff.reset()
                # Anything committed while nobody listened is in the table.
                self.on_notify()
                while not await wait_set(lost, self.keepalive):
                    # A health check: a half-open TCP connection would
                    # otherwise look alive and silent forever.
                    async with asyncio.timeout(self.keepalive):
                        await connection.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            # InternalClientError: asyncpg's answer when the backend is
            # terminated while a statement (the health check) is prepared.
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError) as error:
                log.warning("listener connection lost: %s", error or type(error).__name__)
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
                if self._connection is not None:
                    self._connection.terminate()
                    self._connection = None
            await asyncio.sleep(backoff.next())
