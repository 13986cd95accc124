"""The `reconnect` scenario's parts: its publisher, its clients, its counts and its check.

Publisher (`CountingPublisher`): a process of its own writing R events/s
spread over the streams <prefix>.u0 .. <prefix>.u(N-1) (common.PERUSER,
event k to stream k % N, with `ts` = clock_timestamp() inside the INSERT),
one transaction per statement; it counts its commits in shared memory, so
the scenario knows exactly how many of the database's transactions were
its own at any moment.

Clients (`Subscriber`): one EventSource-like client across its connections.
Every connection (`ResumingConnection`, a loadgen.SseConnection) records the
id of each event, in order, and the last id seen (also a bare one), which the
next connection sends as Last-Event-ID. After the cut (`Cut`) it also keeps
(published, received) for each event published after the cut, and marks the
client live at the first such event that arrives on a connection opened
after the cut: the client has then caught up. `storm_client` is its
reconnect loop: a random jitter, then attempts (at most `gate` handshakes at
once, below the server's listen backlog, so no SYN is dropped and retried a
second later) until it is live or the deadline passes.

Counts: `Transactions` reads xact_commit + xact_rollback of the database
from pg_stat_database, on a connection to another database (template1) so
that reading it adds nothing; `scrape` reads counters from the server's
/metrics.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from common import PAD, PERUSER, Setup, batch_plan
from loadgen import SseConnection
from server_process import ServerProcess

TS = re.compile(rb'"ts": ?([0-9.eE+-]+)')
INF = float("inf")


# -- the publisher ----------------------------------------------------------------


async def _publish(dsn: str, prefix: str, streams: int, rate: float, limit: float,
                   commits: Any, events: Any, stop: Any) -> None:
    per_tx, tx_rate = batch_plan(rate, 100)
    connection = await asyncpg.connect(dsn)
    seq, ticks = 1, 0
    start = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() - start < limit:
            if tx_rate:
                due = start + ticks / tx_rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                ticks += 1
            await connection.execute(PERUSER, prefix, seq, seq + per_tx - 1, streams, PAD, True)
            seq += per_tx
            commits.value += 1  # one writer: no lock needed for the readers' sake
            events.value = seq - 1
    finally:
        await connection.close()


def _publish_main(*args: Any) -> None:
    asyncio.run(_publish(*args))


class CountingPublisher:
    """`rate` events/s over `streams` streams in a process of its own, until
    `stop()` or `limit` seconds; `commits` and `events` so far, exactly."""

    def __init__(self, dsn: str, prefix: str, streams: int, rate: float, limit: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._commits = context.Value("q", 0, lock=False)
        self._events = context.Value("q", 0, lock=False)
        self._stop = context.Event()
        self.process = context.Process(
            target=_publish_main, name="reconnect publisher", daemon=True,
            args=(dsn, prefix, streams, rate, limit, self._commits, self._events, self._stop))

    def start(self) -> None:
        self.process.start()

    @property
    def commits(self) -> int:
        return int(self._commits.value)

    @property
    def events(self) -> int:
        return int(self._events.value)

    async def stop(self, timeout: float = 30) -> None:
        """Ask it to finish its transaction and stop; by PID if it does not."""
        self._stop.set()
        if self.process.pid is None:  # never started
            return
        await asyncio.to_thread(self.process.join, timeout)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 10)


# -- the server -------------------------------------------------------------------


async def has_flag(setup: Setup, flag: str) -> bool:
    """Whether the server under test has a `serve` option `flag`."""
    done = await asyncio.to_thread(
        subprocess.run, setup.side.command("serve", "--help"), env=setup.side.env(),
        cwd=setup.side.src, capture_output=True, text=True, timeout=120)
    return flag in done.stdout


async def restart(setup: Setup, old: ServerProcess,
                  extra: Sequence[str]) -> tuple[ServerProcess, float]:
    """SIGTERM `old` (it ends its streams), then the same server on its port;
    the new one and the monotonic time it answered /readyz."""
    await asyncio.to_thread(old.stop)
    new = ServerProcess(setup.dsn, setup.folder / "serve.log", "--log-level", "WARNING",
                        "--no-migrate", *extra, port=old.port, python=setup.side.python,
                        src=setup.side.src)
    try:
        await new.ready()
    except BaseException:
        new.stop()
        raise
    print(f"server restarted: pid {new.pid} on 127.0.0.1:{new.port}", file=sys.stderr)
    return new, time.monotonic()


# -- the clients ------------------------------------------------------------------


class Cut:
    """When the cut happened, shared by every connection: `wall` (time.time(),
    the clock of the events' `ts`; +inf before the cut) and `until`, past which
    published events are no longer kept for the latency (the all-live time)."""

    def __init__(self) -> None:
        self.wall = INF
        self.until = INF
        self.live = 0  # clients live again


class Subscriber:
    """One client across its connections: every event id it received, in order."""

    __slots__ = ("attempts", "back_at", "connection", "failures", "gaps", "ids", "last_id",
                 "live", "live_at", "path", "sample", "steady", "storm")

    def __init__(self, path: str, sample: bool = False) -> None:
        self.path = path
        self.sample = sample  # keeps the latency of events before the cut too
        self.steady: list[float] = []
        self.ids: list[bytes] = []
        self.last_id: str | None = None
        self.storm: list[tuple[float, float]] = []  # (published, received) after the cut
        self.live_at = 0.0  # monotonic; 0: not live again yet
        self.back_at = 0.0  # monotonic: connected again (its first frame) after the cut
        self.live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connection: ResumingConnection | None = None
        self.attempts = 0
        self.failures = 0
        self.gaps = 0


class ResumingConnection(SseConnection):
    """An SseConnection that records every event id and, after the cut, the
    publish time of every event, into its Subscriber."""

    def __init__(self, subscriber: Subscriber, cut: Cut, after_cut: bool) -> None:
        frames = 1 if subscriber.last_id is not None else 2  # as loadgen.connect
        super().__init__(subscriber.path, subscriber.last_id, parse=True, ready_frames=frames)
        self.subscriber = subscriber
        self.cut = cut
        self.after_cut = after_cut

    def _parse(self, complete: bytes) -> None:
        subscriber, cut = self.subscriber, self.cut
        now = time.time()
        if self.after_cut and not subscriber.back_at:
            subscriber.back_at = time.monotonic()
        for frame in complete.split(b"\n\n"):
            if frame.startswith(b"id: "):
                end = frame.find(b"\n")
                position = frame[4:end] if end > 0 else frame[4:]
            else:
                at = frame.find(b"\nid: ")  # a keepalive with the position
                if at < 0:
                    continue
                end = frame.find(b"\n", at + 1)
                position = frame[at + 5:end] if end > 0 else frame[at + 5:]
            subscriber.last_id = self.last_id = position.decode()
            data = frame.find(b"\ndata: ")
            if data < 0:
                continue
            self.events += 1
            subscriber.ids.append(position)
            if b"\nevent: sse.gap" in frame:
                subscriber.gaps += 1
            if cut.wall == INF and not subscriber.sample:
                continue  # before the cut only the sample reads the publish time
            found = TS.search(frame, data)
            if found is None:
                continue
            published = float(found.group(1))
            if cut.wall == INF:
                subscriber.steady.append(now - published)
            elif published >= cut.wall:
                if published <= cut.until:
                    subscriber.storm.append((published, now))
                if self.after_cut and not subscriber.live_at:
                    subscriber.live_at = time.monotonic()
                    subscriber.live.set_result(None)
                    cut.live += 1


async def open_stream(port: int, subscriber: Subscriber, cut: Cut, after_cut: bool,
                      timeout: float) -> ResumingConnection:
    """Connect and wait until the server has registered the stream (loadgen.connect)."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(loop.create_connection(
        lambda: ResumingConnection(subscriber, cut, after_cut), "127.0.0.1", port), timeout)
    try:
        await asyncio.wait_for(asyncio.shield(protocol.ready), timeout)
    except BaseException:
        protocol.close()
        raise
    return protocol


async def open_all(port: int, subscribers: Sequence[Subscriber], cut: Cut, concurrency: int,
                   timeout: float) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(subscriber: Subscriber) -> None:
        async with gate:
            subscriber.connection = await open_stream(port, subscriber, cut, False, timeout)

    await asyncio.gather(*(one(s) for s in subscribers))


@dataclass(frozen=True)
class Reconnect:
    """How a client comes back: a first wait of uniform(0, jitter) seconds,
    then, after a failed attempt, retry_wait x uniform(0.5, 1.5)."""

    port: int
    gate: asyncio.Semaphore
    jitter: float
    retry_wait: float
    timeout: float    # one attempt: handshake and first frame
    deadline: float   # monotonic


async def storm_client(subscriber: Subscriber, cut: Cut, how: Reconnect) -> None:
    """From the cut until the client is live again (or the deadline): each
    time its connection is gone, wait, then reconnect with its Last-Event-ID."""
    first = True
    while not subscriber.live.done():
        connection = subscriber.connection
        if connection is not None and not connection.done.done():
            await asyncio.wait([connection.done, subscriber.live],
                               return_when=asyncio.FIRST_COMPLETED)
            continue
        delay = random.uniform(0, how.jitter) if first else \
            how.retry_wait * random.uniform(0.5, 1.5)
        first = False
        if time.monotonic() + delay > how.deadline:
            return
        await asyncio.sleep(delay)
        subscriber.attempts += 1
        try:
            async with how.gate:
                subscriber.connection = await open_stream(how.port, subscriber, cut, True,
                                                          how.timeout)
        except (TimeoutError, OSError, ConnectionError):
            subscriber.failures += 1
            subscriber.connection = None


# -- counts -----------------------------------------------------------------------


class Transactions:
    """xact_commit + xact_rollback of one database, read from another one."""

    def __init__(self, connection: asyncpg.Connection, database: str, own: bool) -> None:
        self.connection = connection
        self.database = database
        self.own = own  # True: no other database could be used, the reads count too

    @classmethod
    async def open(cls, dsn: str) -> Transactions:
        first = await asyncpg.connect(dsn)
        try:
            database = await first.fetchval("SELECT current_database()")
        finally:
            await first.close()
        try:
            return cls(await asyncpg.connect(dsn, database="template1"), database, False)
        except (OSError, asyncpg.PostgresError):
            return cls(await asyncpg.connect(dsn), database, True)

    async def read(self) -> int:
        value = await self.connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            self.database)
        return int(value)

    async def close(self) -> None:
        await self.connection.close()


METRICS = {"reads": "sse_stream_database_reads_total",
           "wakeups": "sse_stream_wakeups_total",
           "replayed": "sse_stream_events_replayed_total",
           "from_memory": "sse_stream_events_replayed_from_memory_total"}


async def scrape(port: int) -> dict[str, float]:
    """The counters of METRICS from the server's /metrics (absent ones left out)."""
    found: dict[str, float] = {}
    names = {metric: key for key, metric in METRICS.items()}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[names[name]] = float(value)
    return found
