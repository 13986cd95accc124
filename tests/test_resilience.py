"""The stream survives the database: listener killed, PostgreSQL restarted."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
from sse import envelope, open_stream
from support import StartServer, app_servers, eventually, publish

from sse_stream.core.settings import Settings
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.db.store import WARM_UP
from sse_stream.web.handlers import HUB, LISTENER


async def test_listener_killed_loses_nothing(start_server: StartServer, db: asyncpg.Connection,
                                             stream: str) -> None:
    server = await start_server(poll_interval=0.5)
    listener = server.app[LISTENER]
    await eventually(lambda: listener.backend_pid is not None)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        before = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        got = await sse.take(3)
        old_pid = listener.backend_pid
        await db.execute("SELECT pg_terminate_backend($1)", old_pid)
        # Published while the listener is gone or reconnecting.
        during = [await publish(db, stream, "t", {"n": n}) for n in range(3, 8)]
        got += await sse.take(5)
        await eventually(lambda: listener.connected and listener.backend_pid != old_pid)
        after = [await publish(db, stream, "t", {"n": n}) for n in range(8, 10)]
        got += await sse.take(2)
    assert [envelope(m)["id"] for m in got] == before + during + after
    assert listener.reconnects >= 1


async def test_database_restart_keeps_streams_open(start_server: StartServer, dsn: str,
                                                   embedded: EmbeddedPostgres, stream: str) -> None:
    server = await start_server(heartbeat=0.3, poll_interval=0.5)
    hub, listener = server.app[HUB], server.app[LISTENER]
    url = str(server.make_url(f"/streams/{stream}"))
    async with aiohttp.ClientSession() as session, open_stream(url, session=session) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        connection = await asyncpg.connect(dsn)
        first = await publish(connection, stream, "t", {"n": 1})
        await connection.close()
        assert envelope(await sse.next())["id"] == first

        await asyncio.to_thread(embedded.restart, "fast")
        # The stream stays open through the outage: keepalives keep coming.
        comments = sse.parser.comments
        await sse.until(lambda parser: parser.comments >= comments + 2)
        await eventually(lambda: hub.ready and listener.connected, timeout=30)
        async with session.get(server.make_url("/readyz")) as response:
            assert response.status == 200

        connection = await asyncpg.connect(dsn)
        later = [await publish(connection, stream, "t", {"n": n}) for n in range(2, 5)]
        await connection.close()
        assert [envelope(m)["id"] for m in await sse.take(3, timeout=15)] == later
    assert not sse.ended


async def test_readyz_reports_a_dead_database(start_server: StartServer,
                                              embedded: EmbeddedPostgres) -> None:
    server = await start_server(poll_interval=0.2)
    hub, listener = server.app[HUB], server.app[LISTENER]
    await eventually(lambda: hub.ready and listener.connected)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/readyz")) as response:
            assert response.status == 200
        await asyncio.to_thread(embedded.stop, "fast")
        try:
            await eventually(lambda: not listener.connected)
            async with session.get(server.make_url("/readyz")) as response:
                assert response.status == 503
                assert response.content_type == "application/problem+json"
            async with session.get(server.make_url("/healthz")) as response:
                assert response.status == 200
        finally:
            await asyncio.to_thread(embedded.start)
        await eventually(lambda: hub.ready and listener.connected, timeout=30)


async def test_one_shared_read_per_wakeup(start_server: StartServer, db: asyncpg.Connection,
                                          stream: str) -> None:
    """50 subscribers, 100 events: reads follow wake-ups, not subscribers."""
    server = await start_server()
    hub = server.app[HUB]
    url = str(server.make_url(f"/streams/{stream}"))
    async with aiohttp.ClientSession() as session:
        streams = []
        contexts = [open_stream(url, session=session) for _ in range(50)]
        for context in contexts:
            sse = await context.__aenter__()
            await sse.until(lambda parser: parser.last_event_id != "")
            streams.append(sse)
        reads, wakeups = hub.store.reads, hub.stats.wakeups
        ids = [await publish(db, stream, "t", {"n": n}) for n in range(100)]
        for sse in streams:
            assert [envelope(m)["id"] for m in await sse.take(100)] == ids
        read_count, wakeup_count = hub.store.reads - reads, hub.stats.wakeups - wakeups
        for context in contexts:
            await context.__aexit__(None, None, None)
    # One read per wake-up (each fits one page), and at most about one
    # wake-up per event: never one query per subscriber per event.
    assert read_count == wakeup_count
    assert read_count <= 150


async def test_the_read_pool_is_open_before_the_first_resume(fresh_dsn: str) -> None:
    """The app opens the read pool's first connection at start: the first
    resumes after a restart do not each wait for one to authenticate."""
    async with app_servers() as start:
        await start(Settings(dsn=fresh_dsn, heartbeat=15.0))
        db = await asyncpg.connect(fresh_dsn)
        try:
            async def warm() -> bool:
                return await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle' AND query = $1", WARM_UP) == 1
            await eventually(warm, message="no idle read connection after start")
        finally:
            await db.close()
