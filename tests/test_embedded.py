"""The embedded PostgreSQL trusts no local user over TCP: its DSN has the password.

Two clusters of their own: a new one, and one made as older versions did
(`initdb --auth=trust`), which its next start upgrades.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from support import cluster

from sse_stream.db.embedded import PASSWORD_FILE, EmbeddedPostgres


@pytest.fixture(autouse=True)
def no_client_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No password reaches a connection from the environment or ~/.pgpass."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


@pytest.fixture(scope="module")
def fresh() -> Iterator[EmbeddedPostgres]:
    with cluster("sse-stream-embedded-") as server:
        yield server


async def _assert_tcp_needs_the_password(server: EmbeddedPostgres) -> None:
    for password in (None, "", "wrong", (server.password or "") + "x"):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host="127.0.0.1", port=server.port, user="postgres",
                                  database="postgres", password=password)
    connection = await asyncpg.connect(server.dsn)
    try:
        assert await connection.fetchval("SELECT current_user") == "postgres"
    finally:
        await connection.close()


def _assert_password_file(server: EmbeddedPostgres) -> None:
    path = server.data_dir / PASSWORD_FILE
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    # The server's user owns it (pg_basebackup reads it as that user); root
    # reads it regardless.
    owner = pwd.getpwnam(server.user).pw_uid if server.user else os.geteuid()
    assert info.st_uid == owner
    password = unquote(urlsplit(server.dsn).password or "")
    assert len(password) >= 32 and path.read_text().strip() == password


def _host_methods(server: EmbeddedPostgres) -> set[str]:
    lines = (server.data_dir / "pg_hba.conf").read_text().splitlines()
    return {line.split()[-1] for line in lines if line.startswith("host")}


async def test_tcp_needs_the_password_in_the_dsn(fresh: EmbeddedPostgres) -> None:
    await _assert_tcp_needs_the_password(fresh)
    _assert_password_file(fresh)
    assert _host_methods(fresh) == {"scram-sha-256"}


def test_psql_works_with_the_printed_dsn(fresh: EmbeddedPostgres) -> None:
    result = subprocess.run([str(fresh.bin / "psql"), fresh.dsn, "-XAtc", "SELECT 42"],
                            capture_output=True, text=True, timeout=30, check=True,
                            stdin=subprocess.DEVNULL)
    assert result.stdout.strip() == "42"


async def test_a_restart_keeps_the_password(fresh: EmbeddedPostgres) -> None:
    dsn = fresh.dsn
    await asyncio.to_thread(fresh.stop)
    again = EmbeddedPostgres(fresh.data_dir, port=fresh.port, fast=True)
    assert await asyncio.to_thread(again.start) == dsn
    connection = await asyncpg.connect(dsn)
    await connection.close()


async def test_an_old_trust_cluster_is_upgraded_at_start() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-trust-"))
    server = EmbeddedPostgres(folder / "pgdata", fast=True)
    # What older versions ran: every local user was superuser over TCP.
    server._prepare_dir()
    server._run("initdb", "--auth=trust", "--encoding=UTF8", "--no-locale",
                "-U", "postgres", "-D", str(server.data_dir))
    assert "trust" in _host_methods(server)
    assert not (server.data_dir / PASSWORD_FILE).exists()
    await asyncio.to_thread(server.start)
    try:
        assert server.password
        await _assert_tcp_needs_the_password(server)
        _assert_password_file(server)
        assert _host_methods(server) == {"scram-sha-256"}
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        shutil.rmtree(folder, ignore_errors=True)
