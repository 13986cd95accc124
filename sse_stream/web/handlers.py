"""aiohttp handlers: parse and check the request, then hand over to the hub.

Every refusal is a Refusal (or an HTTP error) turned into one
application/problem+json response (problems.py) by `problem_middleware`,
or for a stream by `subscribe` itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from ..access.auth import Grant, Unauthorized, allows, find_token
from ..access.policy import AccessPolicy, Address, OpenStreams, client_group
from ..core.batch import parse_body, validate_idempotency_key
from ..core.errors import DatabaseUnavailable, Overloaded, Refusal
from ..core.events import ORIGIN, Position, parse_position
from ..core.filter_syntax import parse_data_filters
from ..core.patterns import (
    StreamPattern,
    parse_pattern,
    parse_pattern_list,
    parse_type_filter,
    validate_stream_name,
)
from ..core.selector import Selector
from ..core.settings import Settings
from ..core.wire import gap_json, id_frame, retry_frame
from ..db.listener import Listener
from ..db.store import EventStore
from ..engine.hub import Hub
from ..engine.subscription import Subscription
from .problems import answer
from .response import SseResponse

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", EventStore)
HUB = web.AppKey("hub", Hub)
LISTENER: web.AppKey[Listener | None] = web.AppKey("listener")
REGISTRY = web.AppKey("registry", CollectorRegistry)
ACCESS = web.AppKey("access", AccessPolicy)


OPEN_STREAMS = web.AppKey("open_streams", OpenStreams)

MAX_BODY = 1 << 20
PAGE_DEFAULT, PAGE_MAX = 100, 1000
_SUBSCRIBE_PARAMS = {"type", "last_event_id", "live", "or", "format", "access_token"}
_PAGE_PARAMS = {"type", "after", "limit", "or", "format", "access_token"}
FORMATS = ("envelope", "cloudevents")


@web.middleware
def problem_middleware(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> Awaitable[web.StreamResponse]:
    """Every refusal as one problem document (problems.answer).

    A stream's handler gets the request directly, not under a coroutine of
    this middleware: that frame would stay under every open stream for all
    its life. `subscribe` answers its refusals itself, in the same way.
    """
    if handler is subscribe:
        return subscribe(request)
    return _answering(request, handler)


async def _answering(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    try:
        _check_query(request)
        return await handler(request)
    except Exception as error:
        return answer(request, error)


def _check_query(request: web.Request) -> None:
    limit = request.app[SETTINGS].max_query
    if len(request.query_string) > limit:
        raise Refusal("query", f"the query string is longer than {limit} bytes", status=414)


def client_address(request: web.Request) -> Address | None:
    """The client's address (forwarding headers believed only from trusted proxies)."""
    return request.app[ACCESS].client_address(request.remote,
                                              request.headers.getall("X-Forwarded-For", []),
                                              request.headers.getall("Forwarded", []))


def _check_loopback(request: web.Request) -> None:
    """Protected mode: with no token key configured, only loopback clients, asking
    for a loopback name."""
    request.app[ACCESS].check_loopback(request.remote, request.headers.get("Host"),
                                       request.headers.getall("X-Forwarded-For", []),
                                       request.headers.getall("Forwarded", []))


async def authorize(request: web.Request, action: Literal["subscribe", "publish"],
                    patterns: tuple[StreamPattern, ...], param: str) -> Grant | None:
    """Check that the request may `action` every one of `patterns`.

    Returns the token's grant (its expiry ends a stream), or None when no
    token was needed: anonymous patterns, or protected mode on loopback.
    """
    policy = request.app[ACCESS]
    anonymous = policy.anonymous if action == "subscribe" else ()
    if policy.verifier is None:
        if not (anonymous and allows(anonymous, patterns)):
            _check_loopback(request)
        return None
    found = find_token(request.headers, request.query, request.cookies, policy.cookie)
    if found is None:
        if anonymous and allows(anonymous, patterns):
            return None
        raise Unauthorized("Authorization", f"a token is needed to {action}: send "
                           "'Authorization: Bearer <token>', access_token, or the "
                           f"{policy.cookie} cookie")
    token, where = found
    if action == "publish" and where == policy.cookie:
        # A browser sends cookies with a cross-site form or fetch: a cookie
        # alone must never be enough to write events.
        raise Unauthorized(where, "a token from the cookie does not authorize publishing: "
                           "send it as 'Authorization: Bearer <token>'")
    grant = await policy.verifier.verify(token, where)
    granted = tuple(s.pattern for s in grant.subscribe) if action == "subscribe" \
        else grant.publish
    if not allows((*granted, *anonymous), patterns):
        refused = next(p.text for p in patterns if not allows((*granted, *anonymous), [p]))
        raise Refusal(param, f"the token does not allow to {action} {refused!r}",
                      status=403)
    return grant


def _check_params(request: web.Request, allowed: set[str]) -> None:
    for key in request.query:
        if key not in allowed and not key.startswith("data."):
            raise Refusal(key, "unknown query parameter")


def parse_selector(request: web.Request) -> Selector:
    patterns = parse_pattern_list(request.match_info["streams"], "streams")
    types = parse_type_filter(request.query.getall("type", []))
    data = parse_data_filters(list(request.query.items()))
    return Selector(patterns, types, data)


async def authorized_selector(request: web.Request) -> tuple[Selector, Grant | None]:
    """The request's selector, bound to the data filters its token grants with
    (`where`), and the token's grant (None: no token was needed).

    Each pattern gets the filters of the grants that cover it (Grant.cover),
    ANDed with the request's own in the selector, so live matching, replay,
    `live=false` and pages all apply them, and no request parameter can
    widen them.
    """
    selector = parse_selector(request)
    grant = await authorize(request, "subscribe", selector.patterns, "streams")
    if grant is not None:
        coverage = grant.cover(selector.patterns, request.app[ACCESS].anonymous, "streams")
        selector = selector.scoped([[scope.where for scope in scopes] for scopes in coverage])
    return selector, grant


def _start_position(request: web.Request) -> Position | None:
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        return parse_position(header, "Last-Event-ID")
    value = request.query.get("last_event_id")
    if value is None:
        return None
    return parse_position(value, "last_event_id")


def _cloudevents(request: web.Request) -> bool:
    value = request.query.get("format", "envelope")
    if value not in FORMATS:
        raise Refusal("format", "must be envelope or cloudevents")
    return value == "cloudevents"


async def subscribe(request: web.Request) -> web.StreamResponse:
    """GET /streams/{streams}: the SSE stream.

    Called without problem_middleware around it (see there): the refusals,
    all before the stream starts, are answered here. This frame lives as
    long as the stream, so it holds only what the stream needs.
    """
    try:
        _check_query(request)
        subscription, response, group, live, replay = await _open_stream(request)
    except Exception as error:
        return answer(request, error)
    try:
        try:
            await request.app[HUB].serve(subscription, live=live, replay=replay)
        except (ConnectionError, DatabaseUnavailable):
            pass
        except Exception:
            # Headers are sent: no problem document can follow. The stream
            # ends; the client reconnects with its Last-Event-ID.
            log.exception("stream failed peer=%s streams=%s", subscription.peer,
                          subscription.streams)
        finally:
            log.info("stream closed peer=%s streams=%s events=%d bytes=%d seconds=%.3f",
                     subscription.peer, subscription.streams, subscription.events_sent,
                     subscription.bytes_sent, time.monotonic() - subscription.opened)
        await response.finish()
        return response
    finally:
        request.app[OPEN_STREAMS].close(group)


async def _open_stream(request: web.Request
                       ) -> tuple[Subscription, SseResponse, str, bool, bool]:
    """Check the request, count it against its client's limit and start the
    stream: its subscription and response, the client's group, whether to
    follow live events and whether to replay from a position."""
    _check_params(request, _SUBSCRIBE_PARAMS)
    selector, grant = await authorized_selector(request)
    start = _start_position(request)
    cloudevents = _cloudevents(request)
    live = request.query.get("live", "true")
    if live not in ("true", "false"):
        raise Refusal("live", "must be true or false")
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    if hub.closing:
        raise Overloaded("the server is shutting down")

    client, group = _client_and_group(request)
    open_streams = request.app[OPEN_STREAMS]
    open_streams.open(group, settings)
    try:
        preamble = retry_frame(settings.retry)
        if start is None:
            # New events only: those committed before this request stay out,
            # and the position is fixed before the headers go out, so a
            # client that publishes once the stream is open gets its event.
            # The bare id line lets a client that reconnects before its
            # first event resume from here instead of starting afresh.
            here = await hub.fresh_position()
            preamble += id_frame(here)
        response = SseResponse()
        await response.prepare(request)
        await response.start(preamble)
        subscription = Subscription(selector, response, here if start is None else start,
                                    client, cloudevents=cloudevents,
                                    expires_at=grant.expires_at if grant else None)
    except BaseException:
        open_streams.close(group)
        raise
    # One line at open and one at close, key=value (logfmt) for log pipelines.
    log.info("stream opened peer=%s streams=%s start=%s live=%s", subscription.peer,
             subscription.streams, start.encode() if start is not None else "live", live)
    return subscription, response, group, live == "true", start is not None


def _client_and_group(request: web.Request) -> tuple[str, str]:
    """The client's address (for logs) and what the per-client limit counts it
    by: the same string object when they are equal (an IPv4 client)."""
    address = client_address(request)
    if address is None:
        client = request.remote or ""
        return client, client
    client, group = str(address), client_group(address)
    return client, client if group == client else group


def page_limit(request: web.Request) -> int:
    """The `limit` of a page: PAGE_DEFAULT, or 1 to PAGE_MAX."""
    try:
        limit = int(request.query.get("limit", PAGE_DEFAULT))
    except ValueError:
        raise Refusal("limit", "must be a whole number") from None
    if not 1 <= limit <= PAGE_MAX:
        raise Refusal("limit", f"must be between 1 and {PAGE_MAX}")
    return limit


async def read_page(request: web.Request) -> web.Response:
    """GET /streams/{streams}/events: one JSON page of events."""
    _check_params(request, _PAGE_PARAMS)
    selector, _ = await authorized_selector(request)
    after = parse_position(request.query.get("after", "0"), "after")
    cloudevents = _cloudevents(request)
    limit = page_limit(request)
    store = request.app[STORE]
    selector_sql = selector.to_sql()
    # A bounded wait for a read connection (else 503): a page is one short
    # statement, and heavy readers never take the live path's capacity.
    wait = request.app[SETTINGS].capacity_wait
    page = await store.read_selected(after, limit, selector_sql, sse=False,
                                     cloudevents=cloudevents, wait=wait,
                                     replica=store.replica_dsn is not None)
    if not page.full and store.replica_dsn is not None:
        # The replica has nothing more: the live source may (a lagging
        # replica), and knows whether `after` was ever handed out.
        page = await store.read_selected(after, limit, selector_sql, sse=False,
                                         cloudevents=cloudevents, wait=wait)
    if page.behind:
        # The live source (a standby) has not replayed `after` yet, and the
        # primary handed it out (the client read it elsewhere): wait for the
        # standby a bounded time, probing its replay, then 503.
        settings = request.app[SETTINGS]
        deadline = time.monotonic() + settings.standby_wait
        while page.behind and time.monotonic() < deadline:
            await asyncio.sleep(settings.standby_poll)
            page = await store.read_selected(after, limit, selector_sql, sse=False,
                                             cloudevents=cloudevents, wait=wait)
        if page.behind:
            raise Refusal("after", "this server's database has not replayed this position "
                          "yet (a lagging standby); retry shortly", status=503,
                          headers={"Retry-After": "1"})
    if page.future:
        raise Refusal("after", "this position is beyond anything this database has "
                      "handed out (a restored or replaced cluster?); start again from "
                      f"0 or from {page.covered.encode()}, the current end", status=409)
    has_more = page.full
    next_after = page.covered
    gap = b""
    if page.pruned is not None and ORIGIN < after < page.pruned:
        # The page form of sse.gap: events after `after` were pruned.
        gap = b',"gap":%s' % gap_json(after, page.pruned)
    body = b'{"events":[%s],"next_after":"%s","has_more":%s%s}' % (
        page.body,
        next_after.encode().encode(),
        b"true" if has_more else b"false", gap)
    return web.Response(body=body, content_type="application/json")


async def publish(request: web.Request) -> web.Response:
    """POST /streams/{stream}/events: one event or an array, one transaction.

    With an Idempotency-Key header, a retry of the same request (same stream,
    same events) returns the first request's ids, 201 again, with
    `Idempotent-Replayed: true`, and writes nothing; the same key with other
    events is a 422. Keys are scoped to the stream and the token's subject:
    another subject's key is another key, which it can neither claim nor probe.
    """
    stream = validate_stream_name(request.match_info["stream"], "stream")
    grant = await authorize(request, "publish", (parse_pattern(stream, "stream"),), "stream")
    check_json(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        validate_idempotency_key(key)
    body = await read_body(request)
    batch = parse_body(stream, body, fingerprint=key is not None)
    subject = (grant.subject if grant is not None else None) or ""
    published = await request.app[STORE].publish(batch, key, subject)
    headers = {}
    if published.replayed:
        if published.fingerprint != batch.fingerprint:
            raise Refusal("Idempotency-Key", "this key was used for another request "
                          "(other events); use a new key", status=422)
        headers["Idempotent-Replayed"] = "true"
    return web.Response(status=201, body=b'{"ids":%s}' % orjson.dumps(published.ids),
                        content_type="application/json", headers=headers)


def check_json(request: web.Request) -> None:
    """A publish body must be declared JSON (parameters such as charset aside).

    A cross-site form or `no-cors` fetch can only send text/plain, form or
    multipart bodies: refusing them before reading a byte keeps any page a
    user visits from writing events with that user's cookie or address.
    """
    value = request.headers.get("Content-Type", "")
    if value.partition(";")[0].strip().lower() != "application/json":
        raise Refusal("Content-Type", "the body must be sent as 'Content-Type: "
                      "application/json'", status=415,
                      headers={"Accept-Post": "application/json"})


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refused with a 413 as soon as it passes `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise Refusal("body", f"at most {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    # StreamReader.read(n) returns what has arrived, not n bytes: loop to EOF.
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise Refusal("body", f"at most {limit} bytes", status=413)
    return b"".join(chunks)
