"""A resuming Python client for sse-stream.

`subscribe(url, streams, ...)` yields each event once, in order, and
reconnects by itself (any network error, any clean end of the stream) with
the last id it saw, waiting the server's `retry:` with jitter. Its
`last_event_id` is the position to persist: a new process that subscribes
with it continues with the next event, nothing lost, nothing repeated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .sseparse import Message, SseParser

__all__ = ["ControlEvent", "Message", "SseParser", "StreamEvent", "SubscribeError",
           "Subscriber", "subscribe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEvent:
    """One event of the stream: its envelope, decoded."""

    id: int
    position: str
    stream: str
    type: str
    data: Any
    created_at: str


@dataclass(frozen=True)
class ControlEvent:
    """A control event of the server (`sse.gap`, `sse.token-expiring`)."""

    type: str
    data: Any
    position: str


class SubscribeError(Exception):
    """The server refused the subscription (bad input, no access): retrying cannot help."""

    def __init__(self, status: int, problem: Any) -> None:
        detail = problem.get("detail") if isinstance(problem, dict) else problem
        param = problem.get("param") if isinstance(problem, dict) else None
        super().__init__(f"HTTP {status}: {detail}" + (f" ({param})" if param else ""))
        self.status = status
        self.problem = problem


_POSITION_RE = re.compile(r"([0-9]+)-([0-9]+)")
_SEEN_LIMIT = 10_000
_MAX_DELAY = 30.0


def _order_key(position: str) -> tuple[int, int] | None:
    # Positions are opaque to clients in general; this client knows the
    # server's "xid-id" form and uses its order to drop anything at or before
    # what it already yielded. Any other form falls back to the seen set.
    match = _POSITION_RE.fullmatch(position)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _query(types: Iterable[str], filters: Mapping[str, str] | Iterable[str] | None,
           live: bool) -> list[tuple[str, str]]:
    pairs = [("type", t) for t in types]
    if isinstance(filters, Mapping):
        pairs += [(key, value) for key, value in filters.items()]
    elif filters is not None:
        for item in filters:
            key, equals, value = item.partition("=")
            if not equals:
                raise ValueError(f"filter {item!r}: expected data.<path>=<op>.<value>")
            pairs.append((key, value))
    if not live:
        pairs.append(("live", "false"))
    return pairs


class Subscriber:
    """An async iterator over one subscription that survives disconnects.

    Use `subscribe()` to make one. Iteration yields `StreamEvent` and
    `ControlEvent` values and ends only when the stream ends with `live`
    False, the server answers 204, or `close()` is called.
    """

    def __init__(self, url: str, streams: str | Iterable[str], *, types: Iterable[str] = (),
                 filters: Mapping[str, str] | Iterable[str] | None = None,
                 last_event_id: str | None = None, token: str | None = None,
                 live: bool = True, read_timeout: float = 60.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        names = streams if isinstance(streams, str) else ",".join(streams)
        self.url = url.rstrip("/") + "/streams/" + quote(names, safe=",>*")
        self.params = _query(types, filters, live)
        self.token = token
        self.live = live
        self.read_timeout = read_timeout
        self.retry = 2.0  # seconds, until the server says otherwise
        self.reconnects = 0
        self._last_event_id = last_event_id or ""
        self._session = session
        self._own_session = session is None
        self._response: aiohttp.ClientResponse | None = None
        self._parser = SseParser()
        self._pending: list[Message] = []
        self._last_key: tuple[int, int] | None = _order_key(self._last_event_id)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._failures = 0
        self._connected = False
        self._closed = False
        self._ended = False

    @property
    def last_event_id(self) -> str:
        """The position after everything yielded so far: persist this one.

        It also moves past events the server skipped for a filter (bare
        `id:` lines), once every event read before them has been yielded.
        """
        if not self._pending and self._response is not None:
            return self._parser.last_event_id or self._last_event_id
        return self._last_event_id

    @property
    def buffered(self) -> int:
        """Messages already read and not yet yielded (0: the next step waits for the network)."""
        return len(self._pending)

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> StreamEvent | ControlEvent:
        while True:
            while self._pending:
                message = self._pending.pop(0)
                self._last_event_id = message.last_event_id or self._last_event_id
                event = self._decode(message)
                if event is not None:
                    return event
            if self._response is not None:
                self._last_event_id = self._parser.last_event_id or self._last_event_id
            if self._closed or self._ended:
                await self.close()
                raise StopAsyncIteration
            await self._read()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        await self._disconnect()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- internals -------------------------------------------------------------

    def _decode(self, message: Message) -> StreamEvent | ControlEvent | None:
        position = message.last_event_id
        try:
            data = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            data = message.data
        if message.event.startswith("sse."):
            return ControlEvent(message.event, data, position)
        key = _order_key(position)
        if key is not None:
            if self._last_key is not None and key <= self._last_key:
                return None
            self._last_key = key
        elif position:
            if position in self._seen:
                return None
            self._seen[position] = None
            if len(self._seen) > _SEEN_LIMIT:
                self._seen.popitem(last=False)
        if not isinstance(data, dict):
            log.warning("ignored a message that is not an event envelope: %r", message.data[:200])
            return None
        return StreamEvent(data.get("id", 0), data.get("position", position),
                           data.get("stream", ""), data.get("type", message.event),
                           data.get("data"), data.get("created_at", ""))

    async def _read(self) -> None:
        """Read the next chunk, connecting (again) first if needed."""
        if self._response is None:
            await self._connect()
            return
        try:
            # Not wait_for: on Python 3.11 it can swallow a cancellation.
            async with asyncio.timeout(self.read_timeout):
                chunk = await self._response.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            if self._closed:
                return
            log.info("stream interrupted (%s), resuming after %s",
                     type(error).__name__, self.last_event_id or "the start")
            await self._disconnect()
            await self._pause()
            return
        if not chunk:
            self._pending.extend(self._parser.feed(b""))
            await self._disconnect()
            if not self.live:
                self._ended = True
            else:
                await self._pause()
            return
        self._failures = 0
        self._pending.extend(self._parser.feed(chunk))
        if self._parser.retry is not None:
            self.retry = self._parser.retry / 1000

    async def _pause(self) -> None:
        """Wait before reconnecting: the server's retry, jittered, backing off."""
        self._failures += 1
        base = min(self.retry * 2 ** min(self._failures - 1, 5), _MAX_DELAY)
        # Jitter spreads the reconnects of many clients after a server restart.
        await asyncio.sleep(base * random.uniform(0.5, 1.0))

    async def _connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = await self._session.get(
                self.url, params=self.params, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=self.read_timeout,
                                              sock_read=None))
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.info("cannot connect (%s), retrying", error)
            await self._pause()
            return
        if response.status == 204:
            response.release()
            self._ended = True
            return
        if response.status != 200:
            body = await response.read()
            response.release()
            try:
                problem: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                problem = body.decode(errors="replace")[:200]
            if response.status in (408, 425, 429) or response.status >= 500:
                log.info("server answered %d, retrying", response.status)
                await self._pause()
                return
            raise SubscribeError(response.status, problem)
        if self._connected:
            self.reconnects += 1
        self._connected = True
        self._response = response
        # Per WHATWG a new connection starts a fresh parse that keeps the
        # last event id.
        self._parser = SseParser(self._last_event_id)

    async def _disconnect(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()


def subscribe(url: str, streams: str | Iterable[str], *, types: Iterable[str] = (),
              filters: Mapping[str, str] | Iterable[str] | None = None,
              last_event_id: str | None = None, token: str | None = None,
              live: bool = True, read_timeout: float = 60.0,
              session: aiohttp.ClientSession | None = None) -> Subscriber:
    """Subscribe to `streams` (a name, a pattern, or a list) at the server `url`.

    `filters` are `data.<path>=<op>.<value>` strings or a mapping of
    `data.<path>` to `<op>.<value>`; `last_event_id` is a position (or "0"
    for the oldest retained event) to start after, absent for live only.
    `read_timeout` is the silence (seconds) after which the connection is
    taken as dead; keep it above the server's heartbeat.

        async with subscribe("http://127.0.0.1:8080", "orders.*") as events:
            async for event in events:
                print(event.type, event.data, events.last_event_id)
    """
    return Subscriber(url, streams, types=types, filters=filters, last_event_id=last_event_id,
                      token=token, live=live, read_timeout=read_timeout, session=session)
