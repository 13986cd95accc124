"""Retention: prune in small batches, record the pruned position, signal sse.gap."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from sse import envelope, open_stream
from support import ROOT, old_events, position_of, publish, table_ids

from sse_stream.core.settings import Settings, parse_duration
from sse_stream.web.app import create_app
from sse_stream.web.handlers import HUB

STREAM = "orders"


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400),
                                          ("45s", 45), ("2w", 1209600), ("1.5h", 5400),
                                          ("30", 30)])
def test_ages_are_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert Settings(prune_older_than=text).prune_older_than == seconds


@pytest.mark.parametrize("text", ["d", "30 days", "-1d", "1y"])
def test_a_bad_age_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


async def test_prune_command_deletes_an_old_prefix_in_batches(fresh_dsn: str) -> None:
    connection = await asyncpg.connect(fresh_dsn)
    try:
        old = await old_events(connection, STREAM, 25)
        young = await publish(connection, STREAM, "new", {})
        # Old by its timestamp but after a young event in the stream order:
        # kept, so that what is pruned is always a prefix of the order.
        late = await old_events(connection, STREAM, 1)
        result = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "sse_stream.cli", "prune", "--older-than", "30d",
            "--dsn", fresh_dsn, "--prune-batch", "10"], capture_output=True, text=True,
            timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        assert f"deleted 25 event(s) older than 30d in 3 batch(es); pruned up to {old[-1]}" \
            in result.stdout
        left = await table_ids(connection)
        assert [await position_of(connection, id_) for id_ in left] == \
            [await position_of(connection, young), late[0]]
        pruned = await connection.fetchval(
            "SELECT pruned_xid::text || '-' || pruned_id FROM sse_stream.retention")
        assert pruned == old[-1]
        # Nothing older is left: a second run deletes nothing, the position stays.
        again = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "sse_stream.cli", "prune", "--older-than", "30d",
            "--dsn", fresh_dsn], capture_output=True, text=True, timeout=120, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert f"deleted 0 event(s) older than 30d in 1 batch(es); pruned up to {old[-1]}" \
            in again.stdout
    finally:
        await connection.close()


async def test_gap_event_then_the_rest_and_no_gap_from_zero(fresh_dsn: str) -> None:
    connection = await asyncpg.connect(fresh_dsn)
    server = TestServer(create_app(Settings(dsn=fresh_dsn, prune_older_than="30d",
                                            prune_interval=0.05, prune_batch=7)),
                        host="127.0.0.1")
    try:
        old = await old_events(connection, STREAM, 20)
        kept = [await publish(connection, STREAM, "new", {"k": n}) for n in range(2)]
        await server.start_server()
        # The serving process prunes by itself, in batches of 7.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await connection.fetchval("SELECT count(*) FROM sse_stream.events") > 2:
            assert loop.time() < deadline, "not pruned"
            await asyncio.sleep(0.05)
        url = str(server.make_url(f"/streams/{STREAM}"))

        async with open_stream(url, headers={"Last-Event-ID": old[2]}) as sse:
            gap = await sse.next()
            assert gap.event == "sse.gap" and gap.last_event_id == old[-1]
            assert envelope(gap) == {"requested_after": old[2], "resumed_after": old[-1]}
            rest = await sse.take(2)
            live = await publish(connection, STREAM, "new", {"k": 2})
            rest += await sse.take(1)
        assert [envelope(m)["id"] for m in rest] == kept + [live]

        # 0 is "from the oldest retained event": no gap. Recent history read
        # at start held every event, and retention's cut as well: memory.
        hub = server.app[HUB]
        from_memory = hub.stats.replayed_recent
        async with open_stream(url + "?last_event_id=0&live=false") as sse:
            messages = await sse.rest()
        assert [m.event for m in messages] == ["new"] * 3
        assert hub.recent.whole and hub.stats.replayed_recent == from_memory + 3
        # A position after the pruned one: no gap either.
        after = await position_of(connection, kept[0])
        async with open_stream(url + f"?last_event_id={after}&live=false") as sse:
            messages = await sse.rest()
        assert [envelope(m)["id"] for m in messages] == kept[1:] + [live]

        async with aiohttp.ClientSession() as session:
            async with session.get(url + f"/events?after={old[5]}") as response:
                page = await response.json()
            async with session.get(url + "/events?after=0") as response:
                first = await response.json()
        assert page["gap"] == {"requested_after": old[5], "resumed_after": old[-1]}
        assert [e["id"] for e in page["events"]] == kept + [live]
        assert "gap" not in first and [e["id"] for e in first["events"]] == kept + [live]
    finally:
        await server.close()
        await connection.close()


@pytest.mark.parametrize("recent_bytes,whole", [(64 << 20, True), (10 * 420, False)])
async def test_a_resume_from_zero_reads_memory_when_it_holds_every_event(
        fresh_dsn: str, recent_bytes: int, whole: bool) -> None:
    """Recent history read at start is whole when the table held no more
    than it: a resume from 0 is then served from memory alone; when the
    table held more (here 30 events against room for about 10), 0 reads
    the table until memory covers the rest. Every event once, in order."""
    connection = await asyncpg.connect(fresh_dsn)
    ids = [await publish(connection, STREAM, "t", {"k": n}) for n in range(30)]
    server = TestServer(create_app(Settings(dsn=fresh_dsn, recent_bytes=recent_bytes)),
                        host="127.0.0.1")
    try:
        await server.start_server()
        hub = server.app[HUB]
        await asyncio.wait_for(hub.started.wait(), 10)
        assert hub.recent.whole is whole and (len(hub.recent) == 30) is whole
        url = str(server.make_url(f"/streams/{STREAM}?last_event_id=0&live=false"))
        async with open_stream(url) as sse:
            messages = await sse.rest()
        assert [envelope(m)["id"] for m in messages] == ids
        assert (hub.stats.replayed_recent == 30) is whole
    finally:
        await server.close()
        await connection.close()


def test_serve_refuses_a_bad_prune_age() -> None:
    with pytest.raises(ValueError):
        create_app(Settings(dsn="postgresql://127.0.0.1/x", prune_older_than="soon"))
