"""Isolation: no row, reader or client stops delivery for the others (SPEC §6).

Rows the server cannot decode, raw inserts that try to forge order or control
events, pages over stretches that match nothing, readers that take every
read connection, retention that overtakes a stopped process, positions from
another cluster, and idempotency keys of other subjects.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from sse import envelope, open_stream
from support import SECRET, Serve, StartServer, bearer, eventually, publish, table_ids, token

from sse_stream.client import Message
from sse_stream.core.events import decode_data
from sse_stream.core.patterns import SubjectTree, parse_pattern
from sse_stream.core.settings import Settings
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.db.migrate import migrate_dsn
from sse_stream.db.pages import row_events
from sse_stream.db.retention import prune
from sse_stream.db.store import EventStore
from sse_stream.web.app import create_app
from sse_stream.web.handlers import STORE

DEEP = 5000  # levels: deeper than orjson (1024) or Python's recursion limit take
POISON = {
    "deep": f"(repeat('[', {DEEP}) || '1' || repeat(']', {DEEP}))::jsonb",
    "shallow-deep": "(repeat('[', 300) || repeat(']', 300))::jsonb",
    "huge-int": "('{\"n\": ' || repeat('9', 5000) || '}')::jsonb",
    "overflow": "'{\"n\": 1e400}'::jsonb",
    "deep-object": f"(repeat('{{\"a\": ', {DEEP}) || '1' || repeat('}}', {DEEP}))::jsonb",
}


def _id(message: Message) -> int:
    """The event id of an envelope too deep for any JSON decoder (it comes first)."""
    match = re.match(r'\{"id":([0-9]+),', message.data)
    assert match is not None, message.data[:100]
    return int(match.group(1))


async def _write_poison(db: asyncpg.Connection, writer: str, stream: str, expression: str) -> int:
    """One event whose data is `expression`, written through `writer`."""
    if writer == "publish":
        return int(await db.fetchval(
            f"SELECT sse_stream.publish($1, 'poison', {expression})", stream))
    if writer == "raw":
        return int(await db.fetchval(
            "INSERT INTO sse_stream.events (stream, type, data) "
            f"VALUES ($1, 'poison', {expression}) RETURNING id", stream))
    table = f'"{stream}_rows"'
    await db.execute(f"INSERT INTO {table} (doc) VALUES ({expression})")
    return int(await db.fetchval("SELECT max(id) FROM sse_stream.events WHERE stream = $1",
                                 stream))


@pytest.mark.parametrize("writer", ["publish", "capture", "raw"])
async def test_rows_the_server_cannot_decode_are_delivered_as_stored(
        start_server: StartServer, db: asyncpg.Connection, stream: str, writer: str) -> None:
    poison, calm = f"{stream}.poison", f"{stream}.calm"
    if writer == "capture":
        table = f'"{poison}_rows"'
        await db.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, doc jsonb)")
        await db.execute(f"CREATE TRIGGER t AFTER INSERT ON {table} FOR EACH ROW "
                         f"EXECUTE FUNCTION sse_stream.capture('{poison}')")
    server = await start_server()
    base = str(server.make_url("/streams/"))
    async with open_stream(base + poison) as everything, \
            open_stream(base + poison + "?data.n=gt.0") as filtered, \
            open_stream(base + calm) as bystander:
        for sse in (everything, filtered, bystander):
            await sse.until(lambda parser: parser.last_event_id != "")
        ids = [await publish(db, poison, "poison", {"n": 1})]
        for expression in POISON.values():
            ids.append(await _write_poison(db, writer, poison, expression))
        ids.append(await publish(db, poison, "poison", {"n": 2}))
        # Another stream's live subscriber is not held up by them.
        after = await publish(db, calm, "calm", {"n": 3})
        assert envelope(await bystander.next(timeout=5))["id"] == after
        live = [_id(m) for m in await everything.take(len(ids))]
        live_filtered = [envelope(m)["id"] for m in await filtered.take(2)]
    stored = {row["id"]: row["data"] for row in await db.fetch(
        "SELECT id, data::text AS data FROM sse_stream.events WHERE stream = $1", poison)}
    assert live == ids
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/readyz")) as response:
            assert response.status == 200
        async with session.get(server.make_url(f"/streams/{poison}/events?after=0")) as response:
            assert response.status == 200
            raw_page = await response.read()
        async with session.get(server.make_url(
                f"/streams/{poison}/events?after=0&data.n=gt.0")) as response:
            assert response.status == 200
            page_filtered = [int(i) for i in re.findall(
                rb'\{"id":([0-9]+),', await response.read())]
    async with open_stream(base + poison + "?last_event_id=0&live=false") as sse:
        replayed = [m for m in await sse.rest() if m.data]
    # PostgreSQL's own text of each value, as it is stored: the envelope is
    # built around it, never re-encoded.
    assert [_id(m) for m in replayed] == ids
    for message in replayed:
        assert f'"data":{stored[_id(message)]},' in message.data
    for id_ in ids:
        assert f'"data":{stored[id_]},'.encode() in raw_page
    # Filters give the same answer live and on replay: huge numbers and deep
    # values compare with nothing; {"n": 1} and {"n": 2} match.
    assert live_filtered == page_filtered == [ids[0], ids[-1]]


async def test_raw_inserts_cannot_forge_order_time_or_control_events(
        db: asyncpg.Connection, stream: str) -> None:
    async with db.transaction():
        own_xid = await db.fetchval("SELECT pg_current_xact_id()::text")
        row = await db.fetchrow(
            "INSERT INTO sse_stream.events (stream, type, data, xid, created_at) "
            "VALUES ($1, 't', '{}', '1'::xid8, '10000-01-01 00:00:00+00') "
            "RETURNING xid::text AS xid, created_at = now() AS stamped", stream)
    assert row["xid"] == own_xid and row["stamped"]
    for statement in (
            "INSERT INTO sse_stream.events (stream, type, data) VALUES ($1, 'sse.gap', '{}')",
            "SELECT sse_stream.publish($1, 'sse.token-expiring', '{}')",
            "UPDATE sse_stream.events SET type = 'sse.gap' WHERE stream = $1"):
        with pytest.raises(asyncpg.InvalidParameterValueError, match="reserved"):
            await db.execute(statement, stream)
    # An update keeps the position and the time.
    before = await db.fetchrow("SELECT xid::text AS xid, created_at FROM sse_stream.events "
                               "WHERE stream = $1", stream)
    await db.execute("UPDATE sse_stream.events SET xid = '2'::xid8, created_at = 'infinity', "
                     "data = '{\"n\": 1}' WHERE stream = $1", stream)
    after = await db.fetchrow("SELECT xid::text AS xid, created_at FROM sse_stream.events "
                              "WHERE stream = $1", stream)
    assert tuple(after) == tuple(before)


async def test_times_beyond_the_driver_are_delivered_as_text(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    # Only a session that disables user triggers (a superuser's import) can
    # still store such times: they must not stop a reader either.
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        for when in ("10000-01-01 00:00:00+00", "infinity", "-infinity"):
            await db.execute("INSERT INTO sse_stream.events (stream, type, data, created_at) "
                             "VALUES ($1, 't', '{}', $2::text::timestamptz)", stream, when)
    server = await start_server()
    async with open_stream(str(server.make_url(f"/streams/{stream}?last_event_id=0"))) as sse:
        times = [envelope(m)["created_at"] for m in await sse.take(3)]
        later = await publish(db, stream, "t", {})
        assert envelope(await sse.next())["id"] == later
    assert times == ["10000-01-01T00:00:00Z", "infinity", "-infinity"]
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/readyz")) as response:
            assert response.status == 200


def test_decoding_never_fails_and_keeps_filter_semantics() -> None:
    assert decode_data(b"[" * DEEP + b"1" + b"]" * DEEP) is not None
    deep = decode_data(b'{"a": ' * DEEP + b"1" + b"}" * DEEP)
    assert isinstance(deep, dict) and isinstance(deep["a"]["a"], dict)
    assert decode_data(b'{"n": ' + b"9" * 5000 + b"}") == {"n": float("inf")}
    assert decode_data(b'{"n": 18446744073709551615, "m": 18446744073709551616}') == \
        {"n": 2**64 - 1, "m": float(2**64)}
    assert decode_data(b'["[{", "\\"]", [1]]') == ["[{", '"]', [1]]


def test_a_row_that_cannot_be_built_is_skipped_and_counted() -> None:
    def row(id_: int, stream: Any) -> dict[str, Any]:
        return {"xid": 5, "id": id_, "stream": stream, "type": "t", "data": b"{}",
                "created_at": "2026-01-01T00:00:00Z", "epoch": 0.0}

    skipped = [0]
    events = row_events([row(1, "a"), row(2, None), row(3, "a")], skipped)  # type: ignore[list-item]
    assert [e.id for e in events] == [1, 3] and skipped == [1]


async def test_live_false_without_a_start_ends_at_once(start_server: StartServer,
                                                       db: asyncpg.Connection,
                                                       stream: str) -> None:
    await publish(db, stream, "t", {})
    server = await start_server()
    async with open_stream(str(server.make_url(f"/streams/{stream}?live=false"))) as sse:
        assert await sse.rest(timeout=5) == []
        assert sse.last_event_id != ""


async def _insert_numbers(db: asyncpg.Connection, stream: str, count: int,
                          pad: int = 0) -> list[int]:
    rows = await db.fetch(
        "INSERT INTO sse_stream.events (stream, type, data) "
        "SELECT $1, 't', jsonb_build_object('n', n, 'pad', repeat('x', $3)) "
        "FROM generate_series(0, $2 - 1) n ORDER BY n RETURNING id", stream, count, pad)
    return [row["id"] for row in rows]


async def _follow_pages(session: aiohttp.ClientSession, url: str) -> tuple[list[int], int]:
    """Every event of a paged read from 0, and how many pages it took."""
    after, ids, pages = "0", [], 0
    while True:
        async with session.get(f"{url}&after={after}") as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        pages += 1
        assert pages < 1000
        ids += [event["id"] for event in page["events"]]
        assert page["next_after"] != after or not page["has_more"], "no progress"
        after = page["next_after"]
        if not page["has_more"]:
            return ids, pages


async def test_pages_and_replays_scan_in_bounded_slices(start_server: StartServer,
                                                        db: asyncpg.Connection,
                                                        stream: str) -> None:
    ids = await _insert_numbers(db, stream, 230)
    server = await start_server(scan_rows=50)
    url = str(server.make_url(f"/streams/{stream}/events?limit=1000"))
    async with aiohttp.ClientSession() as session:
        # A filter that matches nothing: every page answers after 50 rows,
        # with no events, has_more and a next_after that moved on.
        async with session.get(f"{url}&data.n=eq.-1") as response:
            first = await response.json()
        assert first["events"] == [] and first["has_more"] is True
        assert first["next_after"] != "0"
        assert await _follow_pages(session, f"{url}&data.n=eq.-1") == ([], 5)
        assert await _follow_pages(session, f"{url}&data.n=in.(7,170,229)") == (
            [ids[7], ids[170], ids[229]], 5)
        assert (await _follow_pages(session, url))[0] == ids
    replay = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
    async with open_stream(replay + "&data.n=in.(7,170,229)") as sse:
        got = [envelope(m)["id"] for m in await sse.rest() if m.data]
    assert got == [ids[7], ids[170], ids[229]]


async def test_pages_and_replays_are_capped_in_bytes(start_server: StartServer,
                                                     db: asyncpg.Connection,
                                                     stream: str) -> None:
    ids = await _insert_numbers(db, stream, 10, pad=580)  # about 600 bytes of data each
    server = await start_server(page_bytes=2000)
    url = str(server.make_url(f"/streams/{stream}/events?limit=100"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}&after=0") as response:
            page = await response.json()
        assert [e["id"] for e in page["events"]] == ids[:4] and page["has_more"]
        assert (await _follow_pages(session, url))[0] == ids
    async with open_stream(str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
                           ) as sse:
        assert [envelope(m)["id"] for m in await sse.rest() if m.data] == ids


@asynccontextmanager
async def _reads_held(dsn: str) -> AsyncIterator[asyncpg.transaction.Transaction]:
    """Hold every page and catch-up read: they all join the retention row, which
    publishing never reads. Roll the yielded transaction back to let them go."""
    blocker = await asyncpg.connect(dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE sse_stream.retention IN ACCESS EXCLUSIVE MODE")
        yield transaction
    finally:
        await blocker.close()


async def test_busy_read_capacity_is_a_503_and_publishing_keeps_its_own(
        start_server: StartServer, db: asyncpg.Connection, dsn: str, stream: str) -> None:
    server = await start_server(pool_size=1, capacity_wait=0.3)
    await publish(db, stream, "t", {})
    url = server.make_url(f"/streams/{stream}/events?after=0")
    async with _reads_held(dsn) as transaction:
        async with aiohttp.ClientSession() as session:
            held = asyncio.create_task(session.get(url))
            await eventually(lambda: server.app[STORE].reads_capacity.waiting == 0
                              and server.app[STORE].reads_capacity._slots.locked())
            async with session.get(url) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                assert response.content_type == "application/problem+json"
            started = time.monotonic()
            async with session.post(server.make_url(f"/streams/{stream}/events"),
                                    json={"type": "t", "data": {}}) as response:
                assert response.status == 201
            assert time.monotonic() - started < 1
            await transaction.rollback()
            response = await held
            assert response.status == 200
            response.release()


async def test_a_statement_past_its_timeout_is_a_503(start_server: StartServer,
                                                     db: asyncpg.Connection, dsn: str,
                                                     stream: str) -> None:
    server = await start_server(statement_timeout=0.3)
    async with _reads_held(dsn) as transaction:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url(f"/streams/{stream}/events")) as response:
                assert response.status == 503
                assert "Retry-After" in response.headers
        await transaction.rollback()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(f"/streams/{stream}/events")) as response:
            assert response.status == 200


@pytest.mark.slow
async def test_heavy_readers_never_starve_live_delivery_or_publishing(
        fresh_dsn: str, serve: Serve) -> None:
    """1,000,000 rows; 10 page loops and 8 replays over a filter that matches
    nothing; meanwhile 20 events to another stream arrive live within 1 s and
    every publish answers within 1 s."""
    connection = await asyncpg.connect(fresh_dsn)
    try:
        async with connection.transaction():
            # Test data only: skip the per-row trigger to load fast.
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(
                "INSERT INTO sse_stream.events (stream, type, data) "
                "SELECT 'big', 't', jsonb_build_object('n', n) "
                "FROM generate_series(1, 1000000) n")
        await connection.execute("VACUUM ANALYZE sse_stream.events")
    finally:
        await connection.close()
    server = serve(dsn=fresh_dsn)
    try:
        await server.ready()
        await _starvation_run(server.url)
    finally:
        server.stop()


async def _starvation_run(url: str) -> None:
    stop = asyncio.Event()
    served = {"pages": 0, "refused": 0, "replays": 0}
    timeout = aiohttp.ClientTimeout(total=60)

    async def page_loop(session: aiohttp.ClientSession) -> None:
        after = "0"
        while not stop.is_set():
            async with session.get(f"{url}/streams/big/events?after={after}&data.n=eq.-1"
                                   "&limit=1000") as response:
                if response.status == 503:
                    served["refused"] += 1
                    await asyncio.sleep(float(response.headers["Retry-After"]) / 10)
                    continue
                assert response.status == 200
                page = await response.json()
            served["pages"] += 1
            after = page["next_after"] if page["has_more"] else "0"

    async def replay(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.get(f"{url}/streams/big?last_event_id=0&live=false"
                                   "&data.n=eq.-1") as response:
                if response.status == 503:
                    served["refused"] += 1
                    await asyncio.sleep(0.1)
                    continue
                assert response.status == 200
                served["replays"] += 1
                while not stop.is_set() and await response.content.readany():
                    pass

    async with aiohttp.ClientSession(timeout=timeout) as session, \
            aiohttp.ClientSession(timeout=timeout) as calm:
        hostile = [asyncio.create_task(page_loop(session)) for _ in range(10)]
        hostile += [asyncio.create_task(replay(session)) for _ in range(8)]
        try:
            await eventually(lambda: served["pages"] >= 20 and served["replays"] >= 8, 30)
            async with open_stream(f"{url}/streams/calm", session=calm) as sse:
                await sse.until(lambda parser: parser.last_event_id != "")
                publish_times, live_times = [], []
                for n in range(20):
                    started = time.monotonic()
                    async with calm.post(f"{url}/streams/calm/events",
                                         json={"type": "tick", "data": {"n": n}}) as response:
                        assert response.status == 201
                        (sent,) = (await response.json())["ids"]
                    publish_times.append(time.monotonic() - started)
                    message = await sse.next(timeout=5)
                    live_times.append(time.monotonic() - started)
                    assert envelope(message)["id"] == sent
        finally:
            stop.set()
            for task in hostile:
                task.cancel()
            results = await asyncio.gather(*hostile, return_exceptions=True)
    errors = [r for r in results if not isinstance(r, asyncio.CancelledError) and r is not None]
    assert not errors, errors
    assert max(publish_times) < 1.0, publish_times
    assert max(live_times) < 1.0, live_times
    assert served["pages"] > 20


async def test_retention_that_overtakes_a_stopped_server_sends_a_live_gap(
        fresh_dsn: str, serve: Serve) -> None:
    server = serve(dsn=fresh_dsn)
    connection = await asyncpg.connect(fresh_dsn)
    store = EventStore(fresh_dsn)
    await store.open()
    try:
        await server.ready()
        async with open_stream(f"{server.url}/streams/orders") as sse:
            await sse.until(lambda parser: parser.last_event_id != "")
            first = await publish(connection, "orders", "t", {"n": 1})
            message = await sse.next()
            assert envelope(message)["id"] == first
            delivered = envelope(message)["position"]
            server.process.send_signal(signal.SIGSTOP)
            try:
                for n in range(2, 5):
                    await publish(connection, "orders", "t", {"n": n})
                # Everything written so far is older than "now": pruned.
                result = await prune(store, timedelta(0))
                assert result.deleted >= 4 and result.pruned is not None
                last = await publish(connection, "orders", "t", {"n": 5})
            finally:
                server.process.send_signal(signal.SIGCONT)
            gap = await sse.next()
            assert gap.event == "sse.gap"
            assert orjson.loads(gap.data) == {"requested_after": delivered,
                                              "resumed_after": result.pruned.encode()}
            assert gap.last_event_id == result.pruned.encode()
            assert envelope(await sse.next())["id"] == last
    finally:
        await store.close()
        await connection.close()
        server.stop()


async def test_positions_this_database_never_handed_out(
        dsn: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A client of another (restored or replaced) cluster resumes with a gap
    to the current end, never a silent wait; a page answers 409."""
    other = EmbeddedPostgres(tmp_path / "other", fast=True)
    other_dsn = other.start()
    try:
        await migrate_dsn(other_dsn)
        fresh = await asyncpg.connect(other_dsn)
        try:
            xmax = int(await fresh.fetchval(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
            # A position of the long-running cluster, beyond the fresh one's.
            for _ in range(5000):
                position = await db.fetchval(
                    "INSERT INTO sse_stream.events (stream, type) VALUES ('elsewhere', 't') "
                    "RETURNING xid::text || '-' || id")
                if int(position.split("-")[0]) > xmax + 10:
                    break
            else:
                pytest.fail("could not get ahead of the fresh cluster's xids")
            server = TestServer(create_app(Settings(dsn=other_dsn, heartbeat=15.0)),
                                host="127.0.0.1")
            await server.start_server()
            try:
                url = str(server.make_url("/streams/orders"))
                async with open_stream(url, headers={"Last-Event-ID": position}) as sse:
                    gap = await sse.next()
                    assert gap.event == "sse.gap"
                    data = orjson.loads(gap.data)
                    assert data["requested_after"] == position
                    assert int(data["resumed_after"].split("-")[0]) < xmax + 10
                    live = await publish(fresh, "orders", "t", {"n": 1})
                    assert envelope(await sse.next())["id"] == live
                async with open_stream(url + f"?last_event_id={position}&live=false") as sse:
                    messages = await sse.rest()
                    # Resumed at the current end: the event before it is not replayed.
                    assert [m.event for m in messages if m.data] == ["sse.gap"]
                async with aiohttp.ClientSession() as session:
                    async with session.get(
                            server.make_url(f"/streams/orders/events?after={position}")) as r:
                        assert r.status == 409
                        assert (await r.json(content_type=None))["param"] == "after"
            finally:
                await server.close()
        finally:
            await fresh.close()
    finally:
        other.stop("immediate")


def _token(subject: str) -> dict[str, str]:
    return bearer(token([">"], [">"], sub=subject))


async def test_idempotency_keys_belong_to_their_subject(start_server: StartServer,
                                                        db: asyncpg.Connection,
                                                        stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    url = server.make_url(f"/streams/{stream}/events")
    key = {"Idempotency-Key": "order-42"}

    async def post(subject: str, body: Any) -> tuple[int, dict[str, Any], Any]:
        async with session.post(url, json=body, headers={**key, **_token(subject)}) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)

    async with aiohttp.ClientSession() as session:
        status, headers, alice = await post("alice", {"type": "t", "data": 1})
        assert status == 201 and "Idempotent-Replayed" not in headers
        # Bob's same key is Bob's own: it writes, and tells nothing of Alice's.
        status, headers, bob = await post("bob", {"type": "t", "data": 2})
        assert status == 201 and "Idempotent-Replayed" not in headers
        status, headers, again = await post("alice", {"type": "t", "data": 1})
        assert status == 201 and headers["Idempotent-Replayed"] == "true" and again == alice
        status, _, problem = await post("alice", {"type": "t", "data": 3})
        assert (status, problem["param"]) == (422, "Idempotency-Key")
    assert await table_ids(db, stream) == alice["ids"] + bob["ids"]


async def test_refusals_and_skips_are_counted_in_metrics(start_server: StartServer,
                                                         db: asyncpg.Connection, dsn: str,
                                                         stream: str) -> None:
    server = await start_server(pool_size=1, capacity_wait=0.1)
    async with _reads_held(dsn) as transaction:
        async with aiohttp.ClientSession() as session:
            held = asyncio.create_task(session.get(server.make_url(f"/streams/{stream}/events")))
            await eventually(lambda: server.app[STORE].reads_capacity._slots.locked())
            async with session.get(server.make_url(f"/streams/{stream}/events")) as response:
                assert response.status == 503
            await transaction.rollback()
            (await held).release()
            async with session.get(server.make_url("/metrics")) as response:
                text = await response.text()
    assert 'sse_stream_capacity_refusals_total{kind="read"} 1.0' in text
    assert 'sse_stream_capacity_refusals_total{kind="publish"} 0.0' in text
    assert "sse_stream_skipped_rows_total 0.0" in text
    assert "sse_stream_match_errors_total 0.0" in text


PATTERN_SEGMENTS = st.sampled_from(["a", "b", "c", "*"])
NAMES = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(PATTERN_SEGMENTS, min_size=1, max_size=4))
    if draw(st.booleans()):
        segments[-1] = ">"
    return ".".join(segments)


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns(), max_size=12), st.lists(NAMES, min_size=1, max_size=6), st.data())
def test_subject_tree_matches_as_the_patterns_do(texts: list[str], names: list[str],
                                                 data: st.DataObject) -> None:
    tree: SubjectTree[str] = SubjectTree()
    stored = {text: parse_pattern(text) for text in texts}
    for text, pattern in stored.items():
        tree.add(pattern, text)
    removed = data.draw(st.sets(st.sampled_from(sorted(stored))) if stored else st.just(set()))
    for text in removed:
        tree.remove(stored[text], text)
    for name in names:
        assert tree.match(name) == {text for text, pattern in stored.items()
                                    if text not in removed and pattern.matches(name)}
    for text in set(stored) - removed:
        tree.remove(stored[text], text)
    assert tree.size == 0 and tree.match(names[0]) == set()


async def test_a_reconnect_storm_of_replays_is_served_in_turn(start_server: StartServer,
                                                              db: asyncpg.Connection,
                                                              stream: str) -> None:
    """EventSource does not retry after a 503: replays that outnumber the read
    connections wait their turn instead of being refused."""
    ids = await _insert_numbers(db, stream, 300)
    server = await start_server(pool_size=1, replay_page_size=50, capacity_wait=0.1)
    url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
    async with aiohttp.ClientSession() as session:

        async def replay() -> list[int]:
            async with open_stream(url, session=session) as sse:
                return [envelope(m)["id"] for m in await sse.rest(timeout=30) if m.data]

        results = await asyncio.gather(*(replay() for _ in range(40)))
    assert all(result == ids for result in results)
