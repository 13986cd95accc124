"""The counters the engine and the deliverer keep: plain numbers.

Nothing on the hot path touches a prometheus object: the hub counts with
plain integers (and two small bucket arrays updated once per wake-up or once
per event read, never per subscriber); web/metrics.py turns them into metric
families when /metrics is scraped.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from math import isfinite

from .events import Event

OTHER = "other"
MAX_PATTERN_LABELS = 50  # distinct stream-pattern labels before "other"
MAX_WEBHOOK_LABELS = 50  # webhooks with a label of their own, per process

READ_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Buckets:
    """A histogram as plain numbers: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        result: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += count
            result.append((bound, running))
        return result


class HubStats:
    """The hub's counters: plain numbers, read by HubCollector on a scrape."""

    __slots__ = ("wakeups", "events_read", "delivered", "replayed", "catchups", "gaps", "opened",
                 "match_errors", "read_sizes", "lag", "probes", "standby_waits",
                 "replayed_recent")

    def __init__(self) -> None:
        self.wakeups = 0  # shared reads started
        self.events_read = 0  # events the shared read returned
        self.delivered = 0  # events written to live streams
        self.replayed = 0  # events written by catch-up pages
        self.catchups = 0  # live streams moved back to the table (too far behind)
        self.gaps = 0  # sse.gap events written
        self.opened = 0  # streams opened
        self.match_errors = 0  # selector tests that raised (counted as no match)
        self.read_sizes = Buckets(READ_BUCKETS)  # events read per wake-up
        self.lag = Buckets(LAG_BUCKETS)  # created_at to fan-out, seconds, per event read
        self.probes = 0  # probes of a standby's replay position (polling)
        self.standby_waits = 0  # reads that found a position the standby had not replayed
        self.replayed_recent = 0  # events written by catch-ups from memory (recent history)

    def count_read(self, events: Sequence[Event]) -> None:
        """Count a shared read's events and their lag (per event read, not
        per subscriber: one subtraction and a bisect each)."""
        self.events_read += len(events)
        now, observe = time.time(), self.lag.observe
        for event in events:
            lag = now - event.created_epoch
            if isfinite(lag):  # a time the column holds may be infinity
                observe(lag)


@dataclass(frozen=True)
class StandbyLag:
    """How far the live source's replay is behind the primary (0 on a primary)."""

    recovery: bool
    seconds: float
    bytes: int


class ReplayClock:
    """The replay lag of a standby in seconds, from samples of the primary's
    WAL position: the standby has replayed everything the primary had at
    the last sample at or below its replay position, so it lags by the time
    since then. Needs no clock of the database, and no replay timestamp
    (which on a quiet primary is old even when nothing is missing)."""

    def __init__(self, keep: int = 600) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=keep)  # (time, primary LSN)

    def lag(self, now: float, recovery: bool, replayed: int, primary: int) -> StandbyLag:
        self.samples.append((now, primary))
        if not recovery or replayed >= primary:
            return StandbyLag(recovery, 0.0, 0)
        caught_up = self.samples[0][0]  # at least as old as the oldest sample kept
        for at, position in reversed(self.samples):
            if position <= replayed:
                caught_up = at
                break
        return StandbyLag(True, now - caught_up, primary - replayed)


class Tally:
    """Counters by webhook, with bounded labels: the ids (the server's, never
    client text) of the first MAX_WEBHOOK_LABELS webhooks counted, then "other"."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        self.reads = 0  # batches read from the table (live webhooks read none)

    def label(self, id_: str) -> str:
        label = self.labels.get(id_)
        if label is None:
            if len(self.labels) >= MAX_WEBHOOK_LABELS:
                return OTHER
            label = self.labels[id_] = id_
        return label

    def add(self, counts: dict[str, int], id_: str, value: int = 1) -> None:
        label = self.label(id_)
        counts[label] = counts.get(label, 0) + value
