"""Publish throughput and delivery latency, with the NOTIFY doorbell on and off.

    python benchmarks/publish.py                  # starts its own embedded PostgreSQL
    python benchmarks/publish.py --dsn postgresql://...   # or uses yours

Scenarios, each run once with NOTIFY on and once with `sse_stream.notify = off`:
  (a) publish: single-event transactions, `SELECT sse_stream.publish(...)`,
      from --writers concurrent connections;
  (b) capture: single-row INSERTs into a table with the capture trigger,
      from --writers concurrent connections;
  (c) http: POST /streams/{stream}/events with arrays of --batch events,
      --writers requests in flight, to a `sse-stream serve` subprocess.

During every scenario a `sse-stream serve` subprocess on 127.0.0.1 runs (it
reads every event written, as a deployed server would), a probe writes one
event every 20 ms on its own connection, and a subscriber connected to the
server measures each probe's delivery latency: from just before the probe's
publish() to its arrival on the SSE stream. "server us/event" is the CPU time
the server process spent per event written (reading them all, and in (c)
receiving them too): a figure less sensitive than events/s to other load on
the machine. With NOTIFY on the server runs
with its default poll (1 s) and is woken by the doorbell; with NOTIFY off it
relies on its poll alone, run with --poll-interval (0.05 s by default).

The embedded PostgreSQL runs with fsync and synchronous_commit off unless
--durable is given. The benchmark writes to streams named bench-*, and
creates and drops a table sse_stream_bench_orders. Prints a table of the
medians over --runs runs and one JSON line with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
sys.path.append(str(ROOT / "tests"))  # server_process, shared with the tests

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import orjson  # noqa: E402
from server_process import ServerProcess  # noqa: E402

from sse_stream.client.stream import SseParser  # noqa: E402
from sse_stream.db.migrate import migrate_dsn  # noqa: E402

PROBE_STREAM = "bench-probe"
PROBE_PERIOD = 0.02
TABLE = "sse_stream_bench_orders"


@dataclass
class Result:
    scenario: str
    notify: bool
    events: int
    seconds: float
    events_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_cpu_us_per_event: float = 0.0



def _session_dsn(dsn: str, notify: bool) -> str:
    """The DSN with sse_stream.notify = off as a session setting, if asked."""
    if notify:
        return dsn
    return dsn + ("&" if "?" in dsn else "?") + "sse_stream.notify=off"


class Probe:
    """Writes a timestamped event every PROBE_PERIOD; a subscriber times its arrival."""

    def __init__(self, dsn: str, server_url: str) -> None:
        self.dsn = dsn
        self.url = f"{server_url}/streams/{PROBE_STREAM}"
        self.latencies: list[float] = []
        self.measuring = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._subscribe()), asyncio.create_task(self._write())]
        await asyncio.wait_for(self._subscribed.wait(), 30)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            while True:
                data = orjson.dumps({"t": time.time()}).decode()
                await connection.fetchval("SELECT sse_stream.publish($1, 'bench.probe', $2::jsonb)",
                                          PROBE_STREAM, data)
                await asyncio.sleep(PROBE_PERIOD)
        finally:
            await connection.close()

    async def _subscribe(self) -> None:
        parser = SseParser()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(self.url) as response:
                async for chunk in response.content.iter_any():
                    now = time.time()
                    messages = parser.feed(chunk)
                    if parser.last_event_id:
                        self._subscribed.set()
                    if not self.measuring:
                        continue
                    for message in messages:
                        if message.event == "bench.probe":
                            sent = orjson.loads(message.data)["data"]["t"]
                            self.latencies.append((now - sent) * 1000)

    def summary(self) -> dict[str, float]:
        values = sorted(self.latencies)
        if not values:
            return {"n": 0}
        return {"n": len(values), "p50": round(values[len(values) // 2], 1),
                "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
                "max": round(values[-1], 1)}


async def _timed(workers: list[Any], seconds: float) -> tuple[int, float]:
    """Run the workers until the deadline; (events written, seconds taken)."""
    started = time.monotonic()
    deadline = started + seconds
    counts = await asyncio.gather(*(worker(deadline) for worker in workers))
    return sum(counts), time.monotonic() - started


async def scenario_publish(dsn: str, writers: int, seconds: float, **_: Any) -> tuple[int, float]:
    connections = [await asyncpg.connect(dsn) for _ in range(writers)]

    def worker(connection: asyncpg.Connection) -> Any:
        async def run(deadline: float) -> int:
            written = 0
            while time.monotonic() < deadline:
                await connection.fetchval(
                    "SELECT sse_stream.publish('bench-publish', 'bench.event', $1::jsonb)",
                    '{"n": 1, "status": "new"}')
                written += 1
            return written
        return run

    try:
        return await _timed([worker(c) for c in connections], seconds)
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def scenario_capture(dsn: str, writers: int, seconds: float, **_: Any) -> tuple[int, float]:
    connections = [await asyncpg.connect(dsn) for _ in range(writers)]

    def worker(number: int, connection: asyncpg.Connection) -> Any:
        async def run(deadline: float) -> int:
            written = 0
            while time.monotonic() < deadline:
                await connection.execute(
                    f"INSERT INTO {TABLE} (customer, status, total) VALUES ($1, 'new', $2)",
                    (number * 7919 + written) % 100, written)
                written += 1
            return written
        return run

    try:
        return await _timed([worker(n, c) for n, c in enumerate(connections)], seconds)
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def scenario_http(dsn: str, writers: int, seconds: float, server_url: str, batch: int,
                        **_: Any) -> tuple[int, float]:
    body = orjson.dumps([{"type": "bench.event", "data": {"n": n, "status": "new"}}
                         for n in range(batch)])
    url = f"{server_url}/streams/bench-http/events"
    connector = aiohttp.TCPConnector(limit=writers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run(deadline: float) -> int:
            written = 0
            while time.monotonic() < deadline:
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    if response.status != 201:
                        raise RuntimeError(f"POST answered {response.status}: "
                                           f"{await response.text()}")
                    await response.read()
                written += batch
            return written

        return await _timed([run] * writers, seconds)


SCENARIOS = {"publish": scenario_publish, "capture": scenario_capture, "http": scenario_http}
LABELS = {"publish": "(a) publish(), 1 event/tx", "capture": "(b) capture, 1 row/tx",
          "http": "(c) HTTP POST batches"}


async def _prepare(dsn: str) -> None:
    await migrate_dsn(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await connection.execute(
            f"CREATE TABLE {TABLE} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "customer int, status text, total numeric)")
        await connection.execute(
            f"CREATE TRIGGER {TABLE}_events AFTER INSERT OR UPDATE OR DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION sse_stream.capture('bench-orders', 'customer')")
    finally:
        await connection.close()


async def _drop_table(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
    finally:
        await connection.close()


async def run_mode(dsn: str, notify: bool, args: argparse.Namespace, log: Path) -> list[Result]:
    """Every scenario with one doorbell mode, against one server."""
    session_dsn = _session_dsn(dsn, notify)
    server = ServerProcess(session_dsn, log, "--poll-interval",
                           str(1.0 if notify else args.poll_interval), "--no-migrate",
                           "--heartbeat", "1", "--log-level", "WARNING")
    results = []
    try:
        await server.ready()
        for name in args.scenarios:
            probe = Probe(session_dsn, server.url)
            await probe.start()
            probe.measuring = True
            cpu_before = server.cpu_seconds()
            try:
                events, seconds = await SCENARIOS[name](
                    session_dsn, writers=args.writers, seconds=args.seconds,
                    server_url=server.url, batch=args.batch)
                # The last probes of the scenario still count: let them land.
                await asyncio.sleep(min(1.0, 2 * args.poll_interval + 0.1))
            finally:
                probe.measuring = False
                await probe.stop()
            cpu = server.cpu_seconds() - cpu_before
            results.append(Result(name, notify, events, round(seconds, 2),
                                  round(events / seconds), probe.summary(),
                                  round(cpu / max(1, events) * 1e6, 1)))
            print(f"  {LABELS[name]:<28} notify {'on ' if notify else 'off'} "
                  f"{results[-1].events_per_s:>8,} events/s  latency {results[-1].latency_ms}  "
                  f"server CPU {results[-1].server_cpu_us_per_event} us/event",
                  file=sys.stderr, flush=True)
    finally:
        server.stop()
    return results


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def report(runs: list[list[Result]], args: argparse.Namespace, database: str) -> None:
    rows = []
    for name in args.scenarios:
        for notify in (True, False):
            found = [r for run in runs for r in run if r.scenario == name and r.notify == notify]
            rows.append({
                "scenario": name, "notify": notify,
                "events_per_s": _median([r.events_per_s for r in found]),
                "p50_ms": _median([r.latency_ms["p50"] for r in found if r.latency_ms.get("n")]),
                "p99_ms": _median([r.latency_ms["p99"] for r in found if r.latency_ms.get("n")]),
                "max_ms": max((r.latency_ms["max"] for r in found if r.latency_ms.get("n")),
                              default=float("nan")),
                "server_cpu_us_per_event": _median([r.server_cpu_us_per_event for r in found]),
            })
    print(f"\nmedians of {len(runs)} run(s), {args.seconds:g} s per scenario, "
          f"{args.writers} writers, HTTP batches of {args.batch}; {database}")
    print(f"{'scenario':<30}{'notify':>7}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'server us/event':>17}")
    for row in rows:
        print(f"{LABELS[row['scenario']]:<30}{'on' if row['notify'] else 'off':>7}"
              f"{row['events_per_s']:>11,.0f}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}"
              f"{row['server_cpu_us_per_event']:>17}")
    print(json.dumps({
        "benchmark": "publish", "database": database, "cpus": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "seconds": args.seconds, "writers": args.writers, "batch": args.batch,
        "poll_interval_off": args.poll_interval, "medians": rows,
        "runs": [[asdict(r) for r in run] for run in runs]}))


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sse-stream-bench-"))
    embedded = None
    dsn = args.dsn
    try:
        if dsn is None:
            from sse_stream.db.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(workdir / "pgdata", fast=not args.durable)
            dsn = embedded.start()
            database = "embedded PostgreSQL, " + ("durable" if args.durable
                                                  else "fsync and synchronous_commit off")
        else:
            database = "PostgreSQL at --dsn"
        await _prepare(dsn)
        runs = []
        for number in range(args.runs):
            print(f"run {number + 1}/{args.runs}", file=sys.stderr, flush=True)
            run: list[Result] = []
            for notify in (True, False):
                run += await run_mode(dsn, notify, args, workdir / "serve.log")
            runs.append(run)
        await _drop_table(dsn)
        report(runs, args, database)
    finally:
        if embedded is not None:
            embedded.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="PostgreSQL to use (default: start an embedded one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each scenario")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    parser.add_argument("--writers", type=int, default=8,
                        help="concurrent connections or requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="events per HTTP POST")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="the server's poll when NOTIFY is off (seconds)")
    parser.add_argument("--scenarios", default="publish,capture,http",
                        type=lambda text: [s for s in text.split(",") if s],
                        help="comma-separated subset of publish,capture,http")
    parser.add_argument("--durable", action="store_true",
                        help="embedded PostgreSQL with fsync and synchronous_commit on")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
