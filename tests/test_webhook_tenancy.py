"""Tenancy of webhooks (docs/webhooks.md "Ownership and limits"): a webhook
reads no more than the grants of the token that made it, belongs to that
token's subject, pages, holds retention back for a bounded time, and an
owner may have a bounded number."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from support import (
    SECRET,
    app_servers,
    assert_problem,
    bearer,
    eventually,
    old_events,
    publish,
    request,
)
from support import token as make_token
from webhook_receiver import Receiver

from sse_stream.core.settings import Settings
from sse_stream.db.retention import prune
from sse_stream.db.store import EventStore

FAST: dict[str, Any] = {"webhooks_allow_private": True, "webhooks_retry": "0.05s,0.1s,0.2s",
                        "webhooks_timeout": 1.0, "webhooks_lease": 3.0, "jwt_secret": SECRET}
App = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def app(fresh_dsn: str) -> AsyncIterator[App]:
    async with app_servers() as start:
        yield lambda **overrides: start(Settings(dsn=fresh_dsn, **{**FAST, **overrides}))


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_dsn)
    yield connection
    await connection.close()


def user(sub: str | None, subscribe: list[Any], webhooks: list[str], *,
         where: list[str] | None = None, iss: str | None = None,
         **section: Any) -> dict[str, str]:
    """Headers with a token of subject `sub` (and issuer `iss`)."""
    claims: dict[str, Any] = {"sub": sub} if sub is not None else {}
    if iss is not None:
        claims["iss"] = iss
    body = {"subscribe": subscribe, "publish": [], "webhooks": webhooks, **section}
    if where is not None:
        body["where"] = where
    return bearer(make_token(sse_stream=body, **claims))


async def create(server: TestServer, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    status, _, created = await request(server, "POST", "/webhooks", json=body, headers=headers)
    assert status == 201, created
    return dict(created)


async def seed(db: asyncpg.Connection, stream: str) -> dict[int, int | None]:
    """Orders of customers 42 and 43 and one without: {id: customer}."""
    found = {}
    for customer in (42, 43, None, 42, 43):
        data = {"total": 5} if customer is None else {"customer_id": customer, "total": 5}
        found[await publish(db, stream, "order.created", data)] = customer
    return found


async def test_a_webhook_reads_no_more_than_its_creators_grants(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    server = await app()
    orders = f"{stream}.orders.1"
    alice = user("alice", [f"{stream}.orders.*"], [f"{stream}.orders.*"],
                 where=["data.customer_id=eq.42"])
    history = await seed(db, orders)
    created = await create(server, alice, url=receiver.url("alice"),
                           streams=[f"{stream}.orders.*"], start="0")
    # What the webhook is bound to is shown, and kept.
    assert created["grant_where"] == [{"streams": [f"{stream}.orders.*"],
                                       "where": ["data.customer_id=eq.42"]}]
    assert created["created_by"] == "alice"
    live = await seed(db, orders)
    mine = [i for i, c in {**history, **live}.items() if c == 42]
    got = await receiver.wait_events("alice", len(mine))
    assert [e["id"] for e in got] == mine
    # The same token's page gives the same answer.
    status, _, page = await request(server, "GET", f"/streams/{stream}.orders.*/events",
                                    headers=alice)
    assert status == 200 and [e["id"] for e in page["events"]] == mine
    # Nothing else arrives later: a marker of 42 is the next event received.
    marker = await publish(db, orders, "order.created", {"customer_id": 42})
    await publish(db, orders, "order.created", {"customer_id": 43})
    got = await receiver.wait_events("alice", len(mine) + 1)
    assert [e["id"] for e in got] == [*mine, marker]

    # Each stream under its own grants: a filtered one and a plain one.
    bob = user("bob", [{"pattern": f"{stream}.orders.*", "where": ["data.customer_id=eq.43"]},
                       f"{stream}.news"], [f"{stream}.>"])
    both = await create(server, bob, url=receiver.url("bob"),
                        streams=[f"{stream}.orders.*", f"{stream}.news"], start="0",
                        where=["data.total=gte.1"])
    assert both["grant_where"] == [{"streams": [f"{stream}.orders.*"],
                                    "where": ["data.customer_id=eq.43"]},
                                   {"streams": [f"{stream}.news"], "where": []}]
    news = [await publish(db, f"{stream}.news", "headline", {"total": n}) for n in (0, 1)]
    everything = {**history, **live}
    expected = sorted([i for i, c in everything.items() if c == 43] + news[1:])
    got = await receiver.wait_events("bob", len(expected))
    assert [e["id"] for e in got] == expected
    # GET shows the stored filters too; PATCH cannot touch them.
    status, _, shown = await request(server, "GET", f"/webhooks/{both['id']}", headers=bob)
    assert status == 200 and shown["grant_where"] == both["grant_where"]
    assert_problem(await request(server, "PATCH", f"/webhooks/{both['id']}", headers=bob,
                                 json={"grant_where": None}), 400, "grant_where")


async def test_the_streams_must_be_covered_by_subscribe_grants(app: App,
                                                              receiver: Receiver,
                                                              stream: str) -> None:
    server = await app(anonymous_subscribe=f"{stream}.public")
    body = {"url": receiver.url("w"), "streams": [f"{stream}.orders"]}
    # A token that may manage webhooks but not read the stream: 403 on both.
    nothing = user("carol", [], [f"{stream}.>"])
    assert_problem(await request(server, "GET", f"/streams/{stream}.orders/events",
                                 headers=nothing), 403, "streams")
    assert_problem(await request(server, "POST", "/webhooks", json=body, headers=nothing),
                   403, "streams")
    narrow = user("carol", [f"{stream}.orders"], [f"{stream}.>"])
    assert_problem(await request(server, "POST", "/webhooks", headers=narrow,
                                 json={**body, "streams": [f"{stream}.*"]}), 403, "streams")
    # Streams anyone may read need no grant, and carry no filter.
    public = await create(server, nothing, url=receiver.url("p"), streams=[f"{stream}.public"])
    assert public["grant_where"] == [{"streams": [f"{stream}.public"], "where": []}]
    # Managing webhooks needs a subject to own them.
    anonymous = user(None, [f"{stream}.orders"], [f"{stream}.>"])
    assert_problem(await request(server, "POST", "/webhooks", json=body, headers=anonymous),
                   403, "Authorization")
    # And the webhooks grant itself, as before.
    reader = user("carol", [f"{stream}.orders"], [])
    assert_problem(await request(server, "POST", "/webhooks", json=body, headers=reader),
                   403, "Authorization")
    assert_problem(await request(server, "POST", "/webhooks", json=body), 401, "Authorization")
    cookie = make_token(sse_stream={"subscribe": [f"{stream}.orders"],
                                    "webhooks": [f"{stream}.>"]}, sub="carol")
    assert_problem(await request(server, "POST", "/webhooks", json=body,
                                 cookies={"sse_stream_token": cookie}), 401, "sse_stream_token")


async def test_other_owners_see_nothing_and_admins_see_all(
        app: App, receiver: Receiver, db: asyncpg.Connection, stream: str) -> None:
    server = await app()
    grants = ([f"{stream}.*"], [f"{stream}.*"])
    alice, mallory = user("alice", *grants), user("mallory", *grants)
    # The same subject from another issuer is another owner.
    elsewhere = user("alice", *grants, iss="https://other.example")
    admin = user("ops", [], [f"{stream}.*"], webhooks_admin=True)
    created = await create(server, alice, url=receiver.url("a"), streams=[f"{stream}.x"])
    path = f"/webhooks/{created['id']}"
    for intruder in (mallory, elsewhere):
        for method, body in (("GET", None), ("DELETE", None), ("PATCH", {"paused": True}),
                             ("PATCH", {"rewind_to": "0"})):
            assert_problem(await request(server, method, path, json=body, headers=intruder),
                           404, "id")
        status, _, listed = await request(server, "GET", "/webhooks", headers=intruder)
        assert status == 200 and listed["webhooks"] == [] and not listed["has_more"]
    row = await db.fetchrow("SELECT state, cursor_xid::text, lease_epoch FROM "
                            "sse_stream.webhooks WHERE id = $1", created["id"])
    assert row["state"] == "active"  # untouched
    for owner in (alice, admin):
        status, _, listed = await request(server, "GET", "/webhooks", headers=owner)
        assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
        status, _, shown = await request(server, "GET", path, headers=owner)
        assert status == 200 and shown["id"] == created["id"]
    # An admin is still bounded by its webhooks patterns.
    other = user("ops", [], ["elsewhere.*"], webhooks_admin=True)
    assert_problem(await request(server, "GET", path, headers=other), 404, "id")
    status, _, changed = await request(server, "PATCH", path, json={"paused": True},
                                       headers=admin)
    assert status == 200 and changed["state"] == "paused"
    status, _, _ = await request(server, "DELETE", path, headers=alice)
    assert status == 204


async def test_listing_pages_after_the_owner_filter(app: App, db: asyncpg.Connection,
                                                    stream: str) -> None:
    server = await app(webhooks=False)
    # 1,051 of alice's and 29 of bob's, interleaved in time.
    await db.execute(
        "SELECT sse_stream.create_webhook('https://example.com/' || n, ARRAY[$1],"
        " created_by => CASE WHEN n % 37 = 0 AND n < 1110 THEN 'bob' ELSE 'alice' END)"
        " FROM generate_series(1, 1080) n", stream)
    counts = dict(await db.fetch("SELECT created_by, count(*) FROM sse_stream.webhooks "
                                 "GROUP BY 1"))
    alice = user("alice", [stream], [stream])
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        query = "?limit=1000" + (f"&after={after}" if after else "")
        status, _, page = await request(server, "GET", "/webhooks" + query, headers=alice)
        assert status == 200, page
        pages += 1
        seen += [w["id"] for w in page["webhooks"]]
        assert all(w["created_by"] == "alice" for w in page["webhooks"])
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert pages == 2 and len(seen) == len(set(seen)) == counts["alice"] > 1000
    # Oldest first, in the order an admin sees them too.
    admin = user("ops", [], [stream], webhooks_admin=True)
    status, _, everyone = await request(server, "GET", "/webhooks?limit=1000", headers=admin)
    assert len(everyone["webhooks"]) == 1000 and everyone["has_more"]
    assert [w["id"] for w in everyone["webhooks"] if w["created_by"] == "alice"] == \
        seen[:len([w for w in everyone["webhooks"] if w["created_by"] == "alice"])]
    for bad, param in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"),
                       ("after=nope", "after"), ("after=1_x", "after"), ("sort=id", "sort")):
        assert_problem(await request(server, "GET", f"/webhooks?{bad}", headers=alice),
                       400, param)


async def test_webhooks_per_owner_are_capped(app: App, receiver: Receiver, stream: str) -> None:
    server = await app(webhooks_per_owner=2, webhooks=False)
    grants = ([stream], [stream])
    alice, bob = user("alice", *grants), user("bob", *grants)
    body = {"url": receiver.url("w"), "streams": [stream]}
    # Concurrent creations cannot slip past the cap.
    results = await asyncio.gather(*[request(server, "POST", "/webhooks", json=body,
                                             headers=alice) for _ in range(5)])
    assert sorted(status for status, _, _ in results) == [201, 201, 409, 409, 409]
    refused = next(body for status, _, body in results if status == 409)
    assert refused["param"] == "Authorization" and "webhooks_per_owner" in refused["detail"]
    await create(server, bob, **body)  # another owner has a cap of its own
    first = next(body for status, _, body in results if status == 201)
    status, _, _ = await request(server, "DELETE", f"/webhooks/{first['id']}", headers=alice)
    assert status == 204
    await create(server, alice, **body)


@pytest.mark.parametrize("held", ["paused", "failing"])
async def test_a_stalled_webhook_holds_retention_for_a_bounded_time(
        app: App, receiver: Receiver, db: asyncpg.Connection, fresh_dsn: str, stream: str,
        held: str) -> None:
    old = await old_events(db, stream, 5)
    young = await publish(db, stream, "new", {})
    # Delivered up to the first old event; the other four are still to come.
    id_ = await db.fetchval("SELECT id FROM sse_stream.create_webhook($1, $2, start => $3)",
                            receiver.url("w"), [stream], old[0])
    if held == "paused":
        await db.execute("SELECT sse_stream.pause_webhook($1)", id_)
    else:
        await db.execute("UPDATE sse_stream.webhooks SET failures = 3, "
                         "failing_since = now() WHERE id = $1", id_)
    store = EventStore(fresh_dsn)
    await store.open()
    try:
        month, day = timedelta(days=30), 86400.0
        assert (await prune(store, month, max_hold=day)).deleted == 1  # held at its cursor
        # A day after its cursor last moved (moved back rather than waited
        # for), the hold has lifted. Pausing, resuming and rewinding in
        # between move no cursor forward: they do not renew it.
        await db.execute("UPDATE sse_stream.webhooks SET progressed_at = now() - "
                         "interval '25 hours' WHERE id = $1", id_)
        await db.execute("SELECT sse_stream.rewind_webhook($1, $2)", id_, old[0])
        if held == "paused":
            await db.execute("SELECT sse_stream.resume_webhook($1)", id_)
            await db.execute("SELECT sse_stream.pause_webhook($1)", id_)
        else:
            await db.execute("UPDATE sse_stream.webhooks SET failing_since = now() "
                             "WHERE id = $1", id_)
        assert (await prune(store, month, max_hold=2 * day)).deleted == 0
        result = await prune(store, month, max_hold=day)
        assert result.deleted == 4 and result.pruned is not None
        assert result.pruned.encode() == old[-1]
    finally:
        await store.close()
    if held == "failing":
        await db.execute("UPDATE sse_stream.webhooks SET failures = 0, failing_since = NULL, "
                         "next_attempt_at = now() WHERE id = $1", id_)
    else:
        await db.execute("SELECT sse_stream.resume_webhook($1)", id_)
    # Its next request starts with sse.gap, then what is left.
    await app()
    events = await receiver.wait_events("w", 2)
    assert events[0] == {"position": old[-1], "type": "sse.gap",
                         "data": {"requested_after": old[0], "resumed_after": old[-1]}}
    assert [e["id"] for e in events[1:]] == [young]
    # The delivery moved the cursor forward: progress is recorded (by the
    # deliverer, just after the receiver answered: wait for it, bounded).

    async def progressed() -> bool:
        return bool(await db.fetchval("SELECT progressed_at > now() - interval '1 minute' "
                                      "FROM sse_stream.webhooks WHERE id = $1", id_))

    await eventually(progressed, timeout=10)


async def test_a_healthy_webhook_holds_retention_however_old_its_progress(
        db: asyncpg.Connection, fresh_dsn: str, stream: str) -> None:
    old = await old_events(db, stream, 3)
    id_ = await db.fetchval("SELECT id FROM sse_stream.create_webhook('https://example.com/w', "
                            "$1, start => $2)", [stream], old[0])
    await db.execute("UPDATE sse_stream.webhooks SET progressed_at = now() - interval '30 days'"
                     " WHERE id = $1", id_)
    store = EventStore(fresh_dsn)
    await store.open()
    try:
        # Active and not failing: it is delivering, so its cursor holds.
        assert (await prune(store, timedelta(days=1), max_hold=86400.0)).deleted == 1
    finally:
        await store.close()
