"""Positions, events, and their wire forms (envelope JSON and SSE bytes).

A position is the pair (xid, id): the writing transaction's xid8 and the
event's id. It is encoded as "<xid>-<id>" in decimal, at most 41 characters,
and clients treat it as opaque. `Position.after_horizon(xmin)` names the point
just before every transaction that had not ended when a snapshot was taken:
resuming after it reads every event of those transactions, so it is a safe
position to hand out even when it names no event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from .errors import InvalidInput

MAX_ID = 2**63 - 1
_POSITION_RE = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,18})")


class Position(NamedTuple):
    """A point in the stream order; tuples compare in that order."""

    xid: int
    id: int

    def encode(self) -> str:
        return f"{self.xid}-{self.id}"

    @classmethod
    def after_horizon(cls, xmin: int) -> Position:
        """The last point that is final in a snapshot whose xmin is `xmin`."""
        return cls(xmin - 1, MAX_ID)


ORIGIN = Position(0, 0)


def parse_position(value: str, param: str = "last_event_id") -> Position:
    """Parse a client-sent position; "0" means before the oldest event."""
    text = value.strip()
    if text == "0":
        return ORIGIN
    match = _POSITION_RE.fullmatch(text)
    if match is None:
        raise InvalidInput(param, "not a position this server handed out")
    xid, id_ = int(match.group(1)), int(match.group(2))
    if xid > 2**64 - 1 or id_ > MAX_ID:
        raise InvalidInput(param, "position out of range")
    return Position(xid, id_)


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event, decoded once per read and shared by all subscribers."""

    id: int
    position: Position
    stream: str
    type: str
    data: Any
    created_at: datetime
    # The wire forms, built once per event whatever the number of readers.
    envelope: bytes = field(repr=False, compare=False)
    sse: bytes = field(repr=False, compare=False)
    # Other wire forms, built on first use by any subscriber, then shared.
    _forms: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_row(cls, xid: int, id_: int, stream: str, type_: str, data_json: str,
                 created_at: datetime) -> Event:
        position = Position(xid, id_)
        encoded_position = position.encode()
        try:
            data = orjson.loads(data_json)
        except orjson.JSONDecodeError:
            return cls._from_wide_numbers(id_, position, stream, type_, data_json, created_at)
        envelope = orjson.dumps({
            "id": id_,
            "position": encoded_position,
            "stream": stream,
            "type": type_,
            "data": data,
            # orjson writes the datetime itself (RFC 3339, "Z" for UTC, the
            # microseconds only when non-zero, as isoformat does) about four
            # times faster than isoformat() and a replace: this runs per event.
            "created_at": created_at,
        }, option=orjson.OPT_UTC_Z)
        # stream and type are constrained by the table to characters that
        # cannot break a line; the envelope is compact JSON on one line.
        sse = b"id: %s\nevent: %s\ndata: %s\n\n" % (
            encoded_position.encode(), type_.encode(), envelope)
        return cls(id_, position, stream, type_, data, created_at, envelope, sse)

    @classmethod
    def _from_wide_numbers(cls, id_: int, position: Position, stream: str, type_: str,
                           data_json: str, created_at: datetime) -> Event:
        """An event whose data holds a number no double can (jsonb keeps 1e400).

        orjson refuses such text, so json decodes it (to an exact int or to
        inf: no comparison matches either, as in SQL), and the wire forms
        carry PostgreSQL's own text of the data (one line, as jsonb's text
        always is), so the number reaches the client as it was stored.
        """
        data = json.loads(data_json)
        encoded_position = position.encode()
        raw = data_json.encode()
        time = orjson.dumps(created_at, option=orjson.OPT_UTC_Z)
        envelope = b'{"id":%d,"position":"%s","stream":%s,"type":%s,"data":%s,"created_at":%s}' % (
            id_, encoded_position.encode(), orjson.dumps(stream), orjson.dumps(type_), raw, time)
        sse = b"id: %s\nevent: %s\ndata: %s\n\n" % (
            encoded_position.encode(), type_.encode(), envelope)
        cloudevent = (
            b'{"specversion":"1.0","id":"%d","source":%s,"type":%s,"time":%s,'
            b'"datacontenttype":"application/json","data":%s,"ssestream":%s,"sseposition":"%s"}' % (
                id_, orjson.dumps(f"/streams/{stream}"), orjson.dumps(type_), time, raw,
                orjson.dumps(stream), encoded_position.encode()))
        return cls(id_, position, stream, type_, data, created_at, envelope, sse,
                   {"cloudevent": cloudevent})

    @property
    def cloudevent(self) -> bytes:
        """The event as a CloudEvents 1.0 JSON envelope (structured mode)."""
        form = self._forms.get("cloudevent")
        if form is None:
            form = self._forms["cloudevent"] = orjson.dumps({
                "specversion": "1.0",
                "id": str(self.id),
                "source": f"/streams/{self.stream}",
                "type": self.type,
                "time": self.created_at,
                "datacontenttype": "application/json",
                "data": self.data,
                # Extension attributes: lowercase alphanumeric names.
                "ssestream": self.stream,
                "sseposition": self.position.encode(),
            }, option=orjson.OPT_UTC_Z)  # the same time text as the envelope's
        return form

    @property
    def cloudevent_sse(self) -> bytes:
        """The SSE frame whose data is the CloudEvents envelope."""
        form = self._forms.get("cloudevent_sse")
        if form is None:
            form = self._forms["cloudevent_sse"] = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                self.position.encode().encode(), self.type.encode(), self.cloudevent)
        return form

    def as_dict(self) -> dict[str, Any]:
        """The envelope as a mapping (for JSON pages)."""
        result: dict[str, Any] = json.loads(self.envelope)
        return result
