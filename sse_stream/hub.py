"""The Hub: one per process. One read per wake-up, shared by every stream.

The hub keeps a watermark: every event at or before it has been handed to
every live subscription that matches it. On each wake-up (a NOTIFY, a poll
timeout, a listener reconnect) it reads the final events after the
watermark, in pages, on the live path's own database connection, encodes
each once, and writes each subscription's share in one write. Streams that
start from an old position, or fall too far behind, catch up from the table
on their own task (through the bounded read capacity) and then join the live
flow; the join and the fan-out never interleave (no await between them), so
nothing falls into the seam and nothing is sent twice.

The shared read also learns, in the same snapshot, how far retention has
pruned and how far this database has ever handed out positions: when either
passed the watermark (retention overtook a process that was behind, or the
cluster was replaced), every live stream gets `sse.gap` before the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from math import isfinite
from datetime import datetime, timezone

import orjson

from .errors import DatabaseUnavailable
from .events import ORIGIN, Event, Position
from .metrics import LAG_BUCKETS, READ_BUCKETS, Buckets
from .response import KEEPALIVE
from .settings import Settings
from .store import EventStore, Frames, Page
from .routing import Group, Route, Routes
from .subscription import Payload, Selector, Subscription
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

HELD_POLL = 0.025  # seconds between reads while an open transaction holds rows back


class Hub:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.watermark = ORIGIN
        self.last_event = ORIGIN  # the newest event the hub has read
        self.started = asyncio.Event()
        self.ready = False  # the last read reached the database
        self.closing = False
        self._doorbell = asyncio.Event()
        self._held = False
        self._last_read = 0.0  # when the last shared read started (monotonic)
        # Resolved by the next shared read that starts after it was made:
        # where a live-only stream starts (see _fresh_position).
        self._next_read: asyncio.Future[bool] | None = None
        # Live subscriptions, grouped by identical selector and filed by
        # stream name or pattern, indexed by their filters (routing.py).
        self._groups: dict[tuple[Selector, bool], Group] = {}
        self._routes = Routes()
        self.subscriptions: set[Subscription] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for /metrics and for tests.
        self.wakeups = 0
        self.events_read = 0
        self.delivered = 0
        self.replayed = 0
        self.catchups = 0
        self.gaps = 0
        self.opened = 0
        self.match_errors = 0  # selector tests that raised (counted as no match)
        self.read_sizes = Buckets(READ_BUCKETS)  # events read per wake-up
        self.lag = Buckets(LAG_BUCKETS)  # created_at to fan-out, seconds, per event read

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="sse-stream hub"),
                       asyncio.create_task(self._heartbeat(), name="sse-stream heartbeat")]

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

    # -- the shared read -----------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # The streams waiting for "a read that starts after now".
            waiter, self._next_read = self._next_read, None
            try:
                if not self.started.is_set():
                    self.watermark = await self.store.horizon()
                    self.started.set()
                await self._read_new()
                self.ready = True
                backoff = 0.1
                timeout = HELD_POLL if self._held else self.settings.poll_interval
            except DatabaseUnavailable as error:
                if self.ready:
                    log.warning("database unavailable, streams stay open: %s", error)
                self.ready = False
                timeout = backoff
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # Never let one bad read end live delivery for the process:
                # the watermark has not moved, so the next read retries it.
                log.exception("shared read failed")
                self.ready = False
                timeout = backoff
                backoff = min(backoff * 2, 5.0)
            finally:
                if waiter is not None:
                    waiter.set_result(self.ready)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for
                # swallows a cancellation that arrives as the wait ends, and
                # stop() would then wait for this task forever.
                async with asyncio.timeout(timeout):
                    await self._doorbell.wait()
            except TimeoutError:
                pass
            else:
                await self._coalesce()
            # Cleared before the read: a NOTIFY during the read rings again.
            self._doorbell.clear()

    async def _coalesce(self) -> None:
        """While commits ring faster than `coalesce_window`, read at most once
        per window: one read then carries several commits' events, and each
        event waits at most the window. A doorbell after a quiet spell reads
        at once."""
        window = self.settings.coalesce_window
        if window > 0:
            early = self._last_read + window - time.monotonic()
            if early > 0:
                await asyncio.sleep(early)

    async def _read_new(self) -> None:
        self.wakeups += 1
        self._last_read = time.monotonic()
        read = 0
        try:
            while True:
                page = await self.store.read_live(self.watermark, self.settings.page_size)
                if page.future:
                    # The watermark is past anything this database handed
                    # out: the cluster was replaced or restored.
                    log.warning("the database has never reached position %s (replaced or "
                                "restored?): live streams resume at %s", self.watermark.encode(),
                                page.covered.encode())
                    self._resume_live(page.covered)
                elif page.pruned is not None and page.pruned > self.watermark:
                    # Retention deleted events this process had not read yet.
                    log.warning("retention overtook the live read: events up to %s were pruned "
                                "before they were read; live streams get sse.gap",
                                page.pruned.encode())
                    self._resume_live(page.pruned)
                self._fan_out(page)
                read += len(page.events)
                if not page.full:
                    self._held = page.held
                    return
        finally:
            self.read_sizes.observe(read)

    def _resume_live(self, resumed: Position) -> None:
        """Tell every live stream that what lies before `resumed` is lost to it."""
        for group in self._groups.values():
            for subscription in group.members:
                self._write_gap(subscription, subscription.sent, resumed)
                subscription.skip_until = resumed
        self.watermark = resumed

    def _fan_out(self, page: Page) -> None:
        """Hand a page to every live subscription: one write each. No awaits.

        Matching is per group of identical selectors, and an event is tested
        only against the groups its stream, type and indexed data values can
        reach (routing.py); groups that get the same events share one payload
        (joined and chunk-framed once).
        """
        events = page.events
        matched: dict[Group, list[Event]] = {}
        if events:
            self.events_read += len(events)
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
                    except Exception:  # noqa: BLE001 - one event must not stop the fan-out
                        self.match_errors += 1
                        log.exception("matching event %s failed", event.position.encode())
                        continue
                    if accepted:
                        batch = matched.get(group)
                        if batch is None:
                            batch = matched[group] = []
                        batch.append(event)
            self.last_event = events[-1].position
            # Per event read, not per subscriber: one subtraction and a bisect.
            now = time.time()
            observe = self.lag.observe
            for event in events:
                lag = now - event.created_epoch
                if isfinite(lag):  # a time the column holds may be infinity
                    observe(lag)
        self.watermark = page.covered
        limit = self.settings.max_pending
        behind: list[Subscription] = []
        shared: dict[tuple[bool, tuple[int, ...]], Payload] = {}
        for group, batch in matched.items():
            key = (group.cloudevents, tuple([event.id for event in batch]))
            payload = shared.get(key)
            if payload is None:
                payload = shared[key] = Payload(b"".join(map(group.frame, batch)))
            first, last = batch[0].position, batch[-1].position
            for subscription in group.members:
                if subscription.skip_until < first:
                    subscription.write(payload)
                    count = len(batch)
                else:
                    # Joined during this page: part of it came from its replay.
                    rest = [event for event in batch if event.position > subscription.skip_until]
                    if not rest:
                        continue
                    subscription.write(Payload(b"".join(map(group.frame, rest))))
                    count = len(rest)
                subscription.sent = last
                subscription.events_sent += count
                self.delivered += count
                if subscription.response.pending_bytes() > limit:
                    behind.append(subscription)
        for subscription in behind:
            # Too far behind: stop buffering for it. It has been handed every
            # match up to the watermark; it reads the rest from the table.
            self._leave(subscription)
            subscription.cursor = self.watermark
            subscription.signal.set()
            self.catchups += 1

    # -- subscriptions ---------------------------------------------------------

    def _join(self, subscription: Subscription) -> None:
        subscription.live = True
        subscription.skip_until = subscription.cursor
        selector = subscription.selector
        key = (selector, subscription.cloudevents)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(selector, subscription.cloudevents)
            self._routes.add(group)
        group.members.add(subscription)

    def _leave(self, subscription: Subscription) -> None:
        if not subscription.live:
            return
        subscription.live = False
        selector = subscription.selector
        key = (selector, subscription.cloudevents)
        group = self._groups[key]
        group.members.discard(subscription)
        if group.members:
            return
        del self._groups[key]
        self._routes.remove(group)

    async def _fresh_position(self) -> Position:
        """A position after every event committed before this call.

        The next shared read that starts after the call takes a snapshot
        after it: its watermark is such a position, with no query of its own
        (a burst of new streams costs one read). If that read fails, the
        current watermark (as fresh as the database allows).
        """
        waiter = self._next_read
        if waiter is None:
            waiter = self._next_read = asyncio.get_running_loop().create_future()
        self.wake()
        await asyncio.shield(waiter)
        return self.watermark

    async def serve(self, subscription: Subscription, start: Position | None,
                    follow: bool = True) -> None:
        """Run one stream until the client leaves or the server shuts down.

        `start` None means live only; otherwise replay after `start` first.
        With `follow` False the stream ends once it has caught up.
        """
        self.subscriptions.add(subscription)
        self.opened += 1
        try:
            await self._wait_started(subscription)
            if start is None:
                # Live only: events committed before the request stay out.
                here = await self._fresh_position()
                subscription.cursor = subscription.sent = here
                # A bare id line: a client that reconnects before its first
                # event resumes from here instead of starting live again.
                subscription.write(b"id: %s\n\n" % here.encode().encode())
                if not follow:
                    return  # `live=false` with no start: nothing to replay
                if here >= self.watermark:
                    self._join(subscription)
                # Else the hub has read on since: the loop below reads that
                # stretch from the table, then joins.
            else:
                subscription.cursor = subscription.sent = start
            while not subscription.closed and not self.closing:
                if subscription.live:
                    await subscription.signal.wait()
                    subscription.signal.clear()
                elif await self._catch_up(subscription, follow):
                    if not follow:
                        return
        finally:
            self._leave(subscription)
            self.subscriptions.discard(subscription)

    async def _wait_started(self, subscription: Subscription) -> None:
        while not self.started.is_set() and not subscription.closed:
            waiter = asyncio.ensure_future(subscription.signal.wait())
            started = asyncio.ensure_future(self.started.wait())
            try:
                await asyncio.wait([waiter, started], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                started.cancel()
            subscription.signal.clear()

    async def _catch_up(self, subscription: Subscription, follow: bool) -> bool:
        """Replay from the table; True once caught up (and, if following, live).

        Pages come from PostgreSQL as the bytes the client gets, one write
        each; while a full page drains to the socket the next one is read.
        """
        response = subscription.response
        backoff = 0.1
        # Bulk replay may go to a replica. The replica's own snapshot horizon
        # keeps its pages commit-safe, but a lagging replica may never reach
        # the hub's watermark, so the last stretch before joining is read
        # from the primary.
        replica = self.store.replica_dsn is not None
        ahead: asyncio.Future[Frames] | None = None  # the next page, read while one drains
        try:
            while not subscription.closed and not self.closing:
                try:
                    if ahead is None:
                        # Wait for the socket first: a slow client reads at its own pace.
                        await response.drain()
                        ahead = asyncio.ensure_future(self._read_page(subscription, replica))
                    reading, ahead = ahead, None
                    page = await reading
                except ConnectionError:
                    subscription.close()
                    return False
                except DatabaseUnavailable:
                    try:
                        async with asyncio.timeout(backoff):
                            await subscription.signal.wait()
                    except TimeoutError:
                        pass
                    subscription.signal.clear()
                    backoff = min(backoff * 2, 5.0)
                    continue
                if page.future:
                    # A position this database never handed out (a client of a
                    # replaced or restored cluster): say so, go on from its end.
                    self._write_gap(subscription, subscription.cursor, page.covered)
                elif page.pruned is not None and ORIGIN < subscription.cursor < page.pruned:
                    # Retention removed events after the requested position (0,
                    # "from the oldest retained", is no gap).
                    self._write_gap(subscription, subscription.cursor, page.pruned)
                self._write_page(subscription, page)
                subscription.cursor = max(subscription.cursor, page.covered)
                if page.full:
                    ahead = asyncio.ensure_future(self._read_page(subscription, replica))
                    try:
                        await response.drain()
                    except ConnectionError:
                        subscription.close()
                        return False
                    continue
                if replica:
                    # A `live=false` stream ends here: at the primary's newest
                    # event, not at the lagging replica's.
                    replica = False
                    continue
                if subscription.cursor > subscription.sent:
                    # Move the client's position past what it did not match.
                    subscription.write(b"id: %s\n\n" % subscription.cursor.encode().encode())
                    subscription.sent = subscription.cursor
                if not follow:
                    return True
                if subscription.cursor >= self.watermark:
                    # No await between this check and the join: the hub's next
                    # fan-out starts after the watermark and skips up to cursor.
                    self._join(subscription)
                    return True
            return False
        finally:
            if ahead is not None:
                _abandon(ahead)

    def _read_page(self, subscription: Subscription, replica: bool) -> Awaitable[Frames]:
        return self.store.read_selected(subscription.cursor, self.settings.replay_page_size,
                                        subscription.sql, cloudevents=subscription.cloudevents,
                                        replica=replica)

    def _write_gap(self, subscription: Subscription, requested: Position,
                   resumed: Position) -> None:
        subscription.write(b'id: %s\nevent: sse.gap\ndata: {"requested_after":"%s",'
                           b'"resumed_after":"%s"}\n\n'
                           % (resumed.encode().encode(), requested.encode().encode(),
                              resumed.encode().encode()))
        subscription.cursor = subscription.sent = resumed
        self.gaps += 1

    def _write_page(self, subscription: Subscription, page: Frames) -> None:
        if page.last is not None:
            subscription.write(page.body)
            subscription.sent = page.last
            subscription.events_sent += page.count
            self.replayed += page.count

    # -- heartbeats ---------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """One timer for all streams: a keepalive only where it was silent,
        and the end of streams whose token expires (no timer per stream)."""
        interval = self.settings.heartbeat
        # At most a second per tick: a token's expiry is honoured within it.
        tick = max(0.02, min(interval / 4, 1.0))
        margin = self.settings.token_expiry_margin
        while True:
            await asyncio.sleep(tick)
            try:
                self._beat(time.monotonic() - (interval - tick), time.time(), margin)
            except Exception:
                log.exception("heartbeat failed")

    def _beat(self, silent_since: float, now: float, margin: float) -> None:
        for subscription in list(self.subscriptions):
            if subscription.response.is_closing():
                subscription.close()
            elif subscription.expires_at is not None and subscription.expires_at - margin <= now:
                self._expire(subscription, now)
            elif subscription.last_write <= silent_since:
                if subscription.live and self.last_event > subscription.sent:
                    # Events passed that it did not match: move its position.
                    subscription.sent = self.watermark
                    subscription.write(b": keepalive\nid: %s\n\n" % self.watermark.encode().encode())
                else:
                    subscription.write(KEEPALIVE)

    def _expire(self, subscription: Subscription, now: float) -> None:
        """Warn once before the token's exp, then end the stream at exp.

        The warning carries the last position written, so a client that
        reconnects with a fresh token and that position misses nothing.
        """
        expires_at = subscription.expires_at
        assert expires_at is not None
        if now >= expires_at:
            subscription.close()
            return
        if not subscription.expiry_warned:
            subscription.expiry_warned = True
            data = orjson.dumps({
                "last_event_id": subscription.sent.encode(),
                "expires_at": datetime.fromtimestamp(expires_at, timezone.utc)
                .isoformat().replace("+00:00", "Z")})
            subscription.write(b"event: sse.token-expiring\ndata: %s\n\n" % data)


def _abandon(future: asyncio.Future[Frames]) -> None:
    """Cancel a read nobody will wait for; an error it already had is dropped
    (the stream is ending), not logged as never retrieved."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()
