"""The gap test: concurrent writers whose commits land out of id order.

Eight writer connections publish in transactions that wait a random few
milliseconds (pg_sleep, inside the transaction) before they commit, and some
roll back. A live subscriber and one that disconnects every few events and
resumes with Last-Event-ID must both end with exactly the committed events,
once each, in the same order, which is the table's (xid, id) order.
"""

from __future__ import annotations

import asyncio

import pytest
from load import Follower, Writer
from sse import envelope, open_stream
from support import StartServer, table_ids

WRITERS = 8
TRANSACTIONS = 30  # per writer; 1 to 3 events each, about 20% rolled back


@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_no_gaps_under_concurrent_writers(start_server: StartServer, dsn: str, stream: str, seed: int) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    total: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    live: list[int] = []

    async with open_stream(url) as live_sse:
        await live_sse.until(lambda parser: parser.last_event_id != "")
        start_id = live_sse.parser.last_event_id

        async def read_live() -> None:
            while not total.done() or len(live) < total.result():
                try:
                    live.append(envelope(await live_sse.next(timeout=0.5))["id"])
                except TimeoutError:
                    pass  # check whether the writers are done, then read on

        reader = asyncio.create_task(read_live())
        # Reads a few events, hangs up, resumes with Last-Event-ID (which
        # includes bare id lines, as a browser's last event id does).
        resuming = Follower(url, start=start_id, seed=seed, hang_up_events=7, pause=0)
        writers = [Writer(dsn, stream, seed * 100 + w, transactions=TRANSACTIONS).start()
                   for w in range(WRITERS)]
        for writer in writers:
            await writer.wait()
        committed = [id_ for writer in writers for id_ in writer.committed]
        total.set_result(len(committed))
        resumed = await resuming.finish(len(committed))
        await asyncio.wait_for(reader, 60)

    assert len(committed) > 200
    assert sorted(live) == sorted(committed) and len(set(live)) == len(live)
    assert resumed == live
    assert live == await table_ids(dsn, stream)
    assert resuming.connections > 10
    # Commits really did land out of id order, or the test proves nothing.
    assert live != sorted(live)
