"""A small SSE test client over aiohttp, built on sse_stream.client's parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from sse_stream.client import Message, SseParser


class Stream:
    """An open SSE response: read messages, with a bound on the wait."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = SseParser()
        self.pending: list[Message] = []
        self.ended = False
        self._taken_id = ""

    async def _fill(self, timeout: float) -> None:
        chunk = await asyncio.wait_for(self.response.content.readany(), timeout)
        if not chunk:
            self.ended = True
            return
        self.pending.extend(self.parser.feed(chunk))

    async def next(self, timeout: float = 10.0) -> Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.pending:
            if self.ended:
                raise EOFError("stream ended")
            await self._fill(max(0.001, deadline - loop.time()))
        message = self.pending.pop(0)
        self._taken_id = message.last_event_id
        return message

    @property
    def last_event_id(self) -> str:
        """The id a browser would resume from, given the messages taken so far."""
        if self.pending:
            # Parsed but not taken: resume from the last message taken.
            return self._taken_id
        return self.parser.last_event_id

    async def take(self, count: int, timeout: float = 10.0) -> list[Message]:
        return [await self.next(timeout) for _ in range(count)]

    async def until(self, predicate: Callable[[SseParser], bool], timeout: float = 10.0) -> None:
        """Read (keeping messages) until `predicate(parser)` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.parser):
            if self.ended:
                raise EOFError("stream ended")
            await self._fill(max(0.001, deadline - loop.time()))

    async def rest(self, timeout: float = 10.0) -> list[Message]:
        """Every message until the server ends the stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ended:
            await self._fill(max(0.001, deadline - loop.time()))
        messages, self.pending = self.pending, []
        return messages


@asynccontextmanager
async def open_stream(url: str, headers: dict[str, str] | None = None,
                      session: aiohttp.ClientSession | None = None) -> AsyncIterator[Stream]:
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(url, headers=headers or {},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            assert response.status == 200, await response.text()
            yield Stream(response)
    finally:
        if own:
            await session.close()


def envelope(message: Message) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(message.data)
    return value
