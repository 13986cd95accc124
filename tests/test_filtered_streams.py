"""Filtered streams end to end: replay (SQL), the filter in Python, and a live
subscriber (the hub's fan-out) select the same events.

Hypothesis drives a plain function in a worker thread (so it can shrink and
report), and each example runs its HTTP work on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sse import Stream, open_stream
from support import (
    Pairs,
    StartServer,
    documents,
    dump,
    event_id,
    filter_pairs,
    leaves,
    live_until,
    position_of,
    publish_texts,
    runner,
)

from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.patterns import parse_type_filter

EVENTS_PER_EXAMPLE = 20
FILTERS_PER_EXAMPLE = 20
EXAMPLES = 30  # 30 x 20 = 600 filter cases per run
TYPES = ["order.created", "order.paid", "invoice.sent", "note"]
TYPE_FILTERS = ["order.created", "order.paid", "invoice.sent", "note", "order.*", "inv*",
                "order.", "*", "nothing.*"]


@dataclass(frozen=True)
class Published:
    ids: list[int]
    types: list[str]
    texts: list[str]  # the data as sent to PostgreSQL


def expected_ids(published: Published, pairs: Pairs) -> list[int]:
    """The Python path: the parsed filter evaluated on each event."""
    data_filter = parse_data_filters(pairs)
    type_filter = parse_type_filter([value for key, value in pairs if key == "type"])
    chosen = []
    for id_, type_, text in zip(published.ids, published.types, published.texts):
        if type_filter is not None and not type_filter.matches(type_):
            continue
        # json (not orjson) decodes numbers beyond a double too, as the server must.
        if data_filter is not None and not data_filter.matches(json.loads(text)):
            continue
        chosen.append(id_)
    return chosen


async def publish_all(db: asyncpg.Connection, stream: str, types: list[str],
                      texts: list[str]) -> list[int]:
    """Publish in three transactions, so the live read spans several commits."""
    ids: list[int] = []
    third = max(1, len(texts) // 3)
    for start in range(0, len(texts), third):
        ids += await publish_texts(db, stream, types[start:start + third],
                                   texts[start:start + third])
    return ids


async def replay_ids(session: aiohttp.ClientSession, server: TestServer, stream: str,
                     pairs: Pairs) -> list[int]:
    url = server.make_url(f"/streams/{stream}").with_query(
        [*pairs, ("last_event_id", "0"), ("live", "false")])
    async with open_stream(str(url), session=session) as sse:
        return [event_id(m) for m in await sse.rest()]


async def page_ids(session: aiohttp.ClientSession, server: TestServer, stream: str,
                   pairs: Pairs) -> list[int]:
    url = server.make_url(f"/streams/{stream}/events").with_query([*pairs, ("limit", "1000")])
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        page = await response.json()
    assert page["has_more"] is False
    return [event["id"] for event in page["events"]]


async def check_filters(server: TestServer, db: asyncpg.Connection, types: list[str],
                        texts: list[str], filter_sets: list[Pairs]) -> None:
    """Publish once into a fresh stream and check every filter set against it."""
    stream = "p" + uuid.uuid4().hex[:12]
    async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
        live: list[Stream] = []
        for pairs in filter_sets:
            url = server.make_url(f"/streams/{stream}").with_query(pairs)
            sse = await stack.enter_async_context(open_stream(str(url), session=session))
            live.append(sse)
        # Subscribed: each has its starting bare id line.
        for sse in live:
            await sse.until(lambda parser: parser.last_event_id != "")
        ids = await publish_all(db, stream, types, texts)
        published = Published(ids, types, texts)
        last_position = await position_of(db, ids[-1])
        for pairs, sse in zip(filter_sets, live):
            expected = expected_ids(published, pairs)
            assert await replay_ids(session, server, stream, pairs) == expected, pairs
            assert await page_ids(session, server, stream, pairs) == expected, pairs
            assert await live_until(sse, last_position, timeout=5) == expected, pairs


type_values = st.lists(st.sampled_from(TYPE_FILTERS), min_size=1, max_size=2)


@st.composite
def filter_sets(draw: st.DrawFn, docs: list[Any]) -> Pairs:
    hints = [leaf for doc in docs for leaf in leaves(doc)]
    kind = draw(st.sampled_from(["data", "data", "type", "both"]))
    pairs: Pairs = []
    if kind != "type":
        pairs += draw(filter_pairs(hints))
    if kind != "data":
        pairs += [("type", value) for value in draw(type_values)]
    return pairs


# Every disagreement ever found, as (types, data texts, filter sets).
REGRESSIONS: list[tuple[list[str], list[str], list[Pairs]]] = [
    # A number beyond a double in an event's data made the live read fail to
    # decode it (orjson refuses 1e400), which stopped the shared read for
    # every stream. It is delivered now, as written, and matches no
    # comparison (SQL and Python alike).
    (["note", "note", "order.paid"],
     ['{"a": 1e400}', '{"a": -1e400, "b": 1}', '{"a": 123456789012345678901234567890}'],
     [[("data.a", "gt.0")], [("data.a", "neq.0")], [("data.a", "is.null")],
      [("data.b", "eq.1")], [("type", "note")], [("data.a", "gt.1e29")]]),
]


async def test_regressions(start_server: StartServer, db: asyncpg.Connection) -> None:
    server = await start_server(heartbeat=0.2)
    for types, texts, sets in REGRESSIONS:
        await check_filters(server, db, types, texts, sets)


async def test_replay_python_and_live_agree(start_server: StartServer,
                                            db: asyncpg.Connection) -> None:
    server = await start_server(heartbeat=0.2)
    run = runner(asyncio.get_running_loop())
    cases = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def example(data: st.DataObject) -> None:
        nonlocal cases
        docs = data.draw(st.lists(documents, min_size=EVENTS_PER_EXAMPLE,
                                  max_size=EVENTS_PER_EXAMPLE), label="docs")
        types = data.draw(st.lists(st.sampled_from(TYPES), min_size=len(docs),
                                   max_size=len(docs)), label="types")
        sets = data.draw(st.lists(filter_sets(docs), min_size=FILTERS_PER_EXAMPLE,
                                  max_size=FILTERS_PER_EXAMPLE), label="filters")
        run(check_filters(server, db, types, [dump(d) for d in docs], sets))
        cases += len(sets)

    await asyncio.to_thread(example)
    assert cases >= 500


async def test_number_beyond_a_double_is_delivered_as_written(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    async with open_stream(url) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        await publish_all(db, stream, ["t", "t"], ['{"a": 1e400}', '{"a": 1}'])
        live = await sse.take(2)
    async with open_stream(url + "?last_event_id=0&live=false") as sse:
        replayed = await sse.rest()
    for messages in (live, replayed):
        # PostgreSQL's text of the number, exact.
        assert json.loads(messages[0].data)["data"] == {"a": 10**400}
        assert json.loads(messages[1].data)["data"] == {"a": 1}
    async with open_stream(url + "?last_event_id=0&live=false&format=cloudevents") as sse:
        cloud = await sse.rest()
    assert [json.loads(m.data)["data"] for m in cloud] == [{"a": 10**400}, {"a": 1}]
    assert json.loads(cloud[0].data)["sseposition"] == json.loads(replayed[0].data)["position"]
