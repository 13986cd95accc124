"""Soak: many filtered subscribers, flaky connections, concurrent writers with
rollbacks and periodic listener kills, for a bounded time; then every
subscriber's received sequence is checked against the table.

    python benchmarks/soak.py                      # 10 minutes, embedded PostgreSQL
    python benchmarks/soak.py --duration 60 --subscribers 100
    python benchmarks/soak.py --dsn postgresql://... --json

It starts a real `sse-stream serve` process (and an embedded PostgreSQL when
no --dsn is given) and stops both by PID at the end. Each subscriber picks
streams (exact names, `*` and `>` patterns, lists), optionally a type glob
and a data filter, starts at position 0 and reads; now and then it hangs up
(often in the middle of a frame) and resumes with Last-Event-ID. Writers
publish 1 to 5 events per transaction to several streams, hold the
transaction open a few milliseconds so commits land out of id order, and
roll back about 15% of them. Every --kill-every seconds the server's LISTEN
backend is terminated (pg_terminate_backend; with --dsn this hits every
sse-stream listener on that database).

At the end the writers stop, every subscriber reads until it has as many
events as the table holds for its filter (bounded), and its sequence must
equal the table's: exactly once, in (xid, id) order. The filters are
evaluated here in Python, independently of the server's own code. The report
gives events checked, reconnects, listener kills and the server's peak RSS;
the exit status is 0 only if nothing was lost, doubled or reordered, the
server logged no error, and every listener kill found a listener.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))  # server_process, shared with the tests

from server_process import ServerProcess  # noqa: E402
from soak_clients import make_subscriber, subscribe  # noqa: E402

from sse_stream.db.embedded import EmbeddedPostgres  # noqa: E402
from sse_stream.db.listener import APPLICATION_NAME as LISTENER_NAME  # noqa: E402
from sse_stream.db.migrate import migrate_dsn  # noqa: E402

TAGS = ("red", "green", "blue")  # the data.tag values (soak_clients filters on them)


# -- writers and faults ---------------------------------------------------------


@dataclass
class WriterStats:
    committed: int = 0
    rolled_back: int = 0
    events: int = 0
    failures: int = 0


async def write(dsn: str, prefix: str, seed: int, stop: asyncio.Event, rate: float,
                stats: WriterStats) -> None:
    """Transactions of 1-5 events at about `rate` events per second."""
    rng = random.Random(seed)
    streams = [f"{prefix}.a", f"{prefix}.b", f"{prefix}.c.x", f"{prefix}.c.y"]
    types = ["order.created", "order.paid", "audit"]
    connection: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            count = rng.randint(1, 5)
            try:
                if connection is None:
                    connection = await asyncio.wait_for(asyncpg.connect(dsn), 10)
                transaction = connection.transaction()
                await transaction.start()
                for _ in range(count):
                    data: dict[str, Any] = {"k": rng.randint(0, 9), "tag": rng.choice(TAGS),
                                            "w": seed, "pad": "x" * rng.randint(0, 300)}
                    if rng.random() < 0.5:
                        data["opt"] = rng.choice([None, "set"])
                    await connection.execute(
                        "SELECT sse_stream.publish($1, $2, $3::text::jsonb)",
                        rng.choice(streams), rng.choice(types), orjson.dumps(data).decode())
                # Held open so that commits land out of id order.
                await connection.execute("SELECT pg_sleep($1)", rng.uniform(0, 0.02))
                if rng.random() < 0.15:
                    await transaction.rollback()
                    stats.rolled_back += 1
                else:
                    await transaction.commit()
                    stats.committed += 1
                    stats.events += count
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError):
                stats.failures += 1
                if connection is not None:
                    connection.terminate()
                    connection = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.expovariate(rate / 3))
    finally:
        if connection is not None:
            await connection.close()


async def kill_listeners(dsn: str, every: float, stop: asyncio.Event) -> tuple[int, int]:
    """Terminate the LISTEN backend every `every` s; (attempts, backends killed).

    An attempt that finds no listener means it had not reconnected since the
    last kill: a few seconds later it always should have.
    """
    attempts = kills = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
            break
        except TimeoutError:
            pass
        attempts += 1
        connection = await asyncpg.connect(dsn)
        try:
            kills += await connection.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1", LISTENER_NAME)
        finally:
            await connection.close()
    return attempts, kills


# -- the run ----------------------------------------------------------------------


async def table_events(dsn: str, prefix: str) -> list[tuple[str, str, str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT xid::text || '-' || id AS position, stream, type, data::text AS data"
            " FROM sse_stream.events WHERE starts_with(stream, $1) ORDER BY xid, id",
            prefix + ".")
    finally:
        await connection.close()
    return [(r["position"], r["stream"], r["type"], orjson.loads(r["data"])) for r in rows]


def compare(received: list[str], expected: list[str]) -> dict[str, int]:
    seen = set(received)
    return {"lost": sum(1 for p in expected if p not in seen),
            "doubled": len(received) - len(seen),
            "unexpected": len(seen - set(expected)),
            "reordered": int(received != expected and len(received) == len(expected)
                             and sorted(received) == sorted(expected))}


async def run(args: argparse.Namespace, dsn: str, workdir: Path) -> dict[str, Any]:
    await migrate_dsn(dsn)
    rng = random.Random(args.seed)
    prefix = "soak" + uuid.uuid4().hex[:8]
    server = ServerProcess(dsn, workdir / "serve.log", "--heartbeat", "1", "--no-migrate",
                           port=args.port or None)
    try:
        await server.ready()
        subscribers = [make_subscriber(n, prefix, rng) for n in range(args.subscribers)]
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            readers = [asyncio.create_task(subscribe(s, server.url, session, args.mean_session))
                       for s in subscribers]
            writer_stats = [WriterStats() for _ in range(args.writers)]
            writers = [asyncio.create_task(write(dsn, prefix, args.seed * 100 + n, stop,
                                                 args.rate / args.writers, writer_stats[n]))
                       for n in range(args.writers)]
            killer = asyncio.create_task(kill_listeners(dsn, args.kill_every, stop))
            started = time.monotonic()
            rss_samples = []
            while time.monotonic() - started < args.duration:
                await asyncio.sleep(min(5.0, args.duration))
                rss_samples.append(server.memory_kib("VmRSS") * 1024)
                if not args.json:
                    events = sum(w.events for w in writer_stats)
                    print(f"{time.monotonic() - started:6.0f} s  events {events:8d}  "
                          f"rss {server.memory_kib('VmRSS') / 2**10:6.1f} MiB", flush=True)
            stop.set()
            await asyncio.gather(*writers)
            attempts, kills = await killer

            # The end: every subscriber reads until it has what the table has.
            table = await table_events(dsn, prefix)
            expected: dict[int, list[str]] = {}
            for subscriber in subscribers:
                expected[subscriber.number] = [p for p, s, t, d in table
                                               if subscriber.matches(s, t, d)]
                subscriber.settling = True
                subscriber.target = len(expected[subscriber.number])
            settle_started = time.monotonic()
            _, pending = await asyncio.wait(readers, timeout=args.settle)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            settle = time.monotonic() - settle_started

        totals = {"lost": 0, "doubled": 0, "unexpected": 0, "reordered": 0}
        failed = []
        for subscriber in subscribers:
            want = expected[subscriber.number]
            if subscriber.received != want:
                result = compare(subscriber.received, want)
                for key, value in result.items():
                    totals[key] += value
                failed.append({"subscriber": subscriber.number, "path": subscriber.path,
                               "received": len(subscriber.received), "expected": len(want),
                               **result})
        report: dict[str, Any] = {
            "duration_s": args.duration,
            "subscribers": len(subscribers),
            "writers": args.writers,
            "transactions_committed": sum(w.committed for w in writer_stats),
            "transactions_rolled_back": sum(w.rolled_back for w in writer_stats),
            "events_committed": len(table),
            "events_checked": sum(len(v) for v in expected.values()),
            "events_received": sum(len(s.received) for s in subscribers),
            "reconnects": sum(s.connections for s in subscribers) - len(subscribers),
            "connection_errors": sum(s.errors for s in subscribers),
            "listener_kills": kills,
            "listener_kill_attempts": attempts,
            "settle_s": round(settle, 1),
            "server_rss_first_mib": round(rss_samples[0] / 2**20, 1) if rss_samples else None,
            "server_rss_last_mib": round(server.memory_kib("VmRSS") / 2**10, 1),
            "server_peak_rss_mib": round(server.memory_kib("VmHWM") / 2**10, 1),
            **totals,
            "failed_subscribers": len(failed),
            "failures": failed[:10],
        }
    finally:
        server.stop()
    report["server_errors"] = server.errors()[:20]
    report["ok"] = (not failed and not report["server_errors"] and report["events_checked"] > 0
                    and report["listener_kills"] == report["listener_kill_attempts"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=150, help="events per second, all writers")
    parser.add_argument("--mean-session", type=float, default=8.0,
                        help="mean seconds a subscriber stays connected before hanging up")
    parser.add_argument("--kill-every", type=float, default=10.0,
                        help="seconds between listener kills")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds allowed at the end for subscribers to catch up")
    parser.add_argument("--dsn", help="PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="sse-stream-soak-"))
    embedded = None
    try:
        dsn = args.dsn
        if dsn is None:
            embedded = EmbeddedPostgres(workdir / "pgdata", fast=True)
            dsn = embedded.start()
        started = time.monotonic()
        report = asyncio.run(run(args, dsn, workdir))
        report["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        if embedded is not None:
            embedded.stop("fast")
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
