"""aiohttp handlers of /webhooks: create, list, show, change and delete.

Access: a token whose claim grants `"webhooks": [patterns]` covering every
stream of the webhook (sent as `Authorization: Bearer` or `access_token`,
never a cookie: these requests write); without a key configured, protected
mode (loopback only). A webhook the token does not cover answers 404, as an
unknown one does: one tenant cannot probe another's. Refusals are
Refusal, turned into problem+json by handlers.problem_middleware.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from .auth import Grant, Unauthorized, allows, find_token
from .deliverer import Deliverer
from .errors import Refusal
from .events import parse_position
from .handlers import ACCESS, SETTINGS, STORE, check_json, read_body
from .patterns import parse_pattern
from .webhook_store import WebhookStore
from .webhooks import AddressGuard, Webhook, WebhookSpec, new_secret

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
    return grant


def _covers(grant: Grant | None, streams: tuple[str, ...]) -> bool:
    return grant is None or allows(grant.webhooks, [parse_pattern(s) for s in streams])


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
    """The webhook of the path, if the token covers it (else 404)."""
    webhook = await _store(request).get(_id(request))
    if webhook is None or not _covers(grant, webhook.streams):
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
    if not _covers(grant, spec.streams):
        raise Refusal("streams", "the token does not allow webhooks on these streams",
                      status=403)
    settings = request.app[SETTINGS]
    await AddressGuard(settings.webhooks_allow_private).check_url(spec.url)
    webhook = await _store(request).create(spec, new_secret(),
                                           grant.subject if grant is not None else None)
    _poke(request)
    return _json({**webhook.view(), "secret": webhook.secret}, 201,
                 {"Location": f"/webhooks/{webhook.id}"})


async def index(request: web.Request) -> web.Response:
    """GET /webhooks: the webhooks the token covers, oldest first."""
    grant = await _grant(request)
    found = await _store(request).all()
    return _json({"webhooks": [w.view() for w in found if _covers(grant, w.streams)]})


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
