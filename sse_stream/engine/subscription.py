"""Where one open stream is (a Subscription): its selector, positions and socket."""

from __future__ import annotations

import time
from typing import Protocol

from ..core.events import Position
from ..core.selector import Selector, selector_sql
from ..core.tasks import Signal
from ..core.wire import Payload, gap_frame, id_frame


class Transport(Protocol):
    """What a stream writes to: the web layer's SSE response."""

    def write_nowait(self, data: bytes | Payload) -> None:
        """Queue `data` now; raises ConnectionError when the client is gone."""

    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""

    def is_closing(self) -> bool: ...

    async def drain(self) -> None:
        """Wait until the pending bytes are below the low-water mark."""


class Subscription:
    """One open stream: its selector, its place in the order, its socket.

    Three positions say where it is (see Hub._join for how they meet):
    - `covered`: every matching event up to here has been written to it;
    - `last_id`: the last position written on an `id:` line, where the
      client resumes after a disconnect (never ahead of `covered`);
    - `replayed_through`: once `joined` to the live flow, live events at or
      before this were already written by the catch-up, and are skipped.
    While not `joined`, the stream's own task reads from the table after
    `covered` until it can join (Hub.serve).
    """

    __slots__ = ("selector", "response", "covered", "replayed_through", "last_id", "joined",
                 "closed", "last_write", "signal", "sql", "events_sent", "bytes_sent", "opened",
                 "peer", "streams", "cloudevents", "expires_at", "expiry_warned")

    def __init__(self, selector: Selector, response: Transport, start: Position,
                 peer: str = "", cloudevents: bool = False,
                 expires_at: float | None = None) -> None:
        self.selector = selector
        self.response = response
        self.covered = start
        self.replayed_through = start
        self.last_id = start
        self.joined = False
        self.closed = False
        self.last_write = time.monotonic()
        self.signal = Signal()  # wakes the stream's task: overflow, close
        self.sql = selector_sql(selector)
        self.events_sent = 0
        self.bytes_sent = 0
        self.opened = time.monotonic()
        self.peer = peer
        self.streams = ",".join(p.text for p in selector.patterns)  # for logs and metrics
        self.cloudevents = cloudevents  # data: is a CloudEvents envelope
        self.expires_at = expires_at  # the token's exp (epoch seconds): the stream ends there
        self.expiry_warned = False

    def write(self, data: bytes | Payload) -> None:
        """Write without waiting; marks the subscription closed if the client left."""
        try:
            self.response.write_nowait(data)
        except ConnectionError:
            self.close()
            return
        self.last_write = time.monotonic()
        self.bytes_sent += len(data.data if isinstance(data, Payload) else data)

    def write_gap(self, requested: Position, resumed: Position) -> None:
        """Tell the client that events after `requested` up to `resumed`
        are lost to it (sse.gap), and go on from `resumed`."""
        self.write(gap_frame(requested, resumed))
        self.covered = self.last_id = resumed

    def write_position(self, position: Position) -> None:
        """Move the client's position with no event (a bare `id:` line)."""
        self.write(id_frame(position))
        self.last_id = position

    def close(self) -> None:
        self.closed = True
        self.signal.set()
