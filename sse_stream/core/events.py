"""Positions, events, and their wire forms (envelope JSON and SSE bytes).

A position is the pair (xid, id): the writing transaction's xid8 and the
event's id. It is encoded as "<xid>-<id>" in decimal, at most 41 characters,
and clients treat it as opaque. `Position.after_horizon(xmin)` names the point
just before every transaction that had not ended when a snapshot was taken:
resuming after it reads every event of those transactions, so it is a safe
position to hand out even when it names no event.

An event's wire forms are built around PostgreSQL's own text of its data and
time, never a re-encoding: whatever the table holds (nesting deeper than any
JSON library takes, integers of thousands of digits, years past 9999) is
delivered as stored. The data is decoded only when a live data filter asks
for it, and that decoding never fails (see `decode_data`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

import orjson

from .errors import Refusal

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
        raise Refusal(param, "not a position this server handed out")
    xid, id_ = int(match.group(1)), int(match.group(2))
    if xid > 2**64 - 1 or id_ > MAX_ID:
        raise Refusal(param, "position out of range")
    return Position(xid, id_)


class Undecodable:
    """Data that no decoder could read: it matches no data filter's field."""


UNDECODABLE = Undecodable()
_UNSET: Any = object()


class Event:
    """One stored event, built once per read and shared by all subscribers.

    Immutable by convention; `data` is decoded on first use and cached.
    `created_at` is the RFC 3339 text of the event's time (UTC, "Z"),
    `created_epoch` the same instant in seconds (for the lag metric).
    `frame` and `cloudevent_frame` hold its SSE frames once
    response.event_frame has built them.
    """

    __slots__ = ("id", "position", "stream", "type", "raw_data", "created_at", "created_epoch",
                 "envelope", "frame", "cloudevent_frame", "_data", "_cloudevent")

    def __init__(self, id_: int, position: Position, stream: str, type_: str, raw_data: bytes,
                 created_at: str, created_epoch: float) -> None:
        self.id = id_
        self.position = position
        self.stream = stream
        self.type = type_
        self.raw_data = raw_data
        self.created_at = created_at
        self.created_epoch = created_epoch
        # stream and type are constrained by the table to characters that
        # need no JSON escaping; data is PostgreSQL's text of a jsonb value.
        self.envelope = b'{"id":%d,"position":"%d-%d","stream":"%s","type":"%s","data":%s,' \
            b'"created_at":"%s"}' % (id_, *position, stream.encode(), type_.encode(),
                                     raw_data, created_at.encode())
        self.frame: bytes | None = None
        self.cloudevent_frame: bytes | None = None
        self._data = _UNSET
        self._cloudevent: bytes | None = None

    @classmethod
    def from_row(cls, xid: int, id_: int, stream: str, type_: str, raw_data: bytes,
                 created_at: str, created_epoch: float) -> Event:
        return cls(id_, Position(xid, id_), stream, type_, raw_data, created_at, created_epoch)

    def __repr__(self) -> str:
        return f"Event(id={self.id}, position={self.position.encode()}, stream={self.stream!r}, " \
            f"type={self.type!r})"

    @property
    def data(self) -> Any:
        """The decoded data (for live data filters), decoded once."""
        value = self._data
        if value is _UNSET:
            value = self._data = decode_data(self.raw_data)
        return value

    @property
    def cloudevent(self) -> bytes:
        """The event as a CloudEvents 1.0 JSON envelope (structured mode)."""
        form = self._cloudevent
        if form is None:
            # Extension attributes (ssestream, sseposition): lowercase alphanumeric names.
            form = self._cloudevent = (
                b'{"specversion":"1.0","id":"%d","source":"/streams/%s","type":"%s",'
                b'"time":"%s","datacontenttype":"application/json","data":%s,'
                b'"ssestream":"%s","sseposition":"%s"}' % (
                    self.id, self.stream.encode(), self.type.encode(), self.created_at.encode(),
                    self.raw_data, self.stream.encode(), self.position.encode().encode()))
        return form


# -- decoding the data for live filters ------------------------------------------

# Deeper values than this are replaced by a stand-in before a fallback decode:
# data filters walk paths of at most filters.MAX_PATH keys, far above which
# every value is an object or array and matches no comparison either way.
MAX_DECODED_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_TOKEN_RE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class TooDeep:
    """A value nested deeper than MAX_DECODED_DEPTH: an object or array."""


TOO_DEEP = TooDeep()


def decode_data(raw: bytes) -> Any:
    """Decode PostgreSQL's text of a jsonb value, whatever it holds.

    orjson first (the fast path). It refuses numbers beyond a double and
    nesting deeper than 1024; then json decodes integers as orjson would (an
    int in [-2**63, 2**64-1], else a double, infinity beyond) and doubles
    that overflow to infinity, with any level deeper than MAX_DECODED_DEPTH
    replaced by TOO_DEEP. Data filters compare neither infinities nor
    containers, exactly as their SQL form does. Never raises.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return _tolerant_loads(raw)
    except RecursionError:
        pass
    except Exception:
        return UNDECODABLE
    try:
        return _tolerant_loads(_flatten(raw, MAX_DECODED_DEPTH))
    except Exception:
        return UNDECODABLE


def _parse_int(text: str) -> int | float:
    # Beyond 20 digits the value is outside the exact range: a double, and
    # float() takes any length where int() refuses over 4300 digits.
    if len(text) <= 21:
        value = int(text)
        if _INT_MIN <= value <= _INT_MAX:
            return value
    return float(text)


def _tolerant_loads(raw: bytes) -> Any:
    return json.loads(raw, parse_int=_parse_int, parse_constant=_constant)


def _constant(name: str) -> Any:
    # PostgreSQL never writes NaN or Infinity in JSON; _flatten writes NaN
    # where it cut a level off.
    return TOO_DEEP if name == "NaN" else (math.inf if name == "Infinity" else -math.inf)


def _flatten(raw: bytes, depth: int) -> bytes:
    """`raw` with every array or object below `depth` levels replaced by NaN."""
    parts: list[bytes] = []
    level = 0
    start = 0  # where the text not yet copied begins
    cut: int | None = None  # the level at which the current cut began
    for match in _TOKEN_RE.finditer(raw):
        token = match.group()
        if token[0] == 0x22:  # a string: its brackets are text
            continue
        if token in (b"[", b"{"):
            level += 1
            if cut is None and level > depth:
                parts.append(raw[start:match.start()])
                parts.append(b"NaN")
                cut = level
        else:
            if cut is not None and level == cut:
                start = match.end()
                cut = None
            level -= 1
    parts.append(raw[start:])
    return b"".join(parts)
