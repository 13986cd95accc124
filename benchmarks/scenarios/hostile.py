"""hostile: what heavy readers do to live delivery and publishing (SPEC §6).

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
import shlex
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from common import (
    AddParser,
    ServerProcess,
    Setup,
    database,
    load_average,
    load_numbered,
    ms,
    own_cpu,
    report,
    server,
)
from hostile_load import INF, HostileCounts, measure_live, page_loop, replay_loop
from loadgen import percentile


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


def add_parser(add: AddParser) -> None:
    sub = add("hostile", "H page loops and replays vs live delivery and publishing", __doc__)
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
    sub.set_defaults(run=hostile)
