"""What one client asked for: streams (names and patterns), types and data
filters, matched in Python (live) or compiled to SQL (replay) alike. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

from .filters import AnyOf, Condition, DataFilter
from .patterns import StreamPattern, TypeFilter


class SelectorSql(NamedTuple):
    """A selector as SQL over `ev`, for {streams} and {filter} of read_selected:
    which streams (what a scan walks, through an index where it can) and
    which of their rows match (what it tests); client values only as binds."""

    streams: str
    filter: str
    params: list[Any]



# Parameters $1..$5 of read_selected are the position, the page size, the
# rows a page may examine and its byte budget.
FIRST_SELECTOR_PARAM = 6

Terms = tuple[Condition | AnyOf, ...]  # data filters, ANDed (DataFilter.terms)


class Tested(Protocol):
    """What a selector tests of an event: an Event, or recent history's view
    of one of its entries (engine/recent.py), which builds no envelope."""

    @property
    def stream(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def data(self) -> Any: ...


@dataclass(frozen=True)
class Part:
    """Some patterns of a selector and the data filter their events must pass
    (None: any data): the request's own filters ANDed with those of the
    grant that covers the patterns."""

    patterns: tuple[StreamPattern, ...]
    data: DataFilter | None = None

    def accepts(self, event: Tested) -> bool:
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

    def accepts(self, event: Tested) -> bool:
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


@lru_cache(maxsize=4096)
def selector_sql(selector: Selector) -> SelectorSql:
    """`selector.to_sql()`, shared by the streams that ask for the same (a
    subscription keeps it for its catch-up reads)."""
    return selector.to_sql()
