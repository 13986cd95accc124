"""Live reads from a hot standby (`--live-dsn`, docs/scaling.md "Beyond one
machine"): a real primary (the session's embedded PostgreSQL) and a real
streaming standby of it. The standby is polled, the primary serves no live
read and no LISTEN, and every stream gets every committed event once, in
order, with no false `sse.gap`: commits out of id order, rollbacks, replay
paused and resumed, a client position the standby has not replayed, and a
promotion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from sse import envelope, open_stream
from support import StartServer, eventually, position_of, publish, replicated, request

from sse_stream.core.stats import ReplayClock, StandbyLag
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.db.listener import APPLICATION_NAME as LISTENER_NAME
from sse_stream.web.handlers import HUB, STORE

POLL = {"standby_poll": 0.01, "heartbeat": 0.5}


@pytest.fixture
async def replica(standby: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(standby.dsn)
    yield connection
    try:
        await connection.execute("SELECT pg_wal_replay_resume()")
    except asyncpg.PostgresError:
        pass  # promoted meanwhile
    await connection.close()


def test_the_replay_clock_counts_from_when_the_primary_stood_where_the_standby_is() -> None:
    clock = ReplayClock()
    assert clock.lag(0.0, True, 100, 100) == StandbyLag(True, 0.0, 0)
    assert clock.lag(1.0, True, 100, 150) == StandbyLag(True, 1.0, 50)  # since t=0, at 100
    assert clock.lag(2.0, True, 150, 180) == StandbyLag(True, 1.0, 30)  # since t=1, at 150
    assert clock.lag(9.0, True, 150, 400) == StandbyLag(True, 8.0, 250)
    assert clock.lag(10.0, True, 400, 400) == StandbyLag(True, 0.0, 0)
    assert clock.lag(11.0, False, 5, 5) == StandbyLag(False, 0.0, 0)
    # Past what it keeps: at least as old as the oldest sample.
    short = ReplayClock(keep=2)
    for at in range(5):
        lag = short.lag(float(at), True, 0, 10 + at)
    assert lag == StandbyLag(True, 1.0, 14)


async def on_standby(start_server: StartServer, standby: EmbeddedPostgres,
                     **settings: object) -> TestServer:
    server = await start_server(live_dsn=standby.dsn, **{**POLL, **settings})
    return server


async def test_the_standby_serves_the_live_path_and_misses_nothing(
        start_server: StartServer, standby: EmbeddedPostgres, dsn: str,
        db: asyncpg.Connection, replica: asyncpg.Connection, stream: str) -> None:
    server = await on_standby(start_server, standby)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        # Commits out of id order and a rollback: a long transaction takes
        # its xid first, a short one commits in between, one rolls back.
        early = await asyncpg.connect(dsn)
        try:
            long = early.transaction()
            await long.start()
            first = await publish(early, stream, "t", {"n": 1})
            second = await publish(db, stream, "t", {"n": 2})
            undone = db.transaction()
            await undone.start()
            await publish(db, stream, "t", {"n": "rolled back"})
            await undone.rollback()
            await long.commit()
        finally:
            await early.close()
        third = await publish(db, stream, "t", {"n": 3})
        marker = await publish(db, stream, "t", {"n": 4})
        got = [envelope(m)["id"] for m in await sse.take(4)]
    # Stream order is commit-safe: the long transaction's event first (its
    # xid is older), each once, the rolled-back one never.
    assert got == [first, second, third, marker]
    hub, store = server.app[HUB], server.app[STORE]
    assert hub.polling and store.live_recovery and hub.stats.probes > 0
    # The primary: no LISTEN of this server.
    listening = await db.fetchval("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE application_name = $1", LISTENER_NAME)
    assert listening == 0
    assert await replica.fetchval("SELECT pg_is_in_recovery()")


async def test_replay_paused_then_resumed(start_server: StartServer, standby: EmbeddedPostgres,
                                          db: asyncpg.Connection, replica: asyncpg.Connection,
                                          stream: str) -> None:
    server = await on_standby(start_server, standby)
    before = await publish(db, stream, "t", {"n": 0})
    await replicated(replica, stream, 1)
    start = await position_of(db, before)
    url = str(server.make_url(f"/streams/{stream}?last_event_id={start}"))
    async with open_stream(url) as sse:
        await replica.execute("SELECT pg_wal_replay_pause()")
        ids = [await publish(db, stream, "t", {"n": n}) for n in range(1, 6)]
        probes = server.app[HUB].stats.probes
        await eventually(lambda: server.app[HUB].stats.probes > probes + 5)
        await replica.execute("SELECT pg_wal_replay_resume()")
        got = [envelope(m)["id"] for m in await sse.take(5)]
    assert got == ids


async def test_a_position_the_standby_has_not_replayed_is_waited_for(
        start_server: StartServer, standby: EmbeddedPostgres, db: asyncpg.Connection,
        replica: asyncpg.Connection, stream: str) -> None:
    server = await on_standby(start_server, standby, standby_wait=0.2)
    await replica.execute("SELECT pg_wal_replay_pause()")
    # A client read these from a server on the primary (or a fresher standby).
    seen = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
    position = await position_of(db, seen[-1])
    # A page after it: waited for a bounded time, then 503, never 409.
    status, headers, body = await request(server, "GET",
                                          f"/streams/{stream}/events?after={position}")
    assert status == 503 and body["param"] == "after" and headers["Retry-After"] == "1"
    url = str(server.make_url(f"/streams/{stream}"))
    async with open_stream(url, headers={"Last-Event-ID": position}) as sse:
        later = await publish(db, stream, "t", {"n": 3})
        await eventually(lambda: server.app[HUB].stats.standby_waits > 0)
        await replica.execute("SELECT pg_wal_replay_resume()")
        # No sse.gap: the next thing the stream carries is the next event.
        message = await sse.next()
    assert message.event == "t" and envelope(message)["id"] == later
    status, _, page = await request(server, "GET", f"/streams/{stream}/events?after={position}")
    assert status == 200 and [e["id"] for e in page["events"]] == [later]
    # A position no server ever handed out is still a replaced cluster: 409.
    status, _, body = await request(server, "GET",
                                    f"/streams/{stream}/events?after=999999999-1")
    assert status == 409 and body["param"] == "after"


async def test_readyz_drains_a_lagging_standby(start_server: StartServer,
                                               standby: EmbeddedPostgres,
                                               db: asyncpg.Connection,
                                               replica: asyncpg.Connection, stream: str) -> None:
    server = await on_standby(start_server, standby, max_standby_lag=0.3)

    async def ready() -> bool:
        status, _, body = await request(server, "GET", "/readyz")
        return status == 200 and body["standby"]["in_recovery"] is True

    await eventually(ready, timeout=20)
    await replica.execute("SELECT pg_wal_replay_pause()")

    async def drained() -> bool:
        await publish(db, stream, "t", {})  # WAL the standby receives, not replays
        status, _, body = await request(server, "GET", "/readyz")
        return status == 503

    await eventually(drained, timeout=20)
    status, _, body = await request(server, "GET", "/readyz")
    assert "replay lags" in body["detail"] and body["standby"]["lag_bytes"] > 0
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            metrics = await response.text()
    assert "sse_stream_standby_replay_lag_seconds" in metrics
    assert "sse_stream_live_source_in_recovery 1.0" in metrics
    await replica.execute("SELECT pg_wal_replay_resume()")

    await eventually(ready, timeout=20)


async def test_a_promoted_standby_keeps_every_promise(start_server: StartServer,
                                                     standby: EmbeddedPostgres,
                                                     db: asyncpg.Connection,
                                                     replica: asyncpg.Connection,
                                                     stream: str) -> None:
    server = await on_standby(start_server, standby)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        before = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        await replicated(replica, stream, 3)
        assert [envelope(m)["id"] for m in await sse.take(3)] == before
        # Failover: the standby becomes the primary; writers move to it.
        await asyncio.to_thread(standby.promote)
        await eventually(lambda: not server.app[STORE].live_recovery or
                         not server.app[HUB].polling)
        after = [await publish(replica, stream, "t", {"n": n}) for n in range(3, 6)]
        got = [envelope(m)["id"] for m in await sse.take(3)]
    assert got == after
    assert server.app[HUB].stats.gaps == 0
