"""The hub's replay-to-live seam, driven with a scripted store.

The one test module that fakes the store: it tests the hub's own logic (the
shared read, its fan-out, catch-up and `_join`), with every read held or
released exactly when the test says, so each interleaving is deterministic.
Event n has xid = id = n on stream "s"; it is final once the horizon (xmin)
passes n.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sse_stream.core.events import ORIGIN, Event, Position
from sse_stream.core.patterns import parse_pattern
from sse_stream.core.selector import Selector, SelectorSql
from sse_stream.core.settings import Settings
from sse_stream.core.wire import Payload, event_frame
from sse_stream.db.store import Frames, Page
from sse_stream.engine.hub import Hub
from sse_stream.engine.subscription import Subscription

SELECTOR = Selector((parse_pattern("s"),))


def horizon(xid: int) -> Position:
    """The horizon just past event `xid` (of a snapshot whose xmin is xid + 1)."""
    return Position.after_horizon(xid + 1)


def mark(xid: int) -> str:
    """A bare `id:` line at `horizon(xid)`."""
    return f"id: {horizon(xid).encode()}"


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` every 2 ms; fail the test if it stays false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition still false after {timeout} s")
        await asyncio.sleep(0.002)


class Gate:
    """Holds reads until the test opens it (open unless closed)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.waiting = 0

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def passage(self) -> None:
        self.waiting += 1
        try:
            await self._open.wait()
            await asyncio.sleep(0)  # a read always yields, as real I/O does
        finally:
            self.waiting -= 1


class ScriptedStore:
    """The store as the hub sees it: events in position order, the primary's
    horizon and a replica's (lagging) one, and a gate on each kind of read.
    A read takes its snapshot when it enters (`snapshot_at_entry`) or when
    its gate lets it through."""

    def __init__(self, replica: bool = False, snapshot_at_entry: bool = True) -> None:
        self.events: list[Event] = []
        self.xmin = 1
        self.replica_xmin = 1
        self.replica_dsn = "postgresql://replica.invalid/db" if replica else None
        self.snapshot_at_entry = snapshot_at_entry
        self.live_gate = Gate()
        self.selected_gate = Gate()
        self.live_started = 0  # shared reads entered
        self.live_finished = 0  # the number of the last shared read that returned
        self.selected: list[tuple[Position, bool]] = []  # (after, from the replica)

    def commit(self, *numbers: int) -> None:
        """Events `numbers` commit and become final on the primary."""
        for n in numbers:
            self.events.append(Event.from_row(n, n, "s", "t", b'{"n": %d}' % n,
                                              "2024-01-01T00:00:00Z", time.time()))
        self.xmin = numbers[-1] + 1

    async def _snapshot(self, gate: Gate, after: Position,
                        replica: bool) -> tuple[list[Event], int]:
        if not self.snapshot_at_entry:
            await gate.passage()
        xmin = self.replica_xmin if replica else self.xmin
        final = [e for e in self.events if e.position > after and e.position.xid < xmin]
        if self.snapshot_at_entry:
            await gate.passage()
        return final, xmin

    async def horizon(self) -> Position:
        return Position.after_horizon(self.xmin)

    async def read_recent(self, rows: int, budget: int,
                          overhead: int) -> tuple[list[Event], Position, bool]:
        """The newest final events (all, up to `rows`), the horizon, and
        whether they are all there are."""
        final = [e for e in self.events if e.position.xid < self.xmin]
        return final[-rows:], Position.after_horizon(self.xmin), len(final) < rows

    async def read_live(self, after: Position, limit: int) -> Page:
        self.live_started += 1
        number = self.live_started
        final, xmin = await self._snapshot(self.live_gate, after, False)
        events = final[:limit]
        full = len(events) == limit
        covered = events[-1].position if full else max(after, Position.after_horizon(xmin))
        self.live_finished = number
        return Page(events, covered, False, full)

    async def read_selected(self, after: Position, limit: int, selector_sql: SelectorSql, *,
                            sse: bool = True, cloudevents: bool = False, replica: bool = False,
                            wait: float | None = None) -> Frames:
        assert sse and not cloudevents
        replica = replica and self.replica_dsn is not None
        self.selected.append((after, replica))
        final, xmin = await self._snapshot(self.selected_gate, after, replica)
        page = final[:limit]
        full = len(final) > limit  # as the real read: a further match was left over
        covered = page[-1].position if full else max(after, Position.after_horizon(xmin))
        return Frames(b"".join(event_frame(e) for e in page), len(page),
                      page[-1].position if page else None, covered, full)


class FakeResponse:
    """Records every write; looks slow while `pending` is high, and its
    `drain()` waits until the test sets `drained`."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pending = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.drains = 0
        self.draining = False
        self.hold_after: int | None = None  # writes after which drain() waits

    def write_nowait(self, data: bytes | Payload) -> None:
        self.writes.append(data.data if isinstance(data, Payload) else data)
        if self.hold_after is not None and len(self.writes) >= self.hold_after:
            self.drained.clear()

    def pending_bytes(self) -> int:
        return self.pending

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        self.drains += 1
        self.draining = True
        try:
            await self.drained.wait()
        finally:
            self.draining = False

    def frames(self) -> list[int | str]:
        """Event frames as their event's number, bare `id:` lines as text,
        anything else as its raw block."""
        raw = b"".join(self.writes).decode()
        assert raw == "" or raw.endswith("\n\n"), raw
        parsed: list[int | str] = []
        for block in raw.split("\n\n")[:-1]:
            fields = dict(line.partition(": ")[::2] for line in block.split("\n"))
            if set(fields) == {"id", "event", "data"} and fields["event"] == "t":
                n = json.loads(fields["data"])["id"]
                assert fields["id"] == f"{n}-{n}", block
                parsed.append(n)
            elif set(fields) == {"id"}:
                parsed.append(f"id: {fields['id']}")
            else:
                parsed.append(block)
        return parsed


class Harness:
    """A real Hub over a ScriptedStore, and the streams it serves."""

    def __init__(self) -> None:
        self.hub: Hub | None = None
        self.store: ScriptedStore | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, store: ScriptedStore, **overrides: Any) -> Hub:
        # The table's seam by default: recent history (memory) only where a
        # test turns it on.
        settings = Settings(dsn="postgresql://scripted.invalid/db", coalesce_window=0,
                            poll_interval=60, heartbeat=60,
                            **{"recent_bytes": 0, **overrides})
        self.store, self.hub = store, Hub(store, settings)  # type: ignore[arg-type]
        self.hub.start()
        await until(lambda: store.live_finished == 1)
        return self.hub

    def serve(self, start: Position | None,
              live: bool = True) -> tuple[Subscription, FakeResponse, asyncio.Task[None]]:
        assert self.hub is not None
        hub, response = self.hub, FakeResponse()
        subscription = Subscription(SELECTOR, response, start or ORIGIN)  # type: ignore[arg-type]

        async def run() -> None:
            # As the subscribe handler does for new events only: the position
            # first, written as a bare id line, then the stream.
            if start is None:
                here = await hub.fresh_position()
                subscription.covered = subscription.replayed_through = here
                subscription.write_position(here)
            await hub.serve(subscription, live=live, replay=start is not None)

        task = asyncio.create_task(run())
        self.tasks.append(task)
        return subscription, response, task

    async def flush(self) -> None:
        """Ring the doorbell and wait until a shared read that started after
        the ring has returned and been fanned out."""
        assert self.hub is not None and self.store is not None
        store, before = self.store, self.store.live_started
        self.hub.wake()
        await until(lambda: store.live_finished > before)

    async def close(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        for task in self.tasks:
            task.cancel()
        for result in await asyncio.gather(*self.tasks, return_exceptions=True):
            if isinstance(result, Exception):
                raise result


@pytest.fixture
async def harness(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Harness]:
    caplog.set_level(logging.WARNING, logger="sse_stream")
    harness = Harness()
    yield harness
    await harness.close()
    assert not [r for r in caplog.records if r.name.startswith("sse_stream")], caplog.text


@pytest.mark.parametrize("at_entry", [True, False],
                         ids=["snapshot-at-entry", "snapshot-at-release"])
async def test_join_between_a_shared_read_and_its_fan_out(harness: Harness,
                                                          at_entry: bool) -> None:
    """A stream that catches up and joins while the shared read is in flight
    gets, from that read, only what its catch-up did not write: each event
    once, in order, whether the read's snapshot predates 6..7 or not."""
    store = ScriptedStore(snapshot_at_entry=at_entry)
    hub = await harness.start(store, replay_page_size=3)
    pages: list[list[int]] = []
    hub.observers.append(lambda page: page.events and pages.append([e.id for e in page.events]))
    store.live_gate.close()
    store.commit(1, 2, 3, 4, 5)
    hub.wake()
    await until(lambda: store.live_gate.waiting == 1)
    subscription, response, _ = harness.serve(ORIGIN)
    await until(lambda: subscription.joined)
    assert store.live_gate.waiting == 1 and hub.watermark == horizon(0)
    assert subscription.replayed_through == horizon(5)
    store.commit(6, 7)
    store.live_gate.open()
    await harness.flush()
    assert pages == ([[1, 2, 3, 4, 5], [6, 7]] if at_entry else [[1, 2, 3, 4, 5, 6, 7]])
    assert response.frames() == [1, 2, 3, 4, 5, mark(5), 6, 7]
    assert store.selected == [(ORIGIN, False), (Position(3, 3), False)]


async def test_live_page_straddling_the_join(harness: Harness) -> None:
    """The catch-up wrote through 3 while the hub's watermark was at 1: the
    next live page holds 2..6, and the stream gets 4..6 of it in one write
    (2..3 skipped up to `replayed_through`): no duplicate, no gap."""
    store = ScriptedStore()
    hub = await harness.start(store)
    store.commit(1)
    await harness.flush()
    assert hub.watermark == horizon(1)
    store.commit(2, 3)
    subscription, response, _ = harness.serve(ORIGIN)
    await until(lambda: subscription.joined)
    assert hub.watermark == horizon(1) and subscription.replayed_through == horizon(3)
    assert response.frames() == [1, 2, 3, mark(3)]
    pages: list[list[int]] = []
    hub.observers.append(lambda page: page.events and pages.append([e.id for e in page.events]))
    store.commit(4, 5, 6)
    writes = len(response.writes)
    await harness.flush()
    assert pages == [[2, 3, 4, 5, 6]]
    assert len(response.writes) == writes + 1
    assert response.frames() == [1, 2, 3, mark(3), 4, 5, 6]


async def test_slow_stream_moves_to_catch_up_and_rejoins(harness: Harness) -> None:
    """A stream over `max_pending` after a fan-out leaves the live flow at the
    watermark, waits for its socket, catches up from the table (twice, as
    the hub passes its first catch-up's snapshot) and rejoins: every event
    once, in order. A fast stream of the same group is never touched."""
    store = ScriptedStore()
    hub = await harness.start(store, max_pending=100)
    fast_sub, fast, _ = harness.serve(ORIGIN)
    slow_sub, slow, _ = harness.serve(ORIGIN)
    await until(lambda: fast_sub.joined and slow_sub.joined)
    slow.pending = 1000
    slow.drained.clear()
    store.commit(1, 2)
    await harness.flush()
    assert not slow_sub.joined and hub.stats.catchups == 1
    assert slow_sub.covered == horizon(2)
    await until(lambda: slow.draining)
    store.commit(3, 4)
    await harness.flush()
    assert slow.frames() == [mark(0), 1, 2] and slow.draining
    store.selected_gate.close()
    slow.pending = 0
    slow.drained.set()
    await until(lambda: store.selected_gate.waiting == 1)
    store.commit(5)
    await harness.flush()
    assert hub.watermark == horizon(5)
    store.selected_gate.open()
    await until(lambda: slow_sub.joined)
    assert store.selected[-2:] == [(horizon(2), False), (horizon(4), False)]
    store.commit(6)
    await harness.flush()
    assert slow.frames() == [mark(0), 1, 2, 3, 4, mark(4), 5, mark(5), 6]
    assert fast.frames() == [mark(0), 1, 2, 3, 4, 5, 6]
    assert fast_sub.joined and fast.drains == 1 and hub.stats.catchups == 1


async def test_lagging_replica_then_primary(harness: Harness) -> None:
    """History comes from the replica up to its horizon, the rest from the
    primary, then the stream joins: every event once, in order. A
    `live=False` stream ends at the primary's newest event, not the replica's."""
    store = ScriptedStore(replica=True)
    await harness.start(store, replay_page_size=3)
    store.commit(*range(1, 9))
    store.replica_xmin = 5
    reads = [(ORIGIN, True), (Position(3, 3), True), (horizon(4), False), (Position(7, 7), False)]

    subscription, response, task = harness.serve(ORIGIN, live=False)
    await asyncio.wait_for(task, 5)
    assert response.frames() == [*range(1, 9), mark(8)]
    assert store.selected == reads and not subscription.joined

    store.selected.clear()
    subscription, response, _ = harness.serve(ORIGIN)
    await until(lambda: subscription.joined)
    assert store.selected == reads
    store.commit(9)
    store.replica_xmin = 10
    await harness.flush()
    assert response.frames() == [*range(1, 9), mark(8), 9]


async def test_new_events_only_starts_with_a_bare_id_line(harness: Harness) -> None:
    """`start=None`: a bare `id:` line at the next shared read's watermark
    first, then only events committed after that; no catch-up read."""
    store = ScriptedStore()
    hub = await harness.start(store)
    store.commit(1, 2, 3)
    subscription, response, _ = harness.serve(None)
    await until(lambda: subscription.joined)
    assert response.frames() == [mark(3)] and hub.watermark == horizon(3)
    store.commit(4, 5)
    await harness.flush()
    assert response.frames() == [mark(3), 4, 5]
    assert store.selected == []


# -- recent history: catch-ups served from memory (engine/recent.py) -------------------

RING = 64 << 20


async def test_a_catch_up_inside_the_ring_reads_no_table(harness: Harness) -> None:
    """A stream whose position is inside recent history gets what it missed
    from memory and joins: every event once, in order, and no table read."""
    store = ScriptedStore()
    hub = await harness.start(store, recent_bytes=RING)
    store.commit(1, 2, 3)
    await harness.flush()
    assert hub.recent.start == horizon(0) and len(hub.recent) == 3
    sub, response, _ = harness.serve(Position(1, 1))
    await until(lambda: sub.joined)
    store.commit(4)
    await harness.flush()
    assert response.frames() == [2, 3, mark(3), 4] and store.selected == []
    assert hub.stats.replayed_recent == 2


async def test_a_catch_up_that_starts_before_the_ring_reads_the_table_until_it(
        harness: Harness) -> None:
    """A position older than the ring: the table until the ring covers it,
    then memory, then live; nothing twice across either seam."""
    store = ScriptedStore()
    hub = await harness.start(store, recent_bytes=3 * _cost(), replay_page_size=2)
    store.commit(1, 2, 3, 4, 5, 6)
    await harness.flush()
    assert len(hub.recent) == 3 and hub.recent.start == Position(3, 3)
    sub, response, _ = harness.serve(Position(1, 1))
    await until(lambda: sub.joined)
    store.commit(7)
    await harness.flush()
    assert response.frames() == [2, 3, 4, 5, 6, mark(6), 7]
    # One table page (2, 3) took it into the ring; the rest came from memory.
    assert store.selected == [(Position(1, 1), False)]
    assert hub.stats.replayed_recent == 3


async def test_the_ring_evicts_while_a_catch_up_walks_it(harness: Harness) -> None:
    """The oldest events leave the ring while a stream reads it (waiting on
    its socket between pages): it goes back to the table from where it
    stands, nothing skipped, nothing twice."""
    store = ScriptedStore()
    hub = await harness.start(store, recent_bytes=4 * _cost(), page_bytes=1)
    store.commit(1, 2, 3, 4)
    await harness.flush()
    sub, response, _ = harness.serve(Position(1, 1))
    response.hold_after = 1  # one page (one event: page_bytes=1), then a full socket
    await until(lambda: response.draining and response.drains == 2)
    assert response.frames() == [2] and sub.covered == Position(2, 2)
    store.commit(5, 6, 7, 8)
    await harness.flush()
    assert hub.recent.start == Position(4, 4) > sub.covered  # evicted past it
    response.hold_after = None
    response.drained.set()
    await until(lambda: sub.joined)
    store.commit(9)
    await harness.flush()
    assert response.frames() == [2, 3, 4, 5, 6, 7, 8, mark(8), 9]
    assert store.selected == [(Position(2, 2), False)]


def _cost() -> int:
    """What one scripted event costs the ring."""
    from sse_stream.engine.recent import cost, entry

    return cost(entry(Event.from_row(1, 1, "s", "t", b'{"n": 1}', "2024-01-01T00:00:00Z", 0.0)))


async def test_a_restarted_hub_starts_with_recent_history(harness: Harness) -> None:
    """History read at start, in the snapshot of the start's horizon: a
    resume from inside it after a restart reads no table."""
    store = ScriptedStore()
    store.commit(1, 2, 3)
    hub = await harness.start(store, recent_bytes=RING)
    assert hub.recent.start == Position(1, 0) and hub.watermark == horizon(3)
    sub, response, _ = harness.serve(Position(1, 1))
    await until(lambda: sub.joined)
    store.commit(4)
    await harness.flush()
    assert response.frames() == [2, 3, mark(3), 4] and store.selected == []
    # Before the oldest event read: the table, from there.
    early, before, _ = harness.serve(Position(0, 5))
    await until(lambda: early.joined)
    assert [f for f in before.frames() if isinstance(f, int)] == [1, 2, 3, 4]
    assert store.selected == [(Position(0, 5), False)]


async def test_a_resume_from_0_reads_memory_while_it_holds_every_event(
        harness: Harness) -> None:
    """History read whole at start serves a resume from 0 ("from the oldest
    retained") from memory; after the first eviction, 0 reads the table."""
    store = ScriptedStore()
    store.commit(1, 2, 3)
    hub = await harness.start(store, recent_bytes=4 * _cost())
    assert hub.recent.whole
    sub, response, _ = harness.serve(ORIGIN)
    await until(lambda: sub.joined)
    assert response.frames() == [1, 2, 3, mark(3)] and store.selected == []
    store.commit(4, 5)  # five events in a ring of four: the oldest leaves
    await harness.flush()
    assert not hub.recent.whole and hub.recent.start == Position(1, 1)
    later, again, _ = harness.serve(ORIGIN)
    await until(lambda: later.joined)
    assert [f for f in again.frames() if isinstance(f, int)] == [1, 2, 3, 4, 5]
    assert store.selected[0] == (ORIGIN, False)
