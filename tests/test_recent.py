"""Recent history (sse_stream/engine/recent.py), pure: what it holds, what a
resume gets from it, and that it keeps to its budget."""

from __future__ import annotations

import gc

from sse_stream.core.events import ORIGIN, Event, Position
from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.patterns import parse_pattern_list, parse_type_filter
from sse_stream.core.selector import Selector
from sse_stream.core.wire import event_frame
from sse_stream.engine.recent import EVENT_OVERHEAD, Entry, Recent, event_of, frame_of, position_of


def event(n: int, stream: str = "s", type_: str = "t", data: str = "{}") -> Event:
    return Event.from_row(n, n, stream, type_, data.encode(), "2026-01-01T00:00:00Z", 0.0)


def selector(streams: str, *filters: tuple[str, str], types: list[str] | None = None
             ) -> Selector:
    return Selector(parse_pattern_list(streams), parse_type_filter(types or []),
                    parse_data_filters(list(filters)))


def numbers(found: tuple[list[Entry], Position]) -> list[int]:
    return [position_of(item).id for item in found[0]]


def test_a_resume_gets_its_streams_in_order_filtered_as_live() -> None:
    recent = Recent(1 << 20)
    recent.reset(Position(0, 9))
    events = [event(1, "a"), event(2, "b", data='{"k": 1}'), event(3, "a.x"),
              event(4, "b", "u", '{"k": 2}'), event(5, "a")]
    recent.extend(events, Position(5, 99))
    assert recent.covers(Position(2, 2)) and not recent.covers(Position(6, 0))
    assert not recent.covers(ORIGIN)  # "from the oldest retained": the table knows
    assert numbers(recent.after(Position(0, 9), selector("a"), 1 << 20)) == [1, 5]
    assert numbers(recent.after(Position(1, 1), selector("a,b"), 1 << 20)) == [2, 4, 5]
    assert numbers(recent.after(Position(0, 9), selector("a.*,b"), 1 << 20)) == [2, 3, 4]
    assert numbers(recent.after(Position(0, 9), selector("b", ("data.k", "eq.2")),
                                1 << 20)) == [4]
    assert numbers(recent.after(Position(0, 9), selector(">", types=["t"]), 1 << 20)) == \
        [1, 2, 3, 5]
    # A page ends at the byte budget, covering up to its last event.
    found, covered = recent.after(Position(0, 9), selector(">"), 1)
    assert numbers((found, covered)) == [1] and covered == Position(1, 1)
    assert recent.after(Position(0, 9), selector("nothing"), 1) == ([], Position(5, 99))
    assert recent.after(Position(0, 9), selector("nothing.*"), 1) == ([], Position(5, 99))


def test_a_page_examines_a_bounded_number_of_events() -> None:
    """A selective resume stops after `max_scan` events examined, covering
    up to the last one: a wildcard walks the ring in order, exact names
    walk only their streams (where a data filter may refuse many)."""
    recent = Recent(1 << 20)
    recent.reset(Position(0, 0))
    recent.extend([event(n, "a" if n == 7 else "b", data=f'{{"k": {n}}}')
                   for n in range(1, 11)], Position(10, 99))
    found, covered = recent.after(Position(0, 0), selector("a.*,a"), 1 << 20, max_scan=3)
    assert found == [] and covered == Position(3, 3)
    found, covered = recent.after(Position(0, 0), selector("b", ("data.k", "eq.9")), 1 << 20,
                                  max_scan=3)
    assert found == [] and covered == Position(3, 3)
    # Exact names examine only their own streams' events.
    found, covered = recent.after(Position(0, 0), selector("a"), 1 << 20, max_scan=3)
    assert numbers((found, covered)) == [7] and covered == Position(10, 99)
    # Walking page after page reaches every match, in order.
    for streams, filters, expected in (("a.*,a,b", [("data.k", "in.(2,7)")], [2, 7]),
                                       ("b", [("data.k", "eq.9")], [9])):
        position, got = Position(0, 0), []
        while position < recent.end:
            found, position = recent.after(position, selector(streams, *filters), 1 << 20,
                                           max_scan=3)
            got += numbers((found, position))
        assert got == expected, streams


def test_the_budget_evicts_the_oldest_and_moves_the_start() -> None:
    cost = len(b"{}") * 2 + EVENT_OVERHEAD
    recent = Recent(3 * cost)
    recent.reset(Position(0, 0))
    recent.extend([event(n, f"s{n % 2}") for n in range(1, 6)], Position(5, 99))
    assert len(recent) == 3 and recent.bytes == 3 * cost
    assert recent.start == Position(2, 2)  # whole from after the last evicted
    assert not recent.covers(Position(1, 1)) and recent.covers(Position(2, 2))
    assert numbers(recent.after(Position(2, 2), selector("s0,s1"), 1 << 20)) == [3, 4, 5]
    # Retention deleted through 3: a resume there learns it from the table.
    recent.forget_through(Position(3, 3))
    assert recent.start == Position(3, 3) and len(recent) == 2
    recent.reset(Position(7, 0))
    assert len(recent) == 0 and recent.bytes == 0 and recent.covers(Position(7, 0))
    off = Recent(0)
    off.extend([event(1)], Position(1, 1))
    assert len(off) == 0 and not off.covers(Position(1, 1))


def test_load_at_start_is_whole_from_just_before_the_oldest() -> None:
    recent = Recent(1 << 20)
    recent.load([event(4), event(6)], Position(9, 0))
    assert recent.start == Position(4, 3) and recent.end == Position(9, 0)
    assert recent.covers(Position(4, 3)) and not recent.covers(Position(4, 2))
    empty = Recent(1 << 20)
    empty.load([], Position(9, 0))
    assert empty.start == empty.end == Position(9, 0)
    # Every event there is: 0 ("from the oldest retained") is covered, through
    # retention's cuts, until an eviction; never a position before the start.
    assert not recent.covers(ORIGIN)
    every = Recent(3 * (2 * len(b"{}") + EVENT_OVERHEAD))
    every.load([event(4), event(6)], Position(9, 0), every=True)
    assert every.covers(ORIGIN) and not every.covers(Position(1, 1))
    every.forget_through(Position(4, 4))
    assert every.covers(ORIGIN) and numbers(every.after(ORIGIN, selector("s"), 1 << 20)) == [6]
    every.extend([event(10), event(11), event(12)], Position(12, 99))
    assert not every.covers(ORIGIN) and every.start == Position(6, 6)


def test_entries_give_back_the_event_and_its_frames_and_leave_the_collector() -> None:
    """What a resume from memory writes is what live delivery writes, in
    either form, and the ring's entries cost full collections nothing: the
    collector stops tracking them (Events it would walk every time)."""
    recent = Recent(1 << 20)
    recent.reset(Position(0, 0))
    original = event(3, "a", "u", '{"k": [1, {"x": "y"}]}')
    recent.extend([original], Position(3, 99))
    [item], _ = recent.after(Position(0, 0), selector("a"), 1 << 20)
    again = event_of(item)
    assert (again.position, again.stream, again.type, again.data, again.created_at) == \
        (original.position, original.stream, original.type, original.data, original.created_at)
    assert frame_of(item, False) == event_frame(event(3, "a", "u", '{"k": [1, {"x": "y"}]}'))
    assert frame_of(item, True) == event_frame(original, True)
    gc.collect()
    assert not gc.is_tracked(item)
