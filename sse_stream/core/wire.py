"""The SSE wire format: every byte of an SSE stream is built here.

Event frames, the bare `id:` line, `sse.gap`, keepalives,
`sse.token-expiring` and the `retry:` preamble. (Catch-up pages are the one
exception by design: PostgreSQL builds their frames, the same bytes, from
`frame_sse` in sql/queries.sql; the tests compare the two.) Pure bytes:
web/response.py writes them to the socket.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

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
