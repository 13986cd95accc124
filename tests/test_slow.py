"""A slow consumer loses nothing and delays nobody; its buffer stays bounded.

One client with a tiny receive window stops reading while 2 MB of events
flow. The fast clients beside it get every event while it is paused. The
server never holds more than `max_pending` plus one page for it: it is moved
to catching up from the table, and once it reads again it gets every event
exactly once, in order, and rejoins the live flow.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import aiohttp
import asyncpg
from raw import RawStream
from sse import envelope, open_stream
from support import StartServer, eventually, stalled, table_ids

from sse_stream.web.handlers import HUB

MAX_PENDING = 64 * 1024  # the transport's own high-water mark: drain() waits below it
PAGE_SIZE = 100
TRANSACTIONS, PER_TRANSACTION, PAD = 40, 50, 1000


async def publish_batch(connection: asyncpg.Connection, stream: str, first: int, count: int,
                        pad: int = 0) -> list[int]:
    """`count` events in one transaction, data {"n": first.., "pad": "x" * pad}."""
    rows = await connection.fetch(
        "SELECT sse_stream.publish($1, 't', jsonb_build_object('n', g, 'pad', repeat('x', $4)))"
        " FROM generate_series($2::int, $3::int) g", stream, first, first + count - 1, pad)
    return [row[0] for row in rows]


def event_ids(stream: RawStream) -> list[int]:
    return [envelope(message)["id"] for message in stream.messages]


async def test_slow_consumer_is_bounded_and_gets_everything(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(max_pending=MAX_PENDING, page_size=PAGE_SIZE, heartbeat=0.5)
    hub = server.app[HUB]
    url = str(server.make_url(f"/streams/{stream}"))
    slow, slow_subscription = await stalled(hub, url, 16384)
    try:
        total = TRANSACTIONS * PER_TRANSACTION
        async with aiohttp.ClientSession() as session, AsyncExitStack() as streams:
            fast_streams = [await streams.enter_async_context(open_stream(url, session=session))
                            for _ in range(3)]
            for sse in fast_streams:
                await sse.until(lambda parser: parser.last_event_id != "")

            peak = 0
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, slow_subscription.response.pending_bytes())
                    await asyncio.sleep(0.001)

            async def read_all(sse: object) -> list[int]:
                return [envelope(m)["id"] for m in await sse.take(total, timeout=30)]  # type: ignore[attr-defined]

            sampler = asyncio.create_task(sample())
            readers = [asyncio.create_task(read_all(sse)) for sse in fast_streams]
            published: list[int] = []
            loop = asyncio.get_running_loop()
            for n in range(TRANSACTIONS):
                published += await publish_batch(db, stream, n * PER_TRANSACTION,
                                                 PER_TRANSACTION, PAD)
            done_publishing = loop.time()
            # The slow client reads nothing meanwhile: the fast ones get it all.
            fast_ids = await asyncio.wait_for(asyncio.gather(*readers), 30)
            fast_latency = loop.time() - done_publishing
            sampling = False
            await sampler
            order = await table_ids(db, stream)
            assert order == sorted(published, key=order.index) and len(order) == total
            for ids in fast_ids:
                assert ids == order
            assert fast_latency < 5, fast_latency
            assert hub.stats.catchups >= 1
            assert not slow_subscription.joined
            assert len(slow.messages) < total
            largest_event = 1200 + len(stream)
            # It did overflow (the bound is not vacuous), and no further than one page.
            assert MAX_PENDING < peak <= MAX_PENDING + PAGE_SIZE * largest_event, peak

            # It reads again: every event, once, in order, then live again.
            await slow.read_until(lambda: len(slow.messages) >= total, timeout=60)
            assert event_ids(slow) == order
            await eventually(lambda: slow_subscription.joined)
            last = await publish_batch(db, stream, total, 1)
            await slow.read_until(lambda: len(slow.messages) > total)
            assert event_ids(slow) == order + last
            for sse in fast_streams:
                assert [envelope(m)["id"] for m in await sse.take(1)] == last
            frames = [frame for frame in slow.body.split(b"\n\n") if frame.startswith(b"id:")]
            assert max(len(frame) for frame in frames) + 2 <= largest_event
    finally:
        slow.close()
