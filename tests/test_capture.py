"""sse_stream.capture(): row changes of a user table become events, in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from notifications import counting
from sse import envelope, open_stream
from support import StartServer

Table = Callable[..., Awaitable[str]]


@pytest.fixture
async def table(db: asyncpg.Connection) -> AsyncIterator[Table]:
    """Create a table with a capture trigger: table(prefix, *trigger args) -> table name."""
    created: list[str] = []

    async def create(*trigger_args: str, columns: str = "id int PRIMARY KEY, customer text, "
                                                     "status text, secret text") -> str:
        name = "orders_" + uuid.uuid4().hex[:10]
        arguments = ", ".join("'" + arg.replace("'", "''") + "'" for arg in trigger_args)
        await db.execute(f"CREATE TABLE {name} ({columns})")
        created.append(name)
        await db.execute(f"CREATE TRIGGER {name}_events AFTER INSERT OR UPDATE OR DELETE ON {name} "
                         f"FOR EACH ROW EXECUTE FUNCTION sse_stream.capture({arguments})")
        return name

    yield create
    for name in created:
        await db.execute(f"DROP TABLE {name}")


async def captured(db: asyncpg.Connection, prefix: str) -> list[tuple[str, str, Any]]:
    rows = await db.fetch("SELECT stream, type, data::text AS data FROM sse_stream.events "
                          "WHERE stream = $1 OR stream LIKE $1 || '.%' ORDER BY xid, id", prefix)
    return [(r["stream"], r["type"], orjson.loads(r["data"])) for r in rows]


def prefix_name() -> str:
    return "p" + uuid.uuid4().hex[:10]


async def test_insert_update_delete(table: Table, db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's')")
    await db.execute(f"UPDATE {name} SET status = 'paid' WHERE id = 1")
    await db.execute(f"DELETE FROM {name} WHERE id = 1")
    row = {"id": 1, "customer": "c1", "status": "new", "secret": "s"}
    paid = {**row, "status": "paid"}
    assert await captured(db, prefix) == [
        (f"{prefix}.c1", f"{prefix}.insert",
         {"op": "insert", "table": name, "new": row, "old": None}),
        (f"{prefix}.c1", f"{prefix}.update",
         {"op": "update", "table": name, "new": paid, "old": row}),
        (f"{prefix}.c1", f"{prefix}.delete",
         {"op": "delete", "table": name, "new": None, "old": paid}),
    ]


async def test_without_a_key_column_the_stream_is_the_prefix(table: Table,
                                                             db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix)
    await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's'), (2, 'c2', 'new', 's')")
    assert [(s, t) for s, t, _ in await captured(db, prefix)] == [
        (prefix, f"{prefix}.insert"), (prefix, f"{prefix}.insert")]


async def test_a_rolled_back_change_publishes_nothing(table: Table, db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    transaction = db.transaction()
    await transaction.start()
    await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's')")
    await db.execute(f"UPDATE {name} SET status = 'paid'")
    # Inside the transaction the events are there...
    assert len(await captured(db, prefix)) == 2
    await transaction.rollback()
    # ...and they go with it.
    assert await captured(db, prefix) == []
    await db.execute(f"INSERT INTO {name} VALUES (2, 'c2', 'new', 's')")
    assert [data["new"]["id"] for _, _, data in await captured(db, prefix)] == [2]


@pytest.mark.parametrize(("key", "segment"), [
    ("42", "42"),
    ("tenant_a-7", "tenant_a-7"),
    (None, None),          # NULL
    ("", None),            # empty
    ("a.b", None),         # would be two segments
    ("has space", None),
    ("caf\u00e9", None),
    ("x" * 200, None),     # the stream would pass 200 characters
])
async def test_keys_that_cannot_be_a_segment_fall_back_to_the_prefix(
        table: Table, db: asyncpg.Connection, key: str | None, segment: str | None) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    # The user's write succeeds whatever the key holds.
    await db.execute(f"INSERT INTO {name} VALUES (1, $1, 'new', 's')", key)
    ((stream, _, data),) = await captured(db, prefix)
    assert stream == (prefix if segment is None else f"{prefix}.{segment}")
    assert data["new"]["customer"] == key


async def test_key_values_of_other_types(table: Table, db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "k", columns="id int PRIMARY KEY, k numeric")
    await db.execute(f"INSERT INTO {name} VALUES (1, 42), (2, -7), (3, 1.5), (4, NULL)")
    assert [s for s, _, _ in await captured(db, prefix)] == [
        f"{prefix}.42", f"{prefix}.-7", prefix, prefix]


async def test_longest_prefix_and_key_that_fit(table: Table, db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    fits = "k" * (200 - len(prefix) - 1)
    await db.execute(f"INSERT INTO {name} VALUES (1, $1, 'new', 's'), (2, $2, 'new', 's')",
                     fits, fits + "k")
    assert [s for s, _, _ in await captured(db, prefix)] == [f"{prefix}.{fits}", prefix]


async def test_delete_uses_the_old_key_and_update_the_new_one(table: Table,
                                                              db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    await db.execute(f"INSERT INTO {name} VALUES (1, 'a', 'new', 's')")
    await db.execute(f"UPDATE {name} SET customer = 'b'")
    await db.execute(f"DELETE FROM {name}")
    assert [(s, t.rsplit(".", 1)[1]) for s, t, _ in await captured(db, prefix)] == [
        (f"{prefix}.a", "insert"), (f"{prefix}.b", "update"), (f"{prefix}.b", "delete")]


async def test_only_the_listed_columns(table: Table, db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer", "id", "status")
    await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 'hunter2')")
    # Only an unlisted column changes: subscribers would see nothing new.
    await db.execute(f"UPDATE {name} SET secret = 'changed'")
    await db.execute(f"UPDATE {name} SET status = 'paid'")
    await db.execute(f"DELETE FROM {name}")
    assert await captured(db, prefix) == [
        (f"{prefix}.c1", f"{prefix}.insert",
         {"op": "insert", "table": name, "new": {"id": 1, "status": "new"}, "old": None}),
        (f"{prefix}.c1", f"{prefix}.update",
         {"op": "update", "table": name, "new": {"id": 1, "status": "paid"},
          "old": {"id": 1, "status": "new"}}),
        (f"{prefix}.c1", f"{prefix}.delete",
         {"op": "delete", "table": name, "new": None, "old": {"id": 1, "status": "paid"}}),
    ]


async def test_an_update_that_changes_nothing_writes_nothing(table: Table,
                                                             db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix)
    await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's')")
    await db.execute(f"UPDATE {name} SET status = status")
    assert [t for _, t, _ in await captured(db, prefix)] == [f"{prefix}.insert"]


@pytest.mark.parametrize(("args", "error", "message"), [
    (("{prefix}", "nope"), asyncpg.UndefinedColumnError, "no key column nope"),
    (("{prefix}", "", "id", "nope", "zip"), asyncpg.UndefinedColumnError, "no column(s) nope, zip"),
    (("bad prefix",), asyncpg.InvalidParameterValueError, "invalid stream prefix 'bad prefix'"),
    (("sse.x",), asyncpg.InvalidParameterValueError, "invalid stream prefix 'sse.x'"),
    (("x" * 194,), asyncpg.InvalidParameterValueError, "invalid stream prefix"),
    ((), asyncpg.InvalidParameterValueError, "invalid stream prefix NULL"),
])
async def test_a_wrong_configuration_fails_the_write_loudly(
        table: Table, db: asyncpg.Connection, args: tuple[str, ...], error: type[Exception],
        message: str) -> None:
    prefix = prefix_name()
    name = await table(*[arg.format(prefix=prefix) for arg in args])
    with pytest.raises(error) as raised:
        await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's')")
    assert message in str(raised.value) and name in str(raised.value)
    assert await db.fetchval(f"SELECT count(*) FROM {name}") == 0


@pytest.mark.parametrize("timing", ["BEFORE INSERT", "AFTER INSERT"])
async def test_only_after_row_triggers_are_accepted(db: asyncpg.Connection, timing: str) -> None:
    name = "orders_" + uuid.uuid4().hex[:10]
    level = "ROW" if timing.startswith("BEFORE") else "STATEMENT"
    await db.execute(f"CREATE TABLE {name} (id int)")
    try:
        await db.execute(f"CREATE TRIGGER t {timing} ON {name} FOR EACH {level} "
                         f"EXECUTE FUNCTION sse_stream.capture('{name}')")
        # A BEFORE trigger returning NULL would skip the row without a word.
        with pytest.raises(asyncpg.InvalidParameterValueError,
                           match="must be an AFTER ... FOR EACH ROW trigger"):
            await db.execute(f"INSERT INTO {name} VALUES (1)")
    finally:
        await db.execute(f"DROP TABLE {name}")


async def test_capture_and_publish_in_one_transaction(table: Table,
                                                      db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix)
    async with db.transaction():
        await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's')")
        await db.fetchval("SELECT sse_stream.publish($1, 'audit.noted', '{\"by\": \"me\"}')",
                          prefix)
        await db.execute(f"INSERT INTO {name} VALUES (2, 'c2', 'new', 's')")
    assert [t for _, t, _ in await captured(db, prefix)] == [
        f"{prefix}.insert", "audit.noted", f"{prefix}.insert"]


async def test_a_live_subscriber_receives_captured_changes(table: Table, start_server: StartServer,
                                                           db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    server = await start_server()
    url = str(server.make_url(f"/streams/{prefix}.*?type={prefix}.update"))
    async with open_stream(str(server.make_url(f"/streams/{prefix}.>"))) as everything, \
            open_stream(url) as updates:
        for sse in (everything, updates):
            await sse.until(lambda parser: parser.last_event_id != "")
        async with db.transaction():
            await db.execute(f"INSERT INTO {name} VALUES (1, 'c1', 'new', 's'), "
                             f"(2, 'c2', 'new', 's')")
        await db.execute(f"UPDATE {name} SET status = 'paid' WHERE id = 2")
        got = [envelope(m) for m in await everything.take(3)]
        update = envelope(await updates.next())
    assert [(e["stream"], e["type"]) for e in got] == [
        (f"{prefix}.c1", f"{prefix}.insert"), (f"{prefix}.c2", f"{prefix}.insert"),
        (f"{prefix}.c2", f"{prefix}.update")]
    assert update == got[2]
    assert update["data"]["new"]["status"] == "paid" and update["data"]["old"]["status"] == "new"


async def test_a_multi_row_change_rings_once(table: Table, dsn: str,
                                             db: asyncpg.Connection) -> None:
    prefix = prefix_name()
    name = await table(prefix, "customer")
    async with counting(dsn) as counter:
        await db.execute(f"INSERT INTO {name} SELECT n, 'c' || n % 7, 'new', 's' "
                         f"FROM generate_series(1, 300) n")
        assert await counter.settle(db) == 1
        async with db.transaction():
            await db.execute(f"UPDATE {name} SET status = 'paid' WHERE id <= 100")
            await db.execute(f"DELETE FROM {name} WHERE id > 200")
        assert await counter.settle(db) == 2
    assert len(await captured(db, prefix)) == 500
