"""replay: one client replays N stored events; many clients replay a few.

    python benchmarks/run.py replay -n 1000000

Events/s for one client replaying -n stored events with
`last_event_id=0&live=false`, and for --clients clients replaying --each
events at once (rows are loaded with one INSERT ... SELECT generate_series
before the server starts).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from common import AddParser, database, load_average, load_rows, report, server
from loadgen import connect, connect_many


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



def add_parser(add: AddParser) -> None:
    sub = add("replay", "one client replays N stored events; many clients replay a few", __doc__)
    sub.add_argument("--events", "-n", type=int, default=1_000_000)
    sub.add_argument("--clients", type=int, default=100)
    sub.add_argument("--each", type=int, default=10_000)
    sub.add_argument("--timeout", type=float, default=300)
    sub.set_defaults(run=replay)
