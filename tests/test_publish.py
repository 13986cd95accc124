"""Publishing: HTTP (atomic arrays, limits, idempotency), publish_many, the CLI, NOTIFY."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from notifications import counting
from sse import envelope, open_stream
from support import ROOT, StartServer, assert_raw_problem, raw_request


async def rows(db: asyncpg.Connection, stream: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT id, type, data::text AS data FROM sse_stream.events "
                          "WHERE stream = $1 ORDER BY id", stream)


async def post(session: aiohttp.ClientSession, url: Any, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    # A BytesIO still has a length (Content-Length) without aiohttp's
    # warning about large bytes bodies.
    async with session.post(url, data=io.BytesIO(data), headers={"Content-Type": "application/json",
                                                     **(headers or {})}) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


# -- HTTP: one transaction, every item checked first ---------------------------


async def test_publish_one_object_and_an_array(start_server: StartServer, db: asyncpg.Connection,
                                               stream: str) -> None:
    server = await start_server()
    url = server.make_url(f"/streams/{stream}/events")
    async with aiohttp.ClientSession() as session:
        status, headers, one = await post(session, url, {"type": "order.created", "data": {"n": 0}})
        assert status == 201 and headers["Content-Type"] == "application/json"
        events = [{"type": "order.updated", "data": {"n": n}} for n in range(1, 4)]
        events.append({"type": "order.noted"})  # no data: null
        status, _, many = await post(session, url, events)
    assert status == 201
    written = await rows(db, stream)
    assert [r["id"] for r in written] == one["ids"] + many["ids"]
    assert many["ids"] == sorted(many["ids"])  # input order
    assert [r["type"] for r in written] == [
        "order.created", "order.updated", "order.updated", "order.updated", "order.noted"]
    assert [orjson.loads(r["data"]) for r in written] == [{"n": n} for n in range(4)] + [None]


async def test_numbers_keep_the_precision_the_client_wrote(start_server: StartServer,
                                                           db: asyncpg.Connection,
                                                           stream: str) -> None:
    server = await start_server()
    body = (b'{"type": "t", "data": '
            b'{"big": 123456789012345678901234567890, "exact": 0.1000000000000000055}}')
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, server.make_url(f"/streams/{stream}/events"), body)
    assert status == 201
    (row,) = await rows(db, stream)
    assert row["data"] == '{"big": 123456789012345678901234567890, "exact": 0.1000000000000000055}'


@pytest.mark.parametrize(("bad", "param"), [
    ({"type": "has space"}, "body[2].type"),
    ({"data": 1}, "body[2].type"),
    ({"type": 5}, "body[2].type"),
    ({"type": "sse.gap"}, "body[2].type"),
    ({"type": "t", "extra": 1}, "body[2].extra"),
    ("just a string", "body[2]"),
    ({"type": "t", "data": {"text": "nul \u0000 inside"}}, "body[2].data"),
    ({"type": "t", "data": {"key \u0000": 1}}, "body[2].data"),
])
async def test_one_bad_item_writes_nothing(start_server: StartServer, db: asyncpg.Connection,
                                           stream: str, bad: Any, param: str) -> None:
    server = await start_server()
    events = [{"type": "t", "data": {"n": 0}}, {"type": "t", "data": {"n": 1}}, bad,
              {"type": "t", "data": {"n": 3}}]
    async with aiohttp.ClientSession() as session:
        status, headers, problem = await post(session, server.make_url(f"/streams/{stream}/events"),
                                              events)
    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["param"] == param
    assert await rows(db, stream) == []


async def test_a_key_given_twice_is_checked_as_stored(start_server: StartServer,
                                                     db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = server.make_url(f"/streams/{stream}/events")
    async with aiohttp.ClientSession() as session:
        status, _, problem = await post(session, url, b'{"type": "ok", "type": "sse.gap"}')
        assert (status, problem["param"]) == (400, "body.type")
        status, _, _ = await post(session, url, b'{"type": "sse.gap", "type": "ok"}')
        assert status == 201
    assert [r["type"] for r in await rows(db, stream)] == ["ok"]


async def test_escaped_backslash_before_u0000_is_plain_text(start_server: StartServer,
                                                            db: asyncpg.Connection,
                                                            stream: str) -> None:
    server = await start_server()
    text = "a backslash then u0000: \\u0000"
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, server.make_url(f"/streams/{stream}/events"),
                                  {"type": "t", "data": text})
    assert status == 201
    (row,) = await rows(db, stream)
    assert orjson.loads(row["data"]) == text


@pytest.mark.parametrize(("body", "param"), [
    (b"[]", "body"),
    (b"{not json", "body"),
    (orjson.dumps([{"type": "t"}] * 1001), "body"),
])
async def test_refused_bodies(start_server: StartServer, db: asyncpg.Connection, stream: str,
                              body: bytes, param: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        status, _, problem = await post(session, server.make_url(f"/streams/{stream}/events"), body)
    assert (status, problem["param"]) == (400, param)
    assert await rows(db, stream) == []


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/octet-stream", "text/json",
    "application/jsonx", "application/json-seq", "application/cloudevents+json",
    "text/plain; type=application/json", ""])
async def test_a_body_not_sent_as_json_is_415(start_server: StartServer, db: asyncpg.Connection,
                                              stream: str, content_type: str | None) -> None:
    """What a cross-site form or no-cors fetch can send never writes events."""
    server = await start_server()
    body = b'{"type": "t", "data": 1}'
    lines = [] if content_type is None else [b"Content-Type: " + content_type.encode()]
    result = await raw_request(server, f"/streams/{stream}/events", lines, method="POST",
                               body=body)
    problem = assert_raw_problem(result, 415, "Content-Type")
    assert "application/json" in problem["detail"]
    assert result[1]["accept-post"] == "application/json"
    assert await rows(db, stream) == []


async def test_json_with_parameters_is_accepted(start_server: StartServer, db: asyncpg.Connection,
                                                stream: str) -> None:
    server = await start_server()
    url = server.make_url(f"/streams/{stream}/events")
    async with aiohttp.ClientSession() as session:
        for content_type in ("application/json; charset=utf-8", "Application/JSON",
                             "application/json ; charset=UTF-8"):
            async with session.post(url, data=io.BytesIO(b'{"type": "t"}'),
                                    headers={"Content-Type": content_type}) as response:
                assert response.status == 201, await response.text()
    assert len(await rows(db, stream)) == 3


async def test_a_pattern_is_not_a_stream_to_publish_to(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        status, _, problem = await post(session, server.make_url("/streams/orders.*/events"),
                                        {"type": "t"})
    assert (status, problem["param"]) == (400, "stream")


async def test_body_limit(start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = server.make_url(f"/streams/{stream}/events")
    # 1000 events of about 1 KiB: just under the 1 MiB limit, all written.
    events = [{"type": "t", "data": {"n": n, "pad": "x" * 1000}} for n in range(1000)]
    body = orjson.dumps(events)
    assert 1_000_000 < len(body) <= 1 << 20
    too_big = orjson.dumps(events[:999] + [{"type": "t", "data": "x" * 50_000}])
    assert len(too_big) > 1 << 20

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 65536):
            yield too_big[start:start + 65536]

    async with aiohttp.ClientSession() as session:
        status, _, published = await post(session, url, body)
        assert status == 201 and len(published["ids"]) == 1000
        status, _, problem = await post(session, url, too_big)
        assert (status, problem["param"]) == (413, "body")
        # Without a Content-Length the limit holds while reading.
        async with session.post(url, data=chunked(),
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
            assert (await response.json(content_type=None))["param"] == "body"
    assert len(await rows(db, stream)) == 1000


# -- HTTP: Idempotency-Key -------------------------------------------------------


async def test_retry_on_another_server_returns_the_first_ids(start_server: StartServer,
                                                             db: asyncpg.Connection,
                                                             stream: str) -> None:
    first, second = await start_server(), await start_server()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    events = [{"type": "t", "data": {"n": n}} for n in range(3)]
    async with aiohttp.ClientSession() as session:
        status, headers, original = await post(
            session, first.make_url(f"/streams/{stream}/events"), events, key)
        assert status == 201 and "Idempotent-Replayed" not in headers
        # The same events written differently: key order and spacing do not count.
        same = b"[" + b", ".join(b'{"data": {"n": %d}, "type": "t"}' % n for n in range(3)) + b"]"
        status, headers, retried = await post(
            session, second.make_url(f"/streams/{stream}/events"), same, key)
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    assert retried == original
    assert [r["id"] for r in await rows(db, stream)] == original["ids"]


async def test_concurrent_retries_on_two_servers_write_once(start_server: StartServer,
                                                            db: asyncpg.Connection,
                                                            dsn: str, stream: str) -> None:
    retries = 8
    # Enough publishing connections for every retry to reach the database.
    servers = [await start_server(publish_pool_size=retries // 2) for _ in range(2)]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    events = [{"type": "t", "data": {"n": n}} for n in range(5)]
    # Hold every writer of the key table at the door, let them all queue up,
    # then open it: the retries race for the key for real.
    gate = await asyncpg.connect(dsn)
    try:
        transaction = gate.transaction()
        await transaction.start()
        await gate.execute("LOCK TABLE sse_stream.idempotency_keys IN SHARE MODE")
        async with aiohttp.ClientSession() as session:
            requests = [asyncio.create_task(post(
                session, servers[n % 2].make_url(f"/streams/{stream}/events"), events, key))
                for n in range(retries)]
            deadline = asyncio.get_running_loop().time() + 20
            while await db.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'idempotency_keys' AND NOT l.granted") < retries:
                assert asyncio.get_running_loop().time() < deadline, "requests never queued"
                await asyncio.sleep(0.01)
            await transaction.rollback()
            results = await asyncio.gather(*requests)
    finally:
        await gate.close()
    assert {status for status, _, _ in results} == {201}
    ids = {tuple(body["ids"]) for _, _, body in results}
    assert len(ids) == 1
    assert sum(1 for _, headers, _ in results if "Idempotent-Replayed" not in headers) == 1
    assert [r["id"] for r in await rows(db, stream)] == list(ids.pop())


async def test_same_key_other_request_is_422(start_server: StartServer, db: asyncpg.Connection,
                                             stream: str) -> None:
    server = await start_server()
    key = {"Idempotency-Key": "order-42-created"}
    url = server.make_url(f"/streams/{stream}/events")
    async with aiohttp.ClientSession() as session:
        status, _, first = await post(session, url, {"type": "t", "data": 1}, key)
        assert status == 201
        status, headers, problem = await post(session, url, {"type": "t", "data": 2}, key)
        assert (status, problem["param"]) == (422, "Idempotency-Key")
        assert headers["Content-Type"] == "application/problem+json"
        # Keys are scoped to their stream: on another stream it is another key.
        status, headers, other = await post(
            session, server.make_url(f"/streams/{stream}x/events"), {"type": "t", "data": 1}, key)
        assert status == 201 and "Idempotent-Replayed" not in headers
    assert [r["id"] for r in await rows(db, stream)] == first["ids"]
    assert [r["id"] for r in await rows(db, stream + "x")] == other["ids"]


async def test_a_refused_request_does_not_use_up_its_key(start_server: StartServer,
                                                         db: asyncpg.Connection,
                                                         stream: str) -> None:
    server = await start_server()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    url = server.make_url(f"/streams/{stream}/events")
    async with aiohttp.ClientSession() as session:
        status, _, _ = await post(session, url, [{"type": "t"}, {"type": "bad type"}], key)
        assert status == 400
        status, headers, published = await post(session, url, [{"type": "t"}, {"type": "u"}], key)
    assert status == 201 and "Idempotent-Replayed" not in headers
    assert [r["id"] for r in await rows(db, stream)] == published["ids"]


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9"])
async def test_malformed_key_is_refused(start_server: StartServer, db: asyncpg.Connection,
                                        stream: str, key: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url(f"/streams/{stream}/events"),
                                data=b'{"type": "t"}',
                                headers={"Idempotency-Key": key.encode().decode("latin-1"),
                                         "Content-Type": "application/json"}
                                ) as response:
            status, problem = response.status, await response.json(content_type=None)
    assert (status, problem["param"]) == (400, "Idempotency-Key")
    assert await rows(db, stream) == []


async def test_keys_are_kept_for_the_ttl_then_pruned(start_server: StartServer,
                                                     db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = server.make_url(f"/streams/{stream}/events")
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    async with aiohttp.ClientSession() as session:
        for key in (old, recent):
            status, _, _ = await post(session, url, {"type": "t"}, {"Idempotency-Key": key})
            assert status == 201
    for key, age in ((old, timedelta(hours=25)), (recent, timedelta(hours=23))):
        await db.execute("UPDATE sse_stream.idempotency_keys SET created_at = now() - $2::interval "
                         "WHERE key = $1", key, age)
    # A server prunes when it starts (and every few minutes after).
    await start_server()
    deadline = asyncio.get_running_loop().time() + 10
    while await db.fetchval("SELECT count(*) FROM sse_stream.idempotency_keys WHERE key = $1", old):
        assert asyncio.get_running_loop().time() < deadline, "the old key was never pruned"
        await asyncio.sleep(0.02)
    assert await db.fetchval("SELECT count(*) FROM sse_stream.idempotency_keys WHERE key = $1",
                             recent) == 1


# -- SQL ---------------------------------------------------------------------------


async def test_publish_many_in_sql(db: asyncpg.Connection, stream: str) -> None:
    ids = [r[0] for r in await db.fetch(
        "SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream,
        '[{"type": "a", "data": {"n": 1}}, {"type": "b"}, {"type": "c", "data": [1, 2]}]')]
    written = await rows(db, stream)
    assert [r["id"] for r in written] == ids == sorted(ids)
    assert [(r["type"], orjson.loads(r["data"])) for r in written] == [
        ("a", {"n": 1}), ("b", None), ("c", [1, 2])]
    # An empty array writes nothing.
    assert await db.fetch("SELECT * FROM sse_stream.publish_many($1, '[]')", stream) == []


@pytest.mark.parametrize(("events", "message"), [
    ('[{"type": "a"}, {"type": "b", "extra": 1}]', "events[1] has an unknown field 'extra'"),
    ('[{"type": "a"}, 5]', "events[1] is not an object"),
    ('[{"type": "a"}, {"data": 5}]', 'events[1] "type" is required'),
    ('[{"type": "a"}, {"type": 7}]', 'events[1] "type" must be a string'),
    ('[{"type": "sse.gap"}]', "events[0] \"type\" 'sse.gap' is not a valid type"),
    ('{"type": "a"}', "events must be a JSON array"),
])
async def test_publish_many_checks_every_item_first(db: asyncpg.Connection, stream: str,
                                                    events: str, message: str) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match=re.escape(message)):
        await db.fetch("SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream, events)
    assert await rows(db, stream) == []


@pytest.mark.parametrize(("stream_name", "type_", "message", "many_message"), [
    ("orders..42", "t", "invalid stream name 'orders..42'", None),
    ("x" * 201, "t", "invalid stream name", None),
    (None, "t", "invalid stream name NULL", None),
    ("orders", "no spaces", "invalid type 'no spaces'", "events[0] \"type\" 'no spaces' is not a"),
    ("orders", "sse.gap", "invalid type 'sse.gap'", "events[0] \"type\" 'sse.gap' is not a"),
])
async def test_publish_checks_names(db: asyncpg.Connection, stream_name: str | None, type_: str,
                                    message: str, many_message: str | None) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match=re.escape(message)):
        await db.fetchval("SELECT sse_stream.publish($1, $2, 'null')", stream_name, type_)
    with pytest.raises(asyncpg.InvalidParameterValueError,
                       match=re.escape(many_message or message)):
        await db.fetch("SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream_name,
                       orjson.dumps([{"type": type_}]).decode())


# -- One notification per transaction ---------------------------------------------


async def test_a_transaction_rings_once_whatever_it_writes(dsn: str, db: asyncpg.Connection,
                                                           stream: str) -> None:
    async with counting(dsn) as counter:
        async with db.transaction():
            for n in range(20):
                await db.fetchval("SELECT sse_stream.publish($1, 't', $2::jsonb)", stream, str(n))
            await db.fetch("SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream,
                           orjson.dumps([{"type": "t", "data": n} for n in range(100)]).decode())
        assert await counter.settle(db) == 1
        await db.fetch("SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream,
                       orjson.dumps([{"type": "t", "data": n} for n in range(100)]).decode())
        assert await counter.settle(db) == 2
        # The write-path switch: no doorbell at all.
        await db.execute("SET sse_stream.notify = off")
        await db.fetchval("SELECT sse_stream.publish($1, 't', 'null')", stream)
        assert await counter.settle(db) == 2
    assert len(await rows(db, stream)) == 221


async def test_http_batch_rings_once(start_server: StartServer, dsn: str, db: asyncpg.Connection,
                                     stream: str) -> None:
    server = await start_server()
    async with counting(dsn) as counter, aiohttp.ClientSession() as session:
        await counter.settle(db)
        before = sum(counter.by_pid.values())
        status, _, published = await post(session, server.make_url(f"/streams/{stream}/events"),
                                          [{"type": "t", "data": n} for n in range(500)])
        assert status == 201 and len(published["ids"]) == 500
        # The server committed before answering, so its notification (from
        # whichever pooled backend) arrives before the marker committed now.
        await counter.settle(db)
        assert sum(counter.by_pid.values()) - before == 1


async def test_poll_only_mode_delivers_without_notify(start_server: StartServer,
                                                      db: asyncpg.Connection,
                                                      stream: str) -> None:
    server = await start_server(poll_interval=0.05)
    await db.execute("SET sse_stream.notify = off")
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        ids = [r[0] for r in await db.fetch(
            "SELECT * FROM sse_stream.publish_many($1, $2::jsonb)", stream,
            orjson.dumps([{"type": "t", "data": n} for n in range(3)]).decode())]
        messages = await sse.take(3, timeout=5)
    assert [envelope(m)["id"] for m in messages] == ids


# -- The command line ---------------------------------------------------------------


def cli(dsn: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sse_stream.cli", "publish", "--dsn", dsn, *args],
                          input=stdin, capture_output=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_cli_publishes_one_event(dsn: str, db: asyncpg.Connection, stream: str) -> None:
    result = await asyncio.to_thread(cli, dsn, stream, "order.created", '{"id": 42}')
    assert result.returncode == 0, result.stderr
    (row,) = await rows(db, stream)
    assert result.stdout.decode().split() == [str(row["id"])]
    assert (row["type"], orjson.loads(row["data"])) == ("order.created", {"id": 42})


async def test_cli_reads_json_lines_in_batches(dsn: str, db: asyncpg.Connection,
                                               stream: str) -> None:
    lines = b'{"n": 0}\n\n{"n": 1}\n"two"\n3\n[4]\n'
    result = await asyncio.to_thread(cli, dsn, stream, "t", "-", "--batch-size", "2", stdin=lines)
    assert result.returncode == 0, result.stderr
    written = await rows(db, stream)
    assert result.stdout.decode().split() == [str(r["id"]) for r in written]
    assert [orjson.loads(r["data"]) for r in written] == [{"n": 0}, {"n": 1}, "two", 3, [4]]


async def test_cli_stops_at_a_bad_line(dsn: str, db: asyncpg.Connection, stream: str) -> None:
    lines = b"1\n2\n3\n{oops\n5\n"
    result = await asyncio.to_thread(cli, dsn, stream, "t", "-", "--batch-size", "3", stdin=lines)
    assert result.returncode == 2
    assert b"line 4" in result.stderr
    # The first batch (lines 1-3) was written and printed; the batch with the
    # bad line was not.
    written = await rows(db, stream)
    assert [orjson.loads(r["data"]) for r in written] == [1, 2, 3]
    assert result.stdout.decode().split() == [str(r["id"]) for r in written]


@pytest.mark.parametrize(("args", "message"), [
    (("orders.*", "t", "1"), b"STREAM"),
    (("orders", "sse.gap", "1"), b"TYPE"),
    (("orders", "t", "{oops"), b"line 1"),
])
async def test_cli_refuses_bad_input(dsn: str, args: tuple[str, ...], message: bytes) -> None:
    result = await asyncio.to_thread(cli, dsn, *args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == b""
