"""What one client asked for (a Selector) and where it is (a Subscription)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .events import Event, Position
from .filters import AnyOf, Condition, DataFilter
from .patterns import StreamPattern, TypeFilter
from .queries import SelectorSql
from .response import Payload, SseResponse, gap_frame, id_frame

# Parameters $1..$5 of read_selected are the position, the page size, the
# rows a page may examine and its byte budget.
FIRST_SELECTOR_PARAM = 6

__all__ = ["Part", "Payload", "Selector", "SelectorSql", "Subscription", "Terms"]


Terms = tuple[Condition | AnyOf, ...]  # data filters, ANDed (DataFilter.terms)


@dataclass(frozen=True)
class Part:
    """Some patterns of a selector and the data filter their events must pass
    (None: any data): the request's own filters ANDed with those of the
    grant that covers the patterns."""

    patterns: tuple[StreamPattern, ...]
    data: DataFilter | None = None

    def accepts(self, event: Event) -> bool:
        return any(p.matches(event.stream) for p in self.patterns) and \
            (self.data is None or self.data.matches(event.data))


@dataclass(frozen=True)
class Selector:
    """Streams (names and patterns), types and data filters of a subscription.

    Usually one data filter applies to every pattern (`data`). When the
    grants of a token bind the patterns of one request to different filters
    (`scoped`), `parts` says which filter applies to which patterns and
    `data` is None: an event passes when it passes a part whose patterns
    match its stream.
    """

    patterns: tuple[StreamPattern, ...]
    types: TypeFilter | None = None
    data: DataFilter | None = None
    parts: tuple[Part, ...] = ()

    def matches_stream(self, stream: str) -> bool:
        return any(p.matches(stream) for p in self.patterns)

    def accepts(self, event: Event) -> bool:
        """Types and data only: the hub has matched the stream already."""
        if self.types is not None and not self.types.matches(event.type):
            return False
        if self.parts:
            return any(part.accepts(event) for part in self.parts)
        return self.data is None or self.data.matches(event.data)

    def bound(self, terms: Terms) -> Selector:
        """This selector with a token's data filters ANDed to its own.

        The token's come first: the live index (routing.Group) files a group
        under its first `eq`/`in` condition, and a token's (one user's id) is
        the selective one.
        """
        if not terms:
            return self
        own = self.data.terms if self.data is not None else ()
        return replace(self, data=DataFilter((*terms, *own)))

    def scoped(self, coverage: Sequence[Sequence[Terms]]) -> Selector:
        """This selector bound to the grants that cover its patterns:
        `coverage[i]` holds the filters of each grant covering `patterns[i]`
        (`()`: a grant with none). An event of a pattern passes when it passes
        the filters of one of the pattern's grants (their union) and the
        request's own. When every pattern has the same single set of filters,
        this is `bound`: one filter, as an unbound selector has."""
        assert len(coverage) == len(self.patterns), "one entry per pattern"
        alternatives = [((),) if () in terms else tuple(dict.fromkeys(terms))
                        for terms in coverage]
        if all(len(a) == 1 and a == alternatives[0] for a in alternatives):
            return self.bound(alternatives[0][0])
        own = self.data.terms if self.data is not None else ()
        grouped: dict[Terms, list[StreamPattern]] = {}
        for pattern, terms in zip(self.patterns, alternatives):
            for one in terms:
                grouped.setdefault(one, []).append(pattern)
        parts = tuple(Part(tuple(patterns), DataFilter((*terms, *own)) if terms or own
                           else None) for terms, patterns in grouped.items())
        return replace(self, data=None, parts=parts)

    def to_sql(self, first_param: int = FIRST_SELECTOR_PARAM) -> SelectorSql:
        """Boolean SQL expressions over `ev` and their bind values."""
        params: list[Any] = []

        def bind(value: Any) -> str:
            params.append(value)
            return f"${first_param + len(params) - 1}"

        streams = _streams_sql(self.patterns, bind, ranges=True)
        terms = []
        if self.types is not None:
            type_terms = []
            if self.types.exact:
                type_terms.append(f"ev.type = ANY({bind(sorted(self.types.exact))}::text[])")
            for prefix in self.types.prefixes:
                type_terms.append(f"starts_with(ev.type, {bind(prefix)}::text)")
            terms.append("(" + " OR ".join(type_terms) + ")")
        if self.parts:
            terms.append("(" + " OR ".join(
                f"({_streams_sql(part.patterns, bind, ranges=False)}"
                + (f" AND ({part.data.to_sql('ev.data', bind)})" if part.data else "") + ")"
                for part in self.parts) + ")")
        elif self.data is not None:
            terms.append(f"({self.data.to_sql('ev.data', bind)})")
        return SelectorSql(streams, " AND ".join(terms) or "true", params)


def _streams_sql(patterns: tuple[StreamPattern, ...], bind: Callable[[Any], str],
                 ranges: bool) -> str:
    """Whether `ev.stream` matches one of `patterns`; with `ranges`, in a form
    an index serves (what a scan walks)."""
    exact = [p.text for p in patterns if p.is_exact]
    regexes = [p.sql_regex for p in patterns if not p.is_exact]
    stream_terms = []
    if len(exact) == 1:
        # A single `=` lets the planner walk (stream, xid, id) in order.
        stream_terms.append(f"ev.stream = {bind(exact[0])}::text")
    elif exact:
        stream_terms.append(f"ev.stream = ANY({bind(exact)}::text[])")
    if regexes:
        regex_term = f"ev.stream ~ ANY({bind(regexes)}::text[])"
        prefixes = [p.literal_prefix for p in patterns if not p.is_exact]
        if ranges and all(prefixes):
            # A regex cannot use an index; a range of names per literal
            # prefix can (index events_stream_c_position, C collation so
            # that the range is exactly the names with that prefix).
            ranges_sql = " OR ".join(
                f"(ev.stream COLLATE \"C\" >= {bind(prefix)}::text"
                f" AND ev.stream COLLATE \"C\" < {bind(_successor(prefix))}::text)"
                for prefix in prefixes)
            regex_term = f"({regex_term} AND ({ranges_sql}))"
        stream_terms.append(regex_term)
    return "(" + " OR ".join(stream_terms) + ")"


def _successor(prefix: str) -> str:
    """The smallest text after every text starting with `prefix` (ASCII names)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Subscription:
    """One open stream: its selector, its place in the order, its socket.

    Three positions say where it is (see Hub._join for how they meet):
    - `covered`: every matching event up to here has been written to it;
    - `last_id`: the last position written on an `id:` line, where the
      client resumes after a disconnect (never ahead of `covered`);
    - `replayed_through`: once `joined` to the live flow, live events at or
      before this were already written by the catch-up, and are skipped.
    While not `joined`, the stream's own task reads from the table after
    `covered` until it can join (Hub.serve).
    """

    __slots__ = ("selector", "response", "covered", "replayed_through", "last_id", "joined",
                 "closed", "last_write", "signal", "sql", "events_sent", "bytes_sent", "opened",
                 "peer", "streams", "cloudevents", "expires_at", "expiry_warned")

    def __init__(self, selector: Selector, response: SseResponse, start: Position,
                 peer: str = "", cloudevents: bool = False,
                 expires_at: float | None = None) -> None:
        self.selector = selector
        self.response = response
        self.covered = start
        self.replayed_through = start
        self.last_id = start
        self.joined = False
        self.closed = False
        self.last_write = time.monotonic()
        self.signal = asyncio.Event()  # wakes the stream's task: overflow, close
        self.sql = selector.to_sql()
        self.events_sent = 0
        self.bytes_sent = 0
        self.opened = time.monotonic()
        self.peer = peer
        self.streams = ",".join(p.text for p in selector.patterns)  # for logs and metrics
        self.cloudevents = cloudevents  # data: is a CloudEvents envelope
        self.expires_at = expires_at  # the token's exp (epoch seconds): the stream ends there
        self.expiry_warned = False

    def write(self, data: bytes | Payload) -> None:
        """Write without waiting; marks the subscription closed if the client left."""
        try:
            self.response.write_nowait(data)
        except ConnectionError:
            self.close()
            return
        self.last_write = time.monotonic()
        self.bytes_sent += len(data.data if isinstance(data, Payload) else data)

    def write_gap(self, requested: Position, resumed: Position) -> None:
        """Tell the client that events after `requested` up to `resumed`
        are lost to it (sse.gap), and go on from `resumed`."""
        self.write(gap_frame(requested, resumed))
        self.covered = self.last_id = resumed

    def write_position(self, position: Position) -> None:
        """Move the client's position with no event (a bare `id:` line)."""
        self.write(id_frame(position))
        self.last_id = position

    def close(self) -> None:
        self.closed = True
        self.signal.set()
