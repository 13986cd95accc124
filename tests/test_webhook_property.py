"""The property of webhook tenancy (docs/webhooks.md "Ownership and limits"):
what a webhook delivers is exactly what its creator's token grants ∧ what the
webhook asks for. For random events on two streams, token filters (token-wide,
per grant, a second overlapping grant whose filters are a union with the
first's, a plain grant) and request filters (data, or=, not., types), the
events that reach the receiver, from history and live, are the ones the
Python evaluator accepts, in order, once each."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    SECRET,
    Leaves,
    Pairs,
    app_servers,
    bearer,
    condition_texts,
    documents,
    dump,
    eventually,
    filter_pairs,
    leaves,
    position_of,
    publish_texts,
    request,
    runner,
    token,
)
from webhook_receiver import Receiver

from sse_stream.core.events import Position, parse_position
from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.filters import AnyOf, Condition
from sse_stream.core.patterns import parse_type_filter
from sse_stream.core.settings import Settings

EXAMPLES = 40
BEFORE, AFTER = 6, 3  # events published before the webhook is made, and after
TYPES = ["order.created", "order.paid", "note"]
TYPE_FILTERS = ["order.created", "order.paid", "note", "order.*", "*"]
# Data that many filters accept, tried as the end marker when neither an
# event of the example nor data built from the filters passes.
MARKERS = [{}, {"a": None}, {"a": 0}, {"a": ""}, {"a": "Z", "b": True}]
# One server for every example: deliveries lingering 10 ms, retries soon.
SERVER: dict[str, Any] = {"jwt_secret": SECRET, "webhooks_allow_private": True,
                          "webhooks_linger": 0.01, "webhooks_retry": "0.05s,0.1s,0.2s",
                          "webhooks_timeout": 1.0, "webhooks_lease": 3.0}


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_dsn)
    yield connection
    await connection.close()


@dataclass(frozen=True)
class Event:
    place: str  # "a" or "b": the stream under the example's prefix
    type: str
    text: str  # the data, as JSON text


@dataclass(frozen=True)
class Example:
    """What one example draws: events, the token's filters, the webhook's."""

    events: list[Event]
    everywhere: Pairs  # the token-wide where
    own_a: Pairs  # the where of the grant of <s>.a (empty: a plain grant)
    wide: Pairs | None  # the where of a second grant, <s>.*, covering both
    own_b: Pairs | None  # the where of the grant of <s>.b (None: no such grant)
    places: tuple[str, ...]  # the streams the webhook asks for
    asked: Pairs  # the webhook's own type and where

    def scopes(self, place: str) -> list[Pairs]:
        """The filters of each grant that covers <s>.<place>, the token-wide
        ones first (Grant.cover): an event passes if it passes any of them."""
        found = [self.everywhere + self.own_a] if place == "a" else \
            [] if self.own_b is None else [self.everywhere + self.own_b]
        if self.wide is not None:
            found.append(self.everywhere + self.wide)
        return found

    def subscribe(self, prefix: str) -> list[Any]:
        grants: list[Any] = [grant(f"{prefix}.a", self.own_a)]
        if self.wide is not None:
            grants.append(grant(f"{prefix}.*", self.wide))
        if self.own_b is not None:
            grants.append(grant(f"{prefix}.b", self.own_b))
        return grants

    def passes(self, event: Event) -> bool:
        """Grants ∧ request, by the Python evaluator, each filter on its own:
        the AND and the union are the test's, not the server's."""
        if event.place not in self.places:
            return False
        data = json.loads(event.text)  # json, not orjson: numbers beyond a double too
        return any(passes(event.type, data, scope) for scope in self.scopes(event.place)) and \
            passes(event.type, data, self.asked)


def wheres(pairs: Pairs) -> list[str]:
    return [f"{key}={value}" for key, value in pairs if key != "type"]


def grant(pattern: str, where: Pairs) -> Any:
    return {"pattern": pattern, "where": wheres(where)} if where else pattern


def passes(type_: str, data: Any, pairs: Pairs) -> bool:
    kinds = parse_type_filter([value for key, value in pairs if key == "type"])
    data_filter = parse_data_filters(pairs)
    return (kinds is None or kinds.matches(type_)) and \
        (data_filter is None or data_filter.matches(data))


def satisfier(condition: Condition) -> Any:
    """A value that passes one condition, if a simple one does (None: none
    does, or only a missing field, which passes every negated condition but
    not.is.null): strings compare as text (filters.py)."""
    op, values = condition.op, condition.values
    if op == "is":
        return "x" if condition.negated else {"true": True, "false": False}.get(values[0])
    if condition.negated or not values:
        return None
    if op == "gt":
        return values[0] + "~"
    if op == "lt":
        return "" if values[0] else None
    return values[0]  # eq, in, gte, lte


def put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Set `path` to `value` unless that field, or an object on the way, is
    taken by another value."""
    for key in path[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            return False
    if path[-1] in data:
        return False
    data[path[-1]] = value
    return True


NARROW = {"eq": 0, "in": 0, "is": 0, "gte": 1, "lte": 1, "gt": 2, "lt": 2}


def satisfying(filters: list[Pairs]) -> dict[str, Any]:
    """Data built to pass every one of `filters`, greedily, the narrowest
    conditions first (an eq's value may pass a gte after it), then each
    or=(...) by its first member that passes or fits; the evaluator has the
    last word on whether it does."""
    terms: list[Condition | AnyOf] = []
    for pairs in filters:
        data_filter = parse_data_filters(pairs)
        terms += data_filter.terms if data_filter is not None else ()
    terms.sort(key=lambda t: 3 if isinstance(t, AnyOf) or t.negated else NARROW[t.op])
    data: dict[str, Any] = {}
    for term in terms:
        for condition in term.conditions if isinstance(term, AnyOf) else (term,):
            if condition.matches(data):
                break
            value = satisfier(condition)
            if value is not None and put(data, condition.path, value):
                break
    return data


def marker_of(example: Example, events: list[Event]) -> Event | None:
    """An event the webhook takes, to end the example with: a copy of the last
    one it takes, or data built from the filters, or marker data that
    passes; None when nothing is found."""
    for event in reversed(events):
        if example.passes(event):
            return event
    built = [satisfying([scope, example.asked]) for place in example.places
             for scope in example.scopes(place)]
    candidates = (Event(place, type_, json.dumps(data)) for data in [*built, *MARKERS]
                  for type_ in TYPES for place in example.places)
    return next((event for event in candidates if example.passes(event)), None)


def negation(pairs: Pairs) -> Pairs:
    """The first condition of `pairs` (a data.<path> one), negated."""
    key, operation = pairs[0]
    return [(key, operation[4:] if operation.startswith("not.") else "not." + operation)]


@st.composite
def examples(draw: st.DrawFn) -> Example:
    count = BEFORE + AFTER
    docs = draw(st.lists(documents, min_size=count, max_size=count), label="docs")
    types = draw(st.lists(st.sampled_from(TYPES), min_size=count, max_size=count),
                 label="types")
    places = draw(st.lists(st.sampled_from("ab"), min_size=count, max_size=count),
                  label="streams")
    hints: Leaves = [leaf for doc in docs for leaf in leaves(doc)]
    # Often a single condition, which many events pass: the grants' union
    # and the AND with the request then decide more often.
    single = condition_texts(False, hints).map(lambda c: [(f"data.{c[0]}", c[1])])
    where = st.one_of(single, filter_pairs(hints))
    everywhere = draw(st.one_of(st.just([]), where), label="token-wide where")
    own_a = draw(st.one_of(where, st.just([])), label="grant a where")
    # The second grant's filter is often the first's negated: what one grant
    # refuses the other passes, so only their union delivers both.
    opposite = st.just(negation(own_a)) if own_a[:1] and own_a[0][0] != "or" else where
    wide = draw(st.one_of(st.none(), where, opposite), label="grant * where")
    own_b = draw(st.one_of(st.just([]), st.none(), where), label="grant b where")
    asked: Pairs = []
    if draw(st.integers(0, 3)):
        asked += draw(where, label="request where")
    if draw(st.booleans()):
        asked += [("type", t) for t in draw(st.lists(st.sampled_from(TYPE_FILTERS),
                                                      min_size=1, max_size=2), label="type")]
    wanted = draw(st.sampled_from([("a", "b"), ("a", "b"), ("a",), ("b",)]), label="webhook")
    if own_b is None and wide is None and "b" in wanted:
        own_b = []  # the webhook's streams must be covered: a plain grant
    return Example([Event(p, t, dump(d)) for p, t, d in zip(places, types, docs)],
                   everywhere, own_a, wide, own_b, wanted, asked)


async def publish_events(db: asyncpg.Connection, prefix: str, events: list[Event]) -> list[int]:
    """The events in one transaction, in order: their ids (id order is the
    stream order within one transaction)."""
    ids = []
    async with db.transaction():
        for event in events:
            ids += await publish_texts(db, f"{prefix}.{event.place}", [event.type], [event.text])
    return ids


def received(receiver: Receiver, path: str) -> list[int]:
    """The ids of the events of each accepted request once (a retry carries the
    same webhook-id), in the order they arrived; json, not orjson (the
    receiver's), for numbers beyond a double."""
    seen: set[str] = set()
    ids: list[int] = []
    for delivery in receiver.of(path):
        if delivery.accepted and delivery.message not in seen:
            seen.add(delivery.message)
            ids += [event["id"] for event in json.loads(delivery.body)["events"]]
    return ids


async def settled(db: asyncpg.Connection, webhook: str, event_id: int,
                  done: Callable[[], bool] = lambda: False) -> None:
    """Wait (bounded) until `done()` holds or the webhook's cursor is at or
    past the event: the deliverer has sent or passed over every event up to
    it. A cursor moves past events that match nothing at the deliverer's
    next sweep, within a second (lease / 3)."""
    last = parse_position(await position_of(db, event_id))

    async def check() -> bool:
        if done():
            return True
        row = await db.fetchrow("SELECT cursor_xid::text, cursor_id FROM sse_stream.webhooks"
                                " WHERE id = $1", webhook)
        return Position(int(row[0]), row[1]) >= last

    await eventually(check, 10, f"webhook {webhook}: the cursor did not pass event {event_id}")


async def check_example(server: TestServer, db: asyncpg.Connection, receiver: Receiver,
                        example: Example) -> None:
    prefix = "w" + uuid.uuid4().hex[:12]
    section: dict[str, Any] = {"subscribe": example.subscribe(prefix), "publish": [],
                               "webhooks": [f"{prefix}.>"]}
    if example.everywhere:
        section["where"] = wheres(example.everywhere)
    headers = bearer(token(sse_stream=section, sub=prefix))
    before, after = example.events[:BEFORE], example.events[BEFORE:]
    history = await publish_events(db, prefix, before)
    body: dict[str, Any] = {"url": receiver.url(prefix), "start": "0",
                            "streams": [f"{prefix}.{place}" for place in example.places],
                            "where": wheres(example.asked)}
    types = [value for key, value in example.asked if key == "type"]
    if types:
        body["type"] = types
    status, _, created = await request(server, "POST", "/webhooks", json=body, headers=headers)
    assert status == 201, created
    try:
        # History first, read from the table: all of it once the cursor is past it.
        expected = [id_ for id_, event in zip(history, before) if example.passes(event)]
        await settled(db, created["id"], history[-1])
        assert received(receiver, prefix) == expected, ("history", example)
        # Then live, ended by an event the webhook takes: once it arrives,
        # so has all before it. Without one (or if it never comes), by the
        # cursor passing the last event.
        marker = marker_of(example, after)
        live = after if marker is None else [*after, marker]
        ids = await publish_events(db, prefix, live)
        expected += [id_ for id_, event in zip(ids, live) if example.passes(event)]
        await settled(db, created["id"], ids[-1],
                      lambda: marker is not None and ids[-1] in received(receiver, prefix))
        assert received(receiver, prefix) == expected, ("live", example)
    finally:
        status, _, _ = await request(server, "DELETE", f"/webhooks/{created['id']}",
                                     headers=headers)
        assert status == 204


# A passing run takes seconds; a failing one shrinks its example for a minute or two.
@pytest.mark.timeout(300)
async def test_delivered_by_webhook_is_grants_and_request(fresh_dsn: str,
                                                          db: asyncpg.Connection,
                                                          receiver: Receiver) -> None:
    """For random events, token filters and webhook filters, a webhook made
    after the events with start "0" delivers exactly the events that pass
    both, from history and live."""
    run = runner(asyncio.get_running_loop())
    done = 0
    async with app_servers() as start:
        server = await start(Settings(dsn=fresh_dsn, **SERVER))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  report_multiple_bugs=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(examples())
        def example(drawn: Example) -> None:
            nonlocal done
            run(check_example(server, db, receiver, drawn))
            done += 1

        await asyncio.to_thread(example)
    assert done >= EXAMPLES
