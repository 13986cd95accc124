"""EventStore: every database read and write of the server.

The only module, with listener.py and migrate.py, that talks to asyncpg.
asyncpg and OS errors are translated to DatabaseUnavailable here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import cache
from typing import Any

import asyncpg

from ..core.batch import Batch
from ..core.errors import DatabaseUnavailable, Refusal
from ..core.events import Event, Position
from ..core.selector import SelectorSql
from .capacity import Capacity, StoreLimits
from .pages import Frames, Page, Published, lsn_number, row_events
from .queries import query

__all__ = ["APPLICATION_NAME", "EventStore", "Frames", "Page", "Published"]

log = logging.getLogger(__name__)

DEFAULT_LIMITS = StoreLimits()

# Shown in pg_stat_activity, so an operator (or a fault test) can tell the
# server's pool from other clients.
APPLICATION_NAME = "sse-stream"
# The live read runs the same statements on every wake-up: a generic plan
# (the same index plan) skips re-planning them each time (docs/scaling.md).
GENERIC_PLAN = {"plan_cache_mode": "force_generic_plan"}

# Errors that mean "the database is not there right now", not "bad query".
# InternalClientError is what asyncpg raises when a backend is terminated
# while a statement is being prepared: the connection is left mid-operation
# and the retry asyncpg makes on it fails. Left untranslated it would end the
# hub's read loop, and with it every live stream. QueryCanceledError is a
# statement that ran past statement_timeout (or was cancelled by an operator):
# the work is refused, the caller retries later, as after an outage.
_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError,
                asyncpg.QueryCanceledError, TimeoutError)


@cache
def _frame_sql(sse: bool, cloudevents: bool) -> str:
    envelope = query("frame_json_cloudevents" if cloudevents else "frame_json")
    return query("frame_sse").replace("{envelope}", envelope) if sse else envelope


def _selected_sql(selector: SelectorSql, sse: bool, cloudevents: bool) -> str:
    return query("read_selected").replace("{streams}", selector.streams) \
        .replace("{filter}", selector.filter).replace("{frame}", _frame_sql(sse, cloudevents)) \
        .replace("{separator}", "''" if sse else "','")


def _pruned(row: asyncpg.Record) -> Position | None:
    return None if row["pruned_xid"] is None else Position(row["pruned_xid"], row["pruned_id"])


# Named, so that pg_stat_activity tells it from the listener's keepalive.
WARM_UP = "SELECT 1 -- sse-stream: read pool warm-up"


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
    """The live read's connection, pools for reads, publishing and background
    work, and an optional replica pool for replay.

    `dsn` is the primary: publishing, migrations, webhooks and retention.
    `live_dsn` (default: the primary) serves the live read, the last stretch
    of every catch-up and the pages: with a hot standby there, the primary
    serves no reads per commit or per client. `replica_dsn` serves the bulk
    of catch-ups.
    """

    def __init__(self, dsn: str, *, replica_dsn: str | None = None,
                 live_dsn: str | None = None, limits: StoreLimits = DEFAULT_LIMITS,
                 generic_plan: bool = True) -> None:
        self.dsn = dsn
        self.replica_dsn = replica_dsn
        self.live_dsn = live_dsn
        self.live_recovery = False  # the live source was a standby at the last probe
        self.generic_plan = generic_plan
        self.limits = limits
        self.reads_capacity = Capacity("read", limits.read_connections, limits.wait)
        self.publish_capacity = Capacity("publish", limits.publish_connections, limits.wait)
        self.background_capacity = Capacity("background", limits.background_connections,
                                            limits.wait)
        self._reads: asyncpg.Pool | None = None
        self._writes: asyncpg.Pool | None = None
        self._background: asyncpg.Pool | None = None
        self._replica: asyncpg.Pool | None = None
        self._live: asyncpg.Connection | None = None
        self._live_lock = asyncio.Lock()
        self.reads = 0  # shared and catch-up reads, for tests and metrics
        self.replica_reads = 0
        self.skipped_rows = 0  # rows a reader could not turn into an event
        self._settings = {
            "application_name": APPLICATION_NAME,
            # Every statement ends; a parallel plan would bring worker
            # processes that no capacity here accounts for.
            "statement_timeout": str(max(1, int(limits.statement_timeout * 1000))),
            "max_parallel_workers_per_gather": "0",
        }

    async def _pool(self, dsn: str, size: int) -> asyncpg.Pool:
        # min_size 0: a command that only publishes never opens a read pool.
        return await asyncpg.create_pool(dsn, min_size=0, max_size=size, command_timeout=60,
                                         reset=_reset, server_settings=self._settings)

    async def open(self) -> None:
        limits = self.limits
        self._reads = await self._pool(self.live_dsn or self.dsn, limits.read_connections)
        self._writes = await self._pool(self.dsn, limits.publish_connections)
        self._background = await self._pool(self.dsn, limits.background_connections)
        if self.replica_dsn:
            self._replica = await self._pool(self.replica_dsn, limits.read_connections)

    async def warm(self) -> None:
        """Open the read pool's first connection now, not on the first
        catch-up: after a restart the first resumes (a storm of them) do not
        each wait for a connection's authentication and setup (`serve` calls
        this at start, in the background). A database that is down is no
        error here: the pool opens connections on demand anyway."""
        try:
            async with self._connection(self._reads) as connection:
                await connection.execute(WARM_UP)
        except DatabaseUnavailable:
            pass

    async def close(self) -> None:
        if self._live is not None:
            self._live.terminate()
            self._live = None
        for pool in (self._reads, self._writes, self._background, self._replica):
            if pool is not None:
                try:
                    # A graceful close waits for every connection to be
                    # released; after a database restart some never are.
                    async with asyncio.timeout(5):
                        await pool.close()
                except (TimeoutError, *_UNAVAILABLE):
                    pool.terminate()

    @asynccontextmanager
    async def _connection(self, pool: asyncpg.Pool | None) -> AsyncIterator[asyncpg.Connection]:
        if pool is None:
            raise DatabaseUnavailable("the store is not open")
        try:
            async with pool.acquire() as connection:
                yield connection
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable(str(error) or type(error).__name__) from error

    async def _live_fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run a statement on the live path's own connection (made on demand).

        asyncpg prepares each statement once per connection and keeps it
        (its statement cache): a wake-up pays for the round trip only. An
        explicit prepare() measured the same (benchmarks/ab.py, peruser).
        """
        async with self._live_lock:
            try:
                if self._live is None or self._live.is_closed():
                    async with asyncio.timeout(10):
                        self._live = await asyncpg.connect(
                            self.live_dsn or self.dsn, command_timeout=60,
                            server_settings={**self._settings,
                                             **(GENERIC_PLAN if self.generic_plan else {})})
                rows: list[asyncpg.Record] = await self._live.fetch(sql, *args)
                return rows
            except _UNAVAILABLE as error:
                if self._live is not None:
                    self._live.terminate()
                    self._live = None
                raise DatabaseUnavailable(str(error) or type(error).__name__) from error

    async def horizon(self) -> Position:
        """A position before every event not yet final: where live starts."""
        rows = await self._live_fetch(query("snapshot_xmin"))
        return Position.after_horizon(rows[0][0])

    async def probe(self) -> str:
        """Where the live source stands in the WAL (cheap): a poller reads
        only when this moved."""
        row = (await self._live_fetch(query("live_probe")))[0]
        self.live_recovery = row["recovery"]
        return str(row["lsn"])

    async def handed_out(self, position: Position) -> bool:
        """The primary's own view: whether it has handed out `position`'s
        transaction id (a standby that lacks it is behind, not replaced)."""
        async with self._connection(self._background) as connection:
            row = await connection.fetchrow(query("primary_wal"))
        return bool(position.xid < row["xmax"])

    async def replay_positions(self) -> tuple[bool, int, int]:
        """(whether the live source is a standby, the WAL position it has
        replayed, the primary's WAL position now), positions in bytes."""
        head = (await self._live_fetch(query("standby_replayed")))[0]
        self.live_recovery = head["recovery"]
        replayed = lsn_number(head["replayed"])
        if not head["recovery"]:
            return False, replayed, replayed
        async with self._connection(self._background) as connection:
            primary = await connection.fetchrow(query("primary_wal"))
        return True, replayed, lsn_number(primary["lsn"])

    async def _behind(self, after: Position) -> bool:
        """A position past the live source's horizon: behind (the primary
        handed it out), or future (a replaced cluster)? Only a live source
        apart from the primary can be behind."""
        return self.live_dsn is not None and await self.handed_out(after)

    async def read_recent(self, rows: int, budget: int,
                          overhead: int) -> tuple[list[Event], Position, bool]:
        """The newest final events, oldest first (at most `rows`, about
        `budget` bytes counting `overhead` per event), the horizon they are
        final below, and whether they are all the final events there are
        (none left out by a limit, none unreadable): what recent history
        starts with."""
        found = await self._live_fetch(query("read_recent"), rows, budget, overhead)
        horizon = Position.after_horizon(found[0]["xmin"])
        found = [r for r in found if r["id"] is not None]
        skipped = [0]
        events = row_events(found, skipped)
        self.skipped_rows += skipped[0]
        whole = not found or (found[0]["selected"] == len(found) < rows and not skipped[0])
        return events, horizon, whole

    async def read_live(self, after: Position, limit: int) -> Page:
        """The shared read of a wake-up: the final events after `after`."""
        self.reads += 1
        rows = await self._live_fetch(query("read_live"), str(after.xid), after.id, limit,
                                      self.limits.page_bytes)
        head = rows[0]
        xmin: int = head["xmin"]
        pruned = _pruned(head)
        if after.xid >= head["xmax"]:
            if await self._behind(after):
                return Page([], after, True, False, pruned, behind=True)
            # Past every transaction this database has started: the cluster
            # was replaced or restored. Resume at its horizon.
            return Page([], Position.after_horizon(xmin), False, False, pruned, future=True)
        skipped = [0]
        rows = rows if head["id"] is not None else []
        events = row_events(rows, skipped)
        self.skipped_rows += skipped[0]
        full = len(rows) == limit or len(events) + skipped[0] < len(rows)
        if full:
            last = rows[len(events) + skipped[0] - 1] if events or skipped[0] else None
            covered = after if last is None else Position(last["xid"], last["id"])
        else:
            covered = max(after, Position.after_horizon(xmin))
        return Page(events, covered, head["held"] and not full, full, pruned)

    async def read_selected(self, after: Position, limit: int, selector: SelectorSql, *,
                            sse: bool = True, cloudevents: bool = False, replica: bool = False,
                            wait: float | None = None, background: bool = False,
                            max_bytes: int | None = None) -> Frames:
        """One page of a subscriber's catch-up (`sse`) or of a JSON page,
        filtered in SQL, each event as the bytes the client gets.

        At most `limit` events; bounded in rows examined and bytes (see
        StoreLimits). `wait` bounds the wait for a read connection (None:
        as long as it takes); past it, Overloaded. On the primary, a
        position beyond anything handed out is reported as `future`.
        `background` reads on the background capacity (webhook delivery);
        `max_bytes` replaces the configured byte budget.
        """
        self.reads += 1
        limits = self.limits
        replica = replica and self._replica is not None
        sql = _selected_sql(selector, sse, cloudevents)
        args = (str(after.xid), after.id, limit + 1, limits.scan_rows,
                limits.page_bytes if max_bytes is None else max_bytes,
                *selector.params)
        capacity, pool = ((self.background_capacity, self._background) if background
                          else (self.reads_capacity, self._reads))
        async with capacity.slot(wait):
            if replica:
                self.replica_reads += 1
                try:
                    async with self._connection(self._replica) as connection:
                        row = await connection.fetchrow(sql, *args)
                except (DatabaseUnavailable, asyncpg.PostgresError) as error:
                    # A replica that is down, or cancels the query in a recovery
                    # conflict, must not stop a replay the primary can serve.
                    log.warning("replica read failed, reading the primary: %s", error)
                    replica = False
            if not replica:
                async with self._connection(pool) as connection:
                    row = await connection.fetchrow(sql, *args)
        xmin: int = row["xmin"]
        pruned = _pruned(row)
        if not replica and after.xid >= row["xmax"]:
            if not background and await self._behind(after):
                return Frames(b"", 0, None, after, False, pruned, behind=True)
            return Frames(b"", 0, None, Position.after_horizon(xmin), False, pruned, future=True)
        if row["end_n"] is None:  # nothing after `after` yet
            return Frames(b"", 0, None, max(after, Position.after_horizon(xmin)), False, pruned)
        last = None if row["last"] is None else Position(*row["last"])
        if row["over"]:
            # A match was left for the next page (the count or the bytes).
            full, covered = True, last or after
        elif row["end_n"] == limits.scan_rows:
            # The scan budget ended the page: everything up to the last row
            # examined has been seen, matched or not.
            full, covered = True, Position(*row["end_at"])
        else:
            full, covered = False, max(after, Position.after_horizon(xmin))
        return Frames(row["body"] or b"", row["taken"], last, covered, full, pruned)

    @asynccontextmanager
    async def background(self, wait: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the background capacity, which live reads, pages
        and publishing never use (webhook delivery, retention)."""
        async with self.background_capacity.slot(wait), \
                self._connection(self._background) as connection:
            yield connection

    async def pruned_position(self) -> Position | None:
        async with self._connection(self._background) as connection:
            row = await connection.fetchrow(query("pruned_position"))
        return None if row is None else Position(row[0], row[1])

    async def prune_batch(self, older_than: timedelta, limit: int, force: bool = False,
                          max_hold: float = 604800.0) -> tuple[int, Position | None]:
        """Delete at most `limit` of the oldest final events created before
        now - `older_than`, none past a webhook's cursor unless `force` (a
        webhook paused or failing for `max_hold` seconds holds nothing);
        return how many and the highest position deleted."""
        async with self._connection(self._background) as connection:
            cutoff = await connection.fetchval("SELECT clock_timestamp() - $1::interval",
                                               older_than)
            row = await connection.fetchrow(query("prune_batch"), cutoff, limit, force,
                                            max_hold)
        deleted: int = row["deleted"]
        return deleted, None if row["xid"] is None else Position(row["xid"], row["id"])

    async def publish(self, batch: Batch, idempotency_key: str | None = None,
                      subject: str = "") -> Published:
        """Write a batch in one transaction (one statement); return the ids.

        With an idempotency key the key is recorded in the same transaction,
        in its scope (the stream and `subject`): if it was recorded before
        (by any process), nothing is written and the first request's ids and
        fingerprint come back with `replayed` set. Waits at most the
        configured time for a publishing connection (else Overloaded).
        """
        try:
            async with self.publish_capacity.slot(self.limits.wait), \
                    self._connection(self._writes) as connection:
                if idempotency_key is None:
                    ids = await connection.fetchval(query("publish_batch"), batch.stream,
                                                    batch.events_json)
                    return Published(ids, False, batch.fingerprint)
                assert batch.fingerprint is not None, "an idempotent batch needs its fingerprint"
                row = await connection.fetchrow(query("publish_idempotent"), idempotency_key,
                                                subject, batch.fingerprint, batch.stream,
                                                batch.events_json)
        except asyncpg.DataError as error:
            # The checks in sse_stream.core.batch run first; this is the backstop
            # for anything jsonb refuses that they let through.
            raise Refusal("body", error.args[0] if error.args else str(error)) from error
        return Published(row["ids"], row["replayed"], row["stored_hash"])

    async def prune_idempotency_keys(self, older_than: float) -> int:
        """Forget idempotency keys recorded more than `older_than` seconds ago."""
        async with self._connection(self._background) as connection:
            status: str = await connection.execute(query("prune_idempotency_keys"), older_than)
        return int(status.split()[-1])
