"""aiohttp handlers of /webhooks: create, list, show, change and delete.

Access: a token whose claim grants `"webhooks": [patterns]` covering every
stream of the webhook (sent as `Authorization: Bearer` or `access_token`,
never a cookie: these requests write); without a key configured, protected
mode (loopback only), which acts as an admin.

Tenancy. A webhook is a standing subscription of the token that made it,
and never more: its streams must be covered by the token's `subscribe`
grants too, whose `where` filters are stored with it (`grant_where`) and
bind every delivery. It belongs to the token's subject (`sub`, and `iss`
where set): list, show, change and delete see only the caller's own, unless
the token has `"webhooks_admin": true`. Another owner's webhook, or one the
token's `webhooks` patterns do not cover, answers 404, as an unknown one
does: one tenant cannot probe another's. Refusals are Refusal, turned into
problem+json by handlers.problem_middleware.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from ..access.auth import Grant, Unauthorized, allows, find_token
from ..core.errors import Refusal
from ..core.events import parse_position
from ..core.patterns import parse_pattern
from ..webhooks.addresses import AddressGuard
from ..webhooks.deliverer import Deliverer
from ..webhooks.model import (
    FIRST_PAGE,
    GrantWhere,
    Webhook,
    WebhookSpec,
    grant_where_of,
    new_secret,
    parse_page_key,
)
from ..webhooks.store import WebhookStore
from .handlers import ACCESS, SETTINGS, STORE, check_json, page_limit, read_body

DELIVERER = web.AppKey("deliverer", Deliverer)
MAX_BODY = 64 * 1024
_PATCH_FIELDS = {"paused", "rewind_to"}


async def _grant(request: web.Request) -> Grant | None:
    """The token's grant, which must name webhook patterns (None: protected
    mode, a loopback client)."""
    policy = request.app[ACCESS]
    if policy.verifier is None:
        policy.check_loopback(request.remote, request.headers.get("Host"),
                              request.headers.getall("X-Forwarded-For", []),
                              request.headers.getall("Forwarded", []))
        return None
    found = find_token(request.headers, request.query, request.cookies, policy.cookie)
    if found is None:
        raise Unauthorized("Authorization", "a token is needed to manage webhooks: send "
                           "'Authorization: Bearer <token>'")
    token, where = found
    if where == policy.cookie:
        raise Unauthorized(where, "a token from the cookie does not authorize managing "
                           "webhooks: send it as 'Authorization: Bearer <token>'")
    grant = await policy.verifier.verify(token, where)
    if not grant.webhooks:
        raise Refusal("Authorization", "the token does not allow to manage webhooks "
                      "(its claim has no \"webhooks\" patterns)", status=403)
    if grant.subject is None and not grant.webhooks_admin:
        raise Refusal("Authorization", "a webhook belongs to the subject of the token that "
                      "makes it: the token needs a \"sub\" claim", status=403)
    return grant


def _covers(grant: Grant | None, streams: tuple[str, ...]) -> bool:
    return grant is None or allows(grant.webhooks, [parse_pattern(s) for s in streams])


def _visible(grant: Grant | None, webhook: Webhook) -> bool:
    """The caller's own (or any, for an admin), on streams its token covers."""
    if grant is None:
        return True
    return (grant.webhooks_admin or webhook.owned_by(grant.subject, grant.issuer)) and \
        _covers(grant, webhook.streams)


def _store(request: web.Request) -> WebhookStore:
    # A bounded wait for a connection, as for a page: then 503.
    return WebhookStore(request.app[STORE], request.app[SETTINGS].capacity_wait)


def _id(request: web.Request) -> str:
    text = request.match_info["id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Refusal("id", "no such webhook", status=404) from None


async def _body(request: web.Request) -> Any:
    check_json(request)
    body = await read_body(request, MAX_BODY)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refusal("body", "not JSON") from None


async def _mine(request: web.Request, grant: Grant | None) -> Webhook:
    """The webhook of the path, if the caller may see it (else 404)."""
    webhook = await _store(request).get(_id(request))
    if webhook is None or not _visible(grant, webhook):
        raise Refusal("id", "no such webhook", status=404)
    return webhook


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), headers=headers,
                        content_type="application/json")


def _poke(request: web.Request) -> None:
    """Let this process's deliverer see the change now (others within a second)."""
    deliverer = request.app.get(DELIVERER)
    if deliverer is not None:
        deliverer.poke()


async def create(request: web.Request) -> web.Response:
    """POST /webhooks: 201 with the webhook and its secret (shown this once)."""
    grant = await _grant(request)
    spec = WebhookSpec.parse(await _body(request))
    settings = request.app[SETTINGS]
    grant_where: GrantWhere | None = None
    if grant is not None:
        if not _covers(grant, spec.streams):
            raise Refusal("streams", "the token does not allow webhooks on these streams",
                          status=403)
        # A standing subscription of the token: it may read no more than a
        # stream of the same token could, and its grants' filters go with it.
        coverage = grant.cover([parse_pattern(s) for s in spec.streams],
                               request.app[ACCESS].anonymous, "streams")
        grant_where = grant_where_of(spec.streams, coverage)
    await AddressGuard.of(settings).check_url(spec.url)
    webhook = await _store(request).create(
        spec, new_secret(), grant.subject if grant is not None else None,
        grant.issuer if grant is not None else None, grant_where,
        settings.webhooks_per_owner if grant is not None else 0)
    _poke(request)
    return _json({**webhook.view(), "secret": webhook.secret}, 201,
                 {"Location": f"/webhooks/{webhook.id}"})


async def index(request: web.Request) -> web.Response:
    """GET /webhooks?limit=L&after=A: the caller's webhooks (an admin's: every
    owner's) on streams its token covers, oldest first, a page at a time:
    `{"webhooks": [...], "next_after": A, "has_more": bool}`."""
    grant = await _grant(request)
    for key in request.query:
        if key not in ("limit", "after", "access_token"):
            raise Refusal(key, "unknown query parameter")
    limit = page_limit(request)
    after = request.query.get("after")
    start = FIRST_PAGE if after is None else parse_page_key(after)
    everyone = grant is None or grant.webhooks_admin
    found = await _store(request).page(
        start, limit + 1, everyone, None if grant is None else grant.subject,
        None if grant is None else grant.issuer)
    page, has_more = found[:limit], len(found) > limit
    # The owner filter is the query's; the pattern filter may leave a page
    # short (an admin whose patterns cover few), never stop the walk.
    return _json({"webhooks": [w.view() for w in page if _visible(grant, w)],
                  "next_after": page[-1].page_key() if page else after,
                  "has_more": has_more})


async def show(request: web.Request) -> web.Response:
    """GET /webhooks/{id}: the webhook, how far behind it is, its last attempts."""
    grant = await _grant(request)
    webhook = await _mine(request, grant)
    return _json(await _store(request).details(webhook))


async def change(request: web.Request) -> web.Response:
    """PATCH /webhooks/{id}: {"paused": bool} and/or {"rewind_to": "0" | position}."""
    grant = await _grant(request)
    body = await _body(request)
    if not isinstance(body, dict) or not body:
        raise Refusal("body", 'expected {"paused": true|false} and/or '
                      '{"rewind_to": "0" or a position}')
    unknown = sorted(set(body) - _PATCH_FIELDS)
    if unknown:
        raise Refusal(unknown[0][:60], "unknown field")
    paused = body.get("paused")
    if "paused" in body and not isinstance(paused, bool):
        raise Refusal("paused", "must be true or false")
    rewind = body.get("rewind_to")
    if "rewind_to" in body:
        if not isinstance(rewind, str):
            raise Refusal("rewind_to", 'expected "0" or a position')
        parse_position(rewind, "rewind_to")
    webhook: Webhook | None = await _mine(request, grant)
    store = _store(request)
    if isinstance(rewind, str):
        webhook = await store.rewind(_id(request), rewind.strip())
    if paused is True:
        webhook = await store.pause(_id(request))
    elif paused is False:
        webhook = await store.resume(_id(request))
    _poke(request)
    if webhook is None:  # deleted meanwhile
        raise Refusal("id", "no such webhook", status=404)
    return _json(webhook.view())


async def delete(request: web.Request) -> web.Response:
    """DELETE /webhooks/{id}: 204; delivery stops (a request in flight ends)."""
    grant = await _grant(request)
    webhook = await _mine(request, grant)
    if not await _store(request).delete(webhook.id):
        raise Refusal("id", "no such webhook", status=404)
    _poke(request)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks", create)
    app.router.add_get("/webhooks", index)
    app.router.add_get("/webhooks/{id}", show)
    app.router.add_patch("/webhooks/{id}", change)
    app.router.add_delete("/webhooks/{id}", delete)
