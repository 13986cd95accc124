"""One exception tree; handlers turn it into problem+json at the boundary."""

from __future__ import annotations


class SseStreamError(Exception):
    """Base of every error this package raises on purpose."""


class Refusal(SseStreamError):
    """A request refused, as one problem+json at the boundary: bad input
    (400, 409, 413, 414, 415, 422), no access (401, 403), too many (429) or
    no room (503, with Retry-After). `param` names what was refused."""

    status = 400

    def __init__(self, param: str, detail: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail
        self.status = status
        self.headers = headers


class DatabaseUnavailable(SseStreamError):
    """PostgreSQL could not be reached or the connection broke mid-query."""


class Overloaded(SseStreamError):
    """A bounded share of the server is in use: refuse with 503 and Retry-After."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
