"""sse-stream benchmarks: `python benchmarks/run.py SCENARIO [options]`.

Scenarios: fanout, filtered, peruser, idle, replay, page, churn, hostile,
webhooks (see benchmarks/README.md; webhooks: benchmarks/webhooks_bench.py).
Each starts its own `sse-stream serve` process on 127.0.0.1 (and, without
--dsn, its own embedded PostgreSQL with fsync off), runs for a bounded time,
prints a table and one JSON line (prefixed `RESULT `), and stops what it
started by PID. The load generator runs in this process (benchmarks/loadgen.py).

The server under test: by default this checkout, run by this interpreter.
`--server-python PATH --server-src DIR` (or the environment variables
SSE_STREAM_BENCH_SERVER_PYTHON and SSE_STREAM_BENCH_SERVER_SRC) run the server,
and the schema migration, from another source tree with its own interpreter
(a venv with that tree installed, so that its sql/ is the one found), while
the load generator, the publisher and the embedded PostgreSQL stay this
checkout's: that is how benchmarks/ab.py compares two commits.

Publishing: events are written with SQL in batches, one INSERT ... SELECT
generate_series per transaction, so the publisher is never the bottleneck.
At a rate R up to 100 events/s a transaction carries one event (R tx/s);
above that there are 100 transactions per second of R/100 events each
(R=1000: 100 tx/s of 10 events). `--rate 0` ("max") commits batches of
`--batch` events (default 100) back to back on one connection.

peruser: S subscribers, one user each; every event is for exactly one user.
    python benchmarks/run.py peruser --mode filter    # one stream, ?data.u=eq.K each
    python benchmarks/run.py peruser --mode stream    # one stream per user, s<tag>.uK
    python benchmarks/run.py peruser --mode filter --subscribers 10000 --rate 200
Event k (k = 1, 2, ...) has data {"seq": k, "u": k % S, ...} and, in stream
mode, goes to the stream <prefix>.u<k % S>. Subscriber K receives only user K's
events, each once: published events = expected deliveries; an event of
another user, or a repeat, counts in "misdelivered" / "duplicated". Every
subscriber parses its frames (latency of every delivery).

page: one client reads a stream of --rows events in JSON pages of --limit
(1,000) rows, `GET /streams/S/events?after=P&limit=L` following next_after,
--passes times; page latency is the request's start to its body fully read.
    python benchmarks/run.py page                      # 100,000 rows, 3 passes
    python benchmarks/run.py page --query "data.user_id=eq.7"

hostile: what heavy readers do to live delivery and publishing (SPEC §6).
    python benchmarks/run.py hostile                          # 1,000,000 rows, H = 0, 10, 50
    python benchmarks/run.py hostile --rows 200000 --levels 0,10   # quicker
    python benchmarks/run.py hostile --server-flags "--pool-size 8"
One server; a stream big<suffix> of --rows events with data {"n": k}, k >= 0.
Per level H, against the same server: about 5/9 of H page loops (GET
/streams/big/events?after=...&data.n=eq.-1&limit=1000 following next_after,
from after=0 again when has_more is false) and the rest replays (SSE
?last_event_id=0&live=false&data.n=eq.-1, reopened when they end); the filter
matches nothing, so every reader scans the whole stream. After --warmup s a
live subscriber opens on calm<suffix> and --events events are POSTed to it,
one every --interval s, each on its own schedule: publish latency is POST
start to 201, live latency POST start to the event's arrival (matched by the
returned id); a tick not answered, or not delivered within --drain s of the
last answer, counts as infinite ("missing"; null in the JSON). 503/429 with
Retry-After count as refusals (the wait is capped at 1 s), a page or replay
silent for --page-timeout s as a timeout. A level lasts at most
--level-seconds; before each the database is left to settle (no active
query, at most 30 s). p99 of 40 samples is their maximum. Server CPU % is the
sse-stream process only (PostgreSQL does the scanning).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))  # server_process
import webhooks_bench
from loadgen import SseConnection, connect, connect_many, percentile, raise_open_files
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
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
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(process.pid), "--rate", "200",
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

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await asyncio.get_running_loop().run_in_executor(
            pool, _publish_process, dsn, stream, rate, seconds, batch, users, per_user, per_tx)


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


# -- scenarios --------------------------------------------------------------------


async def fanout(args: argparse.Namespace, *, filtered: bool = False) -> dict[str, Any]:
    stream = "bench" + uuid.uuid4().hex[:8]
    async with database(args) as setup, server(setup, "--heartbeat", str(args.heartbeat),
                                            profile=args.profile) as srv:
        if filtered:
            paths = [f"/streams/{stream}?data.user_id=eq.{k}" for k in range(args.subscribers)]
            parse_every = 1  # one event per second each: parsing all is cheap
        else:
            paths = [f"/streams/{stream}"] * args.subscribers
            parse_every = max(1, args.subscribers // args.sample)
        connections = await connect_many(srv.port, paths, parse_every=parse_every)
        load0, since = load_average(), (time.monotonic(), srv.cpu_seconds(), own_cpu())
        published, pub_seconds = await publish_elsewhere(
            setup.dsn, stream, args.rate, args.seconds, batch=args.batch, users=args.subscribers)
        matching = published if filtered else published * args.subscribers
        got = await delivered(connections, matching, args.drain, srv, since,
                              (time.monotonic(), pub_seconds))
        received, elapsed, cpu, mine = got.received, got.elapsed, got.server_cpu, got.loadgen_cpu
        lost, lat = got.closed_early, got.latencies
        for connection in connections:
            connection.close()
        result = {
            "subscribers": args.subscribers, "rate": args.rate or "max", "seconds": args.seconds,
            "published": published, "events_per_s": round(published / pub_seconds),
            "offered_deliveries_per_s": round(matching / pub_seconds),
            "achieved_deliveries_per_s": round(received / elapsed),
            "delivered_pct": round(100 * received / matching, 3) if matching else 100.0,
            "latency_ms": {"p50": ms(percentile(lat, .5)), "p99": ms(percentile(lat, .99)),
                           "max": ms(max(lat, default=float("nan"))), "samples": len(lat)},
            "server_cpu_s": round(cpu, 2),
            "server_cpu_us_per_delivery": round(cpu * 1e6 / received, 2) if received else None,
            "server_peak_rss_mib": round(srv.memory_kib("VmHWM") / 1024, 1),
            "loadgen_cpu_s": round(mine, 2), "streams_closed_early": lost,
            "load_average": load0,
        }
    rows = [("subscribers", result["subscribers"]), ("rate (events/s)", result["rate"]),
            ("published / achieved events/s", f"{published} / {result['events_per_s']}"),
            ("deliveries/s offered", result["offered_deliveries_per_s"]),
            ("deliveries/s achieved", result["achieved_deliveries_per_s"]),
            ("delivered", f"{result['delivered_pct']} %"),
            ("latency p50 / p99 / max (ms)", "{p50} / {p99} / {max} ({samples} samples)"
             .format(**result["latency_ms"])),
            ("server CPU s (us/delivery)",
             f"{result['server_cpu_s']} ({result['server_cpu_us_per_delivery']})"),
            ("server peak RSS (MiB)", result["server_peak_rss_mib"]),
            ("load generator CPU s", result["loadgen_cpu_s"]),
            ("load average at start", load0)]
    report("filtered" if filtered else "fanout", rows, result)
    return result


async def peruser(args: argparse.Namespace) -> dict[str, Any]:
    """S subscribers, one user each; each event is for exactly one of them.

    filter mode: one stream, subscriber K asks for ?data.u=eq.K; stream mode:
    subscriber K reads the stream <prefix>.uK. Every subscriber parses (one
    event every S/R seconds each), so every delivery gives a latency.
    """
    users = args.subscribers
    prefix = "s" + uuid.uuid4().hex[:8]
    by_stream = args.mode == "stream"
    if by_stream:
        paths = [f"/streams/{prefix}.u{k}" for k in range(users)]
    else:
        paths = [f"/streams/{prefix}?data.u=eq.{k}" for k in range(users)]
    async with database(args) as setup, server(setup, "--heartbeat", str(args.heartbeat),
                                            profile=args.profile) as srv:
        opened = time.monotonic()
        # 100 at a time, below the server's listen backlog (128): 200 overflow it at times,
        # and a dropped SYN is retried after 1 s.
        connections = await connect_many(srv.port, paths, parse_every=1, concurrency=100)
        open_seconds = time.monotonic() - opened
        load0, since = load_average(), (time.monotonic(), srv.cpu_seconds(), own_cpu())
        published, pub_seconds = await publish_elsewhere(
            setup.dsn, prefix, args.rate, args.seconds, batch=args.batch, users=users,
            per_user=by_stream, per_tx=args.per_tx)
        got = await delivered(connections, published, args.drain, srv, since,
                              (time.monotonic(), pub_seconds))
        received, elapsed, cpu, mine = got.received, got.elapsed, got.server_cpu, got.loadgen_cpu
        lost, lat = got.closed_early, got.latencies
        misdelivered = duplicated = 0
        for k, connection in enumerate(connections):
            seqs = connection.received.seqs if connection.received else []
            misdelivered += sum(1 for seq in seqs if seq % users != k)
            duplicated += len(seqs) - len(set(seqs))
        for connection in connections:
            connection.close()
        peak = round(srv.memory_kib("VmHWM") / 1024, 1)
    result = {
        "mode": args.mode, "subscribers": users, "rate": args.rate or "max",
        "per_tx": args.per_tx,
        "seconds": args.seconds, "published": published,
        "events_per_s": round(published / pub_seconds),
        "achieved_deliveries_per_s": round(received / elapsed) if elapsed else 0,
        "delivered_pct": round(100 * received / published, 3) if published else 100.0,
        "misdelivered": misdelivered, "duplicated": duplicated,
        "latency_ms": {"p50": ms(percentile(lat, .5)), "p99": ms(percentile(lat, .99)),
                       "max": ms(max(lat, default=float("nan"))), "samples": len(lat)},
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_delivery": round(cpu * 1e6 / received, 1) if received else None,
        "server_peak_rss_mib": peak, "open_seconds": round(open_seconds, 2),
        "loadgen_cpu_s": round(mine, 2), "streams_closed_early": lost, "load_average": load0,
    }
    how = (f"a stream per user ({prefix}.uK)" if by_stream
           else f"one stream, ?data.u=eq.K each ({prefix})")
    rows = [("mode", f"{args.mode}: {how}"), ("subscribers (users)", users),
            ("rate (events/s)", result["rate"]),
            ("published / achieved events/s", f"{published} / {result['events_per_s']}"),
            ("delivered", f"{received} of {published}: {result['delivered_pct']} %"),
            ("misdelivered / duplicated", f"{misdelivered} / {duplicated}"),
            ("latency p50 / p99 / max (ms)", "{p50} / {p99} / {max} ({samples} samples)"
             .format(**result["latency_ms"])),
            ("server CPU s (us/delivery)",
             f"{result['server_cpu_s']} ({result['server_cpu_us_per_delivery']})"),
            ("server peak RSS (MiB)", peak),
            ("time to open all (s)", result["open_seconds"]),
            ("streams closed early", lost),
            ("load generator CPU s", result["loadgen_cpu_s"]),
            ("load average at start", load0)]
    report("peruser", rows, result)
    return result


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    stream = "idle" + uuid.uuid4().hex[:8]
    heartbeat = args.heartbeat
    async with database(args) as setup, server(setup, "--heartbeat", str(heartbeat),
                                            profile=args.profile) as srv:
        await asyncio.sleep(1)
        before = srv.memory_kib("VmRSS")
        load0, cpu0 = load_average(), srv.cpu_seconds()
        opened = time.monotonic()
        connections = await connect_many(srv.port, [f"/streams/{stream}"] * args.streams)
        open_seconds = time.monotonic() - opened
        cpu_open = srv.cpu_seconds() - cpu0
        held = time.monotonic()
        cpu1 = srv.cpu_seconds()
        await asyncio.sleep(args.seconds)
        hold_seconds = time.monotonic() - held
        cpu_hold = srv.cpu_seconds() - cpu1
        after = srv.memory_kib("VmRSS")
        now = time.monotonic()
        slack = heartbeat / 4 + 1.0
        kept = [c for c in connections if not c.done.done()]
        on_time = [c for c in kept
                   if max(c.max_gap, now - c.last_rx) <= heartbeat + slack
                   and c.keepalives >= int(args.seconds / heartbeat) - 1]
        worst = max((max(c.max_gap, now - c.last_rx) for c in kept), default=float("nan"))
        for connection in connections:
            connection.close()
        result = {
            "streams": args.streams, "seconds": round(hold_seconds, 1), "heartbeat_s": heartbeat,
            "kept": len(kept), "heartbeats_on_time": len(on_time),
            "worst_silence_s": round(worst, 2), "slack_s": slack,
            "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
            "rss_per_stream_kib": round((after - before) / args.streams, 2),
            "open_seconds": round(open_seconds, 1), "server_cpu_open_s": round(cpu_open, 2),
            "server_cpu_hold_s": round(cpu_hold, 2), "load_average": load0,
        }
    rows = [("streams", args.streams), ("held (s)", result["seconds"]),
            ("kept", result["kept"]),
            ("heartbeats on time", f"{len(on_time)} (worst silence {result['worst_silence_s']} s, "
                                   f"heartbeat {heartbeat} s + slack {slack} s)"),
            ("RSS before / after (MiB)", f"{result['rss_before_mib']} / {result['rss_after_mib']}"),
            ("RSS per stream (KiB)", result["rss_per_stream_kib"]),
            ("time to open all (s)", result["open_seconds"]),
            ("server CPU opening / holding (s)",
             f"{result['server_cpu_open_s']} / {result['server_cpu_hold_s']}"),
            ("load average at start", load0)]
    report("idle", rows, result)
    return result


async def replay(args: argparse.Namespace) -> dict[str, Any]:
    big, small = "replay" + uuid.uuid4().hex[:8], "replays" + uuid.uuid4().hex[:8]
    async with database(args) as setup:
        load_big = await load_rows(setup.dsn, big, args.events)
        await load_rows(setup.dsn, small, args.each)
        async with server(setup, profile=args.profile) as srv:
            load0, cpu0 = load_average(), srv.cpu_seconds()
            start = time.monotonic()
            one = await connect(srv.port, f"/streams/{big}?last_event_id=0&live=false")
            await asyncio.wait_for(one.done, args.timeout)
            one_seconds = time.monotonic() - start
            cpu_one = srv.cpu_seconds() - cpu0

            cpu1 = srv.cpu_seconds()
            start = time.monotonic()
            many = await connect_many(srv.port, [f"/streams/{small}?last_event_id=0&live=false"]
                                      * args.clients)
            await asyncio.wait_for(asyncio.gather(*(c.done for c in many)), args.timeout)
            many_seconds = time.monotonic() - start
            cpu_many = srv.cpu_seconds() - cpu1
            many_events = sum(c.events for c in many)
            complete = sum(1 for c in many if c.events == args.each)
    result = {
        "events": args.events, "load_seconds": round(load_big, 1),
        "one_client_events": one.events, "one_client_seconds": round(one_seconds, 2),
        "one_client_events_per_s": round(one.events / one_seconds),
        "one_client_server_cpu_s": round(cpu_one, 2),
        "clients": args.clients, "each": args.each, "clients_complete": complete,
        "many_events_per_s": round(many_events / many_seconds),
        "many_seconds": round(many_seconds, 2), "many_server_cpu_s": round(cpu_many, 2),
        "load_average": load0,
    }
    rows = [("one client: events", f"{one.events} of {args.events}"),
            ("one client: seconds / events/s",
             f"{result['one_client_seconds']} / {result['one_client_events_per_s']}"),
            ("one client: server CPU s", result["one_client_server_cpu_s"]),
            (f"{args.clients} clients x {args.each}: complete", complete),
            (f"{args.clients} clients: seconds / events/s",
             f"{result['many_seconds']} / {result['many_events_per_s']}"),
            (f"{args.clients} clients: server CPU s", result["many_server_cpu_s"]),
            ("load average at start", load0)]
    report("replay", rows, result)
    return result


async def page(args: argparse.Namespace) -> dict[str, Any]:
    """One client reads --rows events in JSON pages of --limit rows, --passes times."""
    stream = "pages" + uuid.uuid4().hex[:8]
    extra = "&" + args.query.lstrip("&?") if args.query else ""
    async with database(args) as setup:
        loaded = await load_rows(setup.dsn, stream, args.rows)
        async with server(setup, profile=args.profile) as srv:
            base = f"http://127.0.0.1:{srv.port}/streams/{stream}/events?limit={args.limit}{extra}"
            times: list[float] = []
            sizes: list[int] = []
            events = passes = 0
            limit = aiohttp.ClientTimeout(total=args.timeout)
            load0, cpu0 = load_average(), srv.cpu_seconds()
            start = time.monotonic()
            async with aiohttp.ClientSession(timeout=limit) as session:
                for _ in range(args.passes):
                    after = "0"
                    while True:
                        began = time.monotonic()
                        async with session.get(f"{base}&after={after}") as response:
                            body = await response.read()
                            took = time.monotonic() - began
                            if response.status != 200:
                                raise RuntimeError(f"page after={after}: {response.status} "
                                                   f"{body[:200]!r}")
                        times.append(took)
                        sizes.append(len(body))
                        answer = orjson.loads(body)
                        events += len(answer["events"])
                        after = answer["next_after"]
                        if not answer["has_more"]:
                            break
                    passes += 1
            seconds = time.monotonic() - start
            cpu = srv.cpu_seconds() - cpu0
    pages = len(times)
    result = {
        "rows": args.rows, "limit": args.limit, "query": args.query, "passes": passes,
        "load_seconds": round(loaded, 1), "pages": pages, "events": events,
        "page_ms": {"p50": ms(percentile(times, .5)), "p99": ms(percentile(times, .99)),
                    "max": ms(max(times, default=float("nan")))},
        "page_bytes": round(sum(sizes) / pages) if pages else 0,
        "events_per_s": round(events / sum(times)) if times else 0,
        "total_seconds": round(seconds, 2),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_page": round(cpu * 1e6 / pages) if pages else None,
        "server_cpu_us_per_event": round(cpu * 1e6 / events, 2) if events else None,
        "load_average": load0,
    }
    rows = [("rows / limit / passes", f"{args.rows} / {args.limit} / {passes}"),
            ("query", args.query or "(none)"),
            ("pages / events", f"{pages} / {events}"),
            ("page p50 / p99 / max (ms)", "{p50} / {p99} / {max}".format(**result["page_ms"])),
            ("bytes per page", result["page_bytes"]),
            ("events/s (within requests)", result["events_per_s"]),
            ("server CPU s (us/page, us/event)",
             f"{result['server_cpu_s']} ({result['server_cpu_us_per_page']}, "
             f"{result['server_cpu_us_per_event']})"),
            ("load average at start", load0)]
    report("page", rows, result)
    return result


def _position(text: str) -> tuple[int, int]:
    xid, id_ = text.split("-")
    return int(xid), int(id_)


async def churn(args: argparse.Namespace) -> dict[str, Any]:
    """Churning clients reconnect with Last-Event-ID; each one's events are checked.

    A churning client opens live-only, holds each connection for a random
    0.2*hold..1.8*hold seconds, closes it and reconnects with the last id it
    saw. Its window runs from the bare id of its first connection to the last
    id of its last one; the events it received, concatenated, must be exactly
    the stream's events in that window, in order.
    """
    stream = "churn" + uuid.uuid4().hex[:8]
    clients = max(1, round(args.connects * args.hold))
    path = f"/streams/{stream}"
    async with database(args) as setup, server(setup, "--heartbeat", str(args.heartbeat),
                                            profile=args.profile) as srv:
        steady = await connect_many(srv.port, [path] * args.subscribers, parse_every=1)
        stop_at = time.monotonic() + args.seconds
        connects = 0
        failures: list[str] = []

        async def churner() -> tuple[tuple[int, int], tuple[int, int], list[int]]:
            nonlocal connects
            connection = await connect(srv.port, path, parse=True)
            connects += 1
            assert connection.last_id is not None
            first = _position(connection.last_id)
            seqs: list[int] = []
            while True:
                await asyncio.sleep(random.uniform(0.2, 1.8) * args.hold)
                connection.close()
                await connection.done
                assert connection.received is not None and connection.last_id is not None
                seqs += connection.received.seqs
                last_id = connection.last_id
                if time.monotonic() >= stop_at:
                    return first, _position(last_id), seqs
                try:
                    connection = await connect(srv.port, path, last_id, parse=True)
                    connects += 1
                except (OSError, ConnectionError, TimeoutError) as error:
                    failures.append(repr(error))
                    await asyncio.sleep(0.1)
                    connection = await connect(srv.port, path, last_id, parse=True)

        load0, cpu0 = load_average(), srv.cpu_seconds()
        start = time.monotonic()
        tasks = [asyncio.create_task(churner()) for _ in range(clients)]
        published, _ = await publish_elsewhere(setup.dsn, stream, args.rate, args.seconds)
        windows = await asyncio.gather(*tasks)
        seconds = time.monotonic() - start
        cpu = srv.cpu_seconds() - cpu0
        await wait_for(steady, published * len(steady), args.drain)
        lat = latencies(steady)
        steady_complete = sum(1 for c in steady if c.received and
                              c.received.seqs == list(range(1, published + 1)))
        for connection in steady:
            connection.close()
        check = await asyncpg.connect(setup.dsn)
        try:
            rows = await check.fetch("SELECT xid::text::bigint AS xid, id, (data->>'seq')::bigint "
                                     "AS seq FROM sse_stream.events WHERE stream = $1 "
                                     "ORDER BY xid, id", stream)
        finally:
            await check.close()
    stored = [((row["xid"], row["id"]), row["seq"]) for row in rows]
    exact = 0
    lost = duplicated = 0
    for first, last, seqs in windows:
        expected = [seq for position, seq in stored if first < position <= last]
        if seqs == expected:
            exact += 1
        else:
            lost += len(set(expected) - set(seqs))
            duplicated += len(seqs) - len(set(seqs))
    checked = sum(len(seqs) for _, _, seqs in windows)
    result = {
        "connects_per_s": round(connects / args.seconds), "churning_clients": clients,
        "seconds": round(seconds, 1), "rate": args.rate, "published": published,
        "churn_windows_exact": exact, "churn_windows": len(windows), "events_checked": checked,
        "lost": lost, "duplicated": duplicated, "connect_failures": len(failures),
        "steady_subscribers": len(steady), "steady_complete": steady_complete,
        "steady_latency_ms": {"p50": ms(percentile(lat, .5)), "p99": ms(percentile(lat, .99)),
                              "max": ms(max(lat, default=float("nan")))},
        "server_cpu_s": round(cpu, 2), "load_average": load0,
    }
    rows = [("connects/s (churning clients)", f"{result['connects_per_s']} ({clients})"),
            ("events published (rate)", f"{published} ({args.rate}/s)"),
            ("churn windows exact", f"{exact} of {len(windows)} ({checked} events checked)"),
            ("lost / duplicated", f"{lost} / {duplicated}"),
            ("steady subscribers complete", f"{steady_complete} of {len(steady)}"),
            ("steady latency p50 / p99 / max (ms)",
             "{p50} / {p99} / {max}".format(**result["steady_latency_ms"])),
            ("server CPU s", result["server_cpu_s"]), ("load average at start", load0)]
    report("churn", rows, result)
    return result


# -- hostile readers ------------------------------------------------------------------

REFUSED = (429, 503)
RETRY_AFTER_CAP = 1.0   # seconds: a refusal's Retry-After is honoured up to this
RETRY_AFTER_FLOOR = 0.05  # and a Retry-After of 0 does not make a busy loop


@dataclass
class HostileCounts:
    """What the hostile readers of one level did."""

    pages: int = 0        # pages answered 200
    empty_more: int = 0   # of them: no events but has_more true (a bounded scan)
    passes: int = 0       # page loops that reached has_more false
    replays: int = 0      # replays that ended on their own
    refusals: int = 0     # 503 (or 429) with Retry-After
    timeouts: int = 0     # a page not answered, or a replay silent, for --page-timeout s
    errors: int = 0       # any other status, or a broken connection
    page_seconds: list[float] = field(default_factory=list)


def retry_after(headers: Any) -> float:
    """The Retry-After of a refusal in seconds, within RETRY_AFTER_FLOOR..RETRY_AFTER_CAP."""
    try:
        seconds = float(headers.get("Retry-After", RETRY_AFTER_CAP))
        return max(RETRY_AFTER_FLOOR, min(seconds, RETRY_AFTER_CAP))
    except ValueError:  # an HTTP-date
        return RETRY_AFTER_CAP


async def page_loop(session: aiohttp.ClientSession, base: str, stream: str,
                    counts: HostileCounts, timeout: float) -> None:
    """Page through `stream` with a filter that matches nothing, until cancelled."""
    after = "0"
    limit = aiohttp.ClientTimeout(total=timeout)
    while True:
        url = f"{base}/streams/{stream}/events?after={after}&data.n=eq.-1&limit=1000"
        start = time.monotonic()
        try:
            async with session.get(url, timeout=limit) as response:
                if response.status in REFUSED:
                    counts.refusals += 1
                    await asyncio.sleep(retry_after(response.headers))
                    continue
                if response.status != 200:
                    counts.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                page = orjson.loads(await response.read())
        except TimeoutError:
            counts.timeouts += 1  # ask for the same page again
            continue
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError):
            counts.errors += 1
            await asyncio.sleep(0.1)
            continue
        counts.pages += 1
        counts.page_seconds.append(time.monotonic() - start)
        if page["has_more"]:
            if not page["events"]:
                counts.empty_more += 1
            after = page["next_after"]
        else:
            counts.passes += 1
            after = "0"


async def replay_loop(session: aiohttp.ClientSession, base: str, stream: str,
                      counts: HostileCounts, timeout: float) -> None:
    """Replay `stream` with a filter that matches nothing, reopened when it ends, until cancelled.

    aiohttp rather than loadgen's SseConnection: a refusal's Retry-After is needed.
    """
    url = f"{base}/streams/{stream}?last_event_id=0&live=false&data.n=eq.-1"
    limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    while True:
        try:
            async with session.get(url, timeout=limit,
                                   headers={"Accept": "text/event-stream"}) as response:
                if response.status in REFUSED:
                    counts.refusals += 1
                    await asyncio.sleep(retry_after(response.headers))
                    continue
                if response.status != 200:
                    counts.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                async for _ in response.content.iter_any():
                    pass
        except TimeoutError:
            counts.timeouts += 1
            continue
        except (aiohttp.ClientError, OSError):
            counts.errors += 1
            await asyncio.sleep(0.1)
            continue
        counts.replays += 1


class ArrivalProbe(SseConnection):
    """A live-only subscriber that records when (monotonic) each event id arrived."""

    def __init__(self, path: str) -> None:
        super().__init__(path, parse=True, ready_frames=2)  # registered at its bare id: line
        self.arrived: dict[int, float] = {}

    def _parse(self, complete: bytes) -> None:
        now = time.monotonic()
        for frame in complete.split(b"\n\n"):
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    self.events += 1
                    self.arrived.setdefault(orjson.loads(line[6:])["id"], now)


async def open_probe(port: int, path: str, timeout: float) -> ArrivalProbe:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: ArrivalProbe(path), "127.0.0.1", port), timeout)
    await asyncio.wait_for(asyncio.shield(protocol.ready), timeout)
    return protocol


@dataclass
class Post:
    """One HTTP publish: when its POST started and got its 201, and the id returned."""

    start: float
    end: float | None = None
    id: int | None = None
    outcome: str = "timeout"  # the status, or what went wrong


async def post_one(session: aiohttp.ClientSession, base: str, stream: str, due: float,
                   deadline: float) -> Post:
    """POST one tick at monotonic time `due`; give up at `deadline`."""
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    body = orjson.dumps({"type": "tick", "data": {"sent": time.time()}})
    post = Post(time.monotonic())
    limit = aiohttp.ClientTimeout(total=max(0.1, deadline - post.start))
    try:
        async with session.post(f"{base}/streams/{stream}/events", data=body, timeout=limit,
                                headers={"Content-Type": "application/json"}) as response:
            answer = await response.read()
            post.outcome = str(response.status)
            if response.status == 201:
                post.end = time.monotonic()
                post.id = orjson.loads(answer)["ids"][0]
    except TimeoutError:
        pass
    except (aiohttp.ClientError, OSError) as error:
        post.outcome = type(error).__name__
    return post


INF = float("inf")


@dataclass
class LiveProbe:
    """Live and publish latencies (seconds) of one level's ticks, INF when missing."""

    live: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


async def measure_live(args: argparse.Namespace, port: int, base: str, stream: str,
                       deadline: float) -> LiveProbe:
    """Subscribe to `stream` live, POST --events ticks --interval apart, match arrivals by id."""
    result = LiveProbe()
    try:
        probe = await open_probe(port, f"/streams/{stream}",
                                 max(0.1, min(30.0, deadline - time.monotonic())))
    except (OSError, ConnectionError, TimeoutError) as error:
        result.error = f"live subscriber: {error!r}"
        return result
    try:
        async with aiohttp.ClientSession() as session:
            first = time.monotonic()
            posts = await asyncio.gather(*(
                post_one(session, base, stream, first + k * args.interval, deadline)
                for k in range(args.events)))
        ids = {post.id for post in posts if post.id is not None}
        drain_until = min(deadline, time.monotonic() + args.drain)
        while time.monotonic() < drain_until and not ids <= probe.arrived.keys():
            await asyncio.sleep(0.05)
    finally:
        probe.close()
    for post in posts:  # a tick not answered, or not delivered, in time counts as infinite
        result.outcomes[post.outcome] = result.outcomes.get(post.outcome, 0) + 1
        result.publish.append(INF if post.end is None else post.end - post.start)
        arrived = probe.arrived.get(post.id) if post.id is not None else None
        result.live.append(INF if arrived is None else arrived - post.start)
    return result


async def wait_quiet(dsn: str, timeout: float = 30) -> float:
    """Wait until no other query is active in the database, at most `timeout`; return seconds."""
    connection = await asyncpg.connect(dsn)
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout and await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND pid <> pg_backend_pid() AND datname = current_database()"):
            await asyncio.sleep(0.2)
        return time.monotonic() - start
    finally:
        await connection.close()


def split_hostile(level: int) -> tuple[int, int]:
    """(page loops, replays) for `level` hostile readers: about 5/9 of them page loops."""
    loops = round(level * 5 / 9)
    return loops, level - loops


async def hostile_level(args: argparse.Namespace, setup: Setup, srv: ServerProcess, big: str,
                        calm: str, level: int) -> dict[str, Any]:
    """One level: `level` hostile readers of `big` while ticks are published to `calm`."""
    base = f"http://127.0.0.1:{srv.port}"
    settle = await wait_quiet(setup.dsn)
    loops, replays = split_hostile(level)
    counts = HostileCounts()
    load0, cpu0, mine0 = load_average(), srv.cpu_seconds(), own_cpu()
    start = time.monotonic()
    deadline = start + args.level_seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = ([asyncio.create_task(page_loop(session, base, big, counts, args.page_timeout))
                  for _ in range(loops)]
                 + [asyncio.create_task(replay_loop(session, base, big, counts,
                                                    args.page_timeout))
                    for _ in range(replays)])
        try:
            await asyncio.sleep(min(args.warmup, args.level_seconds / 4))
            probe = await measure_live(args, srv.port, base, calm, deadline)
        finally:
            stopped = time.monotonic()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    seconds = stopped - start
    cpu = srv.cpu_seconds() - cpu0
    return {
        "level": level, "page_loops": loops, "replays": replays, "seconds": round(seconds, 1),
        "settle_s": round(settle, 1), "refusals": counts.refusals, "timeouts": counts.timeouts,
        "errors": counts.errors, "pages": counts.pages,
        "pages_per_s": round(counts.pages / seconds, 1),
        "empty_pages_with_more": counts.empty_more, "page_passes": counts.passes,
        "page_ms": {"p50": ms(percentile(counts.page_seconds, .5)),
                    "p99": ms(percentile(counts.page_seconds, .99))},
        "replays_ended": counts.replays,
        "live_ms": {"p50": ms(percentile(probe.live, .5)), "p99": ms(percentile(probe.live, .99)),
                    "max": ms(max(probe.live, default=float("nan")))},
        "publish_ms": {"p50": ms(percentile(probe.publish, .5)),
                       "p99": ms(percentile(probe.publish, .99)),
                       "max": ms(max(probe.publish, default=float("nan")))},
        "events": args.events, "published": sum(value < INF for value in probe.publish),
        "delivered": sum(value < INF for value in probe.live),
        "publish_outcomes": probe.outcomes, "probe_error": probe.error,
        "server_cpu_pct": round(100 * cpu / seconds, 1),
        "loadgen_cpu_s": round(own_cpu() - mine0, 2), "load_average": load0,
    }


def ratio(top: float, bottom: float) -> float | None:
    """top / bottom; None when either is NaN or infinite (a tick missing), or bottom is 0."""
    if not bottom or not all(-INF < value < INF for value in (top, bottom)):
        return None
    return round(top / bottom, 2)


def shown(value: float) -> str:
    """A latency in ms for the table: "missing" when a tick was not answered or delivered."""
    return "missing" if value == INF else str(value)


async def hostile(args: argparse.Namespace) -> dict[str, Any]:
    """Heavy readers (page loops and replays) against live delivery and publishing."""
    suffix = uuid.uuid4().hex[:8]
    big, calm = "big" + suffix, "calm" + suffix
    levels = [int(level) for level in args.levels.split(",") if level.strip()]
    async with database(args) as setup:
        loaded = await load_numbered(setup.dsn, big, args.rows)
        print(f"loaded {args.rows} rows into {big} in {loaded:.1f} s", file=sys.stderr)
        async with server(setup, "--heartbeat", str(args.heartbeat),
                          *shlex.split(args.server_flags), profile=args.profile) as srv:
            runs = []
            for level in levels:
                run = await hostile_level(args, setup, srv, big, calm, level)
                print(f"level {level}: live p99 {run['live_ms']['p99']} ms, publish p99 "
                      f"{run['publish_ms']['p99']} ms, {run['refusals']} refusals",
                      file=sys.stderr)
                runs.append(run)
            peak = round(srv.memory_kib("VmHWM") / 1024, 1)
    header = ("level H", "page loops", "replays", "refusals (503)", "timeouts",
              "hostile pages/s", "live p50 / p99 ms", "publish p50 / p99 ms", "live delivered",
              "server CPU %")
    table = [header] + [(
        str(run["level"]), str(run["page_loops"]), str(run["replays"]), str(run["refusals"]),
        str(run["timeouts"]), str(run["pages_per_s"]),
        f"{shown(run['live_ms']['p50'])} / {shown(run['live_ms']['p99'])}",
        f"{shown(run['publish_ms']['p50'])} / {shown(run['publish_ms']['p99'])}",
        f"{run['delivered']}/{run['events']}", str(run["server_cpu_pct"])) for run in runs]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"\nhostile: {args.rows} rows, {args.events} ticks {args.interval} s apart, "
          f"server flags: {args.server_flags or '(defaults)'}")
    for row in table:
        print("  " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    by_level = {run["level"]: run for run in runs}
    low, high = min(levels), max(levels)
    live_ratio = ratio(by_level[high]["live_ms"]["p99"], by_level[low]["live_ms"]["p99"])
    publish_ratio = ratio(by_level[high]["publish_ms"]["p99"],
                          by_level[low]["publish_ms"]["p99"])
    target = ("met" if live_ratio is not None and publish_ratio is not None
              and live_ratio <= 2 and publish_ratio <= 2 else "missed")
    result = {
        "rows": args.rows, "load_seconds": round(loaded, 1), "levels": runs,
        "events": args.events, "interval_s": args.interval, "server_flags": args.server_flags,
        f"live_p99_ratio_{high}_vs_{low}": live_ratio,
        f"publish_p99_ratio_{high}_vs_{low}": publish_ratio,
        "target_2x": target, "server_peak_rss_mib": peak,
    }
    missing = "n/a (a tick missing)"
    rows = [(f"live p99 ratio H={high} / H={low}", missing if live_ratio is None else live_ratio),
            (f"publish p99 ratio H={high} / H={low}",
             missing if publish_ratio is None else publish_ratio),
            ("target (both within 2x)", target),
            ("server peak RSS (MiB)", peak)]
    report("hostile", rows, result)
    return result


# -- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="scenario", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--dsn", help="PostgreSQL to use (default: an embedded one)")
        sub.add_argument("--keep-logs", action="store_true", help="keep the server log")
        sub.add_argument("--profile", metavar="FILE",
                         help="record the server with py-spy: FILE.svg (flame graph) or FILE.txt "
                              "(collapsed stacks)")
        sub.add_argument("--heartbeat", type=float, default=15.0, help="server --heartbeat")
        sub.add_argument("--drain", type=float, default=10.0,
                         help="seconds to wait for deliveries after publishing stops")
        sub.add_argument("--server-python", metavar="PATH",
                         help=f"interpreter that runs the server and its migration (env "
                              f"{SERVER_PYTHON_ENV}; default: this one)")
        sub.add_argument("--server-src", metavar="DIR",
                         help=f"source tree of the server (env {SERVER_SRC_ENV}; default: this "
                              f"checkout)")
        return sub

    sub = common("fanout", "S subscribers on one stream, R events/s")
    sub.add_argument("--subscribers", "-s", type=int, default=1000)
    sub.add_argument("--rate", "-r", type=float, default=1000, help="events/s, 0 = max")
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100, help="events per transaction at max rate")
    sub.add_argument("--sample", type=int, default=10, help="connections that measure latency")
    sub = common("filtered", "S subscribers, each its own data.user_id filter")
    sub.add_argument("--subscribers", "-s", type=int, default=1000)
    sub.add_argument("--rate", "-r", type=float, default=1000)
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100)
    sub = common("peruser", "S subscribers, one user each; each event for exactly one user")
    sub.add_argument("--mode", choices=("filter", "stream"), default="filter",
                     help="filter: one stream, ?data.u=eq.K each; stream: a stream per user")
    sub.add_argument("--subscribers", "-s", type=int, default=1000, help="subscribers = users")
    sub.add_argument("--rate", "-r", type=float, default=500, help="events/s, 0 = max")
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100, help="events per transaction at max rate")
    sub.add_argument("--per-tx", type=int, default=1,
                     help="events per transaction (1: a wake-up per event, the costly case; "
                          "0: the fanout plan, 100 transactions/s above 100 events/s)")
    sub = common("idle", "C idle streams held for a while")
    sub.add_argument("--streams", "-c", type=int, default=1000)
    sub.add_argument("--seconds", "-t", type=float, default=60)
    sub.set_defaults(heartbeat=5.0)
    sub = common("replay", "one client replays N stored events; many clients replay a few")
    sub.add_argument("--events", "-n", type=int, default=1_000_000)
    sub.add_argument("--clients", type=int, default=100)
    sub.add_argument("--each", type=int, default=10_000)
    sub.add_argument("--timeout", type=float, default=300)
    sub = common("page", "one client reads a stream in JSON pages of 1,000 rows")
    sub.add_argument("--rows", "-n", type=int, default=100_000, help="events in the stream")
    sub.add_argument("--limit", type=int, default=1000, help="rows per page")
    sub.add_argument("--passes", type=int, default=3, help="times the whole stream is read")
    sub.add_argument("--query", default="",
                     help='extra query parameters, e.g. "data.user_id=eq.7"')
    sub.add_argument("--timeout", type=float, default=60, help="seconds one page may take")
    sub = common("churn", "clients reconnecting with Last-Event-ID while events flow")
    sub.add_argument("--connects", type=float, default=200, help="connects per second")
    sub.add_argument("--hold", type=float, default=0.5, help="mean seconds per connection")
    sub.add_argument("--subscribers", "-s", type=int, default=50, help="steady subscribers")
    sub.add_argument("--rate", "-r", type=float, default=200)
    sub.add_argument("--seconds", "-t", type=float, default=20)
    sub = common("hostile", "H page loops and replays vs live delivery and publishing")
    sub.add_argument("--rows", "-n", type=int, default=1_000_000, help="events in the big stream")
    sub.add_argument("--levels", default="0,10,50", help="hostile readers per level, comma list")
    sub.add_argument("--events", "-e", type=int, default=40, help="ticks published per level")
    sub.add_argument("--interval", type=float, default=0.1, help="seconds between ticks")
    sub.add_argument("--warmup", type=float, default=2.0,
                     help="seconds of hostile load before the ticks")
    sub.add_argument("--level-seconds", type=float, default=60, help="bound of one level")
    sub.add_argument("--page-timeout", type=float, default=30,
                     help="client timeout of a page, and of a silent replay")
    sub.add_argument("--server-flags", default="",
                     help='extra `sse-stream serve` flags, e.g. "--pool-size 8"')
    webhooks_bench.add_parser(common)
    return parser


SCENARIOS = {"fanout": fanout, "peruser": peruser, "idle": idle, "replay": replay,
             "page": page, "churn": churn, "hostile": hostile,
             "webhooks": lambda args: webhooks_bench.webhooks(args)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "filtered":
        return await fanout(args, filtered=True)
    return await SCENARIOS[args.scenario](args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_open_files()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
