"""idle: C idle streams held for a while (--heartbeat 5 unless given).

    python benchmarks/run.py idle -c 10000 -t 60

Prints the streams kept, those that saw every keepalive on time (no silence
longer than the heartbeat plus a quarter of it plus 1 s), RSS per stream,
and the server's CPU while opening and while holding them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from common import AddParser, database, load_average, report, server
from loadgen import connect_many


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



def add_parser(add: AddParser) -> None:
    sub = add("idle", "C idle streams held for a while", __doc__)
    sub.add_argument("--streams", "-c", type=int, default=1000)
    sub.add_argument("--seconds", "-t", type=float, default=60)
    sub.set_defaults(heartbeat=5.0, run=idle)
