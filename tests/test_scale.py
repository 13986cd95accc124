"""Small correctness versions of the benchmarks: fan-out, churn, many workers.

No numbers are asserted here (benchmarks/run.py measures them); these check
that the paths the benchmarks load behave: every subscriber gets every event
once and in order, clients that keep reconnecting with Last-Event-ID lose and
repeat nothing, and `serve --workers 2` serves from both processes and stops
both on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import asyncpg
from sse import Stream, envelope, open_stream
from support import Serve, StartServer, joined

from sse_stream.db.embedded import free_port

PUBLISH_RANGE = """
INSERT INTO sse_stream.events (stream, type, data)
SELECT $1, 'tick', jsonb_build_object('n', n) FROM generate_series($2::int, $3::int) AS n
RETURNING id
"""


async def publish_range(db: asyncpg.Connection, stream: str, first: int, last: int) -> list[int]:
    """Events n = first..last in one transaction; their ids in stream order."""
    rows = await db.fetch(PUBLISH_RANGE, stream, first, last)
    return sorted(row["id"] for row in rows)


async def test_fanout_every_subscriber_gets_every_event_once_in_order(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    subscribers, batches, per_batch = 50, 20, 10
    async with aiohttp.ClientSession() as session, AsyncExitStack() as opened:
        streams = [await opened.enter_async_context(open_stream(url, session=session))
                   for _ in range(subscribers)]
        await asyncio.gather(*(joined(sse) for sse in streams))
        published: list[int] = []
        for batch in range(batches):
            first = batch * per_batch
            published += await publish_range(db, stream, first, first + per_batch - 1)
        received = await asyncio.gather(*(sse.take(len(published), timeout=20)
                                          for sse in streams))
    assert len(published) == batches * per_batch
    for messages in received:
        assert [envelope(m)["id"] for m in messages] == published
        assert [envelope(m)["data"]["n"] for m in messages] == list(range(len(published)))
    # Nothing more arrives: no subscriber got an event twice.
    assert all(not sse.pending for sse in streams)


async def test_churn_clients_reconnecting_with_last_event_id_lose_nothing(
        start_server: StartServer, db: asyncpg.Connection, dsn: str, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    churners, total = 8, 300
    rng = random.Random(6)
    published: list[int] = []
    done = asyncio.Event()

    async def publisher(connection: asyncpg.Connection) -> None:
        n = 0
        while n < total:
            size = rng.randint(1, 7)
            last = min(total, n + size) - 1
            published.extend(await publish_range(connection, stream, n, last))
            n = last + 1
            await asyncio.sleep(0.005)
        done.set()

    async def churner(start_id: str) -> tuple[list[int], int]:
        """Reconnect with Last-Event-ID after a few events until the last one is seen."""
        seen: list[int] = []
        last_id, connects = start_id, 0

        def complete() -> bool:
            return done.is_set() and bool(seen) and seen[-1] == published[-1]

        async def next_id(sse: Stream) -> int | None:
            # The last event may arrive before the publisher has said it was
            # the last: wait for the next one or for `complete`, bounded.
            waiting = asyncio.ensure_future(sse.next(timeout=20))
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=0.05)
                if not waiting.done() and complete():
                    waiting.cancel()
                    return None
            event_id: int = envelope(waiting.result())["id"]
            return event_id

        async with aiohttp.ClientSession() as session:
            while not complete():
                connects += 1
                async with open_stream(url, {"Last-Event-ID": last_id}, session) as sse:
                    for _ in range(rng.randint(1, 25)):
                        event_id = await next_id(sse)
                        if event_id is None:
                            break
                        seen.append(event_id)
                    if sse.last_event_id:
                        last_id = sse.last_event_id
        return seen, connects

    async with aiohttp.ClientSession() as session:
        # Each churner starts where a live-only stream opened before any event.
        async with open_stream(url, session=session) as first:
            await joined(first)
            start_id = first.parser.last_event_id
    async with open_stream(url) as steady:
        await joined(steady)
        connection = await asyncpg.connect(dsn)
        try:
            tasks = [asyncio.create_task(churner(start_id)) for _ in range(churners)]
            await asyncio.wait_for(publisher(connection), 30)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            await connection.close()
        steady_ids = [envelope(m)["id"] for m in await steady.take(total, timeout=20)]
    assert len(published) == total
    assert steady_ids == published
    for seen, connects in results:
        assert seen == published
        assert connects > 1


ESTABLISHED, LISTEN = "01", "0A"


def _socket_inodes(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets in `state` whose local port is `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, found, inode = parts[1], parts[3], parts[9]
            if found == state and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _workers(pid: int, port: int) -> list[int]:
    """The child processes of `pid` that listen on `port`."""
    listening = _socket_inodes(port, LISTEN)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if _sockets_held(int(child), listening)]


def _sockets_held(pid: int, inodes: set[str]) -> int:
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


async def test_serve_two_workers_share_the_port_and_stop_on_sigterm(
        serve: Serve, db: asyncpg.Connection, stream: str) -> None:
    port = free_port()
    server = serve("--workers", "2", port=port)
    try:
        await server.ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(workers := _workers(server.process.pid, port)) < 2:
            assert loop.time() < deadline, "two worker processes did not start"
            await asyncio.sleep(0.05)
        url = f"{server.url}/streams/{stream}"
        async with aiohttp.ClientSession() as session, AsyncExitStack() as opened:
            streams = [await opened.enter_async_context(open_stream(url, session=session))
                       for _ in range(20)]
            await asyncio.gather(*(joined(sse) for sse in streams))
            inodes = _socket_inodes(port, ESTABLISHED)
            held = {pid: _sockets_held(pid, inodes) for pid in workers}
            published = await publish_range(db, stream, 1, 5)
            received = await asyncio.gather(*(sse.take(5, timeout=20) for sse in streams))
        # SO_REUSEPORT spreads connections by hash: with 20 of them, both
        # workers holding none is a 2**-19 chance.
        assert all(count > 0 for count in held.values()), held
        assert sum(held.values()) == 20
        for messages in received:
            assert [envelope(m)["id"] for m in messages] == published
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        server.stop()
