"""Builds the aiohttp application; the lifecycle owns pool, listener and hub."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from ..access.policy import CORS_HEADERS, CORS_METHODS, AccessPolicy, CorsPolicy, OpenStreams
from ..core.errors import DatabaseUnavailable, Refusal
from ..core.settings import Settings
from ..core.tasks import cancel_and_wait
from ..db.capacity import StoreLimits
from ..db.listener import Listener
from ..db.retention import Retention
from ..db.store import EventStore
from ..engine.hub import Hub
from ..webhooks.deliverer import Deliverer
from . import handlers, operations
from . import webhooks as webhook_handlers
from .handlers import ACCESS, HUB, LISTENER, OPEN_STREAMS, REGISTRY, SETTINGS, STORE
from .metrics import HubCollector
from .webhooks import DELIVERER

log = logging.getLogger(__name__)
# What the metrics collector reads at scrape time, filled by the lifecycle.
LIVE_OBJECTS = web.AppKey("live_objects", dict)
ASYNCAPI = web.AppKey("asyncapi", dict)


STOP_TIMEOUT = 5.0


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    live_objects = app[LIVE_OBJECTS]
    assert settings.dsn is not None
    store = EventStore(settings.dsn, replica_dsn=settings.replica_dsn, live_dsn=settings.live_dsn,
                       limits=StoreLimits(read_connections=settings.pool_size,
                                          publish_connections=settings.publish_pool_size,
                                          wait=settings.capacity_wait,
                                          statement_timeout=settings.statement_timeout,
                                          scan_rows=settings.scan_rows,
                                          page_bytes=settings.page_bytes,
                                          background_connections=1 + (
                                              settings.webhooks_connections
                                              if settings.webhooks else 0)),
                       generic_plan=settings.live_generic_plan)
    await store.open()
    hub = Hub(store, settings)
    # A hot standby as the live source is polled: no LISTEN on the primary,
    # whose cost per commit would grow with every server.
    listener = None if settings.live_dsn else \
        Listener(settings.dsn, hub.wake, keepalive=settings.listener_keepalive)
    app[STORE], app[HUB], app[LISTENER] = store, hub, listener
    retention = None
    if settings.prune_older_than is not None:
        retention = Retention(store, timedelta(seconds=settings.prune_older_than),
                              settings.prune_interval, settings.prune_batch,
                              force=settings.prune_past_webhooks,
                              max_hold=settings.webhooks_max_hold)
    # Webhooks: the hub hands each page of its shared read to the deliverer.
    deliverer = Deliverer(store, settings, lambda: hub.watermark) if settings.webhooks else None
    if deliverer is not None:
        app[DELIVERER] = deliverer
        hub.observers.append(deliverer.observe)
    live_objects.update(hub=hub, listener=listener, store=store, retention=retention,
                        deliverer=deliverer)
    hub.start()
    if deliverer is not None:
        deliverer.start()
    if listener is not None:
        listener.start()
    if retention is not None:
        retention.start()
    pruning = asyncio.create_task(_prune_idempotency_keys(store, settings.idempotency_ttl),
                                  name="sse-stream idempotency keys")
    warming = asyncio.create_task(store.warm(), name="sse-stream read pool")
    # The JWKS (--jwks-url): fetched now and kept fresh by a task of its own.
    verifier = app[ACCESS].verifier
    keys = verifier.keys if verifier is not None else None
    if keys is not None:
        await keys.start()
    try:
        yield
    finally:
        live_objects.clear()

        async def stop_pruning() -> None:
            await cancel_and_wait(warming)
            await cancel_and_wait(pruning)

        steps = [stop_pruning, hub.stop, store.close]
        if listener is not None:
            steps.insert(1, listener.stop)
        if deliverer is not None:
            steps.insert(1, deliverer.stop)
        if retention is not None:
            steps.insert(1, retention.stop)
        if keys is not None:
            steps.insert(1, keys.stop)
        for step in steps:
            # Each step is bounded: a task that does not end on cancellation
            # (a driver call stuck on a dead socket) must not hang shutdown.
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await step()
            except TimeoutError:
                log.warning("shutdown: %s did not finish in %g s", step.__qualname__, STOP_TIMEOUT)


async def _prune_idempotency_keys(store: EventStore, ttl: float) -> None:
    """Forget idempotency keys older than `ttl`, at start and then regularly.

    Every process does it; deleting rows another process already deleted
    costs nothing. Keys live between `ttl` and `ttl` + the period.
    """
    period = min(600.0, max(1.0, ttl / 4))
    while True:
        try:
            pruned = await store.prune_idempotency_keys(ttl)
            if pruned:
                log.info("forgot %d idempotency key(s) older than %gs", pruned, ttl)
        except DatabaseUnavailable:
            pass  # the hub reports outages; try again next period
        await asyncio.sleep(period)


async def _end_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for the handlers: ending every
    # stream here lets each one finish its response cleanly.
    app[HUB].end_streams()


async def _index(request: web.Request) -> web.Response:
    page = resources.files("sse_stream.web.static").joinpath("index.html").read_bytes()
    return web.Response(body=page, content_type="text/html")


async def _asyncapi(request: web.Request) -> web.Response:
    """The AsyncAPI 3 document, with this server's address as its server."""
    document = request.app[ASYNCAPI]
    server = {**document["servers"]["local"], "host": request.host,
              "protocol": request.scheme}
    body = orjson.dumps({**document, "servers": {"local": server}})
    return web.Response(body=body, content_type="application/json")
# -- /client.js and /client.d.ts ----------------------------------------------------
# Read once when the app is built and served with a strong ETag of their
# content: a browser's revalidation after max-age costs a 304 and no body,
# and an upgraded server serves a new ETag.

ASSET_MAX_AGE = 3600  # seconds a browser or proxy may use its copy without asking


@dataclass(frozen=True)
class Asset:
    """One file's bytes and headers; `handle` is its aiohttp handler."""

    body: bytes
    content_type: str
    etag: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def load(cls, name: str, content_type: str, **headers: str) -> Asset:
        """The file `name` of sse_stream.web.static (read once: it ships with the package)."""
        body = resources.files("sse_stream.web.static").joinpath(name).read_bytes()
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"',
                   tuple(headers.items()))

    async def handle(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Cache-Control": f"public, max-age={ASSET_MAX_AGE}",
                   **dict(self.headers)}
        if self._matches(request.headers.get("If-None-Match")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body, headers={**headers, "Content-Type": self.content_type})

    def _matches(self, if_none_match: str | None) -> bool:
        # RFC 9110 §13.1.2: a list of tags or "*", compared weakly (W/ ignored).
        if not if_none_match:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or self.etag in tags


def client_assets() -> dict[str, Asset]:
    """The browser client module and its TypeScript declarations, by route."""
    return {
        # Deno and some bundlers find the types of a module by this header.
        "/client.js": Asset.load("client.js", "text/javascript; charset=utf-8",
                                 **{"X-TypeScript-Types": "/client.d.ts"}),
        "/client.d.ts": Asset.load("client.d.ts", "application/typescript; charset=utf-8"),
    }


CORS = web.AppKey("cors", CorsPolicy)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    cors = request.app[CORS]
    if origin and cors.allowed(origin):
        for name, value in cors.headers(origin).items():
            if name == "Vary" and "Vary" in response.headers:
                value = response.headers["Vary"] + ", Origin"
            response.headers[name] = value


async def _preflight(request: web.Request) -> web.Response:
    """OPTIONS: the CORS preflight a browser sends before a publish or a
    request with an Authorization header."""
    cors = request.app[CORS]
    origin = request.headers.get("Origin")
    if not origin or not cors.allowed(origin):
        raise Refusal("Origin", "this origin is not allowed (cors_origins)", status=403)
    method = request.headers.get("Access-Control-Request-Method", "")
    if method not in CORS_METHODS:
        raise Refusal("Access-Control-Request-Method", f"allowed: {', '.join(CORS_METHODS)}",
                      status=403)
    allowed = {name.lower() for name in CORS_HEADERS}
    asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
             if h.strip()]
    refused = [h for h in asked if h.lower() not in allowed]
    if refused:
        raise Refusal("Access-Control-Request-Headers", f"not allowed: {', '.join(refused)}",
                      status=403)
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ", ".join(CORS_METHODS),
        "Access-Control-Allow-Headers": ", ".join(CORS_HEADERS),
        "Access-Control-Max-Age": "600"})


def create_app(settings: Settings) -> web.Application:
    if settings.dsn is None:
        raise ValueError("create_app needs settings.dsn")
    # aiohttp's own parser refuses long request lines with a plain-text
    # 400; let lines through well beyond our limit so that the app answers
    # an over-long query with a problem document (414).
    line_size = max(65536, 2 * settings.max_query + 1024)
    app = web.Application(middlewares=[handlers.problem_middleware],
                          client_max_size=handlers.MAX_BODY + 1024,
                          handler_args={"max_line_size": line_size})
    app[SETTINGS] = settings
    live_objects: dict[str, Any] = {}
    registry = CollectorRegistry()
    registry.register(HubCollector(lambda: live_objects, settings.metrics_stream_labels))
    registry.register(ProcessCollector(registry=None))
    app[LIVE_OBJECTS], app[REGISTRY] = live_objects, registry
    app[ASYNCAPI] = orjson.loads(
        resources.files("sse_stream.web.static").joinpath("asyncapi.json").read_bytes())
    app[ACCESS] = AccessPolicy.from_settings(settings)
    app[CORS] = CorsPolicy.from_settings(settings)
    app[OPEN_STREAMS] = OpenStreams()
    app.on_response_prepare.append(_cors_headers)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", _index)
    app.router.add_get("/healthz", operations.healthz)
    app.router.add_get("/readyz", operations.readyz)
    app.router.add_get("/metrics", operations.metrics)
    app.router.add_get("/asyncapi.json", _asyncapi)
    for path, asset in client_assets().items():  # /client.js, /client.d.ts
        app.router.add_get(path, asset.handle)
    app.router.add_get("/streams/{streams}", handlers.subscribe)
    app.router.add_get("/streams/{streams}/events", handlers.read_page)
    app.router.add_post("/streams/{stream}/events", handlers.publish)
    app.router.add_route("OPTIONS", "/streams/{streams}", _preflight)
    app.router.add_route("OPTIONS", "/streams/{stream}/events", _preflight)
    webhook_handlers.add_routes(app)
    return app
