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
import socket

import asyncpg
import pytest

from conftest import StartServer, publish
from load import Follower, Writer, table_ids
from raw import RawStream
from sse import envelope, open_stream
from sse_stream.embedded import EmbeddedPostgres
from sse_stream.handlers import HUB, LISTENER
from sse_stream.listener import APPLICATION_NAME as LISTENER_NAME
from sse_stream.store import APPLICATION_NAME as POOL_NAME
from test_resilience import _eventually
from sse_stream.embedded import free_port
from test_serve import ServerProcess, serve  # noqa: F401 (the serve fixture)


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
    await _eventually(lambda: sum(w.transactions for w in writers) >= start + transactions,
                      timeout)


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
    await _eventually(lambda: hub.ready and listener.connected)
    url = str(server.make_url(f"/streams/{stream}"))
    steady = Follower(url)
    flaky = Follower(url, seed=7, hang_up=3)
    typed = Follower(url + "?type=a")
    writers = [Writer(dsn, stream, seed).start() for seed in range(3)]
    try:
        await _eventually(lambda: len(steady.ids) >= 20)
        if fault == "postgres_restart":
            assert embedded is not None
            await asyncio.to_thread(embedded.restart, "fast")
            await _progress(writers, 20)
        else:
            name = POOL_NAME if fault == "pool_killed" else LISTENER_NAME
            for _ in range(3):
                assert await terminate_backends(dsn, name) >= 1
                await _progress(writers, 10)
                await _eventually(lambda: hub.ready and listener.connected)
    finally:
        for writer in writers:
            await writer.finish()
    await _check(dsn, stream, [steady, flaky], typed)
    # The database fault never closed the stream of a client that stayed.
    assert steady.connections == 1
    assert flaky.connections > 3
    if fault == "listener_killed":
        assert listener.reconnects >= 3


async def test_server_killed_mid_stream(serve, dsn: str, stream: str) -> None:  # noqa: F811
    port = free_port()
    server: ServerProcess = serve(port)
    await server.ready()
    url = f"{server.url}/streams/{stream}"
    steady = Follower(url)
    flaky = Follower(url, seed=3, hang_up=3)
    typed = Follower(url + "?type=a")
    writers = [Writer(dsn, stream, seed).start() for seed in range(3)]
    try:
        await _eventually(lambda: len(steady.ids) >= 20)
        server.process.kill()
        assert await asyncio.to_thread(server.process.wait, 10) == -9
        # Committed while no server runs: the clients get them on resuming.
        await _progress(writers, 20)
        restarted: ServerProcess = serve(port)
        await restarted.ready()
        await _progress(writers, 20)
    finally:
        for writer in writers:
            await writer.finish()
    await _check(dsn, stream, [steady, flaky], typed)
    assert steady.connections >= 2 and typed.connections >= 2


async def test_disconnect_at_every_byte_of_the_framing(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    """Hang up after N bytes for every N across the first frames, then resume."""
    server = await start_server()
    hub = server.app[HUB]
    ids = [await publish(db, stream, "t", {"n": n, "s": "é€😀"}) for n in range(3)]
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0"))
    whole = await RawStream.open(url + "&live=false")
    try:
        await whole.read_until(lambda: whole.ended)
    except EOFError:
        pass
    finally:
        whole.close()
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
        rest = await RawStream.open(url + "&live=false",
                                    {"Last-Event-ID": last_id} if last_id else None)
        try:
            await rest.read_until(lambda: rest.ended)
        except EOFError:
            pass
        finally:
            rest.close()
        assert received + [envelope(m)["id"] for m in rest.messages] == ids, cut
    # Every stream cut short was cleaned up.
    await _eventually(lambda: not hub.subscriptions)


async def test_network_stall_longer_than_the_heartbeat(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    """The client stops reading for many heartbeats while events flow."""
    server = await start_server(heartbeat=0.2)
    hub = server.app[HUB]
    client = await RawStream.open(str(server.make_url(f"/streams/{stream}")), rcvbuf=4096)
    try:
        await client.read_until(lambda: client.parser.last_event_id != "")
        await _eventually(lambda: len(hub.subscriptions) == 1)
        subscription = next(iter(hub.subscriptions))
        transport = subscription.response._req.transport  # type: ignore[union-attr]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
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
        assert ids == [row[0] for row in await db.fetch(
            "SELECT id FROM sse_stream.events WHERE stream = $1 ORDER BY xid, id", stream)]
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
            await _eventually(lambda: listener.connected)
            await asyncio.sleep(rng.uniform(0, 0.01))
            await terminate_backends(dsn, LISTENER_NAME)
        await _eventually(lambda: listener.connected)
        first = await publish(db, stream, "t", {})
        assert envelope(await sse.next(timeout=5))["id"] == first
    assert listener.reconnects >= 30
