"""Test fixtures: one PostgreSQL per session (embedded, or SSE_STREAM_TEST_DSN).

The embedded server runs with fsync off; the fault tests restart and kill it,
so they are skipped when the suite runs against an outside database.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from support import Serve, ServerProcess, StartServer, app_servers, cluster, database
from webhook_receiver import Receiver

from sse_stream.core.settings import Settings
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.db.migrate import migrate_dsn


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("SSE_STREAM_TEST_DSN"):
        yield None
        return
    with cluster("sse-stream-test-") as server:
        yield server


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


@pytest.fixture
async def start_server(dsn: str) -> AsyncIterator[StartServer]:
    """Start the real app on 127.0.0.1 with settings overrides."""
    async with app_servers() as start:
        yield lambda **overrides: start(Settings(
            dsn=dsn, heartbeat=overrides.pop("heartbeat", 15.0), **overrides))


@pytest.fixture
def serve(dsn: str, tmp_path: Path) -> Iterator[Serve]:
    """Start `sse-stream serve` processes (`--heartbeat 0.5`; `port` and `dsn`
    may be given), each stopped after the test."""
    started: list[ServerProcess] = []

    def start(*extra: str, port: int | None = None, dsn: str = dsn) -> ServerProcess:
        server = ServerProcess(dsn, tmp_path / "serve.log", "--heartbeat", "0.5", *extra,
                               port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def standby(embedded: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """A hot standby of the embedded server, by streaming replication."""
    with cluster("sse-stream-replica-", embedded.replica) as server:
        yield server


@pytest.fixture
async def fresh_dsn(dsn: str) -> AsyncIterator[str]:
    """A database of its own, dropped after the test: for tests that prune, or
    fill the table, and so must not see or touch the other tests' events."""
    async with database(dsn) as value:
        await migrate_dsn(value)
        yield value


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A local webhook receiver (tests/webhook_receiver.py) on 127.0.0.1."""
    found = await Receiver().start()
    yield found
    await found.close()
