"""Every statement about webhooks (sql/webhooks.sql), on the store's
background capacity: webhooks never take the connections of live reads,
pages or publishing.

A database module, like store.py: outages come out as DatabaseUnavailable
(EventStore translates them), values the database refuses as Refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

from ..core.errors import Refusal
from ..core.events import Position
from ..db.queries import query
from ..db.store import EventStore
from .model import GrantWhere, Webhook, WebhookSpec, grant_where_json, time_text

BACKLOG_SCAN = 100_000  # rows of its streams a backlog count examines at most


class Backlog(NamedTuple):
    """Matching events after a webhook's cursor; `exact` false: at least
    `behind` (the count stopped at its scan budget). `age`: seconds since
    the oldest was written (None: nothing behind)."""

    behind: int
    exact: bool
    age: float | None


@dataclass(frozen=True)
class Outcome:
    """One request: its status (None: no response), its time, what failed."""

    ok: bool
    status: int | None
    latency_ms: float
    error: str | None
    events: int
    message: str  # the webhook-id


class WebhookStore:
    """Webhook rows and leases. `wait` bounds the wait for a connection
    (API requests: then 503); None waits (the deliverer)."""

    def __init__(self, store: EventStore, wait: float | None = None) -> None:
        self.store = store
        self.wait = wait

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.store.background(self.wait) as connection:
                yield connection
        except asyncpg.DataError as error:
            # The functions of sql/0005_webhooks.sql check what a backend
            # passes; the server checks first, so this is the backstop.
            raise Refusal("body", str(error).removeprefix("sse_stream: ")) from error

    async def _rows(self, name: str, *args: Any) -> list[Webhook]:
        async with self._connection() as connection:
            rows = await connection.fetch(query(name), *args)
        return [Webhook.from_json(row[0]) for row in rows]

    async def _one(self, name: str, *args: Any) -> Webhook | None:
        found = await self._rows(name, *args)
        return found[0] if found else None

    # -- management ---------------------------------------------------------------------

    async def create(self, spec: WebhookSpec, secret: str | None,
                     created_by: str | None = None, created_by_issuer: str | None = None,
                     grant_where: GrantWhere | None = None, cap: int = 0) -> Webhook:
        """A new webhook of owner `created_by` (and `created_by_issuer`), bound
        by `grant_where`. With `cap`, an owner who has that many already gets
        a 409; the count and the insert are serialised per owner."""
        args = (spec.url, list(spec.streams), None if spec.types is None else list(spec.types),
                list(spec.filters), spec.start, secret, created_by, created_by_issuer,
                None if grant_where is None else orjson.dumps(grant_where_json(grant_where))
                .decode())
        async with self._connection() as connection, connection.transaction():
            if cap and created_by is not None:
                await connection.execute(query("webhook_owner_lock"), created_by,
                                         created_by_issuer)
                owned = await connection.fetchval(query("webhook_owned"), created_by,
                                                  created_by_issuer)
                if owned >= cap:
                    raise Refusal("Authorization", f"the token's subject owns {owned} "
                                  f"webhook(s), the most allowed (webhooks_per_owner = {cap}): "
                                  "delete one first", status=409)
            row = await connection.fetchrow(query("webhook_create"), *args)
        return Webhook.from_json(row[0])

    async def get(self, id_: str) -> Webhook | None:
        return await self._one("webhook_get", id_)

    async def page(self, after: tuple[datetime, str], limit: int, everyone: bool,
                   subject: str | None = None, issuer: str | None = None) -> list[Webhook]:
        """At most `limit` webhooks created after `after` (a page key), oldest
        first: those of the owner `subject` and `issuer`, or `everyone`'s."""
        return await self._rows("webhook_page", everyone, subject, issuer, *after, limit)

    async def pause(self, id_: str) -> Webhook | None:
        return await self._one("webhook_pause", id_)

    async def resume(self, id_: str) -> Webhook | None:
        return await self._one("webhook_resume", id_)

    async def rewind(self, id_: str, position: str) -> Webhook | None:
        return await self._one("webhook_rewind", id_, position)

    async def delete(self, id_: str) -> bool:
        async with self._connection() as connection:
            found: bool = await connection.fetchval(query("webhook_delete"), id_)
        return found

    async def attempts(self, id_: str, limit: int = 10) -> list[dict[str, Any]]:
        """The newest attempts, newest first, as GET /webhooks/{id} shows them."""
        async with self._connection() as connection:
            rows = await connection.fetch(query("webhook_attempts"), id_, limit)
        return [{"at": time_text(row["at"]), "status": row["status"],
                 "latency_ms": row["latency_ms"], "error": row["error"],
                 "events": row["events"], "webhook_id": row["message_id"]} for row in rows]

    async def backlog(self, webhook: Webhook, scan: int = BACKLOG_SCAN) -> Backlog:
        selector = webhook.selector().to_sql(4)
        sql = query("webhook_backlog").replace("{streams}", selector.streams) \
            .replace("{filter}", selector.filter)
        async with self._connection() as connection:
            row = await connection.fetchrow(sql, str(webhook.cursor.xid), webhook.cursor.id,
                                            scan, *selector.params)
        return Backlog(row["behind"], row["examined"] < scan, row["age"])

    async def details(self, webhook: Webhook) -> dict[str, Any]:
        """What GET /webhooks/{id} shows: the webhook, how far behind it is,
        its last attempts."""
        backlog = await self.backlog(webhook)
        return {**webhook.view(), "events_behind": backlog.behind,
                "events_behind_exact": backlog.exact,
                "oldest_undelivered_age": None if backlog.age is None else round(backlog.age, 3),
                "recent_attempts": await self.attempts(webhook.id)}

    async def counts(self) -> dict[str, int]:
        """Webhooks by state, every state present."""
        async with self._connection() as connection:
            rows = await connection.fetch(query("webhook_counts"))
        return {"active": 0, "paused": 0, "disabled": 0, **{row[0]: row[1] for row in rows}}

    # -- delivery: leases ---------------------------------------------------------------

    async def heartbeat(self, owner: str, seconds: float) -> tuple[int, int]:
        """(live deliverers, active webhooks)."""
        async with self._connection() as connection:
            row = await connection.fetchrow(query("webhook_heartbeat"), owner, seconds)
        return row["owners"], row["active"]

    async def forget(self, owner: str) -> None:
        async with self._connection() as connection:
            await connection.execute(query("webhook_forget"), owner)

    async def claim(self, owner: str, seconds: float, limit: int) -> list[Webhook]:
        return await self._rows("webhook_claim", owner, seconds, limit)

    async def renew(self, owner: str, ids: list[str], seconds: float) -> list[Webhook]:
        return await self._rows("webhook_renew", owner, ids, seconds)

    async def held(self, owner: str, ids: list[str]) -> list[Webhook]:
        return await self._rows("webhook_held", owner, ids)

    async def release(self, owner: str, ids: list[str]) -> None:
        async with self._connection() as connection:
            await connection.execute(query("webhook_release"), owner, ids)

    # -- delivery: attempts -------------------------------------------------------------

    async def begin(self, webhook: Webhook, owner: str, cursor: Position, seconds: float,
                    pending: int) -> bool:
        """Renew the lease (and record the batch) before a request; False: the
        lease, the state or the cursor changed (send nothing)."""
        async with self._connection() as connection:
            until = await connection.fetchval(query("webhook_begin"), webhook.id, owner,
                                              webhook.lease_epoch, str(cursor.xid), cursor.id,
                                              seconds, pending)
        return until is not None

    async def finish(self, webhook: Webhook, owner: str, cursor: Position, covered: Position,
                     outcome: Outcome, retry_in: float, disable_after: float,
                     keep: int, lease: float) -> tuple[str, bool] | None:
        """Record an attempt and renew the lease; (state, whether the cursor
        moved to `covered`), or None when the lease was lost."""
        async with self._connection() as connection:
            row = await connection.fetchrow(
                query("webhook_finish"), webhook.id, owner, webhook.lease_epoch,
                str(cursor.xid), cursor.id, outcome.status, outcome.latency_ms, outcome.ok,
                str(covered.xid), covered.id, outcome.error, retry_in, disable_after,
                outcome.events, outcome.message, keep, lease)
        return None if row is None else (row["state"], row["moves"])

    async def refuse(self, webhook: Webhook, owner: str, reason: str) -> None:
        """Disable a webhook just claimed that cannot be delivered (`reason`
        becomes its last error) and hand it back."""
        outcome = Outcome(False, None, 0.0, reason, 0, "")
        await self.finish(webhook, owner, webhook.cursor, webhook.cursor, outcome, 0.0, 0.0,
                          1, 0.0)
        await self.release(owner, [webhook.id])

    async def skip(self, webhook: Webhook, owner: str, cursor: Position,
                   covered: Position) -> bool:
        async with self._connection() as connection:
            moved = await connection.fetchval(query("webhook_skip"), webhook.id, owner,
                                              webhook.lease_epoch, str(cursor.xid), cursor.id,
                                              str(covered.xid), covered.id)
        return moved is not None
