"""fanout: S subscribers on one stream, R events/s; filtered: each its own filter.

    python benchmarks/run.py fanout -s 1000 -r 1000 -t 10   # -r 0: as fast as it goes
    python benchmarks/run.py filtered -s 1000 -r 1000       # subscriber K: ?data.user_id=eq.K

Prints deliveries/s offered (events published x matching subscribers) and
achieved, % delivered, latency p50/p99/max (fanout: on --sample connections;
filtered: on every one), server CPU seconds and us per delivery, peak RSS
(VmHWM), the load generator's own CPU and the load average.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from common import (
    AddParser,
    database,
    delivered,
    load_average,
    ms,
    own_cpu,
    publish_elsewhere,
    report,
    server,
)
from loadgen import connect_many, percentile


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


async def filtered(args: argparse.Namespace) -> dict[str, Any]:
    return await fanout(args, filtered=True)



def add_parser(add: AddParser) -> None:
    sub = add("fanout", "S subscribers on one stream, R events/s", __doc__)
    sub.add_argument("--subscribers", "-s", type=int, default=1000)
    sub.add_argument("--rate", "-r", type=float, default=1000, help="events/s, 0 = max")
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100, help="events per transaction at max rate")
    sub.add_argument("--sample", type=int, default=10, help="connections that measure latency")
    sub.set_defaults(run=fanout)
    sub = add("filtered", "S subscribers, each its own data.user_id filter", __doc__)
    sub.add_argument("--subscribers", "-s", type=int, default=1000)
    sub.add_argument("--rate", "-r", type=float, default=1000)
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100)
    sub.set_defaults(run=filtered)
