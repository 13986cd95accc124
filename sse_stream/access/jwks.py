"""The JSON Web Key Set of `--jwks-url`: signing keys by `kid`, rotated with no restart.

One KeySet per process, started and stopped by the app lifecycle. It fetches
the set at start, then every `refresh` seconds (after a failed fetch, every
`min_refresh` seconds), and when a token names a `kid` it does not hold, at
most once per `min_refresh` seconds: a burst of tokens with unknown kids
costs the JWKS server one request, and every token of the burst waits for
that one fetch (`min_refresh` 0: no rate limit). A fetch is bounded in time (`timeout`) and size
(`max_bytes`) and runs as a task of its own, so a request that gives up
waiting never cancels it for the others.

A fetch that fails (network, HTTP status, size, JSON, no usable key) leaves
the last good keys in force; `status()` says since when they are stale, and
/readyz reports it. Only RS256/ES256 signing keys count (of the configured
`algorithms`); symmetric (`oct`), encryption (`use: enc`) and unparsable keys
are left out, so no JWKS can make the server accept HS256 or `none`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from jwt import PyJWK, PyJWKSet

from ..core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0  # seconds for one fetch, connect to last byte
MAX_BYTES = 1 << 20  # a key set is a few kilobytes; refuse anything near this
RETRY_FLOOR = 1.0  # seconds at least between retries of a failing fetch (jwks_min_refresh 0)


class KeySetError(Exception):
    """A fetched document that is not a usable key set."""


def parse_key_set(document: Any, algorithms: tuple[str, ...]) -> tuple[PyJWK, ...]:
    """The signing keys of `algorithms` in a JWKS document; raises KeySetError."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError('not a JSON Web Key Set: expected {"keys": [...]}')
    try:
        # PyJWKSet skips the keys it cannot use; it refuses a set with none.
        found = PyJWKSet.from_dict(document)
    except Exception as error:
        raise KeySetError(str(error)) from None
    keys = tuple(key for key in found.keys
                 if key.algorithm_name in algorithms and key.public_key_use in (None, "sig"))
    if not keys:
        raise KeySetError(f"the set holds no {'/'.join(algorithms)} signing key")
    return keys


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class KeySet:
    """The keys of one JWKS URL, cached and refreshed (see the module docstring)."""

    def __init__(self, url: str, algorithms: tuple[str, ...], refresh: float = 300.0,
                 min_refresh: float = 30.0, timeout: float = FETCH_TIMEOUT,
                 max_bytes: int = MAX_BYTES) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url {url[:80]!r} must be an http:// or https:// URL")
        if not (refresh > 0 and min_refresh >= 0):
            raise ValueError("jwks_refresh must be above 0 and jwks_min_refresh 0 or above")
        self.url = url
        self.algorithms = algorithms
        self.refresh_interval = refresh
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.fetches = 0  # attempts so far
        self._keys: tuple[PyJWK, ...] = ()
        self._by_kid: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # wall clock of the last good fetch
        self._failing_since: float | None = None  # of the first failure after it
        self._error: str | None = None
        self._last_attempt = -math.inf  # monotonic
        self._fetch: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def ready(self) -> bool:
        """True once a fetch has succeeded: there are keys to verify with."""
        return self._fetched_at is not None

    def status(self) -> dict[str, Any]:
        """What /readyz shows: how many keys, from when, and whether fetching fails."""
        return {"keys": len(self._keys), "fetched_at": _timestamp(self._fetched_at),
                "stale": self._error is not None,
                "failing_since": _timestamp(self._failing_since), "error": self._error}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
        self._task = asyncio.create_task(self._run(), name="sse-stream jwks")

    async def stop(self) -> None:
        for task in (self._task, self._fetch):
            if task is not None:
                await cancel_and_wait(task)
        if self._session is not None:
            await self._session.close()

    async def find(self, kid: str | None) -> PyJWK | None:
        """The key a token's `kid` names (a token without one: the only key).

        A kid the set does not hold waits for a fetch under way, or starts
        one unless the last began less than `min_refresh` seconds ago: keys
        rotated at the issuer are found, and unknown kids cannot make this
        server hammer the JWKS.
        """
        key = self._lookup(kid)
        if key is None and (self._fetching or
                            time.monotonic() - self._last_attempt >= self.min_refresh):
            await self.refresh()
            key = self._lookup(kid)
        return key

    def missing(self, kid: str | None) -> str:
        """Why no key was found for `kid`: the detail of the 401."""
        if not self.ready:
            return "the token cannot be verified yet: the JWKS has not been fetched"
        if kid is None:
            return "the token has no kid header, and the JWKS holds more than one key"
        return f"the token's kid {kid[:64]!r} is not in the JWKS"

    async def refresh(self) -> None:
        """Fetch the set now, or join the fetch under way, and wait (a bounded
        time) for it to end."""
        fetch = self._fetch
        if fetch is None or fetch.done():
            self._last_attempt = time.monotonic()
            fetch = self._fetch = asyncio.create_task(self._download(),
                                                      name="sse-stream jwks fetch")
        # asyncio.wait neither raises on timeout nor cancels the fetch when
        # this caller is cancelled: other callers may be waiting for it.
        await asyncio.wait({fetch}, timeout=self.timeout + 1.0)

    @property
    def _fetching(self) -> bool:
        return self._fetch is not None and not self._fetch.done()

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return self._by_kid.get(kid)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            if self._error is None:
                await asyncio.sleep(self.refresh_interval)
            else:
                # Failing: retry sooner, but never in a tight loop.
                await asyncio.sleep(min(self.refresh_interval,
                                        max(self.min_refresh, RETRY_FLOOR)))

    async def _download(self) -> None:
        self.fetches += 1
        try:
            keys = await self._get()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._error = _describe(error)
            if self._failing_since is None:
                self._failing_since = time.time()
            kept = (f"keeping the {len(self._keys)} key(s) fetched at "
                    f"{_timestamp(self._fetched_at)}" if self.ready else "no keys yet")
            log.warning("JWKS fetch from %s failed: %s; %s", self.url, self._error, kept)
            return
        before = set(self._by_kid)
        self._keys = keys
        self._by_kid = {key.key_id: key for key in reversed(keys) if key.key_id is not None}
        self._fetched_at = time.time()
        self._failing_since = self._error = None
        if set(self._by_kid) != before:
            log.info("JWKS from %s: %d key(s), kids %s", self.url, len(keys),
                     ", ".join(sorted(self._by_kid)) or "none")

    async def _get(self) -> tuple[PyJWK, ...]:
        assert self._session is not None, "KeySet.start() first"
        async with self._session.get(self.url, timeout=aiohttp.ClientTimeout(
                total=self.timeout)) as response:
            if response.status != 200:
                raise KeySetError(f"HTTP {response.status}")
            if response.content_length is not None and response.content_length > self.max_bytes:
                raise KeySetError(f"{response.content_length} bytes, more than {self.max_bytes}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > self.max_bytes:
                    raise KeySetError(f"more than {self.max_bytes} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise KeySetError("the body is not JSON") from None
        return parse_key_set(document, self.algorithms)


def _describe(error: Exception) -> str:
    if isinstance(error, KeySetError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"[:200]
