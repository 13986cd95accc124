"""Webhooks: what one is, how its requests are signed, and where they may go.

A webhook is a durable subscription with a cursor kept in the database
(sql/0005_webhooks.sql): the deliverer (deliverer.py) POSTs the events after
the cursor that match its streams, types and data filters, as
`{"events": [envelope, ...]}`, signed as Standard Webhooks does.

Pure code, but for resolving host names: the SSRF guard refuses targets that
resolve to loopback, private, link-local, multicast or other non-public
addresses, when a webhook is created (`AddressGuard.check_url`) and again at
every connection (`GuardedResolver`, and `AddressGuard.check_host` for
addresses written in the URL, which aiohttp does not resolve), since a
name may point elsewhere by then.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from .auth import parse_where
from .errors import Refusal
from .events import ORIGIN, Position, parse_position
from .filters import DataFilter
from .patterns import parse_pattern, parse_type_filter
from .subscription import Selector

STATES = ("active", "paused", "disabled")
MAX_URL = 2048
MAX_STREAMS = 50
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
RESOLVE_TIMEOUT = 5.0  # seconds to resolve a URL's host at creation
_FIELDS = {"url", "streams", "type", "where", "start"}


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def time_text(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with "Z", as the envelope writes times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def position_text(position: Position) -> str:
    """A cursor as a client may send it back: "0" for the origin."""
    return "0" if position == ORIGIN else position.encode()


def selector_of(streams: Sequence[str], types: Sequence[str] | None,
                filters: Sequence[str]) -> Selector:
    """The selector of a webhook's streams, types and data filters (the
    syntax of a subscription); raises Refusal naming the field."""
    patterns = {text: parse_pattern(text, "streams") for text in streams}
    terms = parse_where(list(filters), "where")
    return Selector(tuple(patterns.values()), parse_type_filter(list(types or []), "type"),
                    DataFilter(terms) if terms else None)


@dataclass(frozen=True)
class Webhook:
    """One row of sse_stream.webhooks (read as JSON: `to_jsonb(w)`)."""

    id: str
    url: str
    streams: tuple[str, ...]
    types: tuple[str, ...] | None
    filters: tuple[str, ...]
    secret: str
    state: str
    cursor: Position
    pending_events: int | None
    failures: int
    failing_since: datetime | None
    next_attempt_at: datetime
    attempts: int
    delivered: int
    last_attempt_at: datetime | None
    last_status: int | None
    last_latency_ms: float | None
    last_error: str | None
    lease_owner: str | None
    lease_epoch: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, raw: str | bytes) -> Webhook:
        row = orjson.loads(raw)
        types = row["types"]
        return cls(
            row["id"], row["url"], tuple(row["streams"]),
            None if types is None else tuple(types), tuple(row["filters"]), row["secret"],
            row["state"], Position(int(row["cursor_xid"]), row["cursor_id"]),
            row["pending_events"], row["failures"], _time(row["failing_since"]),
            datetime.fromisoformat(row["next_attempt_at"]), row["attempts"], row["delivered"],
            _time(row["last_attempt_at"]), row["last_status"], row["last_latency_ms"],
            row["last_error"], row["lease_owner"], row["lease_epoch"], row["created_by"],
            datetime.fromisoformat(row["created_at"]), datetime.fromisoformat(row["updated_at"]))

    def selector(self) -> Selector:
        return selector_of(self.streams, self.types, self.filters)

    def view(self) -> dict[str, Any]:
        """What GET /webhooks shows (never the secret)."""
        last = None
        if self.last_attempt_at is not None:
            last = {"at": time_text(self.last_attempt_at), "status": self.last_status,
                    "latency_ms": self.last_latency_ms, "error": self.last_error}
        return {
            "id": self.id, "url": self.url, "streams": list(self.streams),
            "type": None if self.types is None else list(self.types),
            "where": list(self.filters), "state": self.state,
            "cursor": position_text(self.cursor), "delivered_events": self.delivered,
            "attempts": self.attempts, "failures": self.failures,
            "failing_since": time_text(self.failing_since), "last_attempt": last,
            "next_attempt_at": time_text(self.next_attempt_at) if self.state == "active"
            else None,
            "created_by": self.created_by, "created_at": time_text(self.created_at),
            "updated_at": time_text(self.updated_at)}


@dataclass(frozen=True)
class WebhookSpec:
    """A webhook to create, checked: what POST /webhooks and `webhooks add` take."""

    url: str
    streams: tuple[str, ...]
    types: tuple[str, ...] | None
    filters: tuple[str, ...]
    start: str  # "now", "0" or a position

    @classmethod
    def parse(cls, body: Any) -> WebhookSpec:
        """From a request body; raises Refusal naming the offending field."""
        if not isinstance(body, dict):
            raise Refusal("body", 'expected a JSON object {"url", "streams", "type"?, '
                          '"where"?, "start"?}')
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise Refusal(unknown[0][:60], "unknown field")
        streams = body.get("streams")
        if isinstance(streams, str):
            streams = streams.split(",")
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise Refusal("streams", "a list of stream names or patterns (or one, or "
                          "a comma list) is required")
        if not 1 <= len(streams) <= MAX_STREAMS:
            raise Refusal("streams", f"1 to {MAX_STREAMS} streams or patterns")
        types = body.get("type")
        if isinstance(types, str):
            types = [types]
        if types is not None and (not isinstance(types, list) or not types
                                  or not all(isinstance(t, str) for t in types)):
            raise Refusal("type", "a list of types or type globs (order.*)")
        filters = body.get("where", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise Refusal("where", "a list of data filters such as 'data.customer_id=eq.42'")
        start = body.get("start", "now")
        if not isinstance(start, str):
            raise Refusal("start", 'expected "now", "0" or a position')
        if start != "now":
            parse_position(start, "start")
        spec = cls(check_url(body.get("url")), tuple(dict.fromkeys(streams)),
                   None if types is None else tuple(types), tuple(filters), start.strip())
        selector_of(spec.streams, spec.types, spec.filters)  # every field parses
        return spec


def check_url(value: Any, param: str = "url") -> str:
    """The target URL, normalised: http(s), a host, no credentials or fragment."""
    if not isinstance(value, str) or not value:
        raise Refusal(param, "an http:// or https:// URL is required")
    if len(value) > MAX_URL or not value.isprintable() or any(c.isspace() for c in value):
        raise Refusal(param, f"at most {MAX_URL} printable characters, no spaces")
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise Refusal(param, "not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Refusal(param, "an http:// or https:// URL with a host is required")
    if url.user is not None or url.password is not None:
        raise Refusal(param, "credentials in the URL are not allowed (they would show in "
                      "GET /webhooks); put a token in the path or query instead")
    if url.fragment:
        raise Refusal(param, "a fragment (#...) is never sent; leave it out")
    return str(url)


# -- signing (Standard Webhooks) ---------------------------------------------------------


def new_secret() -> str:
    """A signing secret: whsec_ and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a whsec_ secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")


def message_id(webhook_id: str, body: bytes) -> str:
    """The webhook-id of a request: a digest of its content, so that a retry
    of the same events carries the same id and a receiver can dedupe by it."""
    digest = hashlib.sha256(webhook_id.encode() + b"\n" + body).digest()
    return "msg_" + base64.b32encode(digest[:20]).decode().lower()


def signed_headers(key: bytes, message: str, timestamp: int, body: bytes) -> dict[str, str]:
    """webhook-id, webhook-timestamp and webhook-signature (v1: HMAC-SHA256 of
    "id.timestamp.body", base64)."""
    mac = hmac.new(key, b"%s.%d.%s" % (message.encode(), timestamp, body), hashlib.sha256)
    return {"webhook-id": message, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()}


def gap_envelope(requested: Position, resumed: Position) -> bytes:
    """The sse.gap control event of a webhook body: events after `requested`
    up to `resumed` were pruned before they were delivered."""
    return (b'{"position":"%s","type":"sse.gap","data":{"requested_after":"%s",'
            b'"resumed_after":"%s"}}' % (resumed.encode().encode(),
                                         requested.encode().encode(),
                                         resumed.encode().encode()))


# -- retries --------------------------------------------------------------------------


def retry_delay(schedule: Sequence[float], failures: int, rng: random.Random) -> float:
    """Seconds before the next attempt after `failures` failures in a row, with
    ±20 % jitter so that webhooks that failed together do not retry together."""
    base = schedule[min(max(failures, 1), len(schedule)) - 1]
    return base * rng.uniform(0.8, 1.2)


# -- the SSRF guard ---------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(address: Address) -> str | None:
    """Why a webhook may not connect to `address` ("loopback", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    for reason in ("loopback", "link_local", "multicast", "private", "unspecified",
                   "reserved"):
        if getattr(address, "is_" + reason):
            return reason.replace("_", "-")
    return None if address.is_global else "not public"


class AddressGuard:
    """Refuses targets on this host or its networks, unless `allow_private`."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def check_host(self, host: str) -> None:
        """Raise OSError for an address literal that is refused (a name passes:
        the resolver checks it)."""
        if self.allow_private:
            return
        try:
            address = ipaddress.ip_address(host.strip("[]").split("%")[0])
        except ValueError:
            return
        reason = refusal(address)
        if reason is not None:
            raise OSError(f"{address} is a {reason} address: refused (webhooks_allow_private)")

    async def check_url(self, url: str, param: str = "url") -> None:
        """At creation: refuse a URL whose host is, or resolves to, a refused
        address (every address it resolves to is checked)."""
        if self.allow_private:
            return
        parsed = URL(url)
        assert parsed.host is not None
        try:
            self.check_host(parsed.host)
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                found = await asyncio.get_running_loop().getaddrinfo(
                    parsed.host, parsed.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise Refusal(param, f"{parsed.host} did not resolve within "
                          f"{RESOLVE_TIMEOUT:g} s") from None
        except OSError as error:
            raise Refusal(param, str(error) if "refused" in str(error) else
                          f"{parsed.host} does not resolve: {error}") from None
        for *_, sockaddr in found:
            reason = refusal(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
            if reason is not None:
                raise Refusal(param, f"{parsed.host} resolves to {sockaddr[0]}, a {reason} "
                              "address: refused unless the server runs with "
                              "--webhooks-allow-private")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to a refused address:
    the check at connect time, on the address the connection will use."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if not self.guard.allow_private:
            for item in found:
                reason = refusal(ipaddress.ip_address(item["host"].split("%")[0]))
                if reason is not None:
                    raise OSError(f"{host} resolves to {item['host']}, a {reason} address: "
                                  "refused (webhooks_allow_private)")
        return found

    async def close(self) -> None:
        await self._resolver.close()

