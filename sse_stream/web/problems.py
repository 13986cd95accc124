"""Refusals and failures as RFC 9457 application/problem+json documents."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ..core.errors import DatabaseUnavailable, Overloaded, Refusal

log = logging.getLogger(__name__)


def problem(status: int, detail: str, param: str | None = None,
            headers: dict[str, str] | None = None,
            extensions: dict[str, Any] | None = None) -> web.Response:
    """An RFC 9457 problem document (with extension members, if any)."""
    body: dict[str, Any] = {**(extensions or {}), "type": "about:blank",
                            "title": _title(status), "status": status, "detail": detail}
    if param is not None:
        body["param"] = param
    return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                        content_type="application/problem+json")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def answer(request: web.Request, error: Exception) -> web.Response:
    """The problem document for an error a handler raised; re-raises an
    HTTPException below 400 (a redirect), which aiohttp sends as it is."""
    if isinstance(error, Refusal):
        return problem(error.status, error.detail, error.param, headers=error.headers)
    if isinstance(error, DatabaseUnavailable):
        return problem(503, "the database is unavailable; retry shortly",
                       headers={"Retry-After": "2"})
    if isinstance(error, Overloaded):
        return problem(503, error.detail, headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        detail = error.text if error.text and not error.text.startswith(str(error.status)) else \
            f"{request.method} {request.path}: {error.reason}"
        return problem(error.status, detail, headers={k: v for k, v in error.headers.items()
                                                       if k in ("Allow", "Retry-After")})
    # The detail stays in the log; the client learns only that it failed.
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=error)
    return problem(500, "an unexpected error occurred; it has been logged")
