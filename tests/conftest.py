"""Test fixtures: one PostgreSQL per session (embedded, or SSE_STREAM_TEST_DSN).

The embedded server runs with fsync off; the fault tests restart and kill it,
so they are skipped when the suite runs against an outside database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sse_stream.app import create_app  # noqa: E402
from sse_stream.embedded import EmbeddedPostgres  # noqa: E402
from sse_stream.migrate import migrate_dsn  # noqa: E402
from sse_stream.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("SSE_STREAM_TEST_DSN"):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-test-"))
    server = EmbeddedPostgres(folder / "pgdata", fast=True)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dsn(postgres: EmbeddedPostgres | None) -> str:
    value = os.environ.get("SSE_STREAM_TEST_DSN") or (postgres.dsn if postgres else "")
    asyncio.run(migrate_dsn(value))
    return value


@pytest.fixture
def embedded(postgres: EmbeddedPostgres | None) -> EmbeddedPostgres:
    """The embedded server, for tests that restart or kill PostgreSQL."""
    if postgres is None:
        pytest.skip("needs the embedded PostgreSQL (SSE_STREAM_TEST_DSN is set)")
    return postgres


@pytest.fixture
def stream() -> str:
    """A stream name no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def publish(connection: asyncpg.Connection, stream: str, type_: str, data: Any) -> int:
    value: int = await connection.fetchval(
        "SELECT sse_stream.publish($1, $2, $3::text::jsonb)", stream, type_,
        orjson.dumps(data).decode())
    return value


StartServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_server(dsn: str) -> AsyncIterator[StartServer]:
    """Start the real app on 127.0.0.1 with settings overrides."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> TestServer:
        settings = Settings(dsn=dsn, heartbeat=overrides.pop("heartbeat", 15.0), **overrides)
        server = TestServer(create_app(settings), host="127.0.0.1", shutdown_timeout=5)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def fresh_dsn(dsn: str) -> AsyncIterator[str]:
    """A database of its own, dropped after the test: for tests that prune, or
    fill the table, and so must not see or touch the other tests' events."""
    name = "fresh_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        pytest.skip("cannot create a database with SSE_STREAM_TEST_DSN")
    parts = urlsplit(dsn)
    value = urlunsplit(parts._replace(path="/" + name))
    await migrate_dsn(value)
    try:
        yield value
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
