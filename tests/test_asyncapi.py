"""GET /asyncapi.json: an AsyncAPI 3 document whose schemas match what the server sends."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sse import envelope, open_stream
from support import StartServer, publish


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(document, default_specification=DRAFT202012))
    schema = {"$ref": f"urn:asyncapi#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


async def test_asyncapi_document_describes_the_stream(start_server: StartServer,
                                                      db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/asyncapi.json")) as response:
            assert response.status == 200 and response.content_type == "application/json"
            document = await response.json()
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"]["local"]["host"] == f"127.0.0.1:{server.port}"
    assert document["channels"]["streams"]["address"] == "/streams/{streams}"
    operation = document["operations"]["receiveEvents"]
    assert operation["action"] == "receive"
    query = _resolve(document, operation["bindings"]["http"]["query"]["$ref"])
    assert {"type", "last_event_id", "live", "format", "or"} <= set(query["properties"])
    bearer = document["components"]["securitySchemes"]["bearer"]
    assert bearer == {**bearer, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for ref in _refs(document):
        assert _resolve(document, ref) is not None, ref

    # The schemas accept what the server really sends, and refuse a broken one.
    url = str(server.make_url(f"/streams/{stream}"))
    await publish(db, stream, "order.created", {"total": 5})
    async with open_stream(url + "?last_event_id=0") as plain, \
            open_stream(url + "?last_event_id=0&format=cloudevents") as cloud:
        plain_event, cloud_event = envelope(await plain.next()), envelope(await cloud.next())
    _validator(document, "envelope").validate(plain_event)
    _validator(document, "cloudEvent").validate(cloud_event)
    _validator(document, "gap").validate({"requested_after": "1-2", "resumed_after": "3-4"})
    assert not _validator(document, "envelope").is_valid({**plain_event, "position": "a b"})
    assert not _validator(document, "cloudEvent").is_valid({**cloud_event, "specversion": "0.3"})
