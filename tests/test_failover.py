"""Failover to a promoted standby: positions stay valid, nothing is skipped.

A server on the primary delivers events; the standby has replayed them (what
synchronous replication guarantees at commit); the standby is promoted and
a server on it takes over. Clients resume there with the ids they held: an
event id, and the bare horizon id of a client that had received nothing.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp.test_utils import TestServer
from sse import envelope, open_stream
from support import StartServer, publish, replicated

from sse_stream.core.settings import Settings
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.web.app import create_app


async def test_failover_to_a_promoted_standby(start_server: StartServer, db: asyncpg.Connection,
                                              standby: EmbeddedPostgres,
                                              stream: str) -> None:
    old = await start_server()
    live_url = str(old.make_url(f"/streams/{stream}"))
    async with open_stream(live_url) as idle:
        await idle.until(lambda parser: parser.last_event_id != "")
        horizon_id = idle.parser.last_event_id
    before = [await publish(db, stream, "t", {"n": n}) for n in range(5)]
    async with open_stream(live_url, headers={"Last-Event-ID": horizon_id}) as sse:
        assert [envelope(m)["id"] for m in await sse.take(5)] == before
        last_id = sse.last_event_id

    replica = await asyncpg.connect(standby.dsn)
    try:
        await replicated(replica, stream, len(before))
    finally:
        await replica.close()
    await old.close()
    await asyncio.to_thread(standby.promote)

    new = TestServer(create_app(Settings(dsn=standby.dsn, heartbeat=15.0)), host="127.0.0.1")
    await new.start_server()
    try:
        primary = await asyncpg.connect(standby.dsn)
        try:
            assert not await primary.fetchval("SELECT pg_is_in_recovery()")
            after = [await publish(primary, stream, "t", {"n": n}) for n in range(5, 8)]
            order = [row[0] for row in await primary.fetch(
                "SELECT id FROM sse_stream.events WHERE stream = $1 ORDER BY xid, id", stream)]
        finally:
            await primary.close()
        assert order == before + after
        url = str(new.make_url(f"/streams/{stream}"))
        async with open_stream(url, headers={"Last-Event-ID": last_id}) as sse:
            assert [envelope(m)["id"] for m in await sse.take(3)] == after
        async with open_stream(url, headers={"Last-Event-ID": horizon_id}) as sse:
            assert [envelope(m)["id"] for m in await sse.take(8)] == before + after
        async with open_stream(url + "?last_event_id=0&live=false") as sse:
            assert [envelope(m)["id"] for m in await sse.rest()] == before + after
    finally:
        await new.close()
