"""?format=cloudevents: each event's data is a CloudEvents 1.0 JSON envelope."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import aiohttp
import asyncpg
import orjson
from sse import envelope, open_stream
from support import StartServer, publish

from sse_stream.core.events import Event
from sse_stream.core.wire import event_frame

_ATTRIBUTE = re.compile(r"[a-z0-9]{1,20}")


def _check_cloudevent(document: dict[str, object], id_: int, stream: str, type_: str,
                      data: object) -> None:
    assert document["specversion"] == "1.0"
    assert document["id"] == str(id_)
    assert document["source"] == f"/streams/{stream}"
    assert document["type"] == type_
    assert document["datacontenttype"] == "application/json"
    assert document["data"] == data
    assert document["ssestream"] == stream
    assert re.fullmatch(r"[0-9]+-[0-9]+", str(document["sseposition"]))
    # RFC 3339 time, UTC.
    assert datetime.fromisoformat(str(document["time"]).replace("Z", "+00:00")).tzinfo
    assert all(_ATTRIBUTE.fullmatch(name) for name in document)


def test_cloudevent_is_encoded_once_per_event() -> None:
    time = datetime(2026, 11, 26, 14, 3, 7, 123456, tzinfo=UTC)
    event = Event.from_row(10, 42, "orders.1", "order.created", b'{"a": [1, 2]}',
                           "2026-11-26T14:03:07.123456Z", time.timestamp())
    first = event.cloudevent
    frame = event_frame(event, cloudevents=True)
    assert event.cloudevent is first and event_frame(event, cloudevents=True) is frame
    document = orjson.loads(first)
    _check_cloudevent(document, 42, "orders.1", "order.created", {"a": [1, 2]})
    assert document["time"] == "2026-11-26T14:03:07.123456Z"
    assert document["sseposition"] == "10-42"
    assert frame == b"id: 10-42\nevent: order.created\ndata: " + first + b"\n\n"


async def test_streams_in_both_formats_side_by_side(start_server: StartServer,
                                                    db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}"))
    replayed = await publish(db, stream, "order.created", {"n": 1})
    async with open_stream(url + "?format=cloudevents&last_event_id=0") as cloud, \
            open_stream(url + "?last_event_id=0") as plain:
        first = [await cloud.next(), await plain.next()]
        live = await publish(db, stream, "order.paid", {"n": 2})
        second = [await cloud.next(), await plain.next()]
    _check_cloudevent(envelope(first[0]), replayed, stream, "order.created", {"n": 1})
    _check_cloudevent(envelope(second[0]), live, stream, "order.paid", {"n": 2})
    assert second[0].event == "order.paid"
    assert second[0].last_event_id == envelope(second[1])["position"]
    assert envelope(second[1])["id"] == live and "specversion" not in envelope(second[1])


async def test_pages_in_cloudevents_and_bad_format(start_server: StartServer,
                                                   db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    ids = [await publish(db, stream, "t", {"n": n}) for n in range(2)]
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(f"/streams/{stream}/events?format=cloudevents")) as r:
            page = await r.json()
        async with session.get(server.make_url(f"/streams/{stream}?format=xml")) as r:
            assert r.status == 400
            assert r.content_type == "application/problem+json"
            assert (await r.json())["param"] == "format"
    assert [e["id"] for e in page["events"]] == [str(i) for i in ids]
    for id_, document in zip(ids, page["events"]):
        _check_cloudevent(document, id_, stream, "t", document["data"])
