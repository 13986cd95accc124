"""What the scenarios of benchmarks/run.py share, and no scenario itself.

Processes: the server under test (`ServerSide`: this checkout, or another
tree with its own interpreter, as benchmarks/ab.py runs it), the database
(`database`: the given DSN or an embedded PostgreSQL with fsync off) and the
server (`server`, optionally recorded by py-spy). Loading: the publisher and
the bulk loaders, all plain SQL on the event table (the publisher's plan of
transactions per rate: `batch_plan`, and `run.py --help`). Measurement:
deliveries, CPU, latencies, and `report`, which prints a scenario's table and
its one `RESULT ` JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's sse_stream
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))  # server_process
from loadgen import SseConnection
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent

# What run.py hands each scenario module's add_parser: (name, help, description)
# -> a subcommand parser that already has the options every scenario takes.
AddParser = Callable[[str, str, str | None], argparse.ArgumentParser]

PAD = "x" * 110  # with seq, user_id and ts: about 200 bytes of data per event

INSERT = """
INSERT INTO sse_stream.events (stream, type, data)
SELECT $1, 'bench.tick',
       jsonb_build_object('seq', s, 'user_id', s % $4, 'pad', $5::text,
                          'ts', extract(epoch FROM clock_timestamp()))
FROM generate_series($2::bigint, $3::bigint) AS s
"""

# peruser: $6 true puts each event on its user's own stream, <prefix>.u<user>.
PERUSER = """
INSERT INTO sse_stream.events (stream, type, data)
SELECT CASE WHEN $6 THEN $1 || '.u' || (s % $4) ELSE $1 END, 'bench.tick',
       jsonb_build_object('seq', s, 'u', s % $4, 'pad', $5::text,
                          'ts', extract(epoch FROM clock_timestamp()))
FROM generate_series($2::bigint, $3::bigint) AS s
"""

NUMBERED = """
INSERT INTO sse_stream.events (stream, type, data)
SELECT $1, 'bench.row', jsonb_build_object('n', s)
FROM generate_series(0, $2::bigint - 1) AS s
"""


# -- processes --------------------------------------------------------------------

SERVER_PYTHON_ENV = "SSE_STREAM_BENCH_SERVER_PYTHON"
SERVER_SRC_ENV = "SSE_STREAM_BENCH_SERVER_SRC"


@dataclass(frozen=True)
class ServerSide:
    """The interpreter and source tree the server (and the migration) run from."""

    python: str
    src: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerSide:
        python = args.server_python or os.environ.get(SERVER_PYTHON_ENV) or sys.executable
        src = args.server_src or os.environ.get(SERVER_SRC_ENV) or str(ROOT)
        return cls(python, Path(src).resolve())

    @property
    def is_this_checkout(self) -> bool:
        return self.src == ROOT and self.python == sys.executable

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.src)}

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "sse_stream.cli", *args]

    async def migrate(self, dsn: str) -> None:
        """Apply this side's sql/ migrations: in this process for this checkout, else its CLI."""
        if self.is_this_checkout:
            from sse_stream.db.migrate import migrate_dsn

            await migrate_dsn(dsn)
            return
        done = await asyncio.to_thread(
            subprocess.run, self.command("migrate", "--dsn", dsn, "--log-level", "WARNING"),
            env=self.env(), cwd=self.src, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"migrate with {self.python} in {self.src} exited with "
                               f"{done.returncode}: {done.stderr.strip()[-2000:]}")


@dataclass
class Setup:
    dsn: str
    folder: Path
    side: ServerSide


@asynccontextmanager
async def database(args: argparse.Namespace) -> AsyncIterator[Setup]:
    """The given DSN, or an embedded PostgreSQL (fsync off) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-bench-"))
    side = ServerSide.from_args(args)
    if not side.is_this_checkout:
        print(f"server side: {side.python} in {side.src}", file=sys.stderr)
    embedded = None
    try:
        if args.dsn:
            dsn = args.dsn
        else:
            from sse_stream.db.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(folder / "pgdata", fast=True)
            dsn = embedded.start()
        await side.migrate(dsn)
        yield Setup(dsn, folder, side)
    finally:
        if embedded is not None:
            embedded.stop("immediate")
        if args.keep_logs:
            print(f"logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def server(setup: Setup, *extra: str, profile: str | None = None
                 ) -> AsyncIterator[ServerProcess]:
    """A server process; with `profile`, py-spy samples it until the scenario ends.

    A profile path ending in .txt gets py-spy's raw format (collapsed stacks,
    one line per stack with its sample count); anything else a flame graph SVG.
    """
    process = ServerProcess(setup.dsn, setup.folder / "serve.log", "--log-level", "WARNING",
                            "--no-migrate", *extra, python=setup.side.python, src=setup.side.src)
    spy = None
    try:
        await process.ready()
        print(f"server pid {process.pid} on 127.0.0.1:{process.port}", file=sys.stderr)
        if profile:
            raw = ["--format", "raw"] if profile.endswith(".txt") else []
            # The venv's own py-spy when the venv is not on PATH.
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(process.pid), "--rate", "200",
                                    "-o", profile, *raw], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        yield process
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        process.stop()


# -- publishing -------------------------------------------------------------------


def batch_plan(rate: float, batch: int, per_tx: int = 0) -> tuple[int, float]:
    """Events per transaction and transactions per second for a rate (0: max);
    `per_tx` > 0 fixes the events per transaction."""
    if rate <= 0:
        return batch, 0.0
    if per_tx > 0:
        return per_tx, rate / per_tx
    if rate <= 100:
        return 1, rate
    per_tx = max(1, round(rate / 100))
    return per_tx, rate / per_tx


async def publish(dsn: str, stream: str, rate: float, seconds: float, *, batch: int = 100,
                  users: int = 1000, first: int = 1,
                  per_user: bool | None = None, per_tx: int = 0) -> tuple[int, float]:
    """Publish for `seconds`; return (events published, seconds spent).

    `per_user` None: INSERT (data.user_id); False: PERUSER on `stream` (data.u);
    True: PERUSER, each event on its user's stream `stream`.u<user>.
    """
    per_tx, tx_rate = batch_plan(rate, batch, per_tx)
    connection = await asyncpg.connect(dsn)
    seq = first
    try:
        start = time.monotonic()
        ticks = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if tx_rate:
                due = start + ticks / tx_rate
                if due > now:
                    await asyncio.sleep(due - now)
                ticks += 1
            if per_user is None:
                await connection.execute(INSERT, stream, seq, seq + per_tx - 1, users, PAD)
            else:
                await connection.execute(PERUSER, stream, seq, seq + per_tx - 1, users, PAD,
                                         per_user)
            seq += per_tx
        return seq - first, time.monotonic() - start
    finally:
        await connection.close()


def _publish_process(dsn: str, stream: str, rate: float, seconds: float, batch: int,
                     users: int, per_user: bool | None, per_tx: int) -> tuple[int, float]:
    return asyncio.run(publish(dsn, stream, rate, seconds, batch=batch, users=users,
                               per_user=per_user, per_tx=per_tx))


async def publish_elsewhere(dsn: str, stream: str, rate: float, seconds: float, *,
                            batch: int = 100, users: int = 1000,
                            per_user: bool | None = None, per_tx: int = 0) -> tuple[int, float]:
    """`publish` in a process of its own, so a busy load generator cannot slow it down."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return await asyncio.get_running_loop().run_in_executor(
            pool, _publish_process, dsn, stream, rate, seconds, batch, users, per_user, per_tx)
    finally:
        # Off the loop: a blocking shutdown (the `with` block's) stalled the
        # load generator's loop for the worker's exit, some 30 ms, just as
        # the last events arrived, and counted it as their latency.
        await asyncio.to_thread(pool.shutdown)


async def load_rows(dsn: str, stream: str, count: int) -> float:
    """Store `count` events in one INSERT ... SELECT generate_series; return seconds."""
    connection = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        await connection.execute(INSERT, stream, 1, count, 1000, PAD)
        await connection.execute("ANALYZE sse_stream.events")
        return time.monotonic() - start
    finally:
        await connection.close()


async def load_numbered(dsn: str, stream: str, count: int) -> float:
    """Store `count` events with data {"n": k}, k = 0 .. count-1, in one INSERT; return seconds."""
    connection = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        await connection.execute(NUMBERED, stream, count)
        await connection.execute("ANALYZE sse_stream.events")
        return time.monotonic() - start
    finally:
        await connection.close()


# -- measuring --------------------------------------------------------------------


async def wait_for(connections: Sequence[SseConnection], expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(c.events for c in connections) < expected:
        await asyncio.sleep(0.05)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Delivered:
    """What the subscribers got once the publisher stopped and they drained."""

    received: int
    elapsed: float  # the publisher's own clock, plus however long deliveries ran on after it
    server_cpu: float
    loadgen_cpu: float
    closed_early: int
    latencies: list[float]


async def delivered(connections: Sequence[SseConnection], expected: int, drain: float,
                    srv: ServerProcess, since: tuple[float, float, float],
                    published_at: tuple[float, float]) -> Delivered:
    """Wait (at most `drain` s) for `expected` deliveries, then measure them.
    `since`: (monotonic start, server CPU, own CPU) when publishing began;
    `published_at`: (monotonic end of publishing, the publisher's seconds)."""
    start, cpu0, mine0 = since
    end, pub_seconds = published_at
    await wait_for(connections, expected, drain)
    last = max((c.last_rx for c in connections), default=start)
    return Delivered(sum(c.events for c in connections), pub_seconds + max(0.0, last - end),
                     srv.cpu_seconds() - cpu0, own_cpu() - mine0,
                     sum(1 for c in connections if c.done.done()), latencies(connections))


def latencies(connections: Sequence[SseConnection]) -> list[float]:
    return [value for c in connections if c.received for value in c.received.latencies]


def ms(value: float) -> float:
    return round(value * 1000, 1)


def report(name: str, rows: list[tuple[str, Any]], result: dict[str, Any]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n{name}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print("RESULT " + orjson.dumps({"scenario": name, **result}).decode(), flush=True)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)

