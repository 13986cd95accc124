"""The HTTP side of webhook delivery: one signed POST, bounded every way.

One aiohttp session per process, shared by every webhook (connections are
kept alive per host). Each request has a connect timeout and a total one,
follows no redirect, and reads at most RESPONSE_CAP bytes of a response
(and none of a 2xx). The SSRF guard (addresses.py) runs at every attempt,
before any connection: a host written as an address, in any form, is checked
and rewritten to its canonical text (aiohttp connects to it without
resolving, and versions differ on the odd forms), and the resolver refuses
names whose addresses are refused.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..core.settings import Settings
from ..core.stats import LAG_BUCKETS, Buckets
from .addresses import AddressGuard
from .model import signed_headers
from .store import Outcome

RESPONSE_CAP = 64 * 1024  # bytes of a response read at most
MAX_ERROR = 300  # characters of an error kept
USER_AGENT = "sse-stream-webhooks"


class GuardedResolver(AbstractResolver):
    """A resolver (aiohttp's own unless another is given) that refuses a name
    resolving to a refused address: the check at connect time, on the very
    addresses the connection will use."""

    def __init__(self, guard: AddressGuard, resolver: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        for item in found:
            self.guard.check_resolved(host, item["host"])
        return found

    async def close(self) -> None:
        await self._resolver.close()


class Sender:
    def __init__(self, settings: Settings, guard: AddressGuard,
                 resolver: AbstractResolver | None = None) -> None:
        self.settings = settings
        self.guard = guard
        self.resolver = resolver  # under the guard; None: aiohttp's own
        self.latency = Buckets(LAG_BUCKETS)  # request start to response, seconds
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Make the session (in the running loop)."""
        settings = self.settings
        connector = aiohttp.TCPConnector(limit=settings.webhooks_concurrency,
                                         resolver=GuardedResolver(self.guard,
                                                                  self.resolver))
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=settings.webhooks_timeout,
                                          connect=settings.webhooks_connect_timeout),
            headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, key: bytes, body: bytes, message: str,
                   events: int) -> Outcome:
        """POST `body` to `url`, signed with `key` as webhook-id `message`;
        never raises for what the network or the receiver does."""
        assert self._session is not None, "the sender is not open"
        timeout = self.settings.webhooks_timeout
        headers = {"Content-Type": "application/json",
                   **signed_headers(key, message, int(time.time()), body)}
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            # Refused here (OSError), the attempt fails without connecting.
            target = self.guard.target(url)
            # The client's total timeout ends the request; this bound is what
            # the lease relies on, whatever happens inside the client.
            async with asyncio.timeout(timeout + 0.5):
                async with self._session.post(target, data=body, headers=headers,
                                              allow_redirects=False) as response:
                    status = response.status
                    text = b""
                    if not 200 <= status < 300:
                        text = await response.content.read(RESPONSE_CAP)
            if 300 <= status < 400:
                error = f"HTTP {status}: redirects are not followed"
            elif not 200 <= status < 300:
                summary = text[:200].decode(errors="replace")
                error = f"HTTP {status}" + (f": {summary}" if summary.strip() else "")
        except TimeoutError:
            error = f"no response within {timeout:g} s"
        except aiohttp.ClientConnectorError as failure:
            error = f"cannot connect to {failure.host}:{failure.port}: {failure.os_error}"
        except (aiohttp.ClientError, OSError, ValueError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        latency = time.monotonic() - started
        self.latency.observe(latency)
        if error is not None:
            error = "".join(c if c.isprintable() else " " for c in error)[:MAX_ERROR]
        return Outcome(error is None, status, round(latency * 1000, 3), error, events, message)
