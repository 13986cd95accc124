"""The deliverer: a background task of `serve` that POSTs webhooks' events.

Leases. Each process claims active webhooks whose lease has lapsed (FOR
UPDATE SKIP LOCKED), up to its fair share among the live deliverers, reads
them every second (pauses, rewinds and deletions made elsewhere), renews
them every third of the lease, and names the lease (owner and epoch) in
every write. A request starts only while its lease has more than the
request's timeout to run: a process that dies mid-request holds the webhook
until the lease lapses; only then may another send, from the cursor.

Order. One request at a time per webhook: the next events after the cursor
(the catch-up read, on the background capacity). The cursor moves in the
statement that records a 2xx, only from where the batch was read; a failed
batch is sent again as it was (its size is recorded), with the same body and
webhook-id, by whichever process retries.

Scheduling. The hub hands every page of its shared read to `observe`, which
queues the webhooks its events match: a quiet webhook gets an event within
the usual live latency; a busy one waits `webhooks_linger` after its last
request began, so that its events travel in fewer, larger requests. The
queue is first in, first out; `webhooks_concurrency` workers take one
webhook each, make one request, and queue it again at the end if more is
waiting: a slow endpoint holds one worker, and every other webhook keeps its
turn. Failures wait out the retry schedule on a timer. Every third of the
lease time each webhook is queued anyway (the table is the truth, the hub
only a doorbell).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from ..core.errors import DatabaseUnavailable, Refusal
from ..core.events import ORIGIN, Position
from ..core.selector import Selector
from ..core.settings import Settings, format_duration
from ..core.stats import Tally
from ..core.tasks import cancel_and_wait
from ..db.store import EventStore, Page
from .addresses import AddressGuard
from .model import Webhook, gap_envelope, message_id, retry_delay
from .sender import MAX_ERROR, Sender
from .store import Backlog, Outcome, WebhookStore
from .target import Target, Targets

log = logging.getLogger(__name__)

ATTEMPTS_KEPT = 100  # attempts logged per webhook
CLAIM_INTERVAL = 1.0  # seconds between lease rounds: renew, claim, hand back
LEASE_MARGIN = 1.0  # seconds of lease left over when a request has timed out
MEASURE_INTERVAL = 15.0  # seconds between backlog measurements for /metrics
RETRY_OUTAGE = 2.0  # seconds before a round retries after a database outage


class Deliverer:
    def __init__(self, store: EventStore, settings: Settings,
                 watermark: Callable[[], Position]) -> None:
        self.store = store
        self.settings = settings
        self.watermark = watermark  # the hub's: where its shared read stands
        self.webhooks = WebhookStore(store)
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self.schedule = settings.webhooks_retry
        self.disable_after = settings.webhooks_disable_after
        self.lease = settings.webhooks_lease
        self.sender = Sender(settings, AddressGuard.of(settings))
        self.targets = Targets()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.observed = ORIGIN  # the covered position of the last page observed
        self._poke = asyncio.Event()
        self._measure_now = False  # a webhook changed state here: count again
        self._tasks: list[asyncio.Task[None]] = []
        self._random = random.Random()
        # For /metrics (metrics.webhook_families).
        self.tally = Tally()
        self.states: dict[str, int] = {}
        self.backlogs: dict[str, Backlog] = {}

    def start(self) -> None:
        self.sender.open()
        self._tasks = [asyncio.create_task(self._leases(), name="sse-stream webhook leases")]
        self._tasks += [asyncio.create_task(self._work(), name="sse-stream webhook worker")
                        for _ in range(self.settings.webhooks_concurrency)]

    async def stop(self) -> None:
        """End delivery. Idle webhooks are handed back at once; those with a
        request in flight are left to their lease, so that no other process
        sends while the receiver may still be busy with it."""
        busy = {id_ for id_, target in self.targets.items() if target.running}
        for task in self._tasks:
            await cancel_and_wait(task)
        for target in self.targets.values():
            if target.timer is not None:
                target.timer.cancel()
        try:
            async with asyncio.timeout(2):
                await self.webhooks.release(self.owner, [i for i in self.targets if i not in busy])
                await self.webhooks.forget(self.owner)
        except (TimeoutError, DatabaseUnavailable):
            pass  # the leases lapse by themselves
        self.targets.clear()
        await self.sender.close()

    def poke(self) -> None:
        """Look at the webhooks now (one was changed through this process)."""
        self._measure_now = True
        self._poke.set()

    def observe(self, page: Page) -> None:
        """The hub's shared read: buffer the events of live targets, queue the
        webhooks the events match. Called with no await around it; never raises."""
        try:
            jumped = page.future or (page.pruned is not None and page.pruned > self.observed)
            if jumped:  # events were lost to the live flow: read them from the table
                for target in self.targets.values():
                    if target.joined:
                        target.leave()
                        self._due(target)
            settings = self.settings
            for event in page.events:
                for target in self.targets.reading(event.stream):
                    if not target.joined and (target.queued or target.again or target.timer):
                        continue
                    try:
                        if target.selector.accepts(event):
                            if target.joined:
                                target.offer(event, settings.webhooks_batch_events,
                                             settings.webhooks_batch_bytes)
                            self._due(target)
                    except Exception:  # a bad match only delays it to the sweep
                        log.exception("webhook %s: matching event %s failed", target.webhook.id,
                                      event.position.encode())
            self.observed = page.covered if jumped else max(self.observed, page.covered)
        except Exception:
            log.exception("webhooks: observing the shared read failed")

    def _due(self, target: Target, at_once: bool = False) -> None:
        if target.running:
            target.again = True
        elif not target.queued and target.timer is None:
            wait = target.last_start + self.settings.webhooks_linger - time.monotonic()
            if wait > 0 and not at_once:
                self._wait(target, wait)
                return
            target.queued = True
            self._queue.put_nowait(target.webhook.id)

    def _retry(self, id_: str) -> None:
        target = self.targets.get(id_)
        if target is not None:
            target.timer = None
            self._due(target, at_once=True)

    def _wait(self, target: Target, seconds: float) -> None:
        if target.timer is not None:
            target.timer.cancel()
        target.timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._retry,
                                                             target.webhook.id)

    def _adopt(self, webhook: Webhook, selector: Selector, deadline: float) -> None:
        target = Target(webhook, selector, deadline)
        self.targets.add(target)
        wait = (webhook.next_attempt_at - datetime.now(UTC)).total_seconds()
        if wait > 0:
            self._wait(target, wait)
        else:
            self._due(target)

    async def _leases(self) -> None:
        sweep_at = measure_at = 0.0
        while True:
            try:
                now = time.monotonic()
                await self._renew(sweep=now >= sweep_at)
                if now >= sweep_at:
                    sweep_at = now + self.lease / 3
                await self._claim()
                if now >= measure_at or self._measure_now:
                    measure_at = now + MEASURE_INTERVAL
                    self._measure_now = False
                    await self._measure()
            except DatabaseUnavailable as error:
                log.warning("webhooks: database unavailable, delivery waits: %s", error)
            except Exception:
                log.exception("webhooks: lease round failed")
            try:
                async with asyncio.timeout(CLAIM_INTERVAL):
                    await self._poke.wait()
            except TimeoutError:
                pass
            self._poke.clear()

    async def _renew(self, sweep: bool) -> None:
        """Take in changes made meanwhile (pause, rewind, delete); with `sweep`
        also renew every lease held and queue each webhook."""
        rounds = {id_: target.rounds for id_, target in self.targets.items()}
        if not rounds:
            return
        started = time.monotonic()
        found = await (self.webhooks.renew(self.owner, list(rounds), self.lease) if sweep
                       else self.webhooks.held(self.owner, list(rounds)))
        rows = {w.id: w for w in found}
        gone = []
        for id_, seen in rounds.items():
            target = self.targets.get(id_)
            if target is None:
                continue
            webhook = rows.get(id_)
            if webhook is None or webhook.lease_epoch != target.webhook.lease_epoch:
                self.targets.remove(target)  # lost, paused, disabled or deleted
                gone.append(id_)
                continue
            if sweep:
                target.deadline = started + self.lease
            if not target.running and target.rounds == seen:
                if target.timer is not None and target.webhook.failures and not webhook.failures:
                    target.timer.cancel()  # rewound meanwhile: try now
                    target.timer = None
                if webhook.cursor != target.webhook.cursor:
                    target.leave()
                target.webhook = webhook
            if sweep:
                self._due(target)
        if gone and not sweep:
            await self.webhooks.release(self.owner, gone)

    async def _claim(self) -> None:
        """Take a fair share of the active webhooks: claim up to it, and hand
        back idle ones beyond it (another process started)."""
        owners, active = await self.webhooks.heartbeat(self.owner, self.lease)
        share = math.ceil(active / owners)
        excess = len(self.targets) - share
        if excess > 0 and owners > 1:
            idle = [t for t in self.targets.values() if not t.running][:excess]
            for target in idle:
                self.targets.remove(target)
            await self.webhooks.release(self.owner, [t.webhook.id for t in idle])
        elif excess < 0:
            started = time.monotonic()
            for webhook in await self.webhooks.claim(self.owner, self.lease, -excess):
                try:
                    selector = webhook.selector()
                except Refusal as error:
                    # Filters a backend wrote that the server cannot read.
                    await self.webhooks.refuse(webhook, self.owner,
                                               f"cannot deliver: {error}"[:MAX_ERROR])
                    continue
                self._adopt(webhook, selector, started + self.lease)

    async def _measure(self) -> None:
        """What /metrics shows of the database: webhooks by state, and how far
        behind each one this process holds is."""
        self.states = await self.webhooks.counts()
        self.backlogs = {t.webhook.id: await self.webhooks.backlog(t.webhook)
                         for t in list(self.targets.values())}

    async def _work(self) -> None:
        while True:
            id_ = await self._queue.get()
            target = self.targets.get(id_)
            if target is None or not target.queued:
                continue
            target.start_round()
            more = False
            try:
                more = await self._round(target)
            except DatabaseUnavailable as error:
                log.warning("webhook %s: database unavailable: %s", id_, error)
                self._wait(target, RETRY_OUTAGE)
            except Exception:
                log.exception("webhook %s: delivery round failed", id_)
                self._wait(target, RETRY_OUTAGE)
            finally:
                target.end_round()
            if self.targets.get(id_) is target and (more or target.again):
                target.again = False
                # At the end of the queue: every webhook has its turn.
                self._due(target, at_once=more)

    async def _round(self, target: Target) -> bool:
        """At most one request for one webhook; True when more is waiting."""
        webhook = target.webhook
        cursor = webhook.cursor
        settings = self.settings
        events, size = settings.webhooks_batch_events, settings.webhooks_batch_bytes
        if target.joined and not webhook.pending_events:
            if not target.buffer:
                return await self._skip(target, self.observed)
            parts, covered, more = target.batch(events, size, self.observed)
            count, live = len(parts), True
        else:
            target.leave()  # the table has whatever was buffered
            self.tally.reads += 1
            page = await self.store.read_selected(
                cursor, webhook.pending_events or events, target.sql, sse=False,
                background=True, max_bytes=size)
            if not page.full:
                target.join(page.covered, self.watermark())  # no await since the read
            parts = []
            if page.future:
                parts.append(gap_envelope(cursor, page.covered))
            elif page.pruned is not None and ORIGIN < cursor < page.pruned:
                parts.append(gap_envelope(cursor, page.pruned))
            if page.count:
                parts.append(page.body)
            if not parts:
                return await self._skip(target, page.covered) or page.full
            count, covered, more, live = page.count, page.covered, page.full, False
        body = b'{"events":[%s]}' % b",".join(parts)
        if time.monotonic() + settings.webhooks_timeout + LEASE_MARGIN > target.deadline:
            # Too little lease left for a whole request: renew it first.
            started = time.monotonic()
            if not await self.webhooks.begin(webhook, self.owner, cursor, self.lease, count):
                return await self._reload(target)
            target.deadline = started + self.lease
            if time.monotonic() + settings.webhooks_timeout + LEASE_MARGIN > target.deadline:
                return True  # the renewal itself took too long: again
        if self.targets.get(webhook.id) is not target:
            return False  # dropped meanwhile (paused, deleted, handed back)
        target.last_start = time.monotonic()
        outcome = await self.sender.post(webhook.url, target.key, body,
                                         message_id(webhook.id, body), count)
        return await self._record(target, count, covered, more, live, outcome)

    async def _skip(self, target: Target, covered: Position) -> bool:
        """Move the cursor past events the webhook does not match, with no
        request; False (nothing more to do) unless the row changed."""
        webhook = target.webhook
        if covered <= webhook.cursor:
            return False
        if not await self.webhooks.skip(webhook, self.owner, webhook.cursor, covered):
            return await self._reload(target)
        target.webhook = replace(webhook, cursor=covered, pending_events=None)
        return False

    async def _record(self, target: Target, count: int, covered: Position, more: bool,
                      live: bool, outcome: Outcome) -> bool:
        webhook = target.webhook
        self.tally.add(self.tally.attempts, webhook.id)
        delay = 0.0
        if not outcome.ok:
            self.tally.add(self.tally.failures, webhook.id)
            delay = retry_delay(self.schedule, webhook.failures + 1, self._random)
        started = time.monotonic()
        result = await self.webhooks.finish(webhook, self.owner, webhook.cursor, covered,
                                            outcome, delay, self.disable_after, ATTEMPTS_KEPT,
                                            self.lease)
        if result is None:
            log.warning("webhook %s: lease lost during a request", webhook.id)
            self.targets.remove(target)
            return False
        state, moved = result
        target.deadline = started + self.lease
        if outcome.ok:
            if not moved:
                return await self._reload(target)  # rewound during the request
            self.tally.add(self.tally.delivered, webhook.id, count)
            if live:
                target.sent(count)
            target.webhook = replace(webhook, cursor=covered, pending_events=None,
                                     failures=0, failing_since=None)
            return more
        target.leave()  # the retry reads the same events from the table
        target.webhook = replace(webhook, pending_events=count, failures=webhook.failures + 1)
        if state == "disabled":
            log.warning("webhook %s disabled after failing for %s: %s", webhook.id,
                        format_duration(self.disable_after), outcome.error)
            self.targets.remove(target)
            self.poke()
            await self.webhooks.release(self.owner, [webhook.id])
        else:
            self._wait(target, delay)
        return False

    async def _reload(self, target: Target) -> bool:
        """The row changed under this process (paused, rewound, deleted, the
        lease lost): read it again; True if delivery goes on."""
        target.leave()
        webhook = await self.webhooks.get(target.webhook.id)
        if webhook is None or webhook.state != "active" or webhook.lease_owner != self.owner \
                or webhook.lease_epoch != target.webhook.lease_epoch:
            self.targets.remove(target)
            if webhook is not None and webhook.lease_owner == self.owner:
                await self.webhooks.release(self.owner, [webhook.id])
            return False
        target.webhook = webhook
        return True
