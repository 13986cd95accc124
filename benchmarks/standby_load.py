"""What the `standby` scenario measures with: a primary and a streaming
standby, the CPU of a cluster's processes, the primary's reads of the event
table, N server processes, and a paced publisher that counts its commits.

CPU of a cluster: utime + stime from /proc/PID/stat of the postmaster and of
every process whose parent it is (backends, WAL sender or receiver, startup,
checkpointer, ...), plus the postmaster's cutime + cstime, which hold the CPU
of children that exited (a short-lived connection's backend) once reaped.
Read at both ends of a window, the difference is all the cluster spent in it.

Reads of sse_stream.events: `seq_scan + idx_scan` of pg_stat_user_tables on
the primary, read afresh (pg_stat_clear_snapshot()). A backend publishes its
counters to the shared statistics at most once a second while busy, so each
end of a window may miss up to about a second of reads (the two ends mostly
cancel out over a steady window). The publisher's INSERTs scan nothing (its
trigger only calls pg_notify); the scenario's baseline cell, the publisher
with no server, shows it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from common import INSERT, PAD, ServerSide
from loadgen import SseConnection, connect
from server_process import ServerProcess

TICK = os.sysconf("SC_CLK_TCK")

READS = """
SELECT seq_scan + coalesce(idx_scan, 0) AS reads, n_tup_ins
FROM pg_stat_user_tables WHERE relid = 'sse_stream.events'::regclass
"""


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cluster_cpu(data_dir: Path) -> tuple[float, float]:
    """CPU seconds the cluster in `data_dir` has spent so far (see the module),
    and the part of it spent by children that have exited (autovacuum workers,
    short-lived connections)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    ticks = exited = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is None:
            continue
        if int(entry.name) == postmaster:
            exited = int(fields[13]) + int(fields[14])  # cutime cstime
            ticks += int(fields[11]) + int(fields[12]) + exited
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK, exited / TICK


@dataclass
class Pair:
    """A primary, a streaming hot standby of it, and a connection for statistics."""

    dsn: str
    standby_dsn: str
    primary_dir: Path
    standby_dir: Path
    folder: Path
    side: ServerSide
    stats: asyncpg.Connection

    async def reads(self) -> tuple[int, int]:
        """(seq_scan + idx_scan, n_tup_ins) of sse_stream.events on the primary, fresh."""
        await self.stats.execute("SELECT pg_stat_clear_snapshot()")
        row = await self.stats.fetchrow(READS)
        return int(row["reads"]), int(row["n_tup_ins"])

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until the standby has replayed what the primary has written."""
        target = await self.stats.fetchval("SELECT pg_current_wal_lsn()::text")
        standby = await asyncpg.connect(self.standby_dsn)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                                          target):
                    return
                await asyncio.sleep(0.05)
        finally:
            await standby.close()
        raise TimeoutError("the standby did not catch up")


@asynccontextmanager
async def primary_and_standby(side: ServerSide, keep: bool) -> AsyncIterator[Pair]:
    """An embedded primary (fsync off), migrated, and a streaming standby of it."""
    from sse_stream.db.embedded import EmbeddedPostgres

    folder = Path(tempfile.mkdtemp(prefix="sse-stream-bench-standby-"))
    primary = EmbeddedPostgres(folder / "primary", fast=True)
    standby = None
    stats = None
    try:
        dsn = primary.start()
        await side.migrate(dsn)
        standby = primary.replica(folder / "standby")
        standby_dsn = standby.start()
        stats = await asyncpg.connect(dsn)
        pair = Pair(dsn, standby_dsn, primary.data_dir, standby.data_dir, folder, side, stats)
        await pair.caught_up()
        yield pair
    finally:
        if stats is not None:
            await stats.close()
        if standby is not None:
            standby.stop("immediate")
        primary.stop("immediate")
        if keep:
            print(f"logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Servers:
    """N server processes on 127.0.0.1, each with one parsing subscriber."""

    processes: list[ServerProcess]
    subscribers: list[SseConnection]

    def cpu(self) -> float:
        return sum(process.cpu_seconds() for process in self.processes)

    def latencies(self) -> list[float]:
        return [value for s in self.subscribers if s.received for value in s.received.latencies]

    def restart_latencies(self) -> None:
        for subscriber in self.subscribers:
            if subscriber.received:
                subscriber.received.latencies.clear()

    def counts(self) -> list[int]:
        return [s.events for s in self.subscribers]


@asynccontextmanager
async def servers(pair: Pair, count: int, stream: str, *extra: str) -> AsyncIterator[Servers]:
    """`count` servers (`extra`: their flags), started together, each read by one live
    subscriber of `stream`; stopped by PID at the end."""
    async with AsyncExitStack() as stack:
        processes = []
        for index in range(count):
            process = ServerProcess(pair.dsn, pair.folder / f"serve-{index}.log",
                                    "--log-level", "WARNING", "--no-migrate", *extra,
                                    python=pair.side.python, src=pair.side.src)
            stack.callback(process.stop)
            processes.append(process)
        await asyncio.gather(*(process.ready() for process in processes))
        subscribers = [await connect(process.port, f"/streams/{stream}", parse=True)
                       for process in processes]
        for subscriber in subscribers:
            stack.callback(subscriber.close)
        yield Servers(processes, subscribers)


# -- the publisher ------------------------------------------------------------------


def _publish(dsn: str, stream: str, rate: float, seconds: float, commits: object,
             synchronous_commit: str) -> None:
    """One event per commit at `rate` commits/s for `seconds`; `commits` counts them."""

    async def run() -> None:
        connection = await asyncpg.connect(
            dsn, server_settings={"synchronous_commit": synchronous_commit})
        try:
            start = time.monotonic()
            seq = 0
            while True:
                now = time.monotonic()
                if now - start >= seconds:
                    return
                due = start + seq / rate
                if due > now:
                    await asyncio.sleep(due - now)
                seq += 1
                await connection.execute(INSERT, stream, seq, seq, 1000, PAD)
                with commits.get_lock():  # type: ignore[attr-defined]
                    commits.value = seq  # type: ignore[attr-defined]
        finally:
            await connection.close()

    asyncio.run(run())


class Publisher:
    """`_publish` in a process of its own (spawned), its commit count shared.

    `synchronous_commit` is set for the publisher's session. The embedded
    clusters run with it off (fast=True); then a commit reaches the WAL, and
    the WAL sender ships it to a standby, only when the WAL writer next runs
    (wal_writer_delay, 200 ms): up to 200 ms on the standby path that a
    production primary (on, the default) does not have. With fsync off, `on`
    costs a write() per commit and no disk flush.
    """

    def __init__(self, dsn: str, stream: str, rate: float, seconds: float,
                 synchronous_commit: str = "on") -> None:
        context = multiprocessing.get_context("spawn")
        self._commits = context.Value("q", 0)
        self.process = context.Process(target=_publish, daemon=True,
                                       args=(dsn, stream, rate, seconds, self._commits,
                                             synchronous_commit))

    @property
    def commits(self) -> int:
        with self._commits.get_lock():
            return int(self._commits.value)

    def start(self) -> None:
        self.process.start()

    async def started(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.commits == 0:
            if not self.process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the publisher did not start committing")
            await asyncio.sleep(0.01)

    async def finished(self, timeout: float) -> None:
        """Wait for the process to end (bounded); then terminate it by PID."""
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)


# -- a window -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Counters at one instant of a cell."""

    at: float
    commits: int
    primary_cpu: float
    primary_exited: float  # of primary_cpu: children that exited
    standby_cpu: float
    server_cpu: float
    reads: int
    inserts: int


async def sample(pair: Pair, publisher: Publisher, fleet: Servers | None) -> Sample:
    reads, inserts = await pair.reads()
    primary, exited = cluster_cpu(pair.primary_dir)
    return Sample(time.monotonic(), publisher.commits, primary, exited,
                  cluster_cpu(pair.standby_dir)[0], fleet.cpu() if fleet else 0.0, reads,
                  inserts)


async def delivered(fleet: Servers, total: int, timeout: float) -> int:
    """Wait (bounded) until every subscriber has `total` events; the events missing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and min(fleet.counts(), default=total) < total:
        await asyncio.sleep(0.05)
    return sum(max(0, total - count) for count in fleet.counts())
