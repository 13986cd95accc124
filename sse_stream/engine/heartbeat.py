"""One timer for all streams: keepalives where silent, and token expiry.

No stream has a timer of its own. A few times per heartbeat interval the
timer walks the open streams: a stream that wrote nothing for a whole
interval gets a keepalive (with its new position when live events passed it
by), and a stream whose token expires gets `sse.token-expiring` once, then
ends at the token's exp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Protocol

from ..core.events import Position
from ..core.settings import Settings
from ..core.wire import keepalive_frame, token_expiring_frame
from .subscription import Subscription

log = logging.getLogger(__name__)


class Streams(Protocol):
    """What the heartbeat reads of the hub: its open streams and positions."""

    settings: Settings

    @property
    def subscriptions(self) -> Collection[Subscription]:
        """The open streams."""

    @property
    def newest(self) -> Position:
        """The newest position the shared read has seen."""

    @property
    def watermark(self) -> Position:
        """Every event up to here has been handed to every live stream."""


class Heartbeat:
    def __init__(self, hub: Streams) -> None:
        self.hub = hub

    async def run(self) -> None:
        settings = self.hub.settings
        interval = settings.heartbeat
        # At most a second per tick: a token's expiry is honoured within it.
        tick = max(0.02, min(interval / 4, 1.0))
        while True:
            await asyncio.sleep(tick)
            try:
                self.beat(time.monotonic() - (interval - tick), time.time(),
                          settings.token_expiry_margin)
            except Exception:
                log.exception("heartbeat failed")

    def beat(self, silent_since: float, now: float, margin: float) -> None:
        hub = self.hub
        for subscription in list(hub.subscriptions):
            if subscription.response.is_closing():
                subscription.close()
            elif subscription.expires_at is not None and subscription.expires_at - margin <= now:
                self.expire(subscription, now)
            elif subscription.last_write <= silent_since:
                if subscription.joined and hub.newest > subscription.last_id:
                    # Events passed that it did not match: move its position.
                    subscription.last_id = hub.watermark
                    subscription.write(keepalive_frame(hub.watermark))
                else:
                    subscription.write(keepalive_frame())

    @staticmethod
    def expire(subscription: Subscription, now: float) -> None:
        """Warn once before the token's exp, then end the stream at exp.

        The warning carries the last position written, so a client that
        reconnects with a fresh token and that position misses nothing.
        """
        expires_at = subscription.expires_at
        assert expires_at is not None
        if now >= expires_at:
            subscription.close()
        elif not subscription.expiry_warned:
            subscription.expiry_warned = True
            subscription.write(token_expiring_frame(subscription.last_id, expires_at))
