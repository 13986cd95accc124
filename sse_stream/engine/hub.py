"""The Hub: one per process. One read per wake-up, shared by every stream.

The hub keeps a watermark: every event at or before it has been handed to
every live subscription that matches it. On each wake-up (a NOTIFY, a poll
timeout, a listener reconnect) it reads the final events after the
watermark, in pages, on the live path's own database connection, and writes
each joined subscription its share in one write. Streams that start from an
old position, or fall too far behind, catch up from the table on their own
task (catchup.py) and then join the live flow (`_join`: the seam).

The shared read also learns, in the same snapshot, how far retention has
pruned and how far this database has ever handed out positions: when either
passed the watermark (retention overtook a process that was behind, or the
cluster was replaced), every live stream gets `sse.gap` before the rest.

With a hot standby as the live source (`--live-dsn`) no NOTIFY arrives: the
hub probes the standby's replay position every `--standby-poll` and reads
only when it moved (or rows are held back). A standby that has not yet
replayed the watermark (the live connection moved to a lagging standby) is
waited for: the primary's own view tells it from a replaced cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..core.errors import DatabaseUnavailable
from ..core.events import ORIGIN, Position
from ..core.settings import Settings
from ..core.stats import HubStats, ReplayClock, StandbyLag
from ..core.tasks import Backoff, cancel_and_wait, wait_first, wait_set
from ..db.store import EventStore, Page
from .catchup import CatchUp
from .heartbeat import Heartbeat
from .recent import EVENT_OVERHEAD, Recent
from .routing import LiveIndex, shared_payloads
from .subscription import Subscription

log = logging.getLogger(__name__)

HELD_POLL = 0.025  # seconds between reads while an open transaction holds rows back
LAG_INTERVAL = 1.0  # seconds between measurements of a standby's replay lag


class Hub:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.watermark = ORIGIN
        self.newest = ORIGIN  # the position of the newest event read
        self.started = asyncio.Event()
        self.ready = False  # the last read reached the database
        self.closing = False
        self.stats = HubStats()
        self.subscriptions: set[Subscription] = set()
        # Called with each page after its fan-out, with no await around it
        # (the webhook deliverer); they must not raise.
        self.observers: list[Callable[[Page], None]] = []
        self._index = LiveIndex(self.stats)
        self.recent = Recent(settings.recent_bytes)
        self._catch_up = CatchUp(store, settings, self.stats, self.recent)
        self._doorbell = asyncio.Event()
        self._held = False
        self._last_read = 0.0  # when the last shared read started (monotonic)
        # Resolved by the next shared read that starts after it was made:
        # where a live-only stream starts (see _fresh_position).
        self._next_read: asyncio.Future[bool] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Polling a standby: the WAL position of the last probe that led to
        # a read, and the replay lag (None: not measured, or no standby).
        self.polling = settings.live_dsn is not None
        self._probed: str | None = None
        self.lag: StandbyLag | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="sse-stream hub"),
                       asyncio.create_task(Heartbeat(self).run(), name="sse-stream heartbeat")]
        if self.polling:
            self._tasks.append(asyncio.create_task(self._measure_lag(),
                                                   name="sse-stream standby lag"))

    def wake(self) -> None:
        """Ring the doorbell: new rows may exist. Safe to call from callbacks."""
        self._doorbell.set()

    def end_streams(self) -> None:
        """End every open stream (shutdown): clients reconnect elsewhere."""
        self.closing = True
        for subscription in list(self.subscriptions):
            subscription.close()

    async def stop(self) -> None:
        self.end_streams()
        for task in self._tasks:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        backoff = Backoff()
        rung = True  # a doorbell (or the start): read whatever a probe says
        while True:
            waiter, self._next_read = self._next_read, None  # for "a read after now"
            try:
                if not self.started.is_set():
                    await self._start()
                if await self._moved(rung):
                    await self._read_new()
                self.ready = True
                backoff.reset()
                timeout = self.settings.standby_poll if self.polling else \
                    HELD_POLL if self._held else self.settings.poll_interval
            except Exception as error:
                # Never let one bad read end live delivery for the process:
                # the watermark has not moved, so the next read retries it.
                if not isinstance(error, DatabaseUnavailable):
                    log.exception("shared read failed")
                elif self.ready:
                    log.warning("database unavailable, streams stay open: %s", error)
                self.ready = False
                timeout = backoff.next()
            finally:
                if waiter is not None:
                    waiter.set_result(self.ready)
            rung = await wait_set(self._doorbell, timeout)
            if rung:
                # While commits ring faster than the coalescing window, read
                # at most once per window: one read then carries several
                # commits' events, and each waits at most the window. A
                # doorbell after a quiet spell reads at once.
                early = self._last_read + self.settings.coalesce_window - time.monotonic()
                if early > 0:
                    await asyncio.sleep(early)
            self._doorbell.clear()  # before the read: a NOTIFY during it rings again

    async def _start(self) -> None:
        """Where live starts: the horizon, with recent history read in the same
        snapshot (so that a burst of resumes after a restart is served from
        memory, not by a table read each)."""
        recent = self.recent
        if recent.budget:
            events, self.watermark, whole = await self.store.read_recent(
                recent.budget // EVENT_OVERHEAD, recent.budget, EVENT_OVERHEAD)
            recent.load(events, self.watermark, whole)
        else:
            self.watermark = await self.store.horizon()
            recent.reset(self.watermark)
        self.started.set()

    async def _moved(self, rung: bool) -> bool:
        """Whether to read now. Always, unless polling a standby on a timer:
        then only when its WAL position moved since the last read, or rows
        were held back. The probe comes before the read, so whatever the
        standby replays after it moves the position again."""
        if not self.polling:
            return True
        probed = await self.store.probe()
        self.stats.probes += 1
        moved = rung or self._held or probed != self._probed
        self._probed = probed
        return moved

    async def _measure_lag(self) -> None:
        """The live source's replay lag, for /readyz and /metrics."""
        clock = ReplayClock()
        while True:
            try:
                self.lag = clock.lag(time.monotonic(), *await self.store.replay_positions())
            except DatabaseUnavailable:
                self.lag = None
            except Exception:
                log.exception("measuring the standby's lag failed")
                self.lag = None
            await asyncio.sleep(LAG_INTERVAL)

    async def _read_new(self) -> None:
        self.stats.wakeups += 1
        self._last_read = time.monotonic()
        read = 0
        try:
            while True:
                page = await self.store.read_live(self.watermark, self.settings.page_size)
                if page.behind:
                    # The live source has not replayed the watermark yet (a
                    # lagging standby): wait for it, never a false gap.
                    self.stats.standby_waits += 1
                    self._held = True
                    return
                if page.future:
                    self._resume_live(page.covered, "the database has never reached the "
                                      "watermark (a replaced or restored cluster?)")
                elif page.pruned is not None and page.pruned > self.watermark:
                    self._resume_live(page.pruned, "retention pruned events before this "
                                      "process read them")
                self._fan_out(page)
                for observe in self.observers:
                    observe(page)
                read += len(page.events)
                if not page.full:
                    self._held = page.held
                    return
        finally:
            self.stats.read_sizes.observe(read)

    def _resume_live(self, resumed: Position, why: str) -> None:
        """Tell every live stream that what lies before `resumed` is lost to it."""
        log.warning("%s: live streams get sse.gap from %s to %s", why, self.watermark.encode(),
                    resumed.encode())
        for subscription in self._index.members():
            subscription.write_gap(subscription.last_id, resumed)
            subscription.replayed_through = resumed
            self.stats.gaps += 1
        self.watermark = resumed
        self.recent.reset(resumed)

    def _fan_out(self, page: Page) -> None:
        """Hand a page to every joined subscription: one write each. No awaits."""
        stats, events = self.stats, page.events
        matched = self._index.match(events) if events else {}
        if events:
            stats.count_read(events)
            self.newest = events[-1].position
        # The ring moves with the watermark, in the same step (recent.py).
        if page.pruned is not None and page.pruned > self.recent.start:
            self.recent.forget_through(page.pruned)
        self.recent.extend(events, page.covered)
        self.watermark = page.covered
        behind: list[Subscription] = []
        for group, batch, payload in shared_payloads(matched):
            first = batch[0].position
            for subscription in group.members:
                if subscription.replayed_through < first:
                    subscription.write(payload)
                    count = len(batch)
                else:  # joined during this page: its catch-up wrote part of it
                    rest = [e for e in batch if e.position > subscription.replayed_through]
                    if not rest:
                        continue
                    subscription.write(b"".join(map(group.frame, rest)))
                    count = len(rest)
                subscription.last_id = batch[-1].position
                subscription.events_sent += count
                stats.delivered += count
                if subscription.response.pending_bytes() > self.settings.max_pending:
                    behind.append(subscription)
        for subscription in behind:
            # Too far behind: stop buffering for it. It has been handed every
            # match up to the watermark; it reads the rest from the table.
            self._leave(subscription)
            subscription.covered = self.watermark
            subscription.signal.set()
            stats.catchups += 1

    def _join(self, subscription: Subscription) -> None:
        """Join the live flow. Call only when `covered >= watermark`, with no
        await between that check and this call.

        The seam, argued once: every fan-out after this one starts after the
        watermark, so with `covered` at or past it nothing lies between what
        the catch-up wrote and what the fan-out will write: no gap. Events
        in (watermark, covered] come in the next fan-out again; they are
        skipped up to `replayed_through` (= covered): nothing twice. The
        check and the join happen in one step of the event loop, so no
        fan-out can run in between and move the watermark.

        A catch-up from recent history (recent.py) meets the same rule: the
        ring is the shared read's own output, every final event in (start,
        end] with `end` = the watermark, moved in the same step as it; so
        what it returns after `covered` is exactly what a table read would,
        and its last page leaves `covered` = the watermark, with no await
        before this call.
        """
        subscription.joined = True
        subscription.replayed_through = subscription.covered
        self._index.add(subscription)

    def _leave(self, subscription: Subscription) -> None:
        if subscription.joined:
            subscription.joined = False
            self._index.remove(subscription)

    async def fresh_position(self) -> Position:
        """After every event committed before this call: the watermark of the
        next shared read (one read for a burst of new streams), or the
        current one if that read fails."""
        waiter = self._next_read
        if waiter is None:
            waiter = self._next_read = asyncio.get_running_loop().create_future()
        self.wake()
        await asyncio.shield(waiter)
        return self.watermark

    async def serve(self, subscription: Subscription, live: bool = True,
                    replay: bool = True) -> None:
        """Run one stream from `subscription.covered` until the client leaves
        or the server shuts down: a `replay` reads the table after it first,
        else it is a fresh_position() and the stream joins at once if it can;
        with `live` False, end once caught up."""
        self.subscriptions.add(subscription)
        self.stats.opened += 1
        try:
            while not self.started.is_set() and not subscription.closed:
                await wait_first(subscription.signal, self.started)
                subscription.signal.clear()
            if not replay:
                if not live:
                    return
                if subscription.covered >= self.watermark:  # else the catch-up reads what passed
                    self._join(subscription)
            synced = False  # recent history read after this request began
            tail = False  # live=false, after memory: the table to the newest event
            while not subscription.closed and not self.closing:
                if subscription.joined:
                    await subscription.signal.wait()
                    subscription.signal.clear()
                elif not tail and self.recent.covers(subscription.covered):
                    if not synced:
                        # Retention may have deleted events since the last
                        # shared read: a read that starts after this request
                        # learns it (one read for a burst of resumes), so
                        # that memory never returns what the table lost.
                        await self.fresh_position()
                        synced = True
                        continue
                    # From memory, up to the watermark itself: the join
                    # follows with no await since the ring was read. A
                    # live=false stream ends at the newest event instead,
                    # which the table knows: one more table read from here.
                    if await self._catch_up.from_recent(subscription):
                        if not live:
                            tail = True
                        elif subscription.covered >= self.watermark:
                            self._join(subscription)
                elif await self._catch_up.run(subscription, to_recent=not tail):
                    if not live:
                        return
                    if subscription.covered >= self.watermark:  # no await since the read
                        self._join(subscription)
        finally:
            self._leave(subscription)
            self.subscriptions.discard(subscription)
