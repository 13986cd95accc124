"""peruser: S subscribers, one user each; every event is for exactly one user.

    python benchmarks/run.py peruser --mode filter    # one stream, ?data.u=eq.K each
    python benchmarks/run.py peruser --mode stream    # one stream per user, s<tag>.uK
    python benchmarks/run.py peruser --mode filter --subscribers 10000 --rate 200

Event k (k = 1, 2, ...) has data {"seq": k, "u": k % S, ...} and, in stream
mode, goes to the stream <prefix>.u<k % S>. Subscriber K receives only user K's
events, each once: published events = expected deliveries; an event of
another user, or a repeat, counts in "misdelivered" / "duplicated". Every
subscriber parses its frames (latency of every delivery).
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



def add_parser(add: AddParser) -> None:
    sub = add("peruser", "S subscribers, one user each; each event for exactly one user", __doc__)
    sub.add_argument("--mode", choices=("filter", "stream"), default="filter",
                     help="filter: one stream, ?data.u=eq.K each; stream: a stream per user")
    sub.add_argument("--subscribers", "-s", type=int, default=1000, help="subscribers = users")
    sub.add_argument("--rate", "-r", type=float, default=500, help="events/s, 0 = max")
    sub.add_argument("--seconds", "-t", type=float, default=10)
    sub.add_argument("--batch", type=int, default=100, help="events per transaction at max rate")
    sub.add_argument("--per-tx", type=int, default=1,
                     help="events per transaction (1: a wake-up per event, the costly case; "
                          "0: the fanout plan, 100 transactions/s above 100 events/s)")
    sub.set_defaults(run=peruser)
