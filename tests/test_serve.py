"""`sse-stream serve` as a real process: clean end on SIGTERM, resume after restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
from sse import envelope, open_stream
from support import ROOT, Serve, publish

from sse_stream.db.embedded import free_port


async def test_sigterm_ends_streams_cleanly_and_restart_resumes(serve: Serve,
                                                                db: asyncpg.Connection,
                                                                stream: str) -> None:
    port = free_port()
    server = serve(port=port)
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

    restarted = serve(port=port)
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
    assert "sse_stream/web/static/index.html" in names
    assert "sse_stream/web/static/asyncapi.json" in names
    assert "sse_stream/web/static/client.js" in names
    assert "sse_stream/web/static/client.d.ts" in names
    assert "sse_stream/py.typed" in names
