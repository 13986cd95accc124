"""CORS, limits and errors against a running server and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from sse import open_stream
from support import SECRET, StartServer, assert_problem, count, request, token

from sse_stream.db.store import EventStore

ORIGIN = "https://app.example"


# -- CORS -------------------------------------------------------------------------------


async def test_preflight_for_publish_with_credentials(start_server: StartServer,
                                                      db: asyncpg.Connection,
                                                      stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, cors_origins=f"{ORIGIN}, https://b.example",
                                cors_credentials=True)
    asked = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}
    code, headers, _ = await request(server, "OPTIONS", f"/streams/{stream}/events",
                                     headers=asked)
    assert code == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers["Vary"]
    assert {h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")} == {
        "Authorization", "Last-Event-ID", "Idempotency-Key", "Content-Type"}
    assert set(headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    assert "Access-Control-Expose-Headers" not in headers
    # Preflight for a subscription with Last-Event-ID.
    code, _, _ = await request(server, "OPTIONS", f"/streams/{stream}", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id"})
    assert code == 204

    # The actual requests carry the origin's headers, refusals included.
    authorized = {"Origin": ORIGIN, "Authorization": f"Bearer {token([stream], [stream])}"}
    code, headers, _ = await request(server, "POST", f"/streams/{stream}/events",
                                     headers=authorized, json={"type": "t", "data": 1})
    assert code == 201 and headers["Access-Control-Allow-Origin"] == ORIGIN
    code, headers, _ = await request(server, "GET", f"/streams/{stream}", headers=authorized)
    assert code == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    result = await request(server, "GET", f"/streams/{stream}", headers={"Origin": ORIGIN})
    assert_problem(result, 401, "Authorization")
    assert result[1]["Access-Control-Allow-Origin"] == ORIGIN
    assert await count(db, stream) == 1


async def test_preflight_refusals(start_server: StartServer, stream: str) -> None:
    path = f"/streams/{stream}/events"
    closed = await start_server()
    ask = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    # Default: no origin is allowed, and no CORS header is ever sent.
    assert_problem(await request(closed, "OPTIONS", path, headers=ask), 403, "Origin")
    code, headers, _ = await request(closed, "GET", path, headers={"Origin": ORIGIN})
    assert code == 200 and "Access-Control-Allow-Origin" not in headers

    server = await start_server(cors_origins=ORIGIN)
    assert_problem(await request(server, "OPTIONS", path,
                                 headers={**ask, "Origin": "https://evil.example"}), 403, "Origin")
    assert_problem(await request(server, "OPTIONS", path,
                                 headers={**ask, "Access-Control-Request-Method": "DELETE"}),
                   403, "Access-Control-Request-Method")
    assert_problem(await request(server, "OPTIONS", path,
                                 headers={**ask, "Access-Control-Request-Headers": "X-Secret"}),
                   403, "Access-Control-Request-Headers")
    code, headers, _ = await request(server, "GET", path, headers={"Origin": "https://evil.example"})
    assert code == 200 and "Access-Control-Allow-Origin" not in headers
    code, headers, _ = await request(server, "OPTIONS", path, headers=ask)
    assert code == 204 and "Access-Control-Allow-Credentials" not in headers

    anyone = await start_server(cors_origins="*")
    code, headers, _ = await request(anyone, "GET", path, headers={"Origin": "https://x.example"})
    assert code == 200 and headers["Access-Control-Allow-Origin"] == "*"


# -- limits ---------------------------------------------------------------------------


async def test_open_streams_per_process(start_server: StartServer, stream: str) -> None:
    server = await start_server(max_streams=2)
    url = str(server.make_url(f"/streams/{stream}"))
    async with open_stream(url), open_stream(url):
        result = await request(server, "GET", f"/streams/{stream}")
        body = assert_problem(result, 503, "streams")
        assert result[1]["Retry-After"] == "5" and "limit" in body["detail"]
        # Pages are not streams: still served.
        assert (await request(server, "GET", f"/streams/{stream}/events"))[0] == 200
    # The slots come back when the streams end (bounded poll).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (code := (await request(server, "GET", f"/streams/{stream}"))[0]) != 200:
        assert code == 503 and loop.time() < deadline
        await asyncio.sleep(0.05)


async def test_open_streams_per_client_address(start_server: StartServer, stream: str) -> None:
    # Two clients told apart through a trusted proxy's X-Forwarded-For.
    server = await start_server(max_streams_per_client=2, trusted_proxies="127.0.0.1",
                                anonymous_subscribe=stream)
    url = str(server.make_url(f"/streams/{stream}"))
    first, second = {"X-Forwarded-For": "192.0.2.1"}, {"X-Forwarded-For": "192.0.2.2"}
    async with open_stream(url, first), open_stream(url, first):
        result = await request(server, "GET", f"/streams/{stream}", headers=first)
        assert_problem(result, 429, "streams")
        assert result[1]["Retry-After"] == "5"
        assert (await request(server, "GET", f"/streams/{stream}", headers=second))[0] == 200


async def test_open_streams_per_client_count_ipv6_by_its_64(start_server: StartServer,
                                                           stream: str) -> None:
    # One host is given a whole /64: counting its addresses one by one would
    # let it open the limit again from each of 2^64 addresses.
    server = await start_server(max_streams_per_client=2, trusted_proxies="127.0.0.1",
                                anonymous_subscribe=stream)
    url = str(server.make_url(f"/streams/{stream}"))
    one = {"X-Forwarded-For": "2001:db8:1:2::1"}
    same_64 = {"Forwarded": 'for="[2001:db8:1:2:ffff::9]:443"'}
    async with open_stream(url, one), open_stream(url, same_64):
        result = await request(server, "GET", f"/streams/{stream}",
                               headers={"X-Forwarded-For": "2001:db8:1:2:abcd::7"})
        body = assert_problem(result, 429, "streams")
        assert "2001:db8:1:2::/64" in body["detail"]
        for other in ({"X-Forwarded-For": "2001:db8:1:3::1"}, {"X-Forwarded-For": "192.0.2.1"}):
            assert (await request(server, "GET", f"/streams/{stream}", headers=other))[0] == 200

    # From a peer that is not a trusted proxy the headers are not believed: a
    # client cannot escape the limit by writing other addresses in them.
    direct = await start_server(max_streams_per_client=2, anonymous_subscribe=stream)
    url = str(direct.make_url(f"/streams/{stream}"))
    async with open_stream(url, {"X-Forwarded-For": "192.0.2.1"}), \
            open_stream(url, {"Forwarded": "for=192.0.2.2"}):
        result = await request(direct, "GET", f"/streams/{stream}",
                               headers={"X-Forwarded-For": "192.0.2.3"})
        assert "127.0.0.1" in assert_problem(result, 429, "streams")["detail"]


async def test_query_length_patterns_and_filters(start_server: StartServer, stream: str) -> None:
    server = await start_server(max_query=1024)
    path = f"/streams/{stream}/events"
    body = assert_problem(await request(server, "GET", f"{path}?type={'x' * 1100}"), 414, "query")
    assert "1024" in body["detail"]
    under = "&".join([f"type={'x' * 107}"] * 9) + "&type=ab"
    assert len(under) == 1024  # exactly at the limit
    assert (await request(server, "GET", f"{path}?{under}"))[0] == 200
    # Far beyond the limit, still the app's problem document, not the parser's.
    assert_problem(await request(server, "GET", f"{path}?type={'x' * 30000}"), 414, "query")
    # 50 patterns are fine, 51 are not.
    fifty = ",".join(f"{stream}.{n}" for n in range(50))
    result = await request(server, "GET", f"/streams/{fifty}/events")
    assert result[0] == 200, result
    assert_problem(await request(server, "GET", f"/streams/{fifty},{stream}.x/events"), 400,
                   "streams")
    # 20 data filters are fine, 21 are not.
    filters = "&".join(f"data.f{n}=eq.{n}" for n in range(21))
    assert (await request(server, "GET", f"{path}?{filters.rsplit('&', 1)[0]}"))[0] == 200
    assert_problem(await request(server, "GET", f"{path}?{filters}"), 400, "data.f20")


async def test_body_size_items_and_hostile_json(start_server: StartServer,
                                                db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    path = f"/streams/{stream}/events"
    big = orjson.dumps({"type": "t", "data": "x" * (1 << 20)})
    assert_problem(await request(server, "POST", path, data=io.BytesIO(big)), 413, "body")

    async def chunked() -> Any:
        for _ in range(20):
            yield b"[" + b" " * 65536
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url(path), data=chunked(),
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
            assert response.content_type == "application/problem+json"
    items = [{"type": "t", "data": n} for n in range(1001)]
    assert_problem(await request(server, "POST", path, json=items), 400, "body")
    cases = {
        b'{"type":"t","data":1e400}': "too large",
        b'{"type":"t","data":' + b"[" * 2000 + b"]" * 2000 + b"}": "nested",
        # Parsable, but deeper than orjson can write back (254 levels).
        b'{"type":"t","data":' + b"[" * 300 + b"]" * 300 + b"}": "nested",
        b'{"type":"t","data":' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}": "nested",
        b'{"type":"t","data":"a\\u0000b"}': "u0000",
        b'{"type":"t","data":{"\\u0000":1}}': "u0000",
        b'{"type":"t","data":"\xff\xfe"}': "UTF-8",
        b'{"type":"t","data":"\\ud800"}': "surrogate",
        b'{"type":"t\\r\\nevent: x","data":1}': "type",
        b'{"type":"sse.gap","data":1}': "reserved",
        b"": "JSON",
    }
    for raw, words in cases.items():
        body = assert_problem(await request(server, "POST", path, data=raw), 400,
                              "body.type" if words in ("type", "reserved") else
                              "body.data" if words == "u0000" else "body")
        assert words in body["detail"], (raw[:40], body)
    # Deep but not too deep, 64-bit integers and long decimals are fine.
    ok = b'[{"type":"t","data":' + b"[" * 120 + b"]" * 120 + b'},{"type":"t","data":18446744073709551615},{"type":"t","data":-9223372036854775808},' \
         b'{"type":"t","data":0.12345678901234567890123}]'
    code, _, body = await request(server, "POST", path, data=ok)
    assert code == 201, body
    stored = await db.fetch("SELECT data::text FROM sse_stream.events WHERE stream = $1 ORDER BY id",
                            stream)
    assert [r[0] for r in stored][1:3] == ["18446744073709551615", "-9223372036854775808"]
    assert await count(db, stream) == 4


# -- errors ---------------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_problems(start_server: StartServer,
                                                       stream: str) -> None:
    server = await start_server()
    for method, path, status in (("GET", "/nope", 404), ("GET", f"/streams/{stream}/x/y", 404),
                                 ("DELETE", f"/streams/{stream}", 405),
                                 ("PUT", f"/streams/{stream}/events", 405)):
        code, headers, body = await request(server, method, path)
        assert code == status and headers["Content-Type"] == "application/problem+json"
        assert body["status"] == status and body["title"] and body["detail"]
        if status == 405:
            assert "GET" in headers["Allow"]


async def test_unexpected_errors_are_a_logged_500_without_detail(
        start_server: StartServer, stream: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(self: EventStore, *args: Any) -> list[int]:
        raise RuntimeError("SELECT secret FROM internals WHERE password = 'hunter2'")

    # A fault injected into the store, the real database untouched.
    monkeypatch.setattr(EventStore, "publish", broken)
    server = await start_server()
    with caplog.at_level(logging.ERROR, logger="sse_stream.web.handlers"):
        code, headers, body = await request(server, "POST", f"/streams/{stream}/events",
                                            json={"type": "t", "data": 1})
    assert code == 500 and headers["Content-Type"] == "application/problem+json"
    assert "SELECT" not in orjson.dumps(body).decode() and "Traceback" not in body["detail"]
    assert "hunter2" in caplog.text
