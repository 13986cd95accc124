"""What a read of the event table returns: a page of the shared read, a
page of frames (catch-up and JSON pages), the ids of a publish; and the
events built from a page's rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ..core.events import Event, Position

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    """Events read from the table and how far the read is final.

    `covered` is the position up to which the reader has seen every row it
    asked for: the last event when the page is full, the last row it examined
    when it stopped at its scan budget, else the snapshot horizon.
    `held` is true when committed rows exist beyond `covered` that an older,
    still-open transaction keeps from being final: read again soon.
    `full`: more may follow right away (read again now).
    `future`: the position read after is beyond anything this database has
    handed out (a restored or replaced cluster); `covered` is then its horizon.
    `behind`: the position is beyond what the live source (a standby) has
    replayed, but the primary handed it out: wait for the standby, never a
    gap; `covered` is then the position itself.
    """

    events: list[Event]
    covered: Position
    held: bool
    full: bool
    pruned: Position | None = None  # highest pruned position, in the page's snapshot
    future: bool = False
    behind: bool = False


@dataclass(frozen=True)
class Frames:
    """A page of a catch-up or JSON page: its `count` matching events as the
    bytes the client gets, built by PostgreSQL (SSE frames back to back, or
    JSON envelopes separated by commas). `last` is the last one's position;
    `covered`, `full`, `pruned` and `future` as in Page."""

    body: bytes
    count: int
    last: Position | None
    covered: Position
    full: bool
    pruned: Position | None = None
    future: bool = False
    behind: bool = False


def lsn_number(text: str) -> int:
    """A pg_lsn's text (`16/B374D848`) as a number of bytes."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True)
class Published:
    """The ids of a published batch, in input order.

    `replayed`: an earlier request with the same idempotency key wrote them
    and this one wrote nothing; `fingerprint` is that request's.
    """

    ids: list[int]
    replayed: bool
    fingerprint: bytes | None


def row_events(rows: Sequence[asyncpg.Record], skipped: list[int]) -> list[Event]:
    """The events of a page's rows, in order, up to the first row that came
    without its data (past the page's byte budget)."""
    events = []
    for row in rows:
        raw = row["data"]
        if raw is None:
            break
        try:
            events.append(Event.from_row(row["xid"], row["id"], row["stream"], row["type"], raw,
                                         row["created_at"], row["epoch"]))
        except Exception:
            # Building an event is byte formatting of values the database
            # already turned to text; if that still fails, this reader skips
            # the row and goes on (the watermark passes it).
            skipped[0] += 1
            log.exception("skipped an event that could not be built: position %s-%s",
                          row["xid"], row["id"])
    return events
