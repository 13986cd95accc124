"""Faults mid-stream while writers publish; every client ends with exactly
the committed events, in the table's (xid, id) order.

Each test runs writers (short transactions, some rolled back, riding out
outages) and resuming clients (`load.Follower`) against a running server,
applies a fault, lets the writers go on, then compares what every client
received with the table.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest
from load import Follower, Writer
from raw import RawStream
from sse import envelope, open_stream
from support import Serve, StartServer, eventually, publish, stalled, table_ids

from sse_stream.db.embedded import EmbeddedPostgres, free_port
from sse_stream.db.listener import APPLICATION_NAME as LISTENER_NAME
from sse_stream.db.store import APPLICATION_NAME as POOL_NAME
from sse_stream.web.handlers import HUB, LISTENER


async def terminate_backends(dsn: str, application_name: str) -> int:
    """pg_terminate_backend on every backend with that application_name."""
    connection = await asyncpg.connect(dsn)
    try:
        killed: int = await connection.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()", application_name)
    finally:
        await connection.close()
    return killed


async def _progress(writers: list[Writer], transactions: int, timeout: float = 30) -> None:
    """Wait (bounded) until the writers have committed or rolled back more."""
    start = sum(w.transactions for w in writers)
    await eventually(lambda: sum(w.transactions for w in writers) >= start + transactions,
                      timeout)


def _start_load(url: str, dsn: str, stream: str,
                flaky_seed: int) -> tuple[Follower, Follower, Follower, list[Writer]]:
    """Three writers, and three followers: one that stays, one that hangs up
    by itself, one filtered by type."""
    return (Follower(url), Follower(url, seed=flaky_seed, hang_up=3), Follower(url + "?type=a"),
            [Writer(dsn, stream, seed).start() for seed in range(3)])


async def _check(dsn: str, stream: str, followers: list[Follower],
                 typed: Follower | None = None) -> list[int]:
    everything = await table_ids(dsn, stream)
    assert len(everything) > 40
    for follower in followers:
        assert await follower.finish(len(everything)) == everything
    if typed is not None:
        only_a = await table_ids(dsn, stream, "a")
        assert await typed.finish(len(only_a)) == only_a
    return everything


@pytest.mark.parametrize("fault", ["postgres_restart", "pool_killed", "listener_killed"])
async def test_database_fault_mid_stream(fault: str, request: pytest.FixtureRequest,
                                         start_server: StartServer, dsn: str,
                                         stream: str) -> None:
    embedded: EmbeddedPostgres | None = (
        request.getfixturevalue("embedded") if fault == "postgres_restart" else None)
    server = await start_server(heartbeat=0.3, poll_interval=0.5)
    hub, listener = server.app[HUB], server.app[LISTENER]
    await eventually(lambda: hub.ready and listener.connected)
    url = str(server.make_url(f"/streams/{stream}"))
    steady, flaky, typed, writers = _start_load(url, dsn, stream, flaky_seed=7)
    try:
        await eventually(lambda: len(steady.ids) >= 20)
        if fault == "postgres_restart":
            assert embedded is not None
            await asyncio.to_thread(embedded.restart, "fast")
            await _progress(writers, 20)
        else:
            name = POOL_NAME if fault == "pool_killed" else LISTENER_NAME
            for _ in range(3):
                assert await terminate_backends(dsn, name) >= 1
                await _progress(writers, 10)
                await eventually(lambda: hub.ready and listener.connected)
    finally:
        for writer in writers:
            await writer.finish()
    await _check(dsn, stream, [steady, flaky], typed)
    # The database fault never closed the stream of a client that stayed.
    assert steady.connections == 1
    assert flaky.connections > 3
    if fault == "listener_killed":
        assert listener.reconnects >= 3


async def test_server_killed_mid_stream(serve: Serve, dsn: str, stream: str) -> None:
    port = free_port()
    server = serve(port=port)
    await server.ready()
    url = f"{server.url}/streams/{stream}"
    steady, flaky, typed, writers = _start_load(url, dsn, stream, flaky_seed=3)
    try:
        await eventually(lambda: len(steady.ids) >= 20)
        server.process.kill()
        assert await asyncio.to_thread(server.process.wait, 10) == -9
        # Committed while no server runs: the clients get them on resuming.
        await _progress(writers, 20)
        restarted = serve(port=port)
        await restarted.ready()
        await _progress(writers, 20)
    finally:
        for writer in writers:
            await writer.finish()
    await _check(dsn, stream, [steady, flaky], typed)
    assert steady.connections >= 2 and typed.connections >= 2


async def _read_to_end(url: str, headers: dict[str, str] | None = None) -> RawStream:
    """A stream read until the server ends it (a `live=false` replay)."""
    stream = await RawStream.open(url, headers)
    try:
        await stream.read_until(lambda: stream.ended)
    except EOFError:
        pass
    finally:
        stream.close()
    return stream


async def test_disconnect_at_every_byte_of_the_framing(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    """Hang up after N bytes for every N across the first frames, then resume."""
    server = await start_server()
    hub = server.app[HUB]
    ids = [await publish(db, stream, "t", {"n": n, "s": "é€😀"}) for n in range(3)]
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0"))
    whole = await _read_to_end(url + "&live=false")
    assert [envelope(m)["id"] for m in whole.messages] == ids
    # The retry line and the three event frames (the stream then ends with
    # a bare id line at the snapshot horizon, which may move between runs).
    framed = whole.body[:whole.body.rindex(b"\n\n", 0, whole.body.rindex(b"id: ")) + 2]
    assert framed.startswith(b"retry: ") and framed.count(b"\nevent: ") == 3
    for cut in range(len(framed) + 1):
        first = await RawStream.open(url)
        try:
            await first.read_exactly(cut)
        finally:
            first.close()
        assert first.body[:cut] == framed[:cut]
        received = [envelope(m)["id"] for m in first.messages]
        last_id = first.parser.last_event_id
        rest = await _read_to_end(url + "&live=false",
                                  {"Last-Event-ID": last_id} if last_id else None)
        assert received + [envelope(m)["id"] for m in rest.messages] == ids, cut
    # Every stream cut short was cleaned up.
    await eventually(lambda: not hub.subscriptions)


async def test_network_stall_longer_than_the_heartbeat(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    """The client stops reading for many heartbeats while events flow."""
    server = await start_server(heartbeat=0.2)
    hub = server.app[HUB]
    client, subscription = await stalled(hub, str(server.make_url(f"/streams/{stream}")), 8192)
    try:
        loop = asyncio.get_running_loop()
        stalled_until = loop.time() + 1.5  # more than seven heartbeats
        ids: list[int] = []
        while loop.time() < stalled_until:
            for _ in range(20):
                ids.append(await publish(db, stream, "t", {"pad": "x" * 500}))
            await asyncio.sleep(0.1)
        assert subscription.response.pending_bytes() > 0  # the stall is real
        assert len(client.messages) == 0
        await client.read_until(lambda: len(client.messages) >= len(ids), timeout=30)
        assert [envelope(m)["id"] for m in client.messages] == ids
        assert ids == await table_ids(db, stream)
        # Still open and still live: keepalives come during the silence after.
        comments = client.parser.comments
        await client.read_until(lambda: client.parser.comments >= comments + 2)
        assert subscription.joined and not client.ended
    finally:
        client.close()


async def test_listener_survives_kills_during_its_health_check(
        start_server: StartServer, dsn: str, db: asyncpg.Connection, stream: str) -> None:
    """Killed again and again, some kills landing on its health check."""
    # A health check every 2 ms, and no polling: only the doorbell delivers.
    server = await start_server(listener_keepalive=0.002, poll_interval=60)
    listener = server.app[LISTENER]
    rng = random.Random(5)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        for _ in range(60):
            await eventually(lambda: listener.connected)
            await asyncio.sleep(rng.uniform(0, 0.01))
            await terminate_backends(dsn, LISTENER_NAME)
        await eventually(lambda: listener.connected)
        first = await publish(db, stream, "t", {})
        assert envelope(await sse.next(timeout=5))["id"] == first
    assert listener.reconnects >= 30
