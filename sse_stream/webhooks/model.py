"""Webhooks: what one is, how its requests are signed, and where they may go.

A webhook is a durable subscription with a cursor kept in the database
(sql/0005_webhooks.sql): the deliverer (deliverer.py) POSTs the events after
the cursor that match its streams, types and data filters, as
`{"events": [envelope, ...]}`, signed as Standard Webhooks does.

Pure code. Where a webhook may connect (the SSRF guard) is the rule of
addresses.py, re-exported here: checked when a webhook is created
(`AddressGuard.check_url`) and again at every connection (sender.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from yarl import URL

from ..access.auth import Coverage, parse_where
from ..core.errors import Refusal
from ..core.events import ORIGIN, Position, parse_position
from ..core.filters import DataFilter
from ..core.patterns import parse_pattern, parse_type_filter
from ..core.selector import Selector
from .addresses import AddressGuard as AddressGuard  # re-exported: the SSRF guard
from .addresses import refusal as refusal

STATES = ("active", "paused", "disabled")
MAX_URL = 2048
MAX_STREAMS = 50
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
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


GrantWhere = tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # ((streams, where), ...)


def selector_of(streams: Sequence[str], types: Sequence[str] | None,
                filters: Sequence[str], grant_where: GrantWhere | None = None) -> Selector:
    """The selector of a webhook's streams, types and data filters (the
    syntax of a subscription), bound by the filters of its owner's grants
    (`grant_where`, see `grant_where_of`; None: unbound); raises Refusal
    naming the field."""
    patterns = {text: parse_pattern(text, "streams") for text in streams}
    terms = parse_where(list(filters), "where")
    selector = Selector(tuple(patterns.values()), parse_type_filter(list(types or []), "type"),
                        DataFilter(terms) if terms else None)
    if grant_where is None:
        return selector
    coverage = []
    for text in patterns:
        alternatives = [parse_where(list(where), "grant_where")
                        for covered, where in grant_where if text in covered]
        if not alternatives:
            raise Refusal("grant_where", f"no grant covers the stream {text!r}")
        coverage.append(alternatives)
    return selector.scoped(coverage)


def grant_where_of(streams: Sequence[str], coverage: Coverage) -> GrantWhere:
    """What a webhook keeps of the grants that cover its streams
    (Grant.cover): for each set of filters, the streams it binds. A stream
    that an unfiltered grant covers is bound by none; one that several
    filtered grants cover is listed with each (their union applies)."""
    bound: dict[tuple[str, ...], list[str]] = {}
    for text, scopes in zip(streams, coverage):
        alternatives = [()] if any(not scope.texts for scope in scopes) else \
            list(dict.fromkeys(scope.texts for scope in scopes))
        for where in alternatives:
            bound.setdefault(where, []).append(text)
    return tuple((tuple(covered), where) for where, covered in bound.items())


def grant_where_json(grant_where: GrantWhere | None) -> list[dict[str, list[str]]] | None:
    """The stored (and shown) form: [{"streams": [...], "where": [...]}, ...]."""
    if grant_where is None:
        return None
    return [{"streams": list(covered), "where": list(where)} for covered, where in grant_where]


def _grant_where(value: Any) -> GrantWhere | None:
    if value is None:
        return None
    return tuple((tuple(entry["streams"]), tuple(entry["where"])) for entry in value)


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
    created_by_issuer: str | None = None
    grant_where: GrantWhere | None = None  # None: unbound (made by SQL, the CLI or an admin)
    progressed_at: datetime | None = None  # when the cursor last moved forward

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
            datetime.fromisoformat(row["created_at"]), datetime.fromisoformat(row["updated_at"]),
            row.get("created_by_issuer"), _grant_where(row.get("grant_where")),
            _time(row.get("progressed_at")))

    def selector(self) -> Selector:
        return selector_of(self.streams, self.types, self.filters, self.grant_where)

    def owned_by(self, subject: str | None, issuer: str | None) -> bool:
        return subject is not None and self.created_by == subject and \
            self.created_by_issuer == issuer

    def page_key(self) -> str:
        """Where a listing goes on after this webhook (GET /webhooks' next_after):
        opaque to clients, its creation time in microseconds and its id."""
        micros = (self.created_at - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}_{self.id}"

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
            "grant_where": grant_where_json(self.grant_where),
            "created_by": self.created_by, "created_by_issuer": self.created_by_issuer,
            "progressed_at": time_text(self.progressed_at),
            "created_at": time_text(self.created_at),
            "updated_at": time_text(self.updated_at)}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_PAGE = (datetime(1, 1, 1, tzinfo=UTC), "00000000-0000-0000-0000-000000000000")


def parse_page_key(text: str, param: str = "after") -> tuple[datetime, str]:
    """(created_at, id) of a `page_key`; raises Refusal naming `param`."""
    micros, _, id_ = text.partition("_")
    try:
        if not micros.isascii() or not micros.lstrip("-").isdigit() or len(micros) > 20:
            raise ValueError
        return _EPOCH + timedelta(microseconds=int(micros)), str(uuid.UUID(id_))
    except (ValueError, OverflowError):
        raise Refusal(param, "not a position in this listing: pass the next_after of the "
                      "previous page") from None


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
