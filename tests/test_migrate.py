"""Migrations: shipped ones are frozen, every way of applying them ends with
the same schema, and concurrent starts apply each one exactly once.

The schema is compared as a catalog dump of `sse_stream`: relations, columns,
indexes, constraints, functions with their whole definitions, and triggers.
"""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import pytest
from support import database

import sse_stream.db.migrate
from sse_stream.db.migrate import migrate_dsn
from sse_stream.db.queries import migrations, sql_dir

# The SHA-256 of every migration that has shipped (line ends as LF). A shipped
# migration is never edited (sql/README.md): add a line when one ships.
SHIPPED = {
    "0001_events.sql": "93ef78d26af0eba23946c81a412bdbcd4160463e5834305ae8dc5916baf49cf2",
    "0002_capture.sql": "341366d90ea5c593d13a81e0aec5af7381e1aee727366e86c6641eb4956ebc0b",
    "0003_replay_indexes.sql": "b777d4e9aae95497527f13010bbb30dfde58f05b7292e91f0eee318df3402066",
    "0004_isolation.sql": "4b0c2318f9ee93f6704408455f7a2323c0db77bc7cae97176fcc4085a3e06d93",
    "0005_webhooks.sql": "d9777e30548c2cd19bce740ade106a58b7b83d45c8b4cb2a9aeca223481fab42",
    "0006_publishing.sql": "ab49781a27b3ee2c867bbae85312b031f9c2123e063cf0103d79d043e22358a6",
    "0007_webhook_tenancy.sql": "65e35b31aa91bdbccadf7ca1b4e3a5c035821e5aee035a7728eab2f4047e9c54",
}

RESTATED = 6  # 0006_publishing.sql re-states every publishing function

# What 0002 gained after it shipped: databases that ran its first text have a
# capture() without this guard, until 0006 re-states it.
CAPTURE_GUARD = """    -- As a BEFORE trigger, RETURN NULL would silently skip the user's write.
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream.capture on %I.%I (trigger %I) must be an AFTER ... '
                             'FOR EACH ROW trigger', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NAME);
    END IF;
"""

CATALOG = """
SELECT 'relation', c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE s.nspname = 'sse_stream'
UNION ALL
SELECT 'column', c.relname || '.' || a.attname,
       concat_ws(' ', row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                 format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'not null' END,
                 nullif(a.attidentity, '')::text, nullif(a.attgenerated, '')::text,
                 'default ' || pg_get_expr(d.adbin, d.adrelid),
                 'collate ' || nullif(a.attcollation, t.typcollation)::regcollation::text)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace s ON s.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE s.nspname = 'sse_stream' AND c.relkind IN ('r', 'p', 'v', 'm')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE s.nspname = 'sse_stream'
UNION ALL
SELECT 'constraint', k.conrelid::regclass::text || '.' || k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_namespace s ON s.oid = k.connamespace
WHERE s.nspname = 'sse_stream'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
WHERE s.nspname = 'sse_stream' AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'trigger', g.tgrelid::regclass::text || '.' || g.tgname, pg_get_triggerdef(g.oid)
FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE s.nspname = 'sse_stream' AND NOT g.tgisinternal
ORDER BY 1, 2, 3
"""

Catalog = list[tuple[str, str, str]]


async def catalog(dsn: str) -> tuple[Catalog, list[tuple[int, str]]]:
    """The catalog dump of schema sse_stream, and the migrations recorded."""
    connection = await asyncpg.connect(dsn)
    try:
        objects = [tuple(row) for row in await connection.fetch(CATALOG)]
        recorded = [tuple(row) for row in await connection.fetch(
            "SELECT version, name FROM sse_stream.migrations ORDER BY version")]
    finally:
        await connection.close()
    return objects, recorded


def use_migrations(monkeypatch: pytest.MonkeyPatch, found: list[tuple[int, str, str]]) -> None:
    """Make the runner see these migrations instead of the files of sql/."""
    monkeypatch.setattr(sse_stream.db.migrate, "migrations", lambda: found)


def test_shipped_migrations_are_frozen() -> None:
    for name, digest in SHIPPED.items():
        text = (sql_dir() / name).read_text().replace("\r\n", "\n")
        assert hashlib.sha256(text.encode()).hexdigest() == digest, \
            f"{name} has shipped and is frozen: add a new migration instead (sql/README.md)"


async def test_fresh_schema_equals_migrations_replayed_one_release_at_a_time(
        fresh_dsn: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database upgraded once per migration, as successive releases would,
    ends like one migrated at once; a second run applies and changes nothing."""
    fresh = await catalog(fresh_dsn)
    every = migrations()
    assert fresh[1] == [(version, name) for version, name, _ in every]
    async with database(dsn) as stepwise:
        for count in range(1, len(every) + 1):
            use_migrations(monkeypatch, every[:count])
            assert await migrate_dsn(stepwise) == [every[count - 1][0]]
        assert await catalog(stepwise) == fresh
    monkeypatch.undo()
    assert await migrate_dsn(fresh_dsn) == []
    assert await catalog(fresh_dsn) == fresh


async def test_a_database_that_ran_the_first_text_of_0002_ends_like_a_fresh_one(
        fresh_dsn: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    every = migrations()
    first_text = [(version, name, sql.replace(CAPTURE_GUARD, "") if version == 2 else sql)
                  for version, name, sql in every]
    assert first_text != every
    async with database(dsn) as older:
        # Applied while 0002 had its first text; then that text was changed.
        use_migrations(monkeypatch, [m for m in first_text if m[0] < RESTATED])
        await migrate_dsn(older)
        use_migrations(monkeypatch, every)
        assert await migrate_dsn(older) == [v for v, _, _ in every if v >= RESTATED]
        assert await catalog(older) == await catalog(fresh_dsn)


async def test_concurrent_starts_apply_each_migration_exactly_once(fresh_dsn: str,
                                                                   dsn: str) -> None:
    versions = [version for version, _, _ in migrations()]
    async with database(dsn) as empty:
        applied = await asyncio.gather(*(migrate_dsn(empty) for _ in range(8)))
        assert sorted(version for run in applied for version in run) == versions
        assert await catalog(empty) == await catalog(fresh_dsn)


async def test_a_number_below_one_already_applied_is_applied_when_it_lands(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two migrations written side by side: the higher number lands first."""
    every = migrations()
    top = every[-1][0]
    between = (top + 1, "between", "CREATE TABLE sse_stream.test_between (n int);")
    later = (top + 2, "later", "CREATE TABLE sse_stream.test_later (n int);")
    async with database(dsn) as target:
        use_migrations(monkeypatch, [*every, later])
        assert await migrate_dsn(target) == [version for version, _, _ in every] + [top + 2]
        use_migrations(monkeypatch, [*every, between, later])
        assert await migrate_dsn(target) == [top + 1]
        assert await migrate_dsn(target) == []
        objects, recorded = await catalog(target)
        assert [version for version, _ in recorded] == [v for v, _, _ in [*every, between, later]]
        assert {("relation", "test_between", "r"), ("relation", "test_later", "r")} <= set(objects)
