"""Catch-up: one stream reads what it missed from the table, page by page.

A stream that starts from an old position, or that the hub moved out of the
live flow for falling behind, reads on its own task: pages of its own
selection (filtered in SQL, framed by PostgreSQL: the bytes the client
gets), one write each, the next page read while one drains, through the
bounded read capacity and, for bulk history, possibly from a replica.
`CatchUp.run` returns once a page read from the primary was not full; the
hub then joins the stream to the live flow if nothing lies between
(Hub._join states why nothing can).
"""

from __future__ import annotations

import asyncio

from ..core.errors import DatabaseUnavailable
from ..core.events import ORIGIN
from ..core.settings import Settings
from ..core.stats import HubStats
from ..core.tasks import Backoff, wait_set
from ..db.store import EventStore, Frames
from .recent import Recent, frame_of, position_of
from .subscription import Subscription


class CatchUp:
    def __init__(self, store: EventStore, settings: Settings, stats: HubStats,
                 recent: Recent) -> None:
        self.store = store
        self.recent = recent
        self.page_bytes = settings.page_bytes
        self.page_size = settings.replay_page_size
        self.scan_rows = settings.scan_rows
        self.standby_poll = settings.standby_poll
        self.stats = stats

    async def run(self, subscription: Subscription, to_recent: bool = False) -> bool:
        """Write pages after `subscription.covered` until a page from the
        primary is not full. True: caught up to (at least) the primary's
        horizon as of that read; False: the stream ended meanwhile, or (with
        `to_recent`) recent history covers the rest."""
        response = subscription.response
        backoff = Backoff()
        # The replica's own snapshot keeps its pages commit-safe, but a
        # lagging replica may never reach the live flow, so the last stretch
        # is always read from the primary.
        replica = self.store.replica_dsn is not None
        ahead: asyncio.Future[Frames] | None = None  # the next page, read while one drains
        try:
            while not subscription.closed:
                try:
                    if ahead is None:
                        # Wait for the socket first: a slow client reads at its own pace.
                        await response.drain()
                        ahead = self._read(subscription, replica)
                    reading, ahead = ahead, None
                    page = await reading
                except ConnectionError:
                    subscription.close()
                    return False
                except DatabaseUnavailable:
                    await wait_set(subscription.signal, backoff.next())
                    subscription.signal.clear()
                    continue
                if page.behind:
                    # A position the live source (a standby) has not replayed
                    # yet, which the primary handed out: wait for the standby
                    # (the stream keeps its heartbeat), never a false gap.
                    self.stats.standby_waits += 1
                    await wait_set(subscription.signal, self.standby_poll)
                    subscription.signal.clear()
                    continue
                self._write(subscription, page)
                if to_recent and page.full and self.recent.covers(subscription.covered):
                    return False  # not caught up: the rest is in memory (Hub.serve)
                if page.full:
                    ahead = self._read(subscription, replica)
                    try:
                        await response.drain()
                    except ConnectionError:
                        subscription.close()
                        return False
                elif replica:
                    replica = False  # the rest, and a `live=false` stream's end, from the primary
                else:
                    if subscription.covered > subscription.last_id:
                        # Move the client's position past what it did not match.
                        subscription.write_position(subscription.covered)
                    return True
            return False
        finally:
            if ahead is not None:
                _abandon(ahead)

    async def from_recent(self, subscription: Subscription) -> bool:
        """Write what `subscription` missed from the ring of recent history,
        page by page, waiting for the socket between pages. True when it
        reached the ring's end (the watermark) in the last step, with no
        await since: the caller may join. False when the stream ended, or
        the ring moved past its position meanwhile (the table serves it)."""
        recent = self.recent
        while not subscription.closed:
            # Wait for the socket first, as a table catch-up does: a slow
            # stream sent here from the live flow drains before it rejoins.
            try:
                await subscription.response.drain()
            except ConnectionError:
                subscription.close()
                return False
            if not recent.covers(subscription.covered):
                return False
            found, covered = recent.after(subscription.covered, subscription.selector,
                                          self.page_bytes, self.page_size, self.scan_rows)
            if found:
                cloudevents = subscription.cloudevents
                subscription.write(b"".join(frame_of(item, cloudevents) for item in found))
                subscription.last_id = position_of(found[-1])
                subscription.events_sent += len(found)
                self.stats.replayed += len(found)
                self.stats.replayed_recent += len(found)
            subscription.covered = max(subscription.covered, covered)
            if covered >= recent.end:
                if subscription.covered > subscription.last_id:
                    subscription.write_position(subscription.covered)
                return True
        return False

    def _read(self, subscription: Subscription, replica: bool) -> asyncio.Future[Frames]:
        return asyncio.ensure_future(self.store.read_selected(
            subscription.covered, self.page_size, subscription.sql,
            cloudevents=subscription.cloudevents, replica=replica))

    def _write(self, subscription: Subscription, page: Frames) -> None:
        if page.future:
            # A position this database never handed out (a client of a
            # replaced or restored cluster): say so, go on from its end.
            subscription.write_gap(subscription.covered, page.covered)
            self.stats.gaps += 1
        elif page.pruned is not None and ORIGIN < subscription.covered < page.pruned:
            # Retention removed events after the requested position (0, "from
            # the oldest retained", is no gap).
            subscription.write_gap(subscription.covered, page.pruned)
            self.stats.gaps += 1
        if page.last is not None:
            subscription.write(page.body)
            subscription.last_id = page.last
            subscription.events_sent += page.count
            self.stats.replayed += page.count
        subscription.covered = max(subscription.covered, page.covered)


def _abandon(future: asyncio.Future[Frames]) -> None:
    """Cancel a read nobody will wait for; an error it already had is dropped
    (the stream is ending), not logged as never retrieved."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()
