"""Recent history in memory: the last `--recent-bytes` of final events.

The ring holds exactly what the hub's shared read produced, in stream
order: every final event in (`start`, `end`], where `end` is the hub's
watermark (the ring moves with each fan-out, in the same step) and `start`
the position before the oldest event it still holds. It is filled from the
same pages the live streams get, so it holds no event a table read after
`start` would not return, and lacks none: a catch-up whose position is in
[`start`, `end`] is served from memory, filtered as live delivery is
(`Selector.accepts`), and joins the live flow through the same seam
(Hub._join). The oldest events leave when the ring passes its budget, when
retention prunes them, and all of them when the hub's read jumps (a gap).

Lookups: one list in stream order (eviction, and resumes with a wildcard)
and one per stream (a resume of exact stream names reads only their events,
found by bisection on position). A page examines a bounded number of events
(`after`), so no resume holds the event loop for long.

The ring holds entries, not Events: an entry is a plain tuple of an event's
atoms (ints, strings, bytes, a float) and its frame, which the collector
stops tracking the first time it sees it. A full ring of Events (objects
and Positions, which it tracks for good) made every full collection walk
them all: 20-30 ms per 100,000 events, a pause of the event loop for every
stream each time the ring's new events added up to a quarter of the heap.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any, Final

from ..core.events import ORIGIN, Event, Position, decode_data
from ..core.selector import Selector
from ..core.wire import event_frame

# What an event costs here besides twice its data (in its frame, and as
# the data filters' text): the entry, its fields and the frame's framing.
# read_recent (sql/queries.sql) counts the same.
EVENT_OVERHEAD = 400

# An entry: (xid, id, stream, type, data, created_at, created_epoch, frame).
# An exact tuple, never a subclass (a NamedTuple stays tracked).
Entry = tuple[int, int, str, str, bytes, str, float, bytes]
STREAM: Final = 2
TYPE: Final = 3
DATA: Final = 4
FRAME: Final = 7
_position = itemgetter(0, 1)  # an entry's position, as a plain tuple
_UNSET: Any = object()


def entry(event: Event) -> Entry:
    """What the ring keeps of an event: its fields and its frame (built
    here, once, and found cached by the live streams of the same page)."""
    return (event.position.xid, event.id, event.stream, event.type, event.raw_data,
            event.created_at, event.created_epoch, event_frame(event))


def position_of(item: Entry) -> Position:
    return Position(item[0], item[1])


def event_of(item: Entry) -> Event:
    """The Event again, for another frame."""
    event = Event.from_row(*item[:FRAME])
    event.frame = item[FRAME]
    return event


class _Tested:
    """What a data filter tests of an entry (core/selector.Tested): its
    stream, type and data, decoded on first use. Cheaper than the Event
    again (whose envelope a test never reads) for every entry a data-filtered
    resume examines."""

    __slots__ = ("stream", "type", "_raw", "_data")

    def __init__(self, item: Entry) -> None:
        self.stream = item[STREAM]
        self.type = item[TYPE]
        self._raw = item[DATA]
        self._data: Any = _UNSET

    @property
    def data(self) -> Any:
        if self._data is _UNSET:
            self._data = decode_data(self._raw)
        return self._data


def frame_of(item: Entry, cloudevents: bool) -> bytes:
    return event_frame(event_of(item), True) if cloudevents else item[FRAME]


def cost(item: Entry) -> int:
    return 2 * len(item[DATA]) + EVENT_OVERHEAD


class _Run:
    """Events in stream order; the oldest leave from the head (a list and an
    index, compacted now and then, so that bisection stays possible)."""

    __slots__ = ("events", "head")

    def __init__(self) -> None:
        self.events: list[Entry] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.events) - self.head

    def first(self) -> Entry:
        return self.events[self.head]

    def drop_first(self) -> None:
        # Compacted once half is gone: amortised O(1), and an evicted event
        # is never kept alive for long by the list of a quiet stream.
        self.head += 1
        if self.head * 2 >= len(self.events):
            del self.events[:self.head]
            self.head = 0

    def after(self, position: Position) -> Iterator[Entry]:
        events = self.events
        index = bisect_right(events, position, lo=self.head, key=_position)
        return (events[i] for i in range(index, len(events)))


class Recent:
    def __init__(self, budget: int) -> None:
        self.budget = budget  # bytes, about (0: off)
        self.start = ORIGIN
        self.end = ORIGIN
        self.whole = False  # it holds every retained event: a resume from 0 too
        self.bytes = 0
        self._all = _Run()
        self._streams: dict[str, _Run] = {}

    def __len__(self) -> int:
        return len(self._all)

    def reset(self, at: Position) -> None:
        """Forget everything: the ring holds (at, at], nothing."""
        self._all = _Run()
        self._streams = {}
        self.bytes = 0
        self.start = self.end = at
        self.whole = False

    def load(self, events: list[Event], end: Position, every: bool = False) -> None:
        """At start: the newest final events (oldest first) and the horizon
        they were read below. Whole from just before the oldest (an id is a
        whole number: nothing lies between (xid, id - 1) and (xid, id)).
        With `every`, they are all the final events the table holds: a
        resume from 0 ("from the oldest retained") is then served from
        memory too, until the first eviction (retention's cuts do not end
        it: the table loses the same events, and says so in the shared read
        that forget_through follows)."""
        first = events[0].position if events else end
        self.reset(end if not events else Position(first.xid, first.id - 1))
        self.whole = every and self.budget > 0
        self.extend(events, end)

    def extend(self, events: Iterable[Event], covered: Position) -> None:
        """A page of the shared read: `events`, final up to `covered`, all
        after `end` (the hub reads after its watermark, which is `end`)."""
        if not self.budget:
            self.start = self.end = covered
            return
        for event in events:
            item = entry(event)
            self._all.events.append(item)
            run = self._streams.get(event.stream)
            if run is None:
                run = self._streams[event.stream] = _Run()
            run.events.append(item)
            self.bytes += cost(item)
        self.end = covered
        while self.bytes > self.budget and len(self._all):
            self._evict()

    def forget_through(self, position: Position) -> None:
        """Retention deleted everything up to `position` from the table: a
        resume there must learn it from a table read (sse.gap). What is
        left still holds every retained event if it did before."""
        whole = self.whole
        while len(self._all) and _position(self._all.first()) <= position:
            self._evict()
        self.start = max(self.start, min(position, self.end))
        self.whole = whole

    def _evict(self) -> None:
        item = self._all.first()
        self._all.drop_first()
        run = self._streams[item[STREAM]]
        run.drop_first()
        if not len(run):
            del self._streams[item[STREAM]]
        self.bytes -= cost(item)
        self.start = position_of(item)
        self.whole = False

    def covers(self, position: Position) -> bool:
        """Whether a catch-up from `position` can be served from memory:
        from inside the ring, or from 0 when it holds every retained event
        (any other position before it may lie before a retention cut, which
        only the table can tell: sse.gap)."""
        if not self.budget or position > self.end:
            return False
        return self.whole if position == ORIGIN else self.start <= position

    def after(self, position: Position, selector: Selector, max_bytes: int,
              max_events: int = 1000, max_scan: int = 10_000) -> tuple[list[Entry], Position]:
        """The entries after `position` (which `covers`) that `selector`
        matches, in order, at most `max_events` and about `max_bytes` of
        frames (one at least), and the position up to which the ring was
        examined: `end`, or the last entry examined when a budget stopped
        it. At most `max_scan` entries are examined, as a table page
        examines at most --scan-rows: the work of one page, done without a
        pause of the event loop, stays bounded whatever the selector.

        Exact stream names read only their streams' entries; a selector
        with a wildcard reads the ring in order, testing each entry's stream
        (a walk over every stream name instead would cost as many tests as
        the ring has streams, per page). A data filter tests a view of the
        entry (`_Tested`), its data decoded for it."""
        candidates: Iterable[Entry]
        if all(pattern.is_exact for pattern in selector.patterns):
            runs = [run for run in map(self._streams.get, dict.fromkeys(
                pattern.text for pattern in selector.patterns)) if run is not None]
            if not runs:
                return [], self.end
            candidates = runs[0].after(position) if len(runs) == 1 else \
                heapq.merge(*(run.after(position) for run in runs), key=_position)
            streams: dict[str, bool] | None = None
        else:
            candidates = self._all.after(position)
            streams = {}  # stream name -> whether the selector asks for it
        types, by_data = selector.types, selector.data is not None or bool(selector.parts)
        found: list[Entry] = []
        size = examined = 0
        for item in candidates:
            examined += 1
            if streams is not None:
                wanted = streams.get(item[STREAM])
                if wanted is None:
                    wanted = streams[item[STREAM]] = selector.matches_stream(item[STREAM])
            else:
                wanted = True
            if not wanted:
                accepted = False
            elif by_data:
                try:
                    # A test that raises counts as no match, as live.
                    accepted = selector.accepts(_Tested(item))
                except Exception:
                    accepted = False
            else:
                accepted = types is None or types.matches(item[TYPE])
            if accepted:
                found.append(item)
                size += len(item[FRAME])
            if (accepted and (size >= max_bytes or len(found) >= max_events)) \
                    or examined >= max_scan:
                return found, position_of(item)
        return found, self.end
