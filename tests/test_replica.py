"""Replay reads on a replica: a lagging replica never makes a client skip events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sse import envelope, open_stream
from support import StartServer, count, publish, replicated

from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.web.handlers import STORE


@asynccontextmanager
async def lagging(standby: EmbeddedPostgres, db: asyncpg.Connection, stream: str,
                  early: int, late: int) -> AsyncIterator[tuple[asyncpg.Connection, list[int],
                                                                list[int]]]:
    """`early` events the replica has replayed, then `late` more that it has
    not: its replay is paused until the block ends. The replica's connection
    and both lists of ids."""
    replica = await asyncpg.connect(standby.dsn)
    try:
        first = [await publish(db, stream, "t", {"n": n}) for n in range(early)]
        await replicated(replica, stream, early)
        # Freeze the replica: it now lags the primary by everything after this.
        await replica.execute("SELECT pg_wal_replay_pause()")
        then = [await publish(db, stream, "t", {"n": n}) for n in range(early, early + late)]
        yield replica, first, then
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


async def test_lagging_replica_cannot_make_a_client_skip(start_server: StartServer, dsn: str,
                                                         standby: EmbeddedPostgres,
                                                         db: asyncpg.Connection, stream: str) -> None:
    async with lagging(standby, db, stream, 5, 5) as (replica, early, late):
        server = await start_server(replica_dsn=standby.dsn)
        url = str(server.make_url(f"/streams/{stream}?last_event_id=0"))
        async with open_stream(url) as sse:
            got = await sse.take(10)
            live = await publish(db, stream, "t", {"n": 10})
            got.append(await sse.next())
        assert [envelope(m)["id"] for m in got] == early + late + [live]
        assert server.app[STORE].replica_reads >= 1
        assert await count(replica, stream) == 5


async def test_backfill_with_a_lagging_replica_ends_at_the_newest_event(
        start_server: StartServer, standby: EmbeddedPostgres, db: asyncpg.Connection,
        stream: str) -> None:
    async with lagging(standby, db, stream, 3, 3) as (_, early, late):
        server = await start_server(replica_dsn=standby.dsn)
        url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
        async with open_stream(url) as sse:
            got = await sse.rest()
        # live=false means "up to the newest event": the primary's, not the
        # paused replica's, which has only the first three.
        assert [envelope(m)["id"] for m in got] == early + late
        assert server.app[STORE].replica_reads >= 1


async def test_replay_falls_back_to_the_primary_when_the_replica_is_down(
        start_server: StartServer, standby: EmbeddedPostgres, db: asyncpg.Connection,
        stream: str) -> None:
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(5)]
    server = await start_server(replica_dsn=standby.dsn)
    await asyncio.to_thread(standby.stop, "immediate")
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
    async with open_stream(url) as sse:
        got = await sse.rest(timeout=20)
    assert [envelope(m)["id"] for m in got] == ids
    assert server.app[STORE].replica_reads >= 1
