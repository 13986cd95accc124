"""Webhooks: the API and CLI, signing, the SSRF guard, pause/resume/rewind/
delete, disabling, retention, access and the SQL functions (docs/webhooks.md).

Each test has a database of its own (fresh_dsn): webhooks are durable, and
every server process of a database delivers them. Receivers are local
aiohttp servers (tests/webhook_receiver.py), so the server runs with
`webhooks_allow_private` except where the guard itself is tested.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import WebhookVerificationError
from support import (
    SECRET,
    app_servers,
    assert_problem,
    bearer,
    eventually,
    old_events,
    position_of,
    publish,
    request,
)
from webhook_receiver import Receiver, Request, exact_retries, verify

from sse_stream.cli.main import main
from sse_stream.core.errors import Refusal
from sse_stream.core.settings import Settings
from sse_stream.db.retention import prune
from sse_stream.db.store import EventStore
from sse_stream.webhooks.model import (
    WebhookSpec,
    check_url,
    message_id,
    new_secret,
    refusal,
    retry_delay,
    secret_key,
    signed_headers,
)

# Short timings: retries in a tenth of a second, a request's timeout of one.
FAST: dict[str, Any] = {"webhooks_allow_private": True, "webhooks_retry": "0.05s,0.1s,0.2s",
                        "webhooks_timeout": 1.0, "webhooks_lease": 3.0}
App = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def app(fresh_dsn: str) -> AsyncIterator[App]:
    """Start the app on the test's own database, with FAST and `overrides`."""
    async with app_servers() as start:
        yield lambda **overrides: start(Settings(dsn=fresh_dsn, **{**FAST, **overrides}))


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_dsn)
    yield connection
    await connection.close()


async def _create(server: TestServer, **body: Any) -> dict[str, Any]:
    status, headers, created = await request(server, "POST", "/webhooks", json=body)
    assert status == 201, created
    assert headers["Location"] == f"/webhooks/{created['id']}"
    return dict(created)


async def _show(server: TestServer, id_: str) -> dict[str, Any]:
    status, _, found = await request(server, "GET", f"/webhooks/{id_}")
    assert status == 200, found
    return dict(found)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def _ids(events: list[dict[str, Any]]) -> list[int]:
    return [event["id"] for event in events]


# -- pure parts ---------------------------------------------------------------------------


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 32
    body = b'{"events":[{"id":1}]}'
    message = message_id("w1", body)
    assert message == message_id("w1", body) != message_id("w2", body)
    assert message != message_id("w1", body + b" ")
    headers = signed_headers(secret_key(secret), message, int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    verify(secret, Request("x", headers, body, 0.0))
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), Request("x", headers, body, 0.0))


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
    ("192.168.0.1", "private"), ("172.16.5.4", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "private"), ("100.64.0.1", "not public"), ("fc00::1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a00:1", "private"),
    ("93.184.215.14", None), ("2606:4700::1111", None)])
def test_refused_addresses(address: str, reason: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("url,detail", [
    ("ftp://example.com/x", "http"), ("http:///x", "host"),
    ("https://u:p@example.com/", "credentials"),
    ("https://example.com/x#frag", "fragment"), ("https://example.com/a b", "spaces"),
    ("https://example.com/" + "a" * 2048, "2048"), (42, "URL")])
def test_url_checks(url: Any, detail: str) -> None:
    with pytest.raises(Refusal) as caught:
        check_url(url)
    assert caught.value.param == "url" and detail in caught.value.detail


def test_spec_and_settings_checks() -> None:
    spec = WebhookSpec.parse({"url": "https://example.com/h", "streams": "a.*,b",
                              "type": "order.*", "where": ["data.x=eq.1"], "start": "0"})
    assert spec.streams == ("a.*", "b") and spec.types == ("order.*",) and spec.start == "0"
    for body, param in [({"url": "https://e.com", "streams": ["a b"]}, "streams"),
                        ({"url": "https://e.com", "streams": []}, "streams"),
                        ({"url": "https://e.com", "streams": ["a"], "where": ["x=1"]}, "where"),
                        ({"url": "https://e.com", "streams": ["a"], "start": "later"}, "start"),
                        ({"url": "https://e.com", "streams": ["a"], "type": ["a b"]}, "type"),
                        ({"url": "https://e.com", "streams": ["a"], "secret": "x"}, "secret"),
                        ([], "body")]:
        with pytest.raises(Refusal) as caught:
            WebhookSpec.parse(body)
        assert caught.value.param == param
    assert Settings(webhooks_retry="5s,30s,2m,10m,1h").webhooks_retry == (5, 30, 120, 600, 3600)
    delays = [retry_delay((5, 30, 3600), n, random.Random(n)) for n in (1, 2, 3, 9)]
    assert 4 <= delays[0] <= 6 and 24 <= delays[1] <= 36 and 2880 <= delays[3] <= 4320
    for bad in [{"webhooks_retry": "soon"}, {"webhooks_disable_after": "x"},
                {"webhooks_lease": 5.0, "webhooks_timeout": 4.0}, {"webhooks_concurrency": 0}]:
        with pytest.raises(ValueError):
            Settings(**bad)


def test_live_buffer_of_a_target() -> None:
    """The seam, scripted: a target joins the live flow only from a read that
    reached the hub's watermark, skips what that read delivered, and its
    batches move the cursor no further than what was offered."""
    from sse_stream.core.events import Event, Position
    from sse_stream.webhooks.target import Target

    webhook = WebhookSpec.parse({"url": "https://example.com/", "streams": ["s"]})
    row = {"id": "w", "url": webhook.url, "streams": ["s"], "types": None, "filters": [],
           "secret": new_secret(), "state": "active", "cursor_xid": "0", "cursor_id": 0,
           "pending_events": None, "failures": 0, "failing_since": None,
           "next_attempt_at": "2026-01-01T00:00:00+00:00", "attempts": 0, "delivered": 0,
           "last_attempt_at": None, "last_status": None, "last_latency_ms": None,
           "last_error": None, "lease_owner": None, "lease_epoch": 1, "created_by": None,
           "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00"}
    from sse_stream.webhooks.model import Webhook
    hook = Webhook.from_json(orjson.dumps(row))
    target = Target(hook, hook.selector(), 0.0)

    def event(xid: int, id_: int) -> Event:
        return Event(id_, Position(xid, id_), "s", "t", b"{}", "2026-01-01T00:00:00Z", 0.0)

    target.join(Position(9, 2**63 - 1), Position(10, 5))  # the hub read past it
    assert not target.joined
    target.join(Position(10, 7), Position(10, 5))
    assert target.joined and target.replayed_through == Position(10, 7)
    for xid, id_ in [(10, 6), (10, 7), (11, 8), (12, 9), (12, 10)]:
        target.offer(event(xid, id_), 100, 1 << 20)
    assert [e.id for e in target.buffer] == [8, 9, 10]  # 6 and 7 came from the read
    parts, covered, more = target.batch(2, 1 << 20, Position(12, 10))
    assert len(parts) == 2 and covered == Position(12, 9) and more
    target.sent(2)
    parts, covered, more = target.batch(2, 1 << 20, Position(14, 2**63 - 1))
    assert len(parts) == 1 and covered == Position(14, 2**63 - 1) and not more
    size = len(event(15, 20).envelope)
    target.sent(1)
    for id_ in range(20, 23):
        target.offer(event(15, id_), 100, 1 << 20)
    assert len(target.batch(100, 2 * size, Position(15, 22))[0]) == 2  # the bytes bound
    for id_ in range(23, 30):
        target.offer(event(15, id_), 2, 1 << 20)  # past 4 requests of 2: back to the table
    assert not target.joined and target.buffer == []


# -- the API ---------------------------------------------------------------------------


async def test_create_deliver_show_list(app: App, receiver: Receiver, db: asyncpg.Connection,
                                        stream: str) -> None:
    server = await app()
    await publish(db, f"{stream}.a", "before", {})  # before the webhook: not delivered
    created = await _create(server, url=receiver.url("w"), streams=[f"{stream}.*"],
                            type=["order.*"], where=["data.n=gte.1"])
    assert created["secret"].startswith("whsec_") and created["state"] == "active"
    ids = [await publish(db, f"{stream}.{k}", t, {"n": n})
           for n, (k, t) in enumerate([("a", "order.new"), ("b", "order.new"), ("a", "other"),
                                       ("a", "order.paid"), ("x.y", "order.new")])]
    events = await receiver.wait_events("w", 2)
    assert _ids(events) == [ids[1], ids[3]]
    assert events[0] == {"id": ids[1], "position": await position_of(db, ids[1]),
                         "stream": f"{stream}.b", "type": "order.new", "data": {"n": 1},
                         "created_at": events[0]["created_at"]}
    for got in receiver.of("w"):
        verify(created["secret"], got)
        assert got.headers["content-type"] == "application/json"
    # The receiver answered; the deliverer records the 2xx (and moves the
    # cursor) just after: wait for that, bounded.
    shown: dict[str, Any] = {}

    async def recorded() -> bool:
        shown.update(await _show(server, created["id"]))
        return bool(shown["delivered_events"] == 2)

    await eventually(recorded, timeout=10)
    assert "secret" not in shown and shown["events_behind"] == 0
    assert shown["delivered_events"] == 2 and shown["last_attempt"]["status"] == 204
    assert shown["recent_attempts"][0]["webhook_id"] == receiver.of("w")[-1].message
    status, _, listed = await request(server, "GET", "/webhooks")
    assert status == 200 and [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert "secret" not in listed["webhooks"][0]


async def test_data_filter_is_the_subscription_filter(app: App, receiver: Receiver,
                                                      db: asyncpg.Connection,
                                                      stream: str) -> None:
    server = await app()
    await _create(server, url=receiver.url("w"), streams=[stream],
                  where=["data.n=gte.2"])
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(4)]
    assert _ids(await receiver.wait_events("w", 2)) == ids[2:]


async def test_a_webhook_that_keeps_up_reads_no_table(app: App, receiver: Receiver,
                                                      db: asyncpg.Connection,
                                                      stream: str) -> None:
    """Once caught up, a webhook takes its events from the server's shared
    read, as live streams do: its requests need no read of their own."""
    server = await app(webhooks_linger=0.0)
    await _create(server, url=receiver.url("w"), streams=[stream], start="0")
    ids = []
    for n in range(20):
        ids.append(await publish(db, stream, "t", {"n": n}))
        await receiver.wait_events("w", n + 1)
    assert _ids(receiver.delivered("w")) == ids
    _, _, text = await request(server, "GET", "/metrics")
    reads = float(text.split(b"\nsse_stream_webhook_reads_total ")[1].split()[0])
    assert 1 <= reads <= 4 and len(receiver.of("w")) == 20


async def test_refusals_name_the_parameter(app: App) -> None:
    server = await app()
    assert_problem(await request(server, "POST", "/webhooks", json={"streams": ["a"]}), 400, "url")
    assert_problem(await request(server, "POST", "/webhooks",
                                 json={"url": "http://127.0.0.1/", "streams": ["a"], "x": 1}),
                   400, "x")
    assert_problem(await request(server, "POST", "/webhooks", data=b"{"), 400, "body")
    assert_problem(await request(server, "POST", "/webhooks", data=b"{}",
                                 headers={"Content-Type": "text/plain"}), 415, "Content-Type")
    assert_problem(await request(server, "GET", "/webhooks/nope"), 404, "id")
    assert_problem(await request(server, "GET",
                                 "/webhooks/7f1e4b3c-58d4-4a9e-9d46-0a4c1f0f2f11"), 404, "id")
    created = await _create(server, url="http://127.0.0.1:9/", streams=["a"])
    for body, param in [({"paused": "yes"}, "paused"), ({"rewind_to": "later"}, "rewind_to"),
                        ({"url": "x"}, "url"), ({}, "body")]:
        assert_problem(await request(server, "PATCH", f"/webhooks/{created['id']}", json=body),
                       400, param)


async def test_pause_resume_rewind_delete(app: App, receiver: Receiver, db: asyncpg.Connection,
                                          stream: str) -> None:
    server = await app()
    created = await _create(server, url=receiver.url("w"), streams=[stream])
    id_ = created["id"]
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
    assert _ids(await receiver.wait_events("w", 3)) == ids

    status, _, paused = await request(server, "PATCH", f"/webhooks/{id_}", json={"paused": True})
    assert status == 200 and paused["state"] == "paused" and paused["next_attempt_at"] is None

    async def handed_back() -> bool:  # the deliverer let go of it
        owner = "SELECT lease_owner FROM sse_stream.webhooks WHERE id = $1"
        return await db.fetchval(owner, uuid.UUID(id_)) is None

    await _until(handed_back, 5)
    ids += [await publish(db, stream, "t", {"n": n}) for n in (3, 4)]
    shown = await _show(server, id_)
    assert shown["events_behind"] == 2 and shown["oldest_undelivered_age"] >= 0
    assert len(receiver.delivered("w")) == 3  # held while paused
    status, _, resumed = await request(server, "PATCH", f"/webhooks/{id_}", json={"paused": False})
    assert status == 200 and resumed["state"] == "active"
    assert _ids(await receiver.wait_events("w", 5)) == ids

    # Rewind to 0: everything again; to a position: what follows it.
    before = len(receiver.of("w"))
    status, _, rewound = await request(server, "PATCH", f"/webhooks/{id_}",
                                       json={"rewind_to": "0"})
    assert status == 200 and rewound["cursor"] == "0"

    def again(start: int) -> list[int]:
        seen: list[int] = []
        for got in receiver.of("w")[start:]:
            if got.accepted:
                seen += _ids(got.events)
        return seen

    await receiver.wait(lambda: again(before) == ids)
    before = len(receiver.of("w"))
    middle = await position_of(db, ids[2])
    status, _, rewound = await request(server, "PATCH", f"/webhooks/{id_}",
                                       json={"rewind_to": middle})
    assert status == 200 and rewound["cursor"] == middle
    await receiver.wait(lambda: again(before) == ids[3:])

    status, _, _ = await request(server, "DELETE", f"/webhooks/{id_}")
    assert status == 204
    assert_problem(await request(server, "GET", f"/webhooks/{id_}"), 404, "id")
    assert_problem(await request(server, "DELETE", f"/webhooks/{id_}"), 404, "id")
    assert await db.fetchval("SELECT count(*) FROM sse_stream.webhook_attempts") == 0


async def test_disabled_after_continuous_failure_then_resumed(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    failing = True

    async def behave(got: Request) -> int | None:
        return 500 if failing else 200

    receiver.behave = behave
    server = await app(webhooks_disable_after="1s")
    created = await _create(server, url=receiver.url("w"), streams=[stream])
    ids = [await publish(db, stream, "t", {"n": 0})]

    async def disabled() -> bool:
        return (await _show(server, created["id"]))["state"] == "disabled"

    await _until(disabled)
    shown = await _show(server, created["id"])
    assert shown["last_attempt"]["status"] == 500 and shown["last_attempt"]["error"] == "HTTP 500"
    assert shown["failures"] >= 3 and shown["failing_since"] is not None
    assert shown["events_behind"] == 1 and shown["cursor"] == created["cursor"]
    attempts = len(receiver.of("w"))
    assert all(got.body == receiver.of("w")[0].body for got in receiver.of("w"))

    async def metrics_say_disabled() -> bool:
        _, _, text = await request(server, "GET", "/metrics")
        return b"sse_stream_webhooks_disabled 1.0" in text

    await _until(metrics_say_disabled)
    _, _, text = await request(server, "GET", "/metrics")
    assert f'sse_stream_webhook_failures_total{{webhook="{created["id"]}"}}'.encode() in text
    ids.append(await publish(db, stream, "t", {"n": 1}))  # while disabled
    assert len(receiver.of("w")) == attempts and (await _show(server, created["id"]))["state"] \
        == "disabled"

    failing = False
    status, _, resumed = await request(server, "PATCH", f"/webhooks/{created['id']}",
                                       json={"paused": False})
    assert status == 200 and resumed["state"] == "active" and resumed["failures"] == 0
    assert _ids(await receiver.wait_events("w", 2)) == ids


async def test_ssrf_guard_at_creation_and_at_connect_time(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    server = await app(webhooks_allow_private=False)
    port = receiver.url("w").split(":")[2].split("/")[0]
    for url, reason in [(f"http://127.0.0.1:{port}/w", "loopback"),
                        (f"http://localhost:{port}/w", "loopback"), ("http://[::1]/", "loopback"),
                        ("http://10.0.0.7/", "private"), ("http://169.254.169.254/", "link-local"),
                        ("http://224.0.0.1/", "multicast"), ("http://0.0.0.0/", "private"),
                        (f"http://2130706433:{port}/w", "loopback"), ("http://0x7f.1/", "loopback"),
                        ("http://[::ffff:a00:1]/", "private"), ("http://1.2.3.256/", "valid")]:
        problem = assert_problem(await request(server, "POST", "/webhooks",
                                               json={"url": url, "streams": [stream]}), 400, "url")
        assert reason in problem["detail"], problem
    # A public address is accepted (never called here: no event matches).
    created = await _create(server, url="https://93.184.215.14/hook", streams=[stream + "x"])
    assert created["url"] == "https://93.184.215.14/hook"

    # Created by a backend (no check at creation), refused at connect time,
    # by address (in any form) and by name; nothing reaches the receiver.
    for path, host in [("a", "127.0.0.1"), ("b", "localhost"), ("d", "2130706433")]:
        await db.execute("SELECT sse_stream.create_webhook($1, $2)",
                         f"http://{host}:{port}/{path}", [stream])
    await publish(db, stream, "t", {})

    async def refused() -> bool:
        errors = await db.fetch("SELECT last_error FROM sse_stream.webhooks "
                                "WHERE url LIKE $1", f"%:{port}/%")
        return len(errors) == 3 and all(e[0] and "loopback" in e[0] for e in errors)

    await _until(refused)
    assert receiver.requests == []

    # With the setting, the same webhooks deliver.
    await server.close()
    await db.execute("UPDATE sse_stream.webhooks SET next_attempt_at = now(), lease_until = NULL, "
                     "lease_owner = NULL")
    server2 = await app(webhooks_allow_private=True)
    assert len(await receiver.wait_events("a", 1)) == 1
    assert len(await receiver.wait_events("b", 1)) == 1
    assert len(await receiver.wait_events("d", 1)) == 1
    await _create(server2, url=f"http://127.0.0.1:{port}/c", streams=[stream])


async def test_ports_at_creation_and_at_connect_time(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    server = await app(webhooks_ports="443,8443")
    port = receiver.url("w").split(":")[2].split("/")[0]
    for url in [f"http://127.0.0.1:{port}/w", "http://93.184.215.14/", "https://e.com:444/"]:
        problem = assert_problem(await request(server, "POST", "/webhooks",
                                               json={"url": url, "streams": [stream]}), 400, "url")
        assert "webhooks_ports" in problem["detail"], problem
    await _create(server, url="https://93.184.215.14:8443/hook", streams=[stream + "x"])

    # Created by a backend: refused at connect time, the address allowed.
    await db.execute("SELECT sse_stream.create_webhook($1, $2)", receiver.url("p"), [stream])
    await publish(db, stream, "t", {})

    async def refused() -> bool:
        error = await db.fetchval("SELECT last_error FROM sse_stream.webhooks WHERE url = $1",
                                  receiver.url("p"))
        return error is not None and f"port {port} is not allowed" in error

    await _until(refused)
    assert receiver.requests == []


async def test_access_needs_the_webhooks_claim(app: App, receiver: Receiver) -> None:
    from support import token

    server = await app(jwt_secret=SECRET)
    body = {"url": receiver.url("w"), "streams": ["orders.*"]}
    assert_problem(await request(server, "POST", "/webhooks", json=body), 401, "Authorization")
    plain = token(["orders.*"], ["orders.1"])
    assert_problem(await request(server, "POST", "/webhooks", json=body, headers=bearer(plain)),
                   403, "Authorization")
    orders = token(sse_stream={"subscribe": ["orders.*"], "webhooks": ["orders.*"]}, sub="u")
    news = token(sse_stream={"subscribe": ["news"], "webhooks": ["news"]}, sub="u")
    assert_problem(await request(server, "POST", "/webhooks", headers=bearer(orders),
                                 json={**body, "streams": ["orders.>"]}), 403, "streams")
    assert_problem(await request(server, "POST", "/webhooks", json=body,
                                 cookies={"sse_stream_token": orders}), 401, "sse_stream_token")
    status, _, created = await request(server, "POST", "/webhooks", json=body,
                                       headers=bearer(orders))
    assert status == 201
    status, _, listed = await request(server, "GET", "/webhooks", headers=bearer(news))
    assert status == 200 and listed["webhooks"] == []
    for method in ("GET", "DELETE"):
        assert_problem(await request(server, method, f"/webhooks/{created['id']}",
                                     headers=bearer(news)), 404, "id")
    status, _, shown = await request(server, "GET", f"/webhooks/{created['id']}",
                                     headers=bearer(orders))
    assert status == 200 and shown["id"] == created["id"]

    protected = await app()
    assert_problem(await request(protected, "GET", "/webhooks", headers={"Host": "example.com"}),
                   403, "Host")


async def test_backend_manages_webhooks_in_its_own_transactions(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    await app()
    # A rolled-back creation leaves nothing; a webhook created (start 'now')
    # in the same transaction as an event gets that event.
    transaction = db.transaction()
    await transaction.start()
    await db.execute("SELECT sse_stream.create_webhook($1, $2)", receiver.url("gone"), [stream])
    await transaction.rollback()
    async with db.transaction():
        row = await db.fetchrow("SELECT id, secret FROM sse_stream.create_webhook($1, $2, "
                                "types => $3)", receiver.url("w"), [stream], ["keep"])
        kept = await publish(db, stream, "keep", {"n": 1})
        await publish(db, stream, "other", {"n": 2})
    assert row["secret"].startswith("whsec_")
    events = await receiver.wait_events("w", 1)
    assert _ids(events) == [kept]
    verify(row["secret"], receiver.of("w")[0])
    assert await db.fetchval("SELECT count(*) FROM sse_stream.webhooks WHERE url LIKE '%/gone'") \
        == 0
    await db.fetchval("SELECT sse_stream.pause_webhook($1)", row["id"])
    assert await db.fetchval("SELECT state FROM sse_stream.webhooks WHERE id = $1",
                             row["id"]) == "paused"
    assert await db.fetchval("SELECT sse_stream.delete_webhook($1)", row["id"])
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await db.execute("SELECT sse_stream.create_webhook('http://x/', ARRAY['a b'])")
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await db.execute("SELECT sse_stream.rewind_webhook(gen_random_uuid(), 'later')")


async def test_retention_waits_for_webhooks_unless_forced(
        app: App, receiver: Receiver, fresh_dsn: str, db: asyncpg.Connection,
        stream: str) -> None:
    old = await old_events(db, stream, 10)
    young = await publish(db, stream, "new", {})
    id_ = await db.fetchval("SELECT id FROM sse_stream.create_webhook($1, $2, start => '0')",
                            receiver.url("w"), [stream])
    await db.execute("SELECT sse_stream.pause_webhook($1)", id_)
    store = EventStore(fresh_dsn)
    await store.open()
    try:
        month = timedelta(days=30)
        assert (await prune(store, month)).deleted == 0  # held at the cursor: 0
        await db.execute("SELECT sse_stream.rewind_webhook($1, $2)", id_, old[3])
        result = await prune(store, month)
        assert result.deleted == 4 and result.pruned is not None
        assert result.pruned.encode() == old[3]
        # A disabled webhook holds nothing back; then the paused one again.
        await db.execute("UPDATE sse_stream.webhooks SET state = 'disabled' WHERE id = $1", id_)
        await db.execute("SELECT sse_stream.rewind_webhook($1, '0')", id_)
        assert (await prune(store, month, batch=2, max_batches=1)).deleted == 2
        await db.execute("SELECT sse_stream.pause_webhook($1)", id_)
        await db.execute("SELECT sse_stream.rewind_webhook($1, $2)", id_, old[6])
        assert (await prune(store, month)).deleted == 1
        forced = await prune(store, month, force=True)
        assert forced.deleted == 3 and forced.pruned is not None
        assert forced.pruned.encode() == old[-1]
    finally:
        await store.close()
    # The webhook's next request starts with sse.gap, then what is left.
    server = await app()
    status, _, _ = await request(server, "PATCH", f"/webhooks/{id_}", json={"paused": False})
    assert status == 200
    events = await receiver.wait_events("w", 2)
    assert events[0] == {"position": old[-1], "type": "sse.gap",
                         "data": {"requested_after": old[6], "resumed_after": old[-1]}}
    assert _ids(events[1:]) == [young]


async def test_cli_manages_webhooks(receiver: Receiver, fresh_dsn: str, stream: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    errors: list[str] = []

    def run(*args: str) -> tuple[int, Any]:
        code = main(["webhooks", *args, "--dsn", fresh_dsn])
        out, err = capsys.readouterr()
        errors.append(err)
        return code, orjson.loads(out) if out.startswith("{") else out

    code, created = await asyncio.to_thread(
        run, "add", receiver.url("w"), f"{stream}.*", "--type", "order.*", "--where",
        "data.n=gt.1", "--start", "0", "--webhooks-allow-private")
    assert code == 0 and created["secret"].startswith("whsec_") and created["cursor"] == "0"
    code, _ = await asyncio.to_thread(run, "add", receiver.url("w"), stream)
    assert code == 2 and "loopback" in errors[-1]
    code, _ = await asyncio.to_thread(run, "add", receiver.url("w"), stream,
                                      "--webhooks-allow-private", "--webhooks-ports", "443")
    assert code == 2 and "webhooks_ports" in errors[-1]
    id_ = created["id"]
    code, listed = await asyncio.to_thread(run, "list")
    assert [w["id"] for w in listed["webhooks"]] == [id_]
    for action, state in [("pause", "paused"), ("resume", "active"), ("show", "active")]:
        code, shown = await asyncio.to_thread(run, action, id_)
        assert code == 0 and shown["state"] == state
    assert "events_behind" in shown and "secret" not in shown
    code, rewound = await asyncio.to_thread(run, "rewind", id_, "5-7")
    assert code == 0 and rewound["cursor"] == "5-7"
    code, _ = await asyncio.to_thread(run, "rewind", id_, "later")
    assert code == 2
    code, out = await asyncio.to_thread(run, "delete", id_)
    assert code == 0 and out.strip() == f"deleted {id_}"
    code, _ = await asyncio.to_thread(run, "show", id_)
    assert code == 1


async def test_exact_retries_after_resets_and_timeouts(app: App, receiver: Receiver,
                                                       db: asyncpg.Connection,
                                                       stream: str) -> None:
    """A failed batch is sent again as it was, even when more events came
    meanwhile: same body, same webhook-id."""
    answers = [None, "slow", 500, 204, 204, 204]

    async def behave(got: Request) -> int | None:
        answer = answers.pop(0) if answers else 204
        if answer == "slow":
            await asyncio.sleep(1.5)  # past the timeout: answered, but too late
            return 200
        return answer  # type: ignore[return-value]

    receiver.behave = behave
    server = await app()
    await _create(server, url=receiver.url("w"), streams=[stream])
    first = await publish(db, stream, "t", {"n": 0})
    await receiver.wait(lambda: len(receiver.of("w")) >= 1)
    rest = [await publish(db, stream, "t", {"n": n}) for n in range(1, 4)]
    events = await receiver.wait_events("w", 4)
    assert _ids(events) == [first, *rest]
    got = receiver.of("w")
    assert [r.message for r in got[:4]] == [got[0].message] * 4
    exact_retries(got)
