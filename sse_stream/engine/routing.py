"""Where the hub finds the live subscriptions an event can reach.

Live subscriptions with one selector and format form a Group, matched once
per event and written alike. Groups are filed under each stream name or
pattern they ask for (exact names in a dict, patterns in a subject tree),
and under each, indexed by one condition every match must meet: an `eq` or
`in` data filter by (path, value), else exact types; the rest are tested on
every event of the stream. An event looks its own value up once per indexed
path, so the work per event follows the groups it can reach, not every group
of its stream. Candidates are then tested in full (`Selector.accepts`): the
index only leaves out groups that cannot match.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Iterator
from typing import Any, NamedTuple

from ..core.events import Event
from ..core.filters import DataFilter, lookup, value_key
from ..core.patterns import StreamPattern, SubjectTree, TypeFilter
from ..core.selector import Selector
from ..core.stats import HubStats
from ..core.wire import Payload, event_frame
from .subscription import Subscription

log = logging.getLogger(__name__)


class Index(NamedTuple):
    """Where a group is filed under one stream name or pattern: by a data
    condition's path and keys, else by exact types, else nowhere (`path`
    None and no `types`: tested on every event of the stream)."""

    path: tuple[str, ...] | None
    keys: frozenset[Hashable]
    types: frozenset[str]

    @classmethod
    def of(cls, data: DataFilter | None, types: TypeFilter | None) -> Index:
        condition = data.index_condition() if data is not None else None
        if condition is not None:
            return cls(condition.path, condition.index_keys() or frozenset(), frozenset())
        if types is not None and not types.prefixes:
            return cls(None, frozenset(), types.exact)
        return cls(None, frozenset(), frozenset())


class Group:
    """Live subscriptions with the same selector and format: matched once, written alike."""

    __slots__ = ("selector", "cloudevents", "members", "filings")

    def __init__(self, selector: Selector, cloudevents: bool) -> None:
        self.selector = selector
        self.cloudevents = cloudevents
        self.members: set[Subscription] = set()
        # Each pattern with the index its matches must meet: the selector's
        # data filter, or, for a selector in parts, the filter of each part
        # that holds the pattern (a pattern in two parts is filed twice).
        types = selector.types
        if selector.parts:
            self.filings = tuple((pattern, Index.of(part.data, types))
                                 for part in selector.parts for pattern in part.patterns)
        else:
            index = Index.of(selector.data, types)
            self.filings = tuple((pattern, index) for pattern in selector.patterns)

    def frame(self, event: Event) -> bytes:
        return event_frame(event, self.cloudevents)


class Route:
    """The groups filed under one stream name or pattern, indexed."""

    __slots__ = ("values", "types", "rest", "size")

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], dict[Hashable, set[Group]]] = {}
        self.types: dict[str, set[Group]] = {}
        self.rest: set[Group] = set()
        self.size = 0

    def add(self, group: Group, index: Index) -> None:
        self.size += 1
        if index.path is not None:
            # No keys (`in.()`): it can match nothing, and is filed nowhere.
            for key in index.keys:
                self.values.setdefault(index.path, {}).setdefault(key, set()).add(group)
        elif index.types:
            for type_ in index.types:
                self.types.setdefault(type_, set()).add(group)
        else:
            self.rest.add(group)

    def remove(self, group: Group, index: Index) -> None:
        self.size -= 1
        if index.path is not None:
            table = self.values.get(index.path)
            if table is not None:
                for key in index.keys:
                    _discard(table, key, group)
                if not table:
                    del self.values[index.path]
        elif index.types:
            for type_ in index.types:
                _discard(self.types, type_, group)
        else:
            self.rest.discard(group)

    def reach(self, event: Event, found: set[Group]) -> None:
        """Add the groups that `event` can match to `found`."""
        if self.values:
            data = event.data  # decoded once per event, on first use
            for path, table in self.values.items():
                key = value_key(lookup(data, path))
                if key is not None:
                    groups = table.get(key)
                    if groups:
                        found |= groups
        if self.types:
            groups = self.types.get(event.type)
            if groups:
                found |= groups
        if self.rest:
            found |= self.rest


def _discard(table: dict[Any, set[Group]], key: Any, group: Group) -> None:
    groups = table.get(key)
    if groups is not None:
        groups.discard(group)
        if not groups:
            del table[key]


class Routes:
    """Every live group, filed by stream name or pattern."""

    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._by_pattern: dict[str, Route] = {}
        self._patterns: SubjectTree[Route] = SubjectTree()

    def add(self, group: Group) -> None:
        for pattern, index in group.filings:
            self._route(pattern, create=True).add(group, index)

    def remove(self, group: Group) -> None:
        for pattern, index in group.filings:
            route = self._route(pattern, create=False)
            route.remove(group, index)
            if not route.size:
                if pattern.is_exact:
                    del self._exact[pattern.text]
                else:
                    del self._by_pattern[pattern.text]
                    self._patterns.remove(pattern, route)

    def _route(self, pattern: StreamPattern, create: bool) -> Route:
        table = self._exact if pattern.is_exact else self._by_pattern
        route = table.get(pattern.text)
        if route is None:
            assert create, f"no route for {pattern.text}"
            route = table[pattern.text] = Route()
            if not pattern.is_exact:
                self._patterns.add(pattern, route)
        return route

    def routes(self, stream: str) -> list[Route]:
        """The routes whose name or pattern matches `stream`."""
        found = [self._exact[stream]] if stream in self._exact else []
        if self._patterns.size:
            found.extend(self._patterns.match(stream))
        return found

    @staticmethod
    def reach(event: Event, routes: list[Route]) -> Collection[Group]:
        """The groups of `routes` that `event` can match (each once)."""
        if len(routes) == 1:
            route = routes[0]
            if not route.values and not route.types:
                return route.rest  # the plain case: no set to build
        found: set[Group] = set()
        for route in routes:
            route.reach(event, found)
        return found


class LiveIndex:
    """The live subscriptions: grouped by identical selector and format,
    filed by stream name or pattern and indexed by their filters (Routes)."""

    def __init__(self, stats: HubStats) -> None:
        self._groups: dict[tuple[Selector, bool], Group] = {}
        self._routes = Routes()
        self.stats = stats

    def add(self, subscription: Subscription) -> None:
        key = (subscription.selector, subscription.cloudevents)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(*key)
            self._routes.add(group)
        group.members.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        key = (subscription.selector, subscription.cloudevents)
        group = self._groups[key]
        group.members.discard(subscription)
        if not group.members:
            del self._groups[key]
            self._routes.remove(group)

    def members(self) -> Iterator[Subscription]:
        for group in self._groups.values():
            yield from group.members

    def match(self, events: list[Event]) -> dict[Group, list[Event]]:
        """Each reachable group's matching events, in order. An event is
        tested only against the groups its stream, type and indexed data
        values can reach; a test that raises counts as no match."""
        matched: dict[Group, list[Event]] = {}
        routes = self._routes
        by_stream: dict[str, list[Route]] = {}
        for event in events:
            found = by_stream.get(event.stream)
            if found is None:
                found = by_stream[event.stream] = routes.routes(event.stream)
            if not found:
                continue
            for group in routes.reach(event, found):
                try:
                    accepted = group.selector.accepts(event)
                except Exception:
                    self.stats.match_errors += 1
                    log.exception("matching event %s failed", event.position.encode())
                    continue
                if accepted:
                    batch = matched.get(group)
                    if batch is None:
                        batch = matched[group] = []
                    batch.append(event)
        return matched


def shared_payloads(matched: dict[Group, list[Event]]) -> Iterator[tuple[Group, list[Event],
                                                                       Payload]]:
    """Each group's batch with its payload: groups that get the same events
    in the same format share one (joined and chunk-framed once)."""
    shared: dict[tuple[bool, tuple[int, ...]], Payload] = {}
    for group, batch in matched.items():
        key = (group.cloudevents, tuple([event.id for event in batch]))
        payload = shared.get(key)
        if payload is None:
            payload = shared[key] = Payload(b"".join(map(group.frame, batch)))
        yield group, batch, payload
