"""GET /metrics, /healthz and /readyz: what an operator and a load balancer read."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .handlers import ACCESS, HUB, LISTENER, REGISTRY, SETTINGS
from .problems import problem


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format, collected from the hub's counters."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answered, the listener is connected and, with a JWKS,
    its keys were fetched at least once. A JWKS that cannot be fetched any more
    leaves the last keys in force: still ready, with `"jwks": {"stale": true,
    "failing_since": ...}` saying so."""
    hub, listener = request.app[HUB], request.app[LISTENER]
    verifier = request.app[ACCESS].verifier
    keys = verifier.keys if verifier is not None else None
    extra: dict[str, Any] = {"jwks": keys.status()} if keys is not None else {}
    lagging = False
    if hub.polling:
        # A standby as the live source: how far its replay is behind.
        lag, limit = hub.lag, request.app[SETTINGS].max_standby_lag
        extra["standby"] = None if lag is None else {
            "in_recovery": lag.recovery, "lag_seconds": round(lag.seconds, 3),
            "lag_bytes": lag.bytes, "max_lag_seconds": limit}
        lagging = lag is None or lag.seconds > limit
    connected = listener is None or listener.connected
    if hub.ready and connected and not lagging and (keys is None or keys.ready):
        return web.json_response({"status": "ready", **extra})
    reasons = []
    if not hub.ready:
        reasons.append("database unreachable")
    if not connected:
        reasons.append("listener not connected")
    if lagging:
        reasons.append("the live source's replay lag is unknown" if hub.lag is None else
                       f"the live source's replay lags {hub.lag.seconds:.1f} s, more than "
                       "--max-standby-lag")
    if keys is not None and not keys.ready:
        reasons.append("JWKS not fetched yet")
    return problem(503, ", ".join(reasons), headers={"Retry-After": "2"}, extensions=extra)
