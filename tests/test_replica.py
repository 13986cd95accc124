"""Replay reads on a replica: a lagging replica never makes a client skip events."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from conftest import StartServer, publish
from sse import envelope, open_stream
from sse_stream.embedded import EmbeddedPostgres
from sse_stream.handlers import STORE


@pytest.fixture
def standby(embedded: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-replica-"))
    server = embedded.replica(folder / "pgdata")
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


async def _replayed(connection: asyncpg.Connection, stream: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await connection.fetchval(
            "SELECT count(*) FROM sse_stream.events WHERE stream = $1", stream) < count:
        assert loop.time() < deadline, "the replica did not catch up"
        await asyncio.sleep(0.02)


async def test_lagging_replica_cannot_make_a_client_skip(start_server: StartServer, dsn: str,
                                                         standby: EmbeddedPostgres,
                                                         db: asyncpg.Connection, stream: str) -> None:
    replica = await asyncpg.connect(standby.dsn)
    try:
        early = [await publish(db, stream, "t", {"n": n}) for n in range(5)]
        await _replayed(replica, stream, 5)
        # Freeze the replica: it now lags the primary by everything after this.
        await replica.execute("SELECT pg_wal_replay_pause()")
        late = [await publish(db, stream, "t", {"n": n}) for n in range(5, 10)]
        server = await start_server(replica_dsn=standby.dsn)
        url = str(server.make_url(f"/streams/{stream}?last_event_id=0"))
        async with open_stream(url) as sse:
            got = await sse.take(10)
            live = await publish(db, stream, "t", {"n": 10})
            got.append(await sse.next())
        assert [envelope(m)["id"] for m in got] == early + late + [live]
        assert server.app[STORE].replica_reads >= 1
        assert await replica.fetchval(
            "SELECT count(*) FROM sse_stream.events WHERE stream = $1", stream) == 5
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


async def test_backfill_with_a_lagging_replica_ends_at_the_newest_event(
        start_server: StartServer, standby: EmbeddedPostgres, db: asyncpg.Connection,
        stream: str) -> None:
    replica = await asyncpg.connect(standby.dsn)
    try:
        early = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        await _replayed(replica, stream, 3)
        await replica.execute("SELECT pg_wal_replay_pause()")
        late = [await publish(db, stream, "t", {"n": n}) for n in range(3, 6)]
        server = await start_server(replica_dsn=standby.dsn)
        url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
        async with open_stream(url) as sse:
            got = await sse.rest()
        # live=false means "up to the newest event": the primary's, not the
        # paused replica's, which has only the first three.
        assert [envelope(m)["id"] for m in got] == early + late
        assert server.app[STORE].replica_reads >= 1
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()


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
