"""Filtered replay cost: 1,000 events of one stream among 1,000,000 of others.

Starts its own embedded PostgreSQL in a temporary folder, loads the rows with
one INSERT ... SELECT generate_series each, then measures, for several
selectors, the SQL time of one `read_selected` page (EXPLAIN ANALYZE, the
real query and parameters) and the HTTP time of a `live=false` replay and of
a JSON page served by the real app on 127.0.0.1.

    python benchmarks/replay_filtered.py [--others 1000000] [--plans FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sse_stream.core.filter_syntax import parse_data_filters
from sse_stream.core.patterns import parse_pattern_list, parse_type_filter
from sse_stream.core.selector import Selector
from sse_stream.core.settings import Settings
from sse_stream.db.capacity import StoreLimits
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.db.migrate import migrate_dsn
from sse_stream.db.queries import query
from sse_stream.web.app import create_app

TARGET = "orders.target"
# (label, streams, query parameters)
CASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("one stream", TARGET, []),
    ("one stream + type", TARGET, [("type", "order.paid")]),
    ("one stream + data", TARGET, [("data.total", "gt.250")]),
    ("one stream + type + data", TARGET, [("type", "order.*"), ("data.total", "gt.250")]),
    ("pattern orders.*", "orders.*", [("data.total", "gt.250")]),
]
RUNS = 5


async def load(dsn: str, others: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO sse_stream.events (stream, type, data)"
            " SELECT 'other.' || (n % 100), 'order.created',"
            " jsonb_build_object('n', n, 'total', n % 500) FROM generate_series(1, $1) n", others)
        await connection.execute(
            "INSERT INTO sse_stream.events (stream, type, data)"
            " SELECT $1, CASE WHEN n % 2 = 0 THEN 'order.paid' ELSE 'order.created' END,"
            " jsonb_build_object('n', n, 'total', n % 500) FROM generate_series(1, 1000) n",
            TARGET)
        await connection.execute("VACUUM ANALYZE sse_stream.events")
    finally:
        await connection.close()


def selector_for(streams: str, pairs: list[tuple[str, str]]) -> Selector:
    return Selector(parse_pattern_list(streams),
                    parse_type_filter([v for k, v in pairs if k == "type"]),
                    parse_data_filters(pairs))


async def explain(connection: asyncpg.Connection, selector: Selector) -> tuple[float, str]:
    sql = selector.to_sql()
    text = query("read_selected").replace("{streams}", sql.streams).replace("{filter}", sql.filter)
    limits = StoreLimits()
    rows = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + text, "0", 0, 1001,
                                  limits.scan_rows, limits.page_bytes, *sql.params)
    plan = "\n".join(row[0] for row in rows)
    execution = next(float(line.split(":")[1].split()[0]) for line in plan.splitlines()
                     if line.startswith("Execution Time"))
    return execution, plan


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        assert response.status == 200, body[:200]
    return (time.perf_counter() - started) * 1000, body.count(b'"position"')


async def measure(dsn: str, plans_file: Path | None) -> None:
    app = create_app(Settings(dsn=dsn, migrate=False))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    connection = await asyncpg.connect(dsn)
    plans: list[str] = []
    print(f"{'case':<26} {'events':>6} {'SQL ms':>8} {'live=false ms':>14} {'page ms':>8}")
    try:
        async with aiohttp.ClientSession() as session:
            for label, streams, pairs in CASES:
                selector = selector_for(streams, pairs)
                sql_times, plan = [], ""
                for _ in range(RUNS):
                    elapsed, plan = await explain(connection, selector)
                    sql_times.append(elapsed)
                plans.append(f"### {label}: `{streams}` {pairs}\n\n```\n{plan}\n```\n")
                query_string = "&".join(f"{k}={v}" for k, v in pairs)
                sse_times, page_times, count = [], [], 0
                for _ in range(RUNS):
                    elapsed, count = await timed_get(session, f"{base}/streams/{streams}"
                                                     f"?last_event_id=0&live=false&{query_string}")
                    sse_times.append(elapsed)
                    elapsed, _ = await timed_get(
                        session, f"{base}/streams/{streams}/events?limit=1000&{query_string}")
                    page_times.append(elapsed)
                print(f"{label:<26} {count:>6} {statistics.median(sql_times):>8.1f}"
                      f" {statistics.median(sse_times):>14.1f}"
                      f" {statistics.median(page_times):>8.1f}")
    finally:
        await connection.close()
        await runner.cleanup()
    print(f"(medians of {RUNS} runs; SQL = EXPLAIN ANALYZE execution time of one page of up "
          "to 1000 events)")
    if plans_file is not None:
        plans_file.write_text("\n".join(plans))
        print(f"plans written to {plans_file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, default=1_000_000,
                        help="events in other streams")
    parser.add_argument("--plans", type=Path, help="write the query plans to this file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-bench-"))
    server = EmbeddedPostgres(folder / "pgdata", fast=True)
    server.start()
    try:
        asyncio.run(migrate_dsn(server.dsn))
        started = time.perf_counter()
        asyncio.run(load(server.dsn, args.others))
        print(f"loaded {args.others} + 1000 events in {time.perf_counter() - started:.1f} s")
        asyncio.run(measure(server.dsn, args.plans))
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
