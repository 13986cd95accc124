"""Token-bound filters (`where`, SPEC §7) against a running server and the real
PostgreSQL: token-wide and per-grant filters on live streams, replay,
`live=false` and pages; request filters (`or=`, `not.`, types) cannot widen
them; malformed claims are 401s; the token command mints them; and a
property test that the delivered set is always request ∧ token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sse import envelope, open_stream
from support import (
    SECRET,
    Pairs,
    StartServer,
    assert_problem,
    bearer,
    documents,
    dump,
    event_id,
    filter_pairs,
    joined,
    leaves,
    live_until,
    position_of,
    publish,
    publish_texts,
    request,
    runner,
    token,
)

from sse_stream.access.auth import grant_from_claims
from sse_stream.cli import main as cli
from sse_stream.core.events import parse_position
from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.patterns import parse_pattern_list, parse_type_filter
from sse_stream.core.selector import Selector
from sse_stream.engine.routing import Group
from sse_stream.web.handlers import HUB


async def seed(db: asyncpg.Connection, stream: str) -> dict[int, tuple[str, Any]]:
    """Orders of customers 42 and 43 (and one without a customer), by id."""
    rows = [("order.created", {"customer_id": 42, "total": 10}),
            ("order.created", {"customer_id": 43, "total": 500, "vip": True}),
            ("order.paid", {"customer_id": 42, "total": 10}),
            ("note", {"text": "no customer"}),
            ("order.paid", {"customer_id": "42", "total": 7}),  # text "42" is eq.42 too
            ("order.created", {"customer_id": 43, "total": 1})]
    return {await publish(db, stream, type_, data): (type_, data) for type_, data in rows}


async def page(server: TestServer, path: str, headers: dict[str, str]) -> list[int]:
    code, _, body = await request(server, "GET", path, headers=headers)
    assert code == 200, body
    return [event["id"] for event in body["events"]]


async def replay(server: TestServer, path: str, headers: dict[str, str]) -> list[int]:
    sep = "&" if "?" in path else "?"
    async with open_stream(str(server.make_url(path)) + f"{sep}last_event_id=0&live=false",
                           headers=headers) as sse:
        return [envelope(m)["id"] for m in await sse.rest()]


# -- token-wide where ------------------------------------------------------------


async def test_token_wide_where_binds_live_replay_live_false_and_pages(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, heartbeat=0.2)
    headers = bearer(token([f"{stream}.*"], where=["data.customer_id=eq.42"]))
    # Live first: open before anything is published.
    async with open_stream(str(server.make_url(f"/streams/{stream}.*")), headers=headers) as sse:
        await joined(sse)
        events = await seed(db, f"{stream}.orders")
        mine = [id_ for id_, (_, data) in events.items()
                if str(data.get("customer_id")) == "42"]
        received = await sse.take(len(mine))
        last = parse_position(received[-1].last_event_id)
        assert [envelope(m)["id"] for m in received] == mine
        # Nothing else follows: the next line is a bare id past the last event.
        await sse.until(lambda parser: parse_position(parser.last_event_id) > last, timeout=5)
        assert not sse.pending
    assert len(mine) == 3
    path = f"/streams/{stream}.orders"
    assert await replay(server, path, headers) == mine
    assert await page(server, path + "/events", headers) == mine
    # The Last-Event-ID header (a browser's reconnect) is a replay too.
    first = await position_of(db, min(events))
    async with open_stream(str(server.make_url(path)) + "?live=false",
                           headers={**headers, "Last-Event-ID": first}) as sse:
        assert [envelope(m)["id"] for m in await sse.rest()] == mine[1:]

    # No request parameter widens it: an or= naming other customers, not.,
    # types, all ANDed with the token's filter.
    for query, expected in [
            ("or=(data.customer_id.eq.43,data.vip.is.true)", []),
            ("or=(data.customer_id.eq.43,data.total.gt.5)", mine),
            ("data.customer_id=not.eq.42", []),
            ("data.customer_id=neq.43", mine),
            ("data.customer_id=in.(41,43,44)", []),
            ("data.customer_id=not.in.(42)", []),
            ("type=note", []),
            ("type=order.*", mine),
            ("type=order.paid", [i for i in mine if events[i][0] == "order.paid"]),
            ("data.total=gt.8", [i for i in mine if events[i][1]["total"] > 8])]:
        assert await page(server, f"{path}/events?{query}", headers) == expected, query
        assert await replay(server, f"{path}?{query}", headers) == expected, query
    # Without the token's filter, the same request sees everyone's events.
    other = bearer(token([f"{stream}.*"]))
    assert await page(server, f"{path}/events", other) == list(events)


async def test_each_users_token_gets_its_own_events_live(start_server: StartServer,
                                                         db: asyncpg.Connection,
                                                         stream: str) -> None:
    """Many users on the same streams with the same request: each token's filter
    is its own selector, filed in the live index by the token's eq."""
    server = await start_server(jwt_secret=SECRET, heartbeat=0.2)
    users = range(20)
    async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
        streams = []
        for user in users:
            headers = bearer(token([f"{stream}.>"], where=[f"data.user=eq.{user}"]))
            url = str(server.make_url(f"/streams/{stream}.>")) + "?type=t&data.k=eq.1"
            streams.append(await stack.enter_async_context(
                open_stream(url, headers=headers, session=session)))
        for sse in streams:
            await joined(sse)
        # The request's own eq comes after the token's: the index is the token's.
        groups = list(server.app[HUB]._index._groups.values())
        assert len(groups) == len(users)
        assert {index.path for group in groups for _, index in group.filings} == {("user",)}
        ids = [row[0] for row in await db.fetch(
            "SELECT sse_stream.publish($1 || '.' || (n % 3), 't',"
            " jsonb_build_object('user', n % 20, 'k', 1))"
            " AS id FROM generate_series(0, 39) n ORDER BY id", stream)]
        for user, sse in zip(users, streams):
            received = await sse.take(2)
            assert [envelope(m)["data"] for m in received] == [{"user": user, "k": 1}] * 2
            assert [envelope(m)["id"] for m in received] == [ids[user], ids[user + 20]]


def test_token_terms_come_first_in_the_selector() -> None:
    grant = grant_from_claims({"sse_stream": {
        "subscribe": [{"pattern": "orders.*", "where": ["data.customer_id=eq.42"]}],
        "where": ["data.tenant=not.eq.x"]}})
    patterns = parse_pattern_list("orders.*")
    request = parse_data_filters([("data.status", "eq.paid"), ("or", "(data.a.eq.1,data.b.eq.2)")])
    coverage = [[scope.where for scope in scopes] for scopes in grant.cover(patterns)]
    selector = Selector(patterns, None, request).scoped(coverage)
    assert selector.data is not None and request is not None and not selector.parts
    assert selector.data.terms[2:] == request.terms
    # The token-wide filter, then the grant's; the first eq indexes the group.
    group = Group(selector, False)
    [(pattern, index)] = group.filings
    assert pattern.text == "orders.*"
    assert index.path == ("customer_id",) and "42" in index.keys
    # No token filters: the selector is the request's own.
    plain = Selector(patterns, None, request)
    assert plain.bound(()) is plain and plain.scoped([[()]]) is plain


def test_patterns_of_one_request_keep_their_own_grants() -> None:
    grant = grant_from_claims({"sse_stream": {"subscribe": [
        {"pattern": "orders.*", "where": ["data.customer_id=eq.42"]},
        {"pattern": "orders.eu", "where": ["data.customer_id=eq.43"]}, "news"]}})
    patterns = parse_pattern_list("orders.eu,news,orders.us")
    request = parse_data_filters([("data.total", "gt.5")])
    coverage = [[scope.where for scope in scopes] for scopes in grant.cover(patterns)]
    selector = Selector(patterns, None, request).scoped(coverage)
    assert selector.data is None and len(selector.parts) == 3
    # Each filing is indexed by its own grant's eq; news by nothing.
    filed = [(pattern.text, index.path, "42" in index.keys, "43" in index.keys)
             for pattern, index in Group(selector, False).filings]
    assert sorted(filed, key=str) == sorted([
        ("orders.eu", ("customer_id",), True, False), ("orders.us", ("customer_id",), True, False),
        ("orders.eu", ("customer_id",), False, True), ("news", None, False, False)], key=str)
    from sse_stream.core.events import Event

    def event(stream: str, data: str) -> Event:
        return Event(1, parse_position("5-1"), stream, "t", data.encode(),
                     "2026-01-01T00:00:00Z", 0.0)

    # orders.eu: 42 or 43 (the union of its two grants), and the request's total.
    assert selector.accepts(event("orders.eu", '{"customer_id": 43, "total": 9}'))
    assert selector.accepts(event("orders.eu", '{"customer_id": 42, "total": 9}'))
    assert not selector.accepts(event("orders.eu", '{"customer_id": 44, "total": 9}'))
    assert not selector.accepts(event("orders.eu", '{"customer_id": 43, "total": 1}'))
    # orders.us: 42 only; news: any customer, the request's total still applies.
    assert not selector.accepts(event("orders.us", '{"customer_id": 43, "total": 9}'))
    assert selector.accepts(event("news", '{"customer_id": 7, "total": 9}'))
    assert not selector.accepts(event("news", '{"customer_id": 7, "total": 1}'))


# -- per-grant where ---------------------------------------------------------------


async def test_per_grant_where(start_server: StartServer, db: asyncpg.Connection,
                               stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, heartbeat=0.2,
                                anonymous_subscribe=f"{stream}.public")
    orders, news = f"{stream}.orders", f"{stream}.news"
    headers = bearer(token([{"pattern": f"{stream}.orders", "where": ["data.customer_id=eq.42"]},
                            news, f"{stream}.public"]))
    events = await seed(db, orders)
    mine = [id_ for id_, (_, data) in events.items() if str(data.get("customer_id")) == "42"]
    headlines = [await publish(db, news, "headline", {"customer_id": n}) for n in (1, 42)]
    public = [await publish(db, f"{stream}.public", "p", {"n": n}) for n in (1, 2)]
    assert await page(server, f"/streams/{orders}/events", headers) == mine
    assert await replay(server, f"/streams/{orders}", headers) == mine
    # A plain pattern grants its stream unfiltered.
    assert await page(server, f"/streams/{news}/events", headers) == headlines
    assert await replay(server, f"/streams/{news}", headers) == headlines
    # Two patterns of one request bound to different filters: each stream
    # under its own grant's, in one connection, never the other pattern's.
    both = sorted(mine + headlines)
    for path in (f"/streams/{orders},{news}", f"/streams/{news},{orders}"):
        assert await page(server, path + "/events", headers) == both
        assert await replay(server, path, headers) == both
    assert await page(server, f"/streams/{orders},{stream}.public/events", headers) == \
        sorted(mine + public)
    # The request's own filters still apply to every stream, on top.
    assert await page(server, f"/streams/{orders},{news}/events?data.customer_id=eq.1",
                      headers) == headlines[:1]
    # Anonymous patterns have no filters, with or without the token.
    assert await page(server, f"/streams/{news},{stream}.public/events", headers) == \
        headlines + public
    assert await page(server, f"/streams/{stream}.public/events", {}) == public

    # Live: the filtered and the unfiltered grant, on one connection and side
    # by side on two.
    async with open_stream(str(server.make_url(f"/streams/{orders}")), headers=headers) as a, \
            open_stream(str(server.make_url(f"/streams/{news}")), headers=headers) as b, \
            open_stream(str(server.make_url(f"/streams/{orders},{news}")),
                        headers=headers) as c:
        for sse in (a, b, c):
            await joined(sse)
        later = await seed(db, orders)
        more = [await publish(db, news, "headline", {"customer_id": n}) for n in (43, 44)]
        theirs = [id_ for id_, (_, data) in later.items() if str(data.get("customer_id")) == "42"]
        assert [envelope(m)["id"] for m in await a.take(3)] == theirs
        assert [envelope(m)["id"] for m in await b.take(2)] == more
        assert [envelope(m)["id"] for m in await c.take(5)] == theirs + more


async def test_the_unfiltered_grant_wins_and_token_wide_where_joins_every_grant(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    orders = f"{stream}.orders"
    events = await seed(db, orders)
    everyone = list(events)
    mine = [id_ for id_, (_, data) in events.items() if str(data.get("customer_id")) == "42"]
    path = f"/streams/{orders}/events"
    # Covered by a filtered and an unfiltered grant: the unfiltered one grants more.
    both = bearer(token([{"pattern": f"{stream}.*", "where": ["data.customer_id=eq.42"]},
                         f"{stream}.>"]))
    assert await page(server, path, both) == everyone
    # Two filtered grants: their union (either grant alone would allow it).
    two = bearer(token([{"pattern": f"{stream}.*", "where": ["data.customer_id=eq.43"]},
                        {"pattern": orders, "where": ["data.customer_id=eq.42"]}]))
    assert await page(server, path, two) == [
        i for i, (_, data) in events.items() if str(data.get("customer_id")) in ("42", "43")]
    assert await replay(server, f"/streams/{orders}", two) == await page(server, path, two)
    # The token-wide where is ANDed with every grant's own.
    wide = bearer(token([{"pattern": f"{stream}.*", "where": ["data.customer_id=eq.42"]}],
                        where=["or=(data.total.lt.8,data.total.gt.100)"], publish_=[orders]))
    small = [i for i in mine if events[i][1]["total"] < 8]
    assert len(small) == 1
    assert await page(server, path, wide) == small
    assert await page(server, path + "?type=order.paid", wide) == small
    assert await page(server, path + "?type=order.created", wide) == []
    assert await page(server, path + "?or=(data.total.gt.100,data.total.eq.10)", wide) == []
    # `where` binds reading only: the same token publishes whatever it may.
    code, _, body = await request(server, "POST", f"/streams/{orders}/events", headers=wide,
                                  json={"type": "t", "data": {"customer_id": 7}})
    assert code == 201, body


async def test_malformed_where_is_401_naming_where_the_token_came_from(
        start_server: StartServer, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    path = f"/streams/{stream}/events"
    many = [f"data.k{n}=eq.1" for n in range(21)]
    cases: list[dict[str, Any]] = [
        {"subscribe": [stream], "where": "data.a=eq.1"},
        {"subscribe": [stream], "where": [1]},
        {"subscribe": [stream], "where": ["customer_id=eq.42"]},
        {"subscribe": [stream], "where": ["data.a"]},
        {"subscribe": [stream], "where": ["data.a=foo.1"]},
        {"subscribe": [stream], "where": ["data.a=is.maybe"]},
        {"subscribe": [stream], "where": ["or=(data.a.eq.1"]},
        {"subscribe": [stream], "where": ["type=order.*"]},
        {"subscribe": [stream], "where": many},
        {"subscribe": [{"pattern": stream, "where": many[:12]}], "where": many[12:]},
        {"subscribe": [{"pattern": stream, "where": "data.a=eq.1"}]},
        {"subscribe": [{"pattern": stream, "where": ["data.a=lt"]}]},
        # A misspelt field must not grant the pattern unfiltered.
        {"subscribe": [{"pattern": stream, "filter": ["data.a=eq.1"]}]},
        {"subscribe": [{"where": ["data.a=eq.1"]}]},
        {"subscribe": [{"pattern": 5}]},
        {"subscribe": [{"pattern": "a.>.b"}]},
        {"subscribe": [[stream]]},
        {"subscribe": stream},
        {"subscribe": [stream], "publish": [{"pattern": stream}]},
    ]
    for section in cases:
        bad = jwt.encode({"exp": int(time.time()) + 300, "sse_stream": section}, SECRET,
                         algorithm="HS256")
        body = assert_problem(await request(server, "GET", path, headers=bearer(bad)), 401,
                              "Authorization")
        assert "sse_stream" in body["detail"], (section, body)
        assert_problem(await request(server, "GET", f"{path}?access_token={quote(bad)}"), 401,
                       "access_token")
        assert_problem(await request(server, "GET", path, cookies={"sse_stream_token": bad}),
                       401, "sse_stream_token")
    # At the limit: 20 filters in all are fine.
    fine = token([{"pattern": stream, "where": many[:10]}], where=many[10:20])
    assert (await request(server, "GET", path, headers=bearer(fine)))[0] == 200


async def test_token_command_mints_where(start_server: StartServer, db: asyncpg.Connection,
                                         stream: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_STREAM_JWT_SECRET", SECRET)
    assert cli.main(["token", "--subscribe", f"{stream}.*", "--where", "data.customer_id=eq.42",
                     "--where", "or=(data.total.lt.8,data.total.gt.9)"]) == 0
    minted = capsys.readouterr().out.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sse_stream"]["where"] == ["data.customer_id=eq.42",
                                             "or=(data.total.lt.8,data.total.gt.9)"]
    server = await start_server(jwt_secret=SECRET)
    events = await seed(db, f"{stream}.orders")
    mine = [id_ for id_, (_, data) in events.items() if str(data.get("customer_id")) == "42"]
    assert await page(server, f"/streams/{stream}.orders/events", bearer(minted)) == mine
    # Without --where the claim has none.
    assert cli.main(["token", "--subscribe", stream]) == 0
    assert "where" not in jwt.decode(capsys.readouterr().out.strip(), SECRET,
                                     algorithms=["HS256"])["sse_stream"]
    for bad in ("customer_id=eq.42", "data.customer_id=foo.42", "data.a"):
        assert cli.main(["token", "--subscribe", stream, "--where", bad]) == 2
        assert "where" in capsys.readouterr().err


# -- the property: delivered = request ∧ token ---------------------------------------

EXAMPLES = 300
EVENTS = 6
TYPES = ["order.created", "order.paid", "note"]
TYPE_FILTERS = ["order.created", "order.paid", "note", "order.*", "*"]
# Data that many filters accept, tried as the end marker when no event of
# the example matches (is.null, neq, not. and missing fields).
MARKERS = [{}, {"a": None}, {"a": 0}, {"a": ""}, {"a": "Z", "b": True}]


def accepted(texts: list[str], types: list[str], filters: list[Pairs]) -> list[bool]:
    """Which events pass every one of `filters` (the Python evaluator, each
    filter on its own: the AND is the test's, not the server's)."""
    result = []
    for text, type_ in zip(texts, types):
        data = json.loads(text)  # json, not orjson: numbers beyond a double too
        ok = True
        for pairs in filters:
            kinds = parse_type_filter([v for k, v in pairs if k == "type"])
            data_filter = parse_data_filters(pairs)
            ok = ok and (kinds is None or kinds.matches(type_)) and \
                (data_filter is None or data_filter.matches(data))
        result.append(ok)
    return result


async def check_example(server: TestServer, db: asyncpg.Connection,
                        session: aiohttp.ClientSession, texts: list[str], types: list[str],
                        asked: Pairs, everywhere: list[str], scoped: list[str]) -> None:
    stream = "w" + uuid.uuid4().hex[:12]
    headers = bearer(token([{"pattern": stream, "where": scoped}], where=everywhere))
    filters = [asked, [(key, value) for key, _, value in
                       (text.partition("=") for text in everywhere + scoped)]]
    chosen = accepted(texts, types, filters)
    # An end marker for the live check: a copy of an accepted event, or any
    # data and type that pass; without one, the heartbeat's bare id line ends it.
    marker: tuple[str, str] | None = None
    for text, type_, ok in zip(reversed(texts), reversed(types), reversed(chosen)):
        if ok:
            marker = (text, type_)
            break
    else:
        candidates = [(json.dumps(m), t) for m in MARKERS for t in TYPES]
        ok_candidates = accepted([c[0] for c in candidates], [c[1] for c in candidates],
                                 filters)
        marker = next((c for c, ok in zip(candidates, ok_candidates) if ok), None)
    if marker is not None:
        texts, types, chosen = texts + [marker[0]], types + [marker[1]], chosen + [True]
    url = server.make_url(f"/streams/{stream}").with_query(asked)
    async with open_stream(str(url), headers=headers, session=session) as sse:
        await joined(sse)
        # One statement, one transaction: the live read takes them in one page.
        ids = await publish_texts(db, stream, types, texts)
        # One transaction: stream order is id order.
        last = await position_of(db, max(ids))
        expected = sorted(id_ for id_, ok in zip(ids, chosen) if ok)
        live = await live_until(sse, last, timeout=10)
    assert live == expected, ("live", filters)
    base = f"/streams/{stream}"
    async with open_stream(str(server.make_url(base).with_query(
            [*asked, ("last_event_id", "0"), ("live", "false")])),
            headers=headers, session=session) as sse:
        replayed = [event_id(m) for m in await sse.rest()]
    async with session.get(server.make_url(f"{base}/events").with_query(
            [*asked, ("limit", "1000")]), headers=headers) as response:
        assert response.status == 200, await response.text()
        paged = [event["id"] for event in (await response.json())["events"]]
    assert replayed == expected, ("replay", filters)
    assert paged == expected, ("page", filters)


@st.composite
def asked_filters(draw: st.DrawFn, hints: list[tuple[str, list[str]]]) -> Pairs:
    pairs: Pairs = []
    if draw(st.integers(0, 3)):
        pairs += draw(filter_pairs(hints))
    if draw(st.booleans()):
        pairs += [("type", t) for t in draw(st.lists(st.sampled_from(TYPE_FILTERS), min_size=1,
                                                      max_size=2))]
    return pairs


async def test_delivered_is_request_and_token(start_server: StartServer,
                                              db: asyncpg.Connection) -> None:
    """For random events, request filters (data, or=, not., types) and token
    filters (token-wide and per grant), every way of reading delivers exactly
    the events that pass both."""
    # A short heartbeat: an example whose last event no filter passes ends
    # with the bare id line it brings (within about 40 ms).
    server = await start_server(jwt_secret=SECRET, heartbeat=0.04)
    run = runner(asyncio.get_running_loop())
    examples = 0

    async with aiohttp.ClientSession() as session:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.data())
        def example(data: st.DataObject) -> None:
            nonlocal examples
            docs = data.draw(st.lists(documents, min_size=EVENTS, max_size=EVENTS), label="docs")
            types = data.draw(st.lists(st.sampled_from(TYPES), min_size=EVENTS,
                                       max_size=EVENTS), label="types")
            hints = [leaf for doc in docs for leaf in leaves(doc)]
            asked = data.draw(asked_filters(hints), label="request")
            bound = [f"{key}={value}" for key, value in data.draw(filter_pairs(hints),
                                                                 label="token")]
            split = data.draw(st.integers(0, len(bound)), label="split")
            run(check_example(server, db, session, [dump(d) for d in docs], types, asked,
                              bound[:split], bound[split:]))
            examples += 1

        await asyncio.to_thread(example)
    assert examples >= EXAMPLES
