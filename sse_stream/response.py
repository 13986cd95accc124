"""The SSE wire format and the response that writes it.

Every byte of an SSE stream is built here: event frames, the bare `id:`
line, `sse.gap`, keepalives, `sse.token-expiring` and the `retry:` preamble.
(Catch-up pages are the one exception by design: PostgreSQL builds their
frames, the same bytes, from `frame_sse` in sql/queries.sql; the tests
compare the two.)

SseResponse is aiohttp-sse's EventSourceResponse (headers, lifecycle) with
two changes. Its ping task, one timer per stream firing whether or not the
stream is busy, is not started: the hub's single heartbeat walks the silent
streams instead. And the hub writes without awaiting (`write_nowait`): one
write per stream per wake-up, straight to the transport, with the
transport's buffer size as the back-pressure signal.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

from .events import Event, Position

KEEPALIVE = b": keepalive\n\n"


def event_frame(event: Event, cloudevents: bool = False) -> bytes:
    """An event's frame: its position as the id, its type as the event name
    and its envelope (or CloudEvents envelope) as the data. Built once per
    event and form, however many streams get it (cached on the event).

    stream and type are constrained by the table to characters that need no
    escaping and cannot break a line; PostgreSQL's text of a jsonb value is
    compact JSON on one line.
    """
    if cloudevents:
        frame = event.cloudevent_frame
        if frame is None:
            frame = event.cloudevent_frame = _frame(event, event.cloudevent)
        return frame
    frame = event.frame
    if frame is None:
        frame = event.frame = _frame(event, event.envelope)
    return frame


def _frame(event: Event, data: bytes) -> bytes:
    return b"id: %d-%d\nevent: %s\ndata: %s\n\n" % (*event.position, event.type.encode(), data)


def id_frame(position: Position) -> bytes:
    """A bare `id:` line: moves the client's Last-Event-ID with no event."""
    return b"id: %s\n\n" % position.encode().encode()


def keepalive_frame(position: Position | None = None) -> bytes:
    """A comment that keeps a silent stream open (and moves its id, if given)."""
    if position is None:
        return KEEPALIVE
    return b": keepalive\nid: %s\n\n" % position.encode().encode()


def gap_json(requested: Position, resumed: Position) -> bytes:
    """What `sse.gap` says: events after `requested` up to `resumed` are lost."""
    return b'{"requested_after":"%s","resumed_after":"%s"}' % (
        requested.encode().encode(), resumed.encode().encode())


def gap_frame(requested: Position, resumed: Position) -> bytes:
    return b"id: %s\nevent: sse.gap\ndata: %s\n\n" % (
        resumed.encode().encode(), gap_json(requested, resumed))


def token_expiring_frame(last_id: Position, expires_at: float) -> bytes:
    """The warning before a token's exp: the position to resume from, and when."""
    data = orjson.dumps({
        "last_event_id": last_id.encode(),
        "expires_at": datetime.fromtimestamp(expires_at, UTC)
        .isoformat().replace("+00:00", "Z")})
    return b"event: sse.token-expiring\ndata: %s\n\n" % data


def retry_frame(milliseconds: int) -> bytes:
    """The stream's preamble: the client's reconnect delay."""
    return b"retry: %d\n\n" % milliseconds


class Payload:
    """Bytes for the wire, chunk-framed at most once however many streams get them."""

    __slots__ = ("data", "_framed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._framed: bytes | None = None

    def framed(self) -> bytes:
        if self._framed is None:
            self._framed = b"%x\r\n%s\r\n" % (len(self.data), self.data)
        return self._framed


class StreamClosed(ConnectionError):
    """The client went away; nothing more can be written."""


class SseResponse(EventSourceResponse):
    def __init__(self, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(headers=headers)
        self._chunked = False
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # StreamResponse.prepare, not EventSourceResponse.prepare: that one
        # starts the per-stream ping task this server does without.
        writer = await web.StreamResponse.prepare(self, request)
        self._chunked = bool(getattr(writer, "chunked", False))
        self._transport = request.transport
        return writer

    async def start(self, preamble: bytes) -> None:
        """Send the headers with the first bytes (aiohttp buffers headers)."""
        await self.write(preamble)

    def write_nowait(self, data: bytes | Payload) -> None:
        """Queue `data` on the socket now; raises StreamClosed if it is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise StreamClosed()
        payload = data if isinstance(data, Payload) else Payload(data)
        transport.write(payload.framed() if self._chunked else payload.data)

    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_closing()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        request = self._req
        if request is None or request.transport is None or request.transport.is_closing():
            raise StreamClosed()
        writer = self._payload_writer
        if writer is not None:
            await writer.drain()

    async def finish(self) -> None:
        """End the response cleanly (the last chunk), if the client is there."""
        if not self.is_closing():
            try:
                await self.write_eof()
            except (ConnectionError, RuntimeError):
                pass
