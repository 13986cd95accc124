"""Filtered streams over HTTP: many subscribers, position keep-up, JSON pages,
bad filters."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from sse import envelope, open_stream
from support import StartServer, position_of, publish

from sse_stream.client import SseParser
from sse_stream.core.events import parse_position
from sse_stream.web.handlers import HUB


async def test_many_filtered_subscribers_each_get_their_events(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(heartbeat=0.3)
    hub = server.app[HUB]
    count = 1000
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, \
            contextlib.AsyncExitStack() as stack:
        streams = []
        for n in range(count):
            url = server.make_url(f"/streams/{stream}").with_query({"data.n": f"eq.{n}"})
            streams.append(await stack.enter_async_context(open_stream(str(url), session=session)))
        for sse in streams:
            await sse.until(lambda parser: parser.last_event_id != "")
        delivered = hub.stats.delivered
        # The same data on a neighbouring stream: none of it is theirs.
        await db.execute("SELECT sse_stream.publish($1 || 'x', 't', jsonb_build_object('n', n))"
                         " FROM generate_series(0, $2 - 1) n", stream, count)
        ids = [row[0] for row in await db.fetch(
            "SELECT sse_stream.publish($1, 't', jsonb_build_object('n', n)) AS id"
            " FROM generate_series(0, $2 - 1) n ORDER BY id", stream, count)]
        last = parse_position(await position_of(db, ids[-1]))
        for n, sse in enumerate(streams):
            # Each ends on its event or on a bare id: line beyond it.
            await sse.until(lambda parser: bool(parser.last_event_id)
                            and parse_position(parser.last_event_id) >= last, timeout=20)
            messages, sse.pending = sse.pending, []
            assert [envelope(m)["data"] for m in messages] == [{"n": n}]
            assert envelope(messages[0])["id"] == ids[n]
    assert hub.stats.delivered - delivered == count


async def test_filtered_position_keeps_up(start_server: StartServer, db: asyncpg.Connection,
                                          stream: str) -> None:
    server = await start_server(heartbeat=0.2)
    url = str(server.make_url(f"/streams/{stream}?data.kind=eq.rare"))
    async with open_stream(url) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        start = sse.parser.last_event_id
        skipped = [await publish(db, stream, "t", {"kind": "common", "n": n}) for n in range(5)]
        last = parse_position(await position_of(db, skipped[-1]))
        # Silence follows: the heartbeat carries a bare id: line past them.
        await sse.until(lambda parser: parse_position(parser.last_event_id) >= last, timeout=5)
        assert sse.pending == [] and sse.parser.last_event_id != start
        resume = sse.parser.last_event_id
    # A browser's parser fed the same kind of frame: the id moves, nothing is dispatched.
    browser = SseParser()
    assert browser.feed(b"retry: 2000\n\n: keepalive\nid: %s\n\n" % resume.encode()) == []
    assert browser.last_event_id == resume
    rare = await publish(db, stream, "t", {"kind": "rare"})
    await publish(db, stream, "t", {"kind": "common"})
    async with open_stream(url, headers={"Last-Event-ID": resume}) as sse:
        message = await sse.next()
        assert envelope(message)["id"] == rare
    hub = server.app[HUB]
    # The reconnect replayed only the new match, not the skipped events.
    replay = url + f"&last_event_id={resume}&live=false"
    before = hub.stats.replayed
    async with open_stream(replay) as sse:
        assert [envelope(m)["id"] for m in await sse.rest()] == [rare]
    assert hub.stats.replayed - before == 1


# --- JSON pages ----------------------------------------------------------------


async def get(session: aiohttp.ClientSession, server: TestServer, path: str,
              query: Any = ()) -> tuple[int, str, Any]:
    async with session.get(server.make_url(path).with_query(query)) as response:
        return response.status, response.content_type, await response.json(
            content_type=None)


async def walk(session: aiohttp.ClientSession, server: TestServer, path: str, query: list[Any],
               limit: int, after: str | None) -> tuple[list[int], str]:
    ids: list[int] = []
    while True:
        params = [*query, ("limit", str(limit))] + ([("after", after)] if after is not None else [])
        status, _, page = await get(session, server, path, params)
        assert status == 200, page
        assert len(page["events"]) <= limit
        ids += [event["id"] for event in page["events"]]
        after = page["next_after"]
        if not page["has_more"]:
            assert after is not None
            return ids, after


async def test_pages_walk_every_match_once(start_server: StartServer, db: asyncpg.Connection,
                                           stream: str) -> None:
    server = await start_server()
    ids = [row[0] for row in await db.fetch(
        "SELECT sse_stream.publish($1, CASE WHEN n % 3 = 0 THEN 'a.x' ELSE 'b' END,"
        " jsonb_build_object('n', n)) AS id FROM generate_series(0, 49) n ORDER BY id", stream)]
    path = f"/streams/{stream}/events"
    query = [("data.n", "gte.10"), ("type", "a.*")]
    matching = [id_ for n, id_ in enumerate(ids) if n >= 10 and n % 3 == 0]
    middle = await position_of(db, ids[25])
    async with aiohttp.ClientSession() as session:
        for limit in (1, 2, 7, 1000):
            for after in (None, "0"):
                assert (await walk(session, server, path, query, limit, after))[0] == matching
            got, _ = await walk(session, server, path, query, limit, middle)
            assert got == [id_ for n, id_ in enumerate(ids) if n > 25 and n % 3 == 0]
        assert (await walk(session, server, path, [], 1000, None))[0] == ids


async def test_pages_never_skip_open_transactions(start_server: StartServer, dsn: str,
                                                  db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    path = f"/streams/{stream}/events"
    first = await publish(db, stream, "t", {"n": 0})
    writer = await asyncpg.connect(dsn)
    try:
        transaction = writer.transaction()
        await transaction.start()
        held = await publish(writer, stream, "t", {"n": 1})
        later = await publish(db, stream, "t", {"n": 2})  # committed, after the open one
        async with aiohttp.ClientSession() as session:
            ids, after = await walk(session, server, path, [], 100, None)
            assert ids == [first]  # the committed later one waits for the open one
            await transaction.commit()
            ids, _ = await walk(session, server, path, [], 100, after)
            assert sorted(ids) == sorted([held, later])
    finally:
        await writer.close()


@pytest.mark.parametrize(("query", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"after": "x"}, "after"), ({"after": "1-2-3"}, "after"),
    ({"after": "-1"}, "after"),
])
async def test_page_bounds(start_server: StartServer, stream: str, query: dict[str, str],
                           param: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        status, content_type, body = await get(session, server, f"/streams/{stream}/events", query)
    assert (status, content_type, body["param"]) == (400, "application/problem+json", param)


async def test_page_limit_1000_is_allowed(start_server: StartServer, stream: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        status, _, body = await get(session, server, f"/streams/{stream}/events", {"limit": "1000"})
    assert status == 200 and body["events"] == [] and body["has_more"] is False


# --- bad filters ------------------------------------------------------------------

BAD_FILTERS = [
    ([("data.status", "like.x")], "data.status"),
    ([("data.status", "not.nope.x")], "data.status"),
    ([("data.", "eq.1")], "data."),
    ([("data.a..b", "eq.1")], "data.a..b"),
    ([("data.a b", "eq.1")], "data.a b"),
    ([("data.a$", "eq.1")], "data.a$"),
    ([("data.é", "eq.1")], "data.é"),
    ([(f"data.k{n}", "eq.1") for n in range(21)], "data.k20"),
    ([("or", "(" + ",".join(f"data.k{n}.eq.1" for n in range(21)) + ")")], "or"),
    ([("data.a", "in.(" + ",".join(map(str, range(101))) + ")")], "data.a"),
    ([("data.a", "is.maybe")], "data.a"),
    ([("data.a", "is.NULL")], "data.a"),
    ([("data.a", "is")], "data.a"),
    ([("or", "(data.a.is.yes)")], "or"),
    ([("or", "(data..eq.1)")], "or"),
    ([("or", "data.a.eq.1")], "or"),
    ([("type", "bad type")], "type"),
    ([("type", "a*b")], "type"),
    ([("type", "")], "type"),
]


@pytest.mark.parametrize(("query", "param"), BAD_FILTERS)
async def test_bad_filters_are_refused(start_server: StartServer, db: asyncpg.Connection,
                                       stream: str, query: list[tuple[str, str]],
                                       param: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        for path, extra in ((f"/streams/{stream}", [("last_event_id", "0")]),
                            (f"/streams/{stream}/events", [])):
            status, content_type, body = await get(session, server, path, [*query, *extra])
            assert (status, content_type) == (400, "application/problem+json"), (path, body)
            assert body["param"] == param, (path, body)
    assert await db.fetchval("SELECT count(*) FROM sse_stream.events WHERE stream = $1",
                             stream) == 0


async def test_limits_are_inclusive_over_http(start_server: StartServer, stream: str) -> None:
    server = await start_server()
    query = [(f"data.k{n}", "neq.1") for n in range(19)]
    query.append(("data.a", "not.in.(" + ",".join(map(str, range(100))) + ")"))
    async with aiohttp.ClientSession() as session:
        status, _, body = await get(session, server, f"/streams/{stream}/events", query)
    assert status == 200, body
