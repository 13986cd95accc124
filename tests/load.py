"""Writers and resuming readers for the fault and gap tests.

`Writer` publishes in short transactions (some rolled back, each held open
a little so that commits land out of id order) and rides out database
outages by reconnecting. `Follower` is a client that keeps its last event
id: it reconnects with Last-Event-ID whenever its stream ends or breaks (or
hangs up by itself, as a flaky network would), until it has as many events
as the table holds. Both are bounded in time. The table is the truth: what
a follower received is compared with `support.table_ids`, the table's order.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import asyncpg
import orjson

from sse_stream.client import SseParser

DISCONNECTED = (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, EOFError)


class Writer:
    """Publishes 1-3 events per transaction, 20% rolled back, until stopped
    or, with `transactions`, until it has run that many."""

    def __init__(self, dsn: str, stream: str, seed: int, transactions: int = 0) -> None:
        self.dsn = dsn
        self.stream = stream
        self.rng = random.Random(seed)
        self.limit = transactions
        self.transactions = 0
        self.failures = 0
        self.committed: list[int] = []  # the ids of the transactions that committed
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Writer:
        self.task = asyncio.create_task(self._run())
        return self

    async def wait(self, timeout: float = 60) -> None:
        """Wait (bounded) until the writer has ended by itself or was stopped."""
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)

    async def finish(self) -> None:
        self.stop.set()
        await self.wait()

    async def _run(self) -> None:
        connection: asyncpg.Connection | None = None
        try:
            while not self.stop.is_set() and not (self.limit and self.transactions >= self.limit):
                try:
                    if connection is None:
                        connection = await asyncio.wait_for(asyncpg.connect(self.dsn), 5)
                    await self._transaction(connection)
                    self.transactions += 1
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                    # The database is restarting or killed this backend:
                    # what the transaction wrote is in the table or not at all.
                    self.failures += 1
                    if connection is not None:
                        connection.terminate()
                        connection = None
                    await asyncio.sleep(0.05)
                await asyncio.sleep(self.rng.uniform(0, 0.01))
        finally:
            if connection is not None:
                connection.terminate()

    async def _transaction(self, connection: asyncpg.Connection) -> None:
        # On an error the connection is dropped, which ends the transaction.
        transaction = connection.transaction()
        await transaction.start()
        ids = []
        for _ in range(self.rng.randint(1, 3)):
            ids.append(await connection.fetchval(
                "SELECT sse_stream.publish($1, $2, $3::text::jsonb)", self.stream,
                self.rng.choice(["a", "b"]), orjson.dumps({"s": "é€😀"}).decode()))
        # Held open a little, so commits land out of id order.
        await connection.execute("SELECT pg_sleep($1)", self.rng.uniform(0, 0.005))
        if self.rng.random() < 0.2:
            await transaction.rollback()
        else:
            await transaction.commit()
            self.committed.extend(ids)


class Follower:
    """A client that keeps its last id and always resumes from it.

    With `hang_up` it also closes its own connection after a random 1 to
    `hang_up` chunks, as a flaky network would (often mid-frame); with
    `hang_up_events`, after a random 1 to `hang_up_events` events. It waits
    `pause` seconds before each reconnection.
    """

    def __init__(self, url: str, start: str = "0", seed: int = 0, hang_up: int = 0,
                 hang_up_events: int = 0, pause: float = 0.05) -> None:
        self.url = url
        self.last_id = start
        self.ids: list[int] = []
        self.connections = 0
        self.rng = random.Random(seed)
        self.hang_up = hang_up
        self.hang_up_events = hang_up_events
        self.pause = pause
        self.target: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run())

    def _done(self) -> bool:
        return self.target.done() and len(self.ids) >= self.target.result()

    async def finish(self, count: int, timeout: float = 60) -> list[int]:
        """Read until `count` events arrived (bounded); return them."""
        self.target.set_result(count)
        await asyncio.wait_for(self.task, timeout)
        return self.ids

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._done():
                self.connections += 1
                try:
                    await self._read(session)
                except DISCONNECTED:
                    pass
                if not self._done():
                    await asyncio.sleep(self.pause)

    async def _read(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self.url, headers={"Last-Event-ID": self.last_id}) as response:
            if response.status != 200:
                return
            parser = SseParser()
            chunks = self.rng.randint(1, self.hang_up) if self.hang_up else -1
            events = self.rng.randint(1, self.hang_up_events) if self.hang_up_events else -1
            async for chunk in response.content.iter_any():
                for message in parser.feed(chunk):
                    self.ids.append(orjson.loads(message.data)["id"])
                    events -= 1
                    if events == 0:
                        # Resume after this event, not after the rest of the chunk.
                        self.last_id = message.last_event_id or self.last_id
                        return
                # Only complete frames move the id; a cut frame is sent again.
                self.last_id = parser.last_event_id or self.last_id
                if self._done():
                    return
                chunks -= 1
                if chunks == 0:
                    return
