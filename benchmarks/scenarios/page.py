"""page: one client reads a stream of --rows events in JSON pages of --limit rows.

    python benchmarks/run.py page                      # 100,000 rows, 3 passes
    python benchmarks/run.py page --query "data.user_id=eq.7"

`GET /streams/S/events?after=P&limit=L` following next_after, --passes times;
page latency is the request's start to its body fully read.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import aiohttp
import orjson
from common import AddParser, database, load_average, load_rows, ms, report, server
from loadgen import percentile


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



def add_parser(add: AddParser) -> None:
    sub = add("page", "one client reads a stream in JSON pages of 1,000 rows", __doc__)
    sub.add_argument("--rows", "-n", type=int, default=100_000, help="events in the stream")
    sub.add_argument("--limit", type=int, default=1000, help="rows per page")
    sub.add_argument("--passes", type=int, default=3, help="times the whole stream is read")
    sub.add_argument("--query", default="",
                     help='extra query parameters, e.g. "data.user_id=eq.7"')
    sub.add_argument("--timeout", type=float, default=60, help="seconds one page may take")
    sub.set_defaults(run=page)
