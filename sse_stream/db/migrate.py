"""Applies sql/NNNN_*.sql once each, in order, under an advisory lock.

Every number not yet recorded in sse_stream.migrations is applied, lowest
first, each in a transaction of its own: a number below one already applied
(a migration that landed later) is applied at the next run. A migration that
has shipped is frozen: it is never edited; a change is a new migration
(sql/README.md).
"""

from __future__ import annotations

import logging

import asyncpg

from .queries import migrations, query

log = logging.getLogger(__name__)
# Any fixed 64-bit key; every process that migrates takes the same lock, so
# concurrent starts apply each file exactly once.
_LOCK_KEY = 0x55E_5743_A000


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the pending migrations; return the versions applied now."""
    applied_now: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(query("migrations_table"))
        done = {row[0] for row in await connection.fetch(query("migrations_applied"))}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(query("migration_record"), version, name)
            log.info("applied migration %04d_%s", version, name)
            applied_now.append(version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def migrate_dsn(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        return await migrate(connection)
    finally:
        await connection.close()
