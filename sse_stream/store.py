"""EventStore: every database read and write of the server.

The only module, with listener.py and migrate.py, that talks to asyncpg.
asyncpg and OS errors are translated to DatabaseUnavailable here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, AsyncIterator

import asyncpg

from .batch import Batch
from .errors import DatabaseUnavailable, InvalidInput
from .events import Event, Position
from .queries import query

log = logging.getLogger(__name__)

# Shown in pg_stat_activity, so an operator (or a fault test) can tell the
# server's pool from other clients.
APPLICATION_NAME = "sse-stream"

# Errors that mean "the database is not there right now", not "bad query".
# InternalClientError is what asyncpg raises when a backend is terminated
# while a statement is being prepared: the connection is left mid-operation
# and the retry asyncpg makes on it fails. Left untranslated it would end the
# hub's read loop, and with it every live stream.
_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError, TimeoutError)


@dataclass(frozen=True)
class Page:
    """Events read from the table and how far the read is final.

    `covered` is the position up to which the reader has seen every row it
    asked for: the last event when the page is full, else the snapshot horizon.
    `held` is true when committed rows exist beyond `covered` that an older,
    still-open transaction keeps from being final: read again soon.
    """

    events: list[Event]
    covered: Position
    held: bool
    full: bool
    pruned: Position | None = None  # highest pruned position, in the page's snapshot


@dataclass(frozen=True)
class Published:
    """The ids of a published batch, in input order.

    `replayed`: an earlier request with the same idempotency key wrote them
    and this one wrote nothing; `fingerprint` is that request's.
    """

    ids: list[int]
    replayed: bool
    fingerprint: bytes | None


def _events(rows: Sequence[asyncpg.Record]) -> list[Event]:
    return [Event.from_row(r["xid"], r["id"], r["stream"], r["type"], r["data"], r["created_at"])
            for r in rows if r["id"] is not None]


async def _reset(connection: asyncpg.Connection) -> None:
    """Make a released connection fit for the next query, without a round trip.

    asyncpg's default reset sends `RESET ALL; UNLISTEN *; ...` on every
    release: a round trip per read and per publish, for session state this
    store never sets (no SET, LISTEN, cursors or advisory locks on the pool;
    settings from the DSN survive RESET ALL anyway). Only a transaction left
    open by a cancelled query would matter.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class EventStore:
    """A pool for reads and writes, plus an optional replica pool for replay."""

    def __init__(self, dsn: str, *, replica_dsn: str | None = None, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.replica_dsn = replica_dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._replica: asyncpg.Pool | None = None
        self.reads = 0  # shared and catch-up reads, for tests and metrics
        self.replica_reads = 0

    async def open(self) -> None:
        settings = {"application_name": APPLICATION_NAME}
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                               command_timeout=60, reset=_reset,
                                               server_settings=settings)
        if self.replica_dsn:
            self._replica = await asyncpg.create_pool(self.replica_dsn, min_size=1,
                                                      max_size=self.pool_size, command_timeout=60,
                                                      reset=_reset, server_settings=settings)

    async def close(self) -> None:
        for pool in (self._pool, self._replica):
            if pool is not None:
                try:
                    # A graceful close waits for every connection to be
                    # released; after a database restart some never are.
                    await asyncio.wait_for(pool.close(), 5)
                except (TimeoutError, *_UNAVAILABLE):
                    pool.terminate()

    @asynccontextmanager
    async def _connection(self, replica: bool = False) -> AsyncIterator[asyncpg.Connection]:
        pool = self._replica if replica and self._replica is not None else self._pool
        if pool is None:
            raise DatabaseUnavailable("the store is not open")
        try:
            async with pool.acquire() as connection:
                yield connection
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable(str(error) or type(error).__name__) from error

    async def horizon(self) -> Position:
        """A position before every event not yet final: where live starts."""
        async with self._connection() as connection:
            xmin = await connection.fetchval(query("snapshot_xmin"))
        return Position.after_horizon(xmin)

    async def read_live(self, after: Position, limit: int) -> Page:
        """The shared read of a wake-up: the final events after `after`."""
        self.reads += 1
        async with self._connection() as connection:
            rows = await connection.fetch(query("read_live"), str(after.xid), after.id, limit)
        xmin: int = rows[0]["xmin"]
        final = [r for r in rows if r["id"] is not None and r["xid"] < xmin]
        held = len(final) < len(rows) and rows[0]["id"] is not None
        full = len(rows) == limit and not held
        events = _events(final)
        # Held rows sort after every final row, so a page that holds some has
        # read every final row: it covers the whole horizon.
        covered = events[-1].position if full else max(after, Position.after_horizon(xmin))
        return Page(events, covered, held, full)

    async def read_selected(self, after: Position, limit: int, selector_sql: str,
                            params: Sequence[Any], *, replica: bool = False) -> Page:
        """One page of a subscriber's catch-up, filtered in SQL."""
        self.reads += 1
        sql = query("read_selected").replace("{selector}", selector_sql)
        args = (str(after.xid), after.id, limit, *params)
        if replica and self._replica is not None:
            self.replica_reads += 1
            try:
                async with self._connection(replica=True) as connection:
                    rows = await connection.fetch(sql, *args)
            except (DatabaseUnavailable, asyncpg.PostgresError) as error:
                # A replica that is down, or cancels the query in a recovery
                # conflict, must not stop a replay the primary can serve.
                log.warning("replica read failed, reading the primary: %s", error)
                async with self._connection() as connection:
                    rows = await connection.fetch(sql, *args)
        else:
            async with self._connection() as connection:
                rows = await connection.fetch(sql, *args)
        xmin: int = rows[0]["xmin"]
        events = _events(rows)
        full = len(events) == limit
        covered = events[-1].position if full else max(after, Position.after_horizon(xmin))
        first = rows[0]
        pruned = None if first["pruned_xid"] is None else \
            Position(first["pruned_xid"], first["pruned_id"])
        return Page(events, covered, False, full, pruned)

    async def pruned_position(self) -> Position | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(query("pruned_position"))
        return None if row is None else Position(row[0], row[1])

    async def prune_batch(self, older_than: timedelta, limit: int) -> tuple[int, Position | None]:
        """Delete at most `limit` of the oldest final events created before
        now - `older_than`; return how many and the highest position deleted."""
        async with self._connection() as connection:
            cutoff = await connection.fetchval("SELECT clock_timestamp() - $1::interval",
                                               older_than)
            row = await connection.fetchrow(query("prune_batch"), cutoff, limit)
        deleted: int = row["deleted"]
        return deleted, None if row["xid"] is None else Position(row["xid"], row["id"])

    async def publish(self, batch: Batch, idempotency_key: str | None = None) -> Published:
        """Write a batch in one transaction (one statement); return the ids.

        With an idempotency key the key is recorded in the same transaction:
        if it was recorded before (by any process), nothing is written and the
        first request's ids and fingerprint come back with `replayed` set.
        """
        try:
            async with self._connection() as connection:
                if idempotency_key is None:
                    ids = await connection.fetchval(query("publish_batch"), batch.stream,
                                                    batch.events_json)
                    return Published(ids, False, batch.fingerprint)
                assert batch.fingerprint is not None, "an idempotent batch needs its fingerprint"
                row = await connection.fetchrow(query("publish_idempotent"), idempotency_key,
                                                batch.fingerprint, batch.stream, batch.events_json)
        except asyncpg.DataError as error:
            # The checks in sse_stream.batch run first; this is the backstop
            # for anything jsonb refuses that they let through.
            raise InvalidInput("body", error.args[0] if error.args else str(error)) from error
        return Published(row["ids"], row["replayed"], row["stored_hash"])

    async def prune_idempotency_keys(self, older_than: float) -> int:
        """Forget idempotency keys recorded more than `older_than` seconds ago."""
        async with self._connection() as connection:
            status: str = await connection.execute(query("prune_idempotency_keys"), older_than)
        return int(status.split()[-1])

    async def ping(self) -> None:
        async with self._connection() as connection:
            await connection.fetchval("SELECT 1")
