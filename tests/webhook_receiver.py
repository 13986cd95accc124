"""A webhook receiver for the tests: an aiohttp server on 127.0.0.1 that
records every request (its time span, headers, body and answer) and answers
as a `behave` function says, per path (one path per webhook)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook as Verifier


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float | None = None
    status: int | None = None  # what the receiver answered; None: reset, or cut short

    @property
    def message(self) -> str:
        return self.headers["webhook-id"]

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = orjson.loads(self.body)["events"]
        return events

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


# What to do with a request: an HTTP status to answer (after any awaiting
# the function does), or None to reset the connection.
Behave = Callable[[Request], Awaitable[int | None]]


async def answer_204(request: Request) -> int | None:
    return 204


@dataclass
class Receiver:
    behave: Behave = answer_204
    requests: list[Request] = field(default_factory=list)
    server: TestServer | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url("/" + path))

    async def _handle(self, http: web.Request) -> web.StreamResponse:
        record = Request(http.path.lstrip("/"), {k.lower(): v for k, v in http.headers.items()},
                         await http.read(), time.monotonic())
        self.requests.append(record)
        try:
            status = await self.behave(record)
        finally:
            record.ended = time.monotonic()
        if status is None:
            assert http.transport is not None
            http.transport.abort()
        record.status = status
        self.changed.set()
        return web.Response(status=status or 500)

    def of(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def delivered(self, path: str) -> list[dict[str, Any]]:
        """The events of the accepted requests of `path`, each request's once
        (a retry carries the same webhook-id), in the order they arrived."""
        seen: set[str] = set()
        events: list[dict[str, Any]] = []
        for request in self.of(path):
            if request.accepted and request.message not in seen:
                seen.add(request.message)
                events.extend(request.events)
        return events

    async def wait(self, check: Callable[[], bool], timeout: float = 20.0,
                   message: str = "the receiver did not get what was expected") -> None:
        """Wait (bounded) until `check()` holds, woken by each answered request."""
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                try:
                    async with asyncio.timeout(0.5):
                        await self.changed.wait()
                except TimeoutError:
                    pass
        assert check(), message

    async def wait_events(self, path: str, count: int,
                          timeout: float = 20.0) -> list[dict[str, Any]]:
        await self.wait(lambda: len(self.delivered(path)) >= count, timeout,
                        f"{path}: fewer than {count} events delivered")
        return self.delivered(path)


def verify(secret: str, request: Request) -> None:
    """The request's signature, checked by the standardwebhooks package."""
    Verifier(secret).verify(request.body, request.headers)


def exact_retries(requests: list[Request]) -> None:
    """Requests that share a webhook-id carry the same body, and no event is
    in two requests of different ids."""
    bodies: dict[str, bytes] = {}
    owner: dict[int, str] = {}
    for request in requests:
        assert bodies.setdefault(request.message, request.body) == request.body, \
            f"{request.message}: a retry with another body"
        for event in request.events:
            if "id" in event:
                assert owner.setdefault(event["id"], request.message) == request.message, \
                    f"event {event['id']} in two different requests"
