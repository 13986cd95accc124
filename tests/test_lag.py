"""A large replay does not stall the event loop: heartbeats keep flowing.

200 000 events are replayed by three clients at once. A probe in the
server's process measures how late `asyncio.sleep(0.01)` wakes; a fourth
client on another stream, with a 50 ms heartbeat, must keep receiving its
keepalives. The clients read in a child process so that their
own work does not run on the server's loop.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
from raw import RawStream
from support import StartServer

from sse_stream.web.handlers import HUB

EVENTS = 200_000
REPLAYERS = 3
MAX_LAG = 0.100


# Run in a child process: the clients' work must not share the server's
# loop (nor its interpreter lock), as remote clients would not.
_REPLAYERS = """
import socket, sys, threading
from urllib.parse import urlsplit
url, n = sys.argv[1], int(sys.argv[2])
counts = [0] * n
def replay(i):
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.0\\r\\n\\r\\n".encode())
        tail = b""
        while chunk := sock.recv(1 << 20):
            # The marker is 8 bytes: a 7-byte tail can never hold it twice.
            counts[i] += (tail + chunk).count(b"\\nevent: ")
            tail = chunk[-7:]
threads = [threading.Thread(target=replay, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(map(str, counts)))
"""


async def _replay(url: str, clients: int) -> list[int]:
    """Replay `url` with `clients` concurrent readers; the events each counted."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REPLAYERS, url, str(clients), stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 100)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return [int(n) for n in out.split()]


async def test_large_replay_keeps_the_loop_responsive(start_server: StartServer,
                                                      db: asyncpg.Connection, stream: str) -> None:
    await db.execute(
        "INSERT INTO sse_stream.events (stream, type, data)"
        " SELECT $1, 'bulk', jsonb_build_object('n', g, 'note', 'a replayed event')"
        " FROM generate_series(1, $2::int) g", stream, EVENTS)
    server = await start_server(heartbeat=0.05)
    hub = server.app[HUB]
    await asyncio.wait_for(hub.started.wait(), 10)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    replaying = True

    async def probe() -> None:
        while replaying:
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    quiet = await RawStream.open(str(server.make_url(f"/streams/{stream}-quiet")))
    try:
        await quiet.read_until(lambda: quiet.parser.last_event_id != "")
        prober = asyncio.create_task(probe())
        url = str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))
        started = loop.time()
        counts = await _replay(url, REPLAYERS)
        elapsed = loop.time() - started
        replaying = False
        await prober
        # The quiet stream's keepalives kept coming during the replay.
        comments = quiet.parser.comments
        while True:
            try:
                await quiet.read(timeout=0.01)
            except TimeoutError:
                break
        heartbeats = quiet.parser.comments - comments
    finally:
        quiet.close()
    assert counts == [EVENTS] * REPLAYERS
    assert hub.stats.replayed >= EVENTS * REPLAYERS
    worst = max(lags)
    print(f"replayed {EVENTS * REPLAYERS} events in {elapsed:.1f} s; loop lag max "
          f"{worst * 1000:.1f} ms, p99 {sorted(lags)[int(len(lags) * 0.99)] * 1000:.1f} ms; "
          f"{heartbeats} heartbeats")
    assert worst < MAX_LAG, f"the event loop stalled {worst * 1000:.0f} ms"
    assert heartbeats >= elapsed / 0.05 / 4
