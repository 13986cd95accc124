"""A webhook this process delivers (holds the lease of), and its state.

A target reads its events from the table after its cursor (the catch-up
read) until a read reaches the hub: then it joins the live flow and the
deliverer buffers the events of the hub's shared read that it matches, so
that a webhook that keeps up costs no read of its own. The seam is the
hub's (Hub._join): a read whose covered position is at or past the hub's
watermark holds every event up to there, and the hub's next pages start
after its watermark; events up to `replayed_through` are then skipped, and
the join happens with no await after the read. A target leaves the live
flow (and reads from the table again) when a request fails, when its cursor
changes under it, when its buffer grows past a bound, and when the hub's
read jumps (retention or a replaced cluster).
"""

from __future__ import annotations

import asyncio

from ..core.events import ORIGIN, Event, Position
from ..core.selector import Selector, SelectorSql
from .model import Webhook, secret_key

BUFFER_BATCHES = 4  # a live buffer holds about this many full requests at most


class Target:
    __slots__ = ("webhook", "selector", "sql", "key", "queued", "running", "again", "timer",
                 "rounds", "deadline", "last_start", "joined", "buffer", "buffered",
                 "replayed_through")

    def __init__(self, webhook: Webhook, selector: Selector, deadline: float) -> None:
        self.webhook = webhook
        self.selector = selector
        self.sql: SelectorSql = selector.to_sql()
        self.key = secret_key(webhook.secret)
        self.queued = False
        self.running = False
        self.again = False  # a matching event arrived during the round
        self.timer: asyncio.TimerHandle | None = None  # a retry, or the linger
        self.rounds = 0
        self.deadline = deadline  # when the lease lapses (monotonic, conservative)
        self.last_start = 0.0  # when the last request started (monotonic)
        self.joined = False  # in the live flow: `buffer` holds what the hub read for it
        self.buffer: list[Event] = []
        self.buffered = 0  # bytes of envelopes in the buffer
        self.replayed_through = ORIGIN  # live events up to here came from the table read

    def start_round(self) -> None:
        self.queued = self.again = False
        self.running = True
        self.rounds += 1

    def end_round(self) -> None:
        self.running = False
        self.rounds += 1  # what a lease round read meanwhile must not undo this round

    def join(self, covered: Position, watermark: Position) -> None:
        """After a table read that saw everything up to `covered`: live, if
        the hub has not read past it. No await may come between the read's
        result and this call."""
        if not self.joined and covered >= watermark:
            self.joined = True
            self.replayed_through = covered

    def leave(self) -> None:
        self.joined = False
        self.buffer = []
        self.buffered = 0

    def offer(self, event: Event, events: int, size: int) -> None:
        """A matching event of the shared read; past the bound (about
        BUFFER_BATCHES requests of `events` and `size`), back to the table."""
        if not self.joined or event.position <= self.replayed_through:
            return
        self.buffer.append(event)
        self.buffered += len(event.envelope)
        if len(self.buffer) > BUFFER_BATCHES * events or self.buffered > BUFFER_BATCHES * size:
            self.leave()

    def batch(self, events: int, size: int, observed: Position) -> tuple[list[bytes], Position,
                                                                         bool]:
        """The next live request: its envelopes (at most `events`, about `size`
        bytes, one at least), the cursor after it, and whether more is waiting.
        `observed`: the last page of the shared read the deliverer saw."""
        taken: list[bytes] = []
        total = 0
        for event in self.buffer:
            if taken and (len(taken) == events or total + len(event.envelope) > size):
                break
            taken.append(event.envelope)
            total += len(event.envelope)
        more = len(taken) < len(self.buffer)
        last = self.buffer[len(taken) - 1].position
        # Everything the hub read up to `observed` has been offered: the cursor
        # may pass it when the buffer empties (never before the join's read).
        return taken, last if more else max(last, observed, self.replayed_through), more

    def sent(self, count: int) -> None:
        for event in self.buffer[:count]:
            self.buffered -= len(event.envelope)
        del self.buffer[:count]


class Targets(dict[str, Target]):
    """The targets of a process by webhook id, and by the streams they read."""

    MAX_STREAMS = 10_000  # stream names remembered, then forgotten at once

    def __init__(self) -> None:
        super().__init__()
        self._by_stream: dict[str, list[Target]] = {}

    def add(self, target: Target) -> None:
        self[target.webhook.id] = target
        self._by_stream.clear()

    def remove(self, target: Target) -> None:
        """Stop delivering `target` here (its timer too)."""
        if self.get(target.webhook.id) is target:
            del self[target.webhook.id]
            self._by_stream.clear()
        if target.timer is not None:
            target.timer.cancel()
            target.timer = None

    def reading(self, stream: str) -> list[Target]:
        """The targets whose streams or patterns match `stream`."""
        found = self._by_stream.get(stream)
        if found is None:
            if len(self._by_stream) >= self.MAX_STREAMS:
                self._by_stream.clear()
            found = self._by_stream[stream] = [
                t for t in self.values() if t.selector.matches_stream(stream)]
        return found
