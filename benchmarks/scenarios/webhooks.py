"""webhooks: W webhooks to a local receiver at R events/s, and what they
cost live SSE in the same run.

    python benchmarks/run.py webhooks                 # 100 webhooks, 1,000 events/s, 30 s

One server, S live SSE subscribers (one per stream in turn, every one
measuring) for the whole run, and R events/s spread over W streams
(<prefix>.u<k>; 100 transactions a second above 100 events/s). Four
segments of --seconds/2 each, without webhooks, with, with, without (so that
drift over the run weighs on both sides alike): W webhooks, one per stream,
are created for the first segment with them, and paused for the last one.
The receiver runs in a process of its own. Latency, for SSE and webhooks
alike, is receipt minus the `ts` that PostgreSQL put in the event just
before COMMIT (loadgen.py). Delivered: distinct events the receiver
acknowledged, per segment; duplicates and order (per webhook, the
publisher's sequence) are checked. Server CPU per delivered event is the
whole process's in the segments with webhooks, and the difference of the
two kinds of segment (the webhooks' share).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shlex
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import orjson
from common import AddParser, database, load_average, ms, publish_elsewhere, report, server
from loadgen import connect_many, percentile

SEGMENTS = ("without", "with", "with", "without")


def _receive(port: int, channel: Connection) -> None:
    """The receiver process: answer 204 to every POST /w<k>, record latencies,
    duplicates and order per path. "count" answers the events received so
    far, "segment" too after starting a new sequence (the publisher counts
    from 1 again); "stop" sends the summary and ends."""
    from aiohttp import web

    latencies: list[float] = []
    seen: dict[str, set[int]] = {}  # path -> the seqs received in this segment
    last: dict[str, int] = {}  # path -> the last seq received
    counts = {"events": 0, "requests": 0, "duplicates": 0, "out_of_order": 0}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        counts["requests"] += 1
        path = request.path
        mine = seen.setdefault(path, set())
        for event in orjson.loads(body)["events"]:
            data = event["data"]
            seq = data["seq"]
            if seq in mine:
                counts["duplicates"] += 1
                continue
            if seq < last.get(path, 0):
                counts["out_of_order"] += 1
            mine.add(seq)
            last[path] = seq
            counts["events"] += 1
            latencies.append(now - data["ts"])
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{path}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        channel.send("ready")
        loop = asyncio.get_running_loop()
        while True:
            while not await loop.run_in_executor(None, channel.poll, 0.2):
                pass
            message = channel.recv()
            if message == "stop":
                break
            if message == "segment":
                seen.clear()
                last.clear()
            channel.send(counts["events"])
        channel.send({**counts, "latencies": latencies})
        await runner.cleanup()

    asyncio.run(main())


async def _ask(channel: Connection, message: str) -> Any:
    channel.send(message)
    assert await asyncio.to_thread(channel.poll, 60), "the receiver does not answer"
    return channel.recv()


async def webhooks(args: argparse.Namespace) -> dict[str, Any]:
    from sse_stream.db.embedded import free_port

    prefix = "wh" + uuid.uuid4().hex[:8]
    count = args.webhooks
    port = free_port()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    receiver = context.Process(target=_receive, args=(port, child))
    receiver.start()
    segments: list[dict[str, Any]] = []
    try:
        assert await asyncio.to_thread(parent.poll, 30) and parent.recv() == "ready"
        async with database(args) as setup, server(setup, "--webhooks-allow-private",
                                                   *shlex.split(args.server_flags),
                                                   profile=args.profile) as srv:
            db = await asyncpg.connect(setup.dsn)
            paths = [f"/streams/{prefix}.u{k % count}" for k in range(args.subscribers)]
            connections = await connect_many(srv.port, paths, parse_every=1)
            try:
                for n, kind in enumerate(SEGMENTS):
                    await _switch(db, kind, n, count, port, prefix)
                    received = await _ask(parent, "segment")
                    marks = [len(c.received.latencies) for c in connections if c.received]
                    cpu0 = srv.cpu_seconds()
                    published, seconds = await publish_elsewhere(
                        setup.dsn, prefix, args.rate, args.seconds / 2, users=count,
                        per_user=True)
                    deadline = time.monotonic() + args.drain
                    while kind == "with" and time.monotonic() < deadline and \
                            await _ask(parent, "count") - received < published:
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(0.5)  # the last SSE frames
                    sse = [value for c, mark in zip(connections, marks) if c.received
                           for value in c.received.latencies[mark:]]
                    delivered = await _ask(parent, "count") - received
                    segments.append({"kind": kind, "published": published, "seconds": seconds,
                                     "cpu": srv.cpu_seconds() - cpu0, "sse": sse,
                                     "delivered": delivered})
            finally:
                for connection in connections:
                    connection.close()
                await db.close()
        got = await _ask(parent, "stop")
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
    return _report(args, segments, got, load_average())


async def _switch(db: asyncpg.Connection, kind: str, n: int, count: int, port: int,
                  prefix: str) -> None:
    """Webhooks on (created the first time) or paused, and the server caught up."""
    if kind == "with" and n == 1:
        for k in range(count):
            await db.execute("SELECT sse_stream.create_webhook($1, $2)",
                             f"http://127.0.0.1:{port}/w{k}", [f"{prefix}.u{k}"])
    elif kind == "without" and n > 0:
        await db.execute("SELECT sse_stream.pause_webhook(id) FROM sse_stream.webhooks")
    held = count if kind == "with" and n > 0 else 0
    deadline = time.monotonic() + 30
    while await db.fetchval("SELECT count(*) FROM sse_stream.webhooks "
                            "WHERE lease_owner IS NOT NULL") != held:
        assert time.monotonic() < deadline, "the server did not take the webhooks up"
        await asyncio.sleep(0.1)


def _report(args: argparse.Namespace, segments: list[dict[str, Any]], got: dict[str, Any],
            load: float) -> dict[str, Any]:
    def of(kind: str, key: str) -> Any:
        values = [s[key] for s in segments if s["kind"] == kind]
        return [v for value in values for v in value] if key == "sse" else sum(values)

    published, delivered = of("with", "published"), of("with", "delivered")
    hooks = got["latencies"]
    sse_a, sse_b = of("without", "sse"), of("with", "sse")
    p99_a, p99_b = percentile(sse_a, .99), percentile(sse_b, .99)
    cpu_a, cpu_b = of("without", "cpu"), of("with", "cpu")
    result = {
        "webhooks": args.webhooks, "rate": args.rate, "seconds": args.seconds,
        "published": published, "delivered": delivered,
        "delivered_pct": round(100 * delivered / published, 3) if published else None,
        "delivered_per_s": round(delivered / of("with", "seconds")),
        "requests": got["requests"], "duplicates": got["duplicates"],
        "out_of_order": got["out_of_order"],
        "webhook_latency_ms": {"p50": ms(percentile(hooks, .5)), "p99": ms(percentile(hooks, .99)),
                               "max": ms(max(hooks, default=float("nan")))},
        "server_cpu_us_per_delivered": round(cpu_b * 1e6 / delivered, 1) if delivered else None,
        "webhook_cpu_us_per_delivered": round((cpu_b - cpu_a) * 1e6 / delivered, 1)
        if delivered else None,
        "sse_p50_ms": {"without": ms(percentile(sse_a, .5)), "with": ms(percentile(sse_b, .5))},
        "sse_p99_ms": {"without": ms(p99_a), "with": ms(p99_b)},
        "sse_p99_ratio": round(p99_b / p99_a, 2) if p99_a else None,
        "load_average": load,
    }
    rows = [("webhooks / events/s / seconds with webhooks",
             f"{args.webhooks} / {args.rate:g} / {args.seconds:g}"),
            ("published / delivered", f"{published} / {delivered} ({result['delivered_pct']} %)"),
            ("delivered events/s", result["delivered_per_s"]),
            ("requests / duplicates / out of order",
             f"{got['requests']} / {got['duplicates']} / {got['out_of_order']}"),
            ("commit to receipt p50 / p99 / max (ms)",
             "{p50} / {p99} / {max}".format(**result["webhook_latency_ms"])),
            ("server CPU us per delivered event (webhooks' share)",
             f"{result['server_cpu_us_per_delivered']} ({result['webhook_cpu_us_per_delivered']})"),
            ("live SSE p50 without / with webhooks (ms)",
             f"{result['sse_p50_ms']['without']} / {result['sse_p50_ms']['with']}"),
            ("live SSE p99 without / with webhooks (ms)",
             f"{result['sse_p99_ms']['without']} / {result['sse_p99_ms']['with']} "
             f"({result['sse_p99_ratio']}x)")]
    report("webhooks", rows, result)
    return result


def add_parser(add: AddParser) -> None:
    sub = add("webhooks", "W webhooks to a local receiver at R events/s; live SSE "
                          "latency without and with them", __doc__)
    sub.add_argument("--webhooks", "-w", type=int, default=100, help="webhooks (= streams)")
    sub.add_argument("--rate", "-r", type=float, default=1000, help="events/s")
    sub.add_argument("--seconds", "-t", type=float, default=30,
                     help="seconds with webhooks (as many without), in two segments each")
    sub.add_argument("--subscribers", "-s", type=int, default=100,
                     help="live SSE subscribers, one per stream in turn, all measuring")
    sub.add_argument("--server-flags", default="", help="extra `sse-stream serve` flags")
    sub.set_defaults(run=webhooks)
