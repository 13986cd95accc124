"""The gap test: concurrent writers whose commits land out of id order.

Eight writer connections publish in transactions that wait a random few
milliseconds (pg_sleep, inside the transaction) before they commit, and some
roll back. A live subscriber and one that disconnects every few events and
resumes with Last-Event-ID must both end with exactly the committed events,
once each, in the same order, which is the table's (xid, id) order.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import orjson
import pytest

from conftest import StartServer
from sse import envelope, open_stream

WRITERS = 8
TRANSACTIONS = 30  # per writer; 1 to 3 events each, about 20% rolled back


async def _writer(dsn: str, stream: str, seed: int, committed: list[int]) -> None:
    rng = random.Random(seed)
    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(TRANSACTIONS):
            transaction = connection.transaction()
            await transaction.start()
            ids = []
            for _ in range(rng.randint(1, 3)):
                ids.append(await connection.fetchval(
                    "SELECT sse_stream.publish($1, 'gap.event', $2::text::jsonb)",
                    stream, orjson.dumps({"writer": seed}).decode()))
            # Hold the transaction open so commits interleave with other
            # writers' and land out of id order.
            await connection.execute("SELECT pg_sleep($1)", rng.uniform(0.0, 0.006))
            if rng.random() < 0.2:
                await transaction.rollback()
            else:
                await transaction.commit()
                committed.extend(ids)
    finally:
        await connection.close()


async def _resuming_reader(url: str, seed: int, total: asyncio.Future[int],
                           received: list[int]) -> int:
    """Read a few events, hang up, resume with Last-Event-ID; repeat until done."""
    rng = random.Random(seed)
    last_id: str | None = None
    reconnects = 0
    while not total.done() or len(received) < total.result():
        headers = {"Last-Event-ID": last_id} if last_id else {}
        async with open_stream(url, headers=headers) as sse:
            for _ in range(rng.randint(1, 7)):
                try:
                    message = await sse.next(timeout=0.5)
                except TimeoutError:
                    break  # reconnect, and see whether the writers are done
                received.append(envelope(message)["id"])
                if total.done() and len(received) >= total.result():
                    break
            # Includes bare id lines, as a browser's last event id does.
            last_id = sse.last_event_id or last_id
        reconnects += 1
    return reconnects


@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_no_gaps_under_concurrent_writers(start_server: StartServer, dsn: str, stream: str, seed: int) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    committed: list[int] = []
    total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    live: list[int] = []
    resumed: list[int] = []

    async with open_stream(url) as live_sse:
        await live_sse.until(lambda parser: parser.last_event_id != "")
        start_id = live_sse.parser.last_event_id

        async def read_live() -> None:
            while not total.done() or len(live) < total.result():
                try:
                    live.append(envelope(await live_sse.next(timeout=0.5))["id"])
                except TimeoutError:
                    pass  # check whether the writers are done, then read on

        readers = [asyncio.create_task(read_live()),
                   asyncio.create_task(_resuming_reader(
                       url + f"?last_event_id={start_id}", seed, total, resumed))]
        await asyncio.gather(*(_writer(dsn, stream, seed * 100 + w, committed)
                               for w in range(WRITERS)))
        total.set_result(len(committed))
        _, reconnects = await asyncio.wait_for(asyncio.gather(*readers), 60)

    connection = await asyncpg.connect(dsn)
    try:
        table_order = [row["id"] for row in await connection.fetch(
            "SELECT id FROM sse_stream.events WHERE stream = $1 ORDER BY xid, id", stream)]
    finally:
        await connection.close()

    assert len(committed) > 200
    assert sorted(live) == sorted(committed) and len(set(live)) == len(live)
    assert resumed == live
    assert live == table_order
    assert reconnects > 10
    # Commits really did land out of id order, or the test proves nothing.
    assert live != sorted(live)
