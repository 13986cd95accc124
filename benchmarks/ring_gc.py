"""What a full ring of recent history costs Python's full garbage collections.

A full collection walks every object the collector tracks, so a pause of
the event loop for every stream grows with what long-lived memory holds.
This fills recent history (sse_stream/engine/recent.py) to --recent-bytes
with events shaped like the peruser scenario's, then times full collections
with the ring as it is (entries: plain tuples, which the collector stops
tracking) against the same events kept as Event objects (what the ring held
before), in one process, medians of --runs. Then what a resume with a data filter
pays per entry it examines, against the same test on Events that kept their
decoded data (what the ring cost before).

    python benchmarks/ring_gc.py [--recent-bytes 67108864] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sse_stream.core.events import Event, Position
from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.patterns import parse_pattern_list, parse_type_filter
from sse_stream.core.selector import Selector
from sse_stream.engine.recent import Recent


def events(count: int) -> list[Event]:
    return [Event.from_row(10_000 + n, n, f"peruser.u{n % 1000}", "tick",
                           b'{"u": %d, "seq": %d, "pad": "xxxxxxxxxxxxxxxx"}' % (n % 1000, n),
                           "2026-12-06T22:00:00.123456Z", 1_765_000_000.0 + n)
            for n in range(1, count + 1)]


def full_collection_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recent-bytes", type=int, default=64 << 20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    gc.collect()
    gc.freeze()  # as `sse-stream serve` does once started: the rest is the ring's
    empty = full_collection_ms(args.runs)
    recent = Recent(args.recent_bytes)
    recent.reset(Position(0, 0))
    batch = events(1000)
    while recent.bytes + 1000 * 600 < args.recent_bytes:
        recent.extend(batch, batch[-1].position)
        first = batch[-1].id + 1
        batch = [Event.from_row(10_000 + first + i, first + i, e.stream, e.type, e.raw_data,
                                e.created_at, e.created_epoch) for i, e in enumerate(batch)]
    held = len(recent)
    ring = full_collection_ms(args.runs)
    del recent, batch
    gc.collect()
    kept = events(held)
    for event in kept:  # frames built, as the live flow builds them
        event.frame = b"id: %d\n\n" % event.id
    as_events = full_collection_ms(args.runs)
    print(f"{held:,} events ({args.recent_bytes >> 20} MiB of recent history); "
          f"full collection, median of {args.runs}:")
    print(f"  nothing held     {empty:8.2f} ms")
    print(f"  the ring         {ring:8.2f} ms")
    print(f"  as Event objects {as_events:8.2f} ms  ({as_events / max(ring, 1e-3):.0f}x the ring)")
    ring_us, events_us = filtered_us(args.runs)
    print(f"a resume with a data filter, per entry examined, median of {args.runs}:")
    print(f"  the ring         {ring_us:8.2f} us")
    print(f"  cached Events    {events_us:8.2f} us")
    print(f"RESULT {{\"events\": {held}, \"empty_ms\": {empty:.2f}, \"ring_ms\": {ring:.2f}, "
          f"\"events_ms\": {as_events:.2f}, \"filtered_ring_us\": {ring_us:.2f}, "
          f"\"filtered_events_us\": {events_us:.2f}}}")


def filtered_us(runs: int, count: int = 5000) -> tuple[float, float]:
    """One stream of `count` events, one user's `eq` filter (peruser's data)."""
    batch = [Event.from_row(e.position.xid, e.id, "peruser", e.type, e.raw_data, e.created_at,
                            e.created_epoch) for e in events(count)]
    recent = Recent(1 << 30)
    recent.reset(Position(0, 0))
    recent.extend(batch, batch[-1].position)
    selector = Selector(parse_pattern_list("peruser"), parse_type_filter([]),
                        parse_data_filters([("data.u", "eq.7")]))
    for event in batch:
        _ = event.data  # decoded once, as the live flow's filters leave it
    ring, cached = [], []
    for _ in range(runs):
        started = time.perf_counter()
        found, _end = recent.after(Position(0, 0), selector, 1 << 30, count, count)
        ring.append((time.perf_counter() - started) / count * 1e6)
        started = time.perf_counter()
        matched = [event for event in batch if selector.accepts(event)]
        cached.append((time.perf_counter() - started) / count * 1e6)
        assert len(found) == len(matched) == count // 1000
    return statistics.median(ring), statistics.median(cached)


if __name__ == "__main__":
    main()
