"""Retention: delete events older than an age, in small batches.

Each batch is one short statement (at most `batch` rows, the oldest final
rows in stream order), so no lock is held for long and writers and readers
go on meanwhile. The highest deleted position is recorded with the rows'
deletion in `sse_stream.retention`; a stream asked to start before it gets
an `sse.gap` control event first (see Hub._catch_up). Retention stops at the
oldest cursor of a webhook that is not disabled unless forced
(`prune_past_webhooks`), but no longer than `webhooks_max_hold` for one that
is paused or failing; a webhook it passed gets `sse.gap` first too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from ..core.errors import DatabaseUnavailable
from ..core.events import Position
from ..core.settings import Settings
from ..core.tasks import cancel_and_wait
from .queries import query
from .store import EventStore

log = logging.getLogger(__name__)

BATCH_PAUSE = 0.01  # seconds between batches: lets other work use the database


@dataclass(frozen=True)
class PruneResult:
    deleted: int
    pruned: Position | None  # the highest position deleted by this run, if any
    batches: int


async def prune(store: EventStore, older_than: timedelta, batch: int = 10_000,
                max_batches: int | None = None, force: bool = False,
                max_hold: float = Settings.webhooks_max_hold) -> PruneResult:
    """Delete, batch after batch, every final event older than `older_than`,
    and the webhook delivery attempts as old. Events a webhook that is not
    disabled has yet to deliver are kept, unless `force`, or the webhook has
    been paused or failing for `max_hold` seconds."""
    deleted = batches = 0
    highest: Position | None = None
    await prune_attempts(store, older_than.total_seconds())
    while max_batches is None or batches < max_batches:
        count, position = await store.prune_batch(older_than, batch, force, max_hold)
        batches += 1
        deleted += count
        if position is not None:
            highest = position
        if count < batch:
            break
        await asyncio.sleep(BATCH_PAUSE)
    return PruneResult(deleted, highest, batches)


class Retention:
    """The periodic prune of a serving process."""

    def __init__(self, store: EventStore, older_than: timedelta, interval: float,
                 batch: int, force: bool = False,
                 max_hold: float = Settings.webhooks_max_hold) -> None:
        self.store = store
        self.force = force
        self.max_hold = max_hold
        self.older_than = older_than
        self.interval = interval
        self.batch = batch
        self.deleted = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sse-stream retention")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                result = await prune(self.store, self.older_than, self.batch, force=self.force,
                                     max_hold=self.max_hold)
                self.deleted += result.deleted
                if result.deleted:
                    log.info("pruned %d events older than %s up to %s", result.deleted,
                             self.older_than, result.pruned.encode() if result.pruned else "-")
            except DatabaseUnavailable as error:
                log.warning("prune skipped, database unavailable: %s", error)
            except Exception:
                # A failed prune (a lock timeout, a statement error) must not
                # end retention for the life of the process: try next time.
                log.exception("prune failed")
            await asyncio.sleep(self.interval)


async def prune_attempts(store: EventStore, older_than: float) -> int:
    """Forget webhook delivery attempts older than `older_than` seconds: the
    attempt log goes with the events."""
    async with store.background() as connection:
        status: str = await connection.execute(query("webhook_prune_attempts"), older_than)
    return int(status.split()[-1])
