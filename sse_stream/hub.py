"""The Hub: one per process. One read per wake-up, shared by every stream.

The hub keeps a watermark: every event at or before it has been handed to
every live subscription that matches it. On each wake-up (a NOTIFY, a poll
timeout, a listener reconnect) it reads the final events after the
watermark, in pages, encodes each once, and writes each subscription's share
in one write. Streams that start from an old position, or fall too far
behind, catch up from the table on their own task and then join the live
flow; the join and the fan-out never interleave (no await between them), so
nothing falls into the seam and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from datetime import datetime, timezone

import orjson

from .errors import DatabaseUnavailable
from .events import ORIGIN, Event, Position
from .metrics import LAG_BUCKETS, READ_BUCKETS, Buckets
from .patterns import StreamPattern
from .response import KEEPALIVE
from .settings import Settings
from .store import EventStore, Page
from .subscription import Payload, Selector, Subscription
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

HELD_POLL = 0.025  # seconds between reads while an open transaction holds rows back


class Group:
    """Live subscriptions with the same selector and format: matched once, written alike."""

    __slots__ = ("selector", "cloudevents", "members")

    def __init__(self, selector: Selector, cloudevents: bool) -> None:
        self.selector = selector
        self.cloudevents = cloudevents
        self.members: set[Subscription] = set()

    def frame(self, event: Event) -> bytes:
        return event.cloudevent_sse if self.cloudevents else event.sse


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
        # Live subscriptions, grouped by identical selector and indexed by
        # stream name (exact) or pattern.
        self._groups: dict[tuple[Selector, bool], Group] = {}
        self._exact: dict[str, set[Group]] = {}
        self._patterns: dict[str, tuple[StreamPattern, set[Group]]] = {}
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
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for
                # swallows a cancellation that arrives as the wait ends, and
                # stop() would then wait for this task forever.
                async with asyncio.timeout(timeout):
                    await self._doorbell.wait()
            except TimeoutError:
                pass
            # Cleared before the read: a NOTIFY during the read rings again.
            self._doorbell.clear()

    async def _read_new(self) -> None:
        self.wakeups += 1
        read = 0
        try:
            while True:
                page = await self.store.read_live(self.watermark, self.settings.page_size)
                self._fan_out(page)
                read += len(page.events)
                if not page.full:
                    self._held = page.held
                    return
        finally:
            self.read_sizes.observe(read)

    def _candidates(self, stream: str) -> Collection[Group]:
        found = self._exact.get(stream)
        merged: set[Group] | None = None
        for pattern, groups in self._patterns.values():
            if pattern.matches(stream):
                if merged is None:
                    merged = set(found) if found else set()
                merged |= groups
        if merged is not None:
            return merged
        return found if found is not None else ()

    def _fan_out(self, page: Page) -> None:
        """Hand a page to every live subscription: one write each. No awaits.

        Matching is per group of identical selectors, so an event costs one
        test per distinct selector whose streams can hold it, and each group's
        bytes are joined (and chunk-framed) once for all of its members.
        """
        events = page.events
        matched: dict[Group, list[Event]] = {}
        if events:
            self.events_read += len(events)
            by_stream: dict[str, Collection[Group]] = {}
            for event in events:
                groups = by_stream.get(event.stream)
                if groups is None:
                    groups = by_stream[event.stream] = self._candidates(event.stream)
                for group in groups:
                    if group.selector.accepts(event):
                        batch = matched.get(group)
                        if batch is None:
                            batch = matched[group] = []
                        batch.append(event)
            self.last_event = events[-1].position
            # Per event read, not per subscriber: one subtraction and a bisect.
            now = time.time()
            observe = self.lag.observe
            for event in events:
                observe(now - event.created_at.timestamp())
        self.watermark = page.covered
        limit = self.settings.max_pending
        behind: list[Subscription] = []
        for group, batch in matched.items():
            payload = Payload(b"".join(map(group.frame, batch)))
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
            subscription.cursor = page.covered
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
            for pattern in selector.patterns:
                if pattern.is_exact:
                    self._exact.setdefault(pattern.text, set()).add(group)
                else:
                    entry = self._patterns.get(pattern.text)
                    if entry is None:
                        entry = self._patterns[pattern.text] = (pattern, set())
                    entry[1].add(group)
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
        for pattern in selector.patterns:
            if pattern.is_exact:
                groups = self._exact[pattern.text]
                groups.discard(group)
                if not groups:
                    del self._exact[pattern.text]
            else:
                groups = self._patterns[pattern.text][1]
                groups.discard(group)
                if not groups:
                    del self._patterns[pattern.text]

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
                # Live only: start at a fresh horizon, so events committed
                # before the request that the hub has not read yet stay out.
                try:
                    horizon = await self.store.horizon()
                except DatabaseUnavailable:
                    horizon = self.watermark
                here = max(horizon, self.watermark)
                subscription.cursor = subscription.sent = here
                # A bare id line: a client that reconnects before its first
                # event resumes from here instead of starting live again.
                subscription.write(b"id: %s\n\n" % here.encode().encode())
                self._join(subscription)
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
        """Replay from the table; True once caught up (and, if following, live)."""
        response = subscription.response
        sql, params = subscription.sql
        backoff = 0.1
        # Bulk replay may go to a replica. The replica's own snapshot horizon
        # keeps its pages commit-safe, but a lagging replica may never reach
        # the hub's watermark, so the last stretch before joining is read
        # from the primary.
        replica = self.store.replica_dsn is not None
        while not subscription.closed and not self.closing:
            try:
                # Wait for the socket first: a slow client reads at its own pace.
                await response.drain()
                page = await self.store.read_selected(
                    subscription.cursor, self.settings.page_size, sql, params, replica=replica)
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
            if page.pruned is not None and ORIGIN < subscription.cursor < page.pruned:
                # Retention removed events after the requested position (0,
                # "from the oldest retained", is no gap).
                self._write_gap(subscription, page.pruned)
            self._write_page(subscription, page.events)
            subscription.cursor = page.covered
            if page.full:
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

    def _write_gap(self, subscription: Subscription, pruned: Position) -> None:
        position = pruned.encode().encode()
        subscription.write(b'id: %s\nevent: sse.gap\ndata: {"requested_after":"%s",'
                           b'"resumed_after":"%s"}\n\n'
                           % (position, subscription.cursor.encode().encode(), position))
        subscription.cursor = subscription.sent = pruned
        self.gaps += 1

    def _write_page(self, subscription: Subscription, events: list[Event]) -> None:
        if events:
            subscription.write(b"".join(map(subscription.frame, events)))
            subscription.sent = events[-1].position
            subscription.events_sent += len(events)
            self.replayed += len(events)

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
