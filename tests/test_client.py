"""The Python client: the WHATWG parser on tricky inputs, and subscribe() against a server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import StartServer, position_of, publish

from sse_stream.client import (
    ControlEvent,
    Message,
    SseParser,
    StreamEvent,
    SubscribeError,
    subscribe,
)
from sse_stream.web.handlers import HUB

# (name, chunks fed one by one, expected messages (event, data, last_event_id),
#  expected last_event_id after all chunks)
PARSER_CASES: list[tuple[str, list[bytes], list[tuple[str, str, str]], str]] = [
    ("LF", [b"data: a\n\n"], [("message", "a", "")], ""),
    ("CR", [b"data: a\r\r"], [("message", "a", "")], ""),
    ("CRLF", [b"data: a\r\n\r\n"], [("message", "a", "")], ""),
    ("mixed line ends", [b"id: 1\rdata: a\r\ndata: b\n\r\n"], [("message", "a\nb", "1")], "1"),
    ("CR split from its LF", [b"data: a\r", b"\ndata: b\r\n\r\n"], [("message", "a\nb", "")], ""),
    ("CR, empty chunk, LF", [b"data: a\r", b"", b"\ndata: b\n\n"], [("message", "a\nb", "")], ""),
    ("CR at end then CR", [b"data: a\r", b"\r"], [("message", "a", "")], ""),
    ("BOM dropped once", [b"\xef\xbb\xbfdata: a\n\n"], [("message", "a", "")], ""),
    ("BOM split", [b"\xef", b"\xbb\xbfdata: a\n\n"], [("message", "a", "")], ""),
    ("second BOM is a field name", [b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"], [], ""),
    ("comments", [b": hello\n:\ndata: a\n: mid\n\n"], [("message", "a", "")], ""),
    ("multi-line data", [b"data: a\ndata:\ndata:  b\n\n"], [("message", "a\n\n b", "")], ""),
    ("no space after colon", [b"data:a\nevent:t\n\n"], [("t", "a", "")], ""),
    ("field with no colon", [b"data\ndata\n\n"], [("message", "\n", "")], ""),
    ("unknown field ignored", [b"foo: bar\ndata: a\n\n"], [("message", "a", "")], ""),
    ("id with NUL ignored", [b"id: 1\n\nid: 2\x003\ndata: a\n\n"], [("message", "a", "1")], "1"),
    ("empty id resets", [b"id: 1\ndata: a\n\nid\ndata: b\n\n"],
     [("message", "a", "1"), ("message", "b", "")], ""),
    ("bare id updates without dispatch", [b"id: 7\n\n"], [], "7"),
    ("id persists", [b"id: 1\ndata: a\n\ndata: b\n\n"], [("message", "a", "1"), ("message", "b", "1")], "1"),
    ("no data: no dispatch, event reset", [b"event: x\n\ndata: a\n\n"], [("message", "a", "")], ""),
    ("unfinished message dropped", [b"data: a\n\ndata: b\n"], [("message", "a", "")], ""),
    ("UTF-8 split across chunks", [b"data: \xc3", b"\xa9t\xe2\x82", b"\xac\n\n"],
     [("message", "\u00e9t\u20ac", "")], ""),
    ("4-byte UTF-8 split", [b"data: \xf0\x9f", b"\x98\x80\n\n"], [("message", "\U0001F600", "")], ""),
    ("one byte at a time", [bytes([b]) for b in b"id: 9\r\nevent: e\r\ndata: x\r\n\r\n"],
     [("e", "x", "9")], "9"),
]


@pytest.mark.parametrize("name,chunks,expected,last_id", PARSER_CASES,
                         ids=[case[0] for case in PARSER_CASES])
def test_parser(name: str, chunks: list[bytes], expected: list[tuple[str, str, str]],
                last_id: str) -> None:
    parser = SseParser()
    messages: list[Message] = []
    for chunk in chunks:
        messages.extend(parser.feed(chunk))
    assert [(m.event, m.data, m.last_event_id) for m in messages] == expected
    assert parser.last_event_id == last_id


@pytest.mark.parametrize("value,expected", [(b"3000", 3000), (b"30x", None), (b" 30", 30), (b"  30", None),
                                            (b"-1", None), (b"", None), (b"\xd9\xa3", None)])
def test_parser_retry_digits_only(value: bytes, expected: int | None) -> None:
    parser = SseParser()
    parser.feed(b"retry:" + value + b"\n\n")
    assert parser.retry == expected


def test_parser_counts_comments() -> None:
    parser = SseParser()
    parser.feed(b": keepalive\n\n: keepalive\r\n\r\n")
    assert parser.comments == 2


def _key(position: str) -> tuple[int, ...]:
    return tuple(map(int, position.split("-")))


async def _collect(events: Any, count: int, timeout: float = 10.0) -> list[Any]:
    found: list[Any] = []

    async def run() -> None:
        async for event in events:
            found.append(event)
            if len(found) == count:
                return

    await asyncio.wait_for(run(), timeout)
    return found


async def test_subscribe_yields_typed_events_and_resumes_after_clean_end(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(retry=50)
    base = str(server.make_url(""))
    ids = [await publish(db, stream, "order.created", {"n": n}) for n in range(3)]
    async with subscribe(base, stream, last_event_id="0") as events:
        first = await _collect(events, 3)
        assert all(isinstance(e, StreamEvent) for e in first)
        assert [e.id for e in first] == ids
        assert first[0].stream == stream and first[0].type == "order.created"
        assert first[0].data == {"n": 0} and first[0].created_at.endswith("Z")
        # The last event's position, or past it (a bare id line after the replay).
        assert _key(events.last_event_id) >= _key(first[-1].position)
        # The server ends every stream (as a restart would): the client resumes.
        for subscription in list(server.app[HUB].subscriptions):
            subscription.close()
        more = [await publish(db, stream, "order.created", {"n": n}) for n in range(3, 6)]
        rest = await _collect(events, 3)
        assert [e.id for e in rest] == more
        assert events.reconnects >= 1
        assert events.retry == 0.05


async def test_subscribe_types_filters_and_bare_id_updates(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(heartbeat=0.2)
    base = str(server.make_url(""))
    async with subscribe(base, [stream], types=["a.*"], filters=["data.x=gt.1"],
                         last_event_id="0") as events:
        await publish(db, stream, "a.one", {"x": 1})
        wanted = await publish(db, stream, "a.two", {"x": 2})
        await publish(db, stream, "b.one", {"x": 5})
        [event] = await _collect(events, 1)
        assert event.id == wanted
        skipped = await publish(db, stream, "b.two", {"x": 9})
        position = await position_of(db, skipped)
        # The filtered stream's position moves past the skipped event (a bare
        # id line); the client exposes it while it waits for the next event.
        waiter = asyncio.ensure_future(_collect(events, 1, timeout=30))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while _key(events.last_event_id) < _key(position) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert _key(events.last_event_id) >= _key(position)
        last = await publish(db, stream, "a.three", {"x": 3})
        [after] = await waiter
        assert after.id == last


async def test_subscribe_refused_input_raises(start_server: StartServer, stream: str) -> None:
    server = await start_server()
    with pytest.raises(SubscribeError) as error:
        async with subscribe(str(server.make_url("")), stream, filters={"data.x": "zz.1"}) as events:
            await _collect(events, 1)
    assert error.value.status == 400 and error.value.problem["param"] == "data.x"


Respond = Callable[[web.Request, web.StreamResponse, int], Awaitable[None]]


@asynccontextmanager
async def scripted(respond: Respond) -> AsyncIterator[tuple[str, list[str | None]]]:
    """A server whose n-th stream (from 1) `respond` writes: its URL, and the
    Last-Event-ID of every request, in order."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await respond(request, response, len(seen))
        return response

    app = web.Application()
    app.router.add_get("/streams/{streams}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")), seen
    finally:
        await server.close()


async def test_subscribe_never_yields_twice_and_sends_last_id() -> None:
    """A server that repeats itself on reconnect: the client drops what it has yielded."""
    bodies = [
        b"retry: 10\n\nid: 5-1\nevent: t\ndata: {\"id\":1,\"position\":\"5-1\"}\n\n"
        b"id: 5-2\nevent: t\ndata: {\"id\":2,\"position\":\"5-2\"}\n\nid: 6-0\n\n",
        b"id: 5-2\nevent: t\ndata: {\"id\":2,\"position\":\"5-2\"}\n\n"
        b"id: 7-0\nevent: sse.gap\ndata: {\"requested_after\":\"6-0\",\"resumed_after\":\"7-0\"}\n\n"
        b"id: 7-3\nevent: t\ndata: {\"id\":3,\"position\":\"7-3\"}\n\n",
    ]

    async def respond(request: web.Request, response: web.StreamResponse, n: int) -> None:
        await response.write(bodies[min(n, len(bodies)) - 1])
        await response.write_eof()

    async with scripted(respond) as (url, seen_headers):
        async with subscribe(url, "s", last_event_id="4-0") as events:
            got = await _collect(events, 4)
    assert [(type(e).__name__, e.position) for e in got] == [
        ("StreamEvent", "5-1"), ("StreamEvent", "5-2"), ("ControlEvent", "7-0"), ("StreamEvent", "7-3")]
    gap = got[2]
    assert isinstance(gap, ControlEvent) and gap.type == "sse.gap"
    assert gap.data == {"requested_after": "6-0", "resumed_after": "7-0"}
    # The first connection resumes from the given id; the second from the
    # bare id line that followed the last event.
    assert seen_headers[:2] == ["4-0", "6-0"]


async def test_subscribe_resumes_after_a_broken_connection() -> None:
    """A connection cut mid-stream (no clean end) is resumed with the last id."""

    async def respond(request: web.Request, response: web.StreamResponse, n: int) -> None:
        if n == 1:
            await response.write(b"retry: 10\n\nid: 1-1\nevent: t\ndata: {\"id\":1}\n\nid: 1-2\nevent: t\nda")
            assert request.transport is not None
            request.transport.abort()  # a reset, half an event on the wire
            return
        await response.write(b"id: 1-2\nevent: t\ndata: {\"id\":2}\n\n")
        await response.write_eof()

    async with scripted(respond) as (url, seen_headers):
        async with subscribe(url, "s") as events:
            got = await _collect(events, 2)
    assert [e.id for e in got] == [1, 2]
    assert seen_headers[:2] == [None, "1-1"]
