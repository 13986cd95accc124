"""churn: clients reconnecting with Last-Event-ID while events flow, each one checked.

    python benchmarks/run.py churn -t 20              # 200 reconnects/s

Churning clients reconnect with Last-Event-ID every 0.2 to 1.8 x --hold
seconds while events flow; each one's events, concatenated over its
connections, must equal the stored events between its first and last
position (`lost`, `duplicated`); plus the latency of --subscribers steady
subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from typing import Any

import asyncpg
from common import (
    AddParser,
    database,
    latencies,
    load_average,
    ms,
    publish_elsewhere,
    report,
    server,
    wait_for,
)
from loadgen import connect, connect_many, percentile


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



def add_parser(add: AddParser) -> None:
    sub = add("churn", "clients reconnecting with Last-Event-ID while events flow", __doc__)
    sub.add_argument("--connects", type=float, default=200, help="connects per second")
    sub.add_argument("--hold", type=float, default=0.5, help="mean seconds per connection")
    sub.add_argument("--subscribers", "-s", type=int, default=50, help="steady subscribers")
    sub.add_argument("--rate", "-r", type=float, default=200)
    sub.add_argument("--seconds", "-t", type=float, default=20)
    sub.set_defaults(run=churn)
