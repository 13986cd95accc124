"""The core stream: tail, resume, start positions, patterns, framing, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import asyncpg
from sse import envelope, open_stream
from support import StartServer, publish


async def test_tail_receives_published_events_in_order(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        # The bare id line before any event gives the client a resume point.
        await sse.until(lambda parser: parser.last_event_id != "")
        ids = [await publish(db, stream, "order.created", {"n": n}) for n in range(5)]
        messages = await sse.take(5)
    assert [envelope(m)["id"] for m in messages] == ids
    assert [m.event for m in messages] == ["order.created"] * 5
    first = envelope(messages[0])
    assert set(first) == {"id", "position", "stream", "type", "data", "created_at"}
    assert first["stream"] == stream and first["data"] == {"n": 0}
    assert first["created_at"].endswith("Z")
    # The id: line is the position, and the envelope carries the same one.
    assert all(m.last_event_id == envelope(m)["position"] for m in messages)


async def test_headers_retry_and_framing(start_server: StartServer, db: asyncpg.Connection,
                                         stream: str) -> None:
    server = await start_server(retry=1234)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(f"/streams/{stream}")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Accel-Buffering"] == "no"
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            assert first == b"retry: 1234\n\n"
            await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)  # the bare id
            event_id = await publish(db, stream, "a.b", {"text": "line1\nline2\r\n"})
            frame = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    lines = frame.decode().split("\n")
    assert lines[0].startswith("id: ") and lines[1] == "event: a.b"
    assert lines[2].startswith("data: {") and lines[3:] == ["", ""]
    assert f'"id":{event_id},' in lines[2]


async def test_resume_with_last_event_id_loses_nothing(start_server: StartServer,
                                                       db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    async with open_stream(url) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        first = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        got = await sse.take(3)
        resume_from = sse.parser.last_event_id
    # Published while nobody was connected.
    missed = [await publish(db, stream, "t", {"n": n}) for n in range(3, 6)]
    async with open_stream(url, headers={"Last-Event-ID": resume_from}) as sse:
        replayed = await sse.take(3)
        later = await publish(db, stream, "t", {"n": 6})
        live = await sse.next()
    assert [envelope(m)["id"] for m in got] == first
    assert [envelope(m)["id"] for m in replayed] == missed
    assert envelope(live)["id"] == later


async def test_header_wins_over_query(start_server: StartServer, db: asyncpg.Connection,
                                      stream: str) -> None:
    server = await start_server()
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(4)]
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(f"/streams/{stream}/events")) as response:
            page = await response.json()
    positions = [e["position"] for e in page["events"]]
    assert [e["id"] for e in page["events"]] == ids
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0"))
    async with open_stream(url, headers={"Last-Event-ID": positions[1]}) as sse:
        messages = await sse.take(2)
    assert [envelope(m)["id"] for m in messages] == ids[2:]


async def test_replay_from_zero_then_live(start_server: StartServer, db: asyncpg.Connection,
                                          stream: str) -> None:
    server = await start_server(page_size=3)  # several pages of replay
    before = [await publish(db, stream, "t", {"n": n}) for n in range(10)]
    async with open_stream(str(server.make_url(f"/streams/{stream}?last_event_id=0"))) as sse:
        replayed = await sse.take(10)
        after = [await publish(db, stream, "t", {"n": n}) for n in range(10, 13)]
        live = await sse.take(3)
    assert [envelope(m)["id"] for m in replayed + live] == before + after


async def test_live_false_replays_then_ends(start_server: StartServer, db: asyncpg.Connection,
                                            stream: str) -> None:
    server = await start_server()
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(5)]
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
    async with open_stream(url) as sse:
        messages = await sse.rest()
    assert [envelope(m)["id"] for m in messages] == ids


async def test_patterns_and_comma_lists(start_server: StartServer, db: asyncpg.Connection,
                                        stream: str) -> None:
    server = await start_server()
    names = [f"{stream}.a", f"{stream}.b", f"{stream}.a.x", f"{stream}x", f"other{stream}"]
    subscriptions = {
        f"{stream}.*": [f"{stream}.a", f"{stream}.b"],
        f"{stream}.>": [f"{stream}.a", f"{stream}.b", f"{stream}.a.x"],
        f"{stream}.a,{stream}x,{stream}.a": [f"{stream}.a", f"{stream}x"],
        f"{stream}.*.x,other{stream}": [f"{stream}.a.x", f"other{stream}"],
    }
    async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
        streams = {}
        for spec in subscriptions:
            streams[spec] = await stack.enter_async_context(
                open_stream(str(server.make_url(f"/streams/{spec}")), session=session))
            await streams[spec].until(lambda parser: parser.last_event_id != "")
        for name in names:
            await publish(db, name, "t", {"name": name})
        # A sentinel on every stream marks the end of what each should see.
        for spec, sse in streams.items():
            expected = subscriptions[spec]
            got = [envelope(m)["stream"] for m in await sse.take(len(expected))]
            assert got == expected, spec
        await publish(db, f"{stream}.a", "t", {"name": "last"})
        for spec in (f"{stream}.*", f"{stream}.>"):
            assert envelope(await streams[spec].next())["data"] == {"name": "last"}


async def test_heartbeat_during_silence(start_server: StartServer, stream: str) -> None:
    server = await start_server(heartbeat=0.2)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sse.until(lambda parser: parser.comments >= 3, timeout=5)
        elapsed = loop.time() - started
    # Three keepalives at most 0.2 s apart each (with scheduling slack).
    assert 0.3 <= elapsed < 2.0


async def test_live_only_starts_after_subscription(start_server: StartServer,
                                                   db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    await publish(db, stream, "t", {"old": True})
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        new = await publish(db, stream, "t", {"old": False})
        message = await sse.next()
    assert envelope(message)["id"] == new


async def test_an_event_published_as_the_stream_opens_is_delivered(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    """New events only: the start position is fixed before the headers go
    out, so an event published as soon as the stream is open (a browser's
    `open` handler) comes after it. A long coalescing window delays the read
    that fixes the position, which widened the window for the race."""
    server = await start_server(coalesce_window=0.5)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        event_id = await publish(db, stream, "mine", {"n": 1})
        messages = await sse.take(1, timeout=5)
    assert envelope(messages[0])["id"] == event_id
