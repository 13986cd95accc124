"""`sse-stream serve` as a real process: clean end on SIGTERM, resume after restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from conftest import publish
from sse import envelope, open_stream
from sse_stream.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent



class ServerProcess:
    def __init__(self, dsn: str, port: int, log: Path, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sse_stream.cli", "serve", "--dsn", dsn, "--host", "127.0.0.1",
             "--port", str(port), "--heartbeat", "0.5", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    async def ready(self, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process.poll() is None, "server exited"
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError("server not ready")
                await asyncio.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.fixture
def serve(dsn: str, tmp_path: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def start(port: int, *extra: str) -> ServerProcess:
        server = ServerProcess(dsn, port, tmp_path / "serve.log", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def test_sigterm_ends_streams_cleanly_and_restart_resumes(serve, db: asyncpg.Connection,
                                                                stream: str) -> None:
    port = free_port()
    server = serve(port)
    await server.ready()
    url = f"{server.url}/streams/{stream}"
    async with open_stream(url) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        first = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        got = await sse.take(3)
        server.process.send_signal(signal.SIGTERM)
        # The stream ends (a clean end of the chunked body, no error).
        assert await sse.rest(timeout=15) == []
        last_id = sse.last_event_id
    assert await asyncio.to_thread(server.process.wait, 20) == 0
    missed = [await publish(db, stream, "t", {"n": n}) for n in range(3, 5)]

    restarted = serve(port)
    await restarted.ready()
    async with open_stream(url, headers={"Last-Event-ID": last_id}) as sse:
        resumed = await sse.take(2)
    assert [envelope(m)["id"] for m in got] == first
    assert [envelope(m)["id"] for m in resumed] == missed


def test_wheel_ships_the_sql_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("sse_stream-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sql_files = {p.name for p in (ROOT / "sql").glob("*.sql")}
    assert sql_files and {f"sse_stream/sql/{name}" for name in sql_files} <= names
    assert "sse_stream/static/index.html" in names
    assert "sse_stream/static/asyncapi.json" in names
    assert "sse_stream/static/client.js" in names
    assert "sse_stream/static/client.d.ts" in names
    assert "sse_stream/py.typed" in names
