"""reconnect: every connection cut at once while events flow; every client resumes.

    python benchmarks/run.py reconnect --cut clients     # a proxy restart or a network blip
    python benchmarks/run.py reconnect --cut restart     # the server restarts on its port
    python benchmarks/run.py reconnect --subscribers 2000 --recent-bytes 0

--subscribers clients (10,000) over --streams streams (100), one server
process, a publisher in its own process writing --rate events/s (500) over
the streams. After --warmup seconds every connection is cut at once while
publishing goes on: `clients` closes every client connection (the server
keeps running); `restart` stops the server (SIGTERM) and starts it again on
the same port. Each client reconnects after a jitter of uniform(0,
--jitter) seconds with its Last-Event-ID, at most --concurrency handshakes
at once (below the listen backlog), and after a failed attempt (refused,
not 200, closed) tries again after about --retry-wait seconds. A browser
would wait the server's `retry:` (2 s); the shorter waits here let the
server, not the wait, decide the time.

Measured from the cut: the time until every client is live again (has
received an event published after the cut on a new connection, so it has
caught up); the database's transactions meanwhile (`db_statements`:
pg_stat_database xact_commit + xact_rollback from the cut until all are
live, less the publisher's own commits, which it counts exactly; a
statement outside a transaction is one). They include the steady work of
any server, which goes on through the storm: the shared live read, and the
LISTEN backend reading the notification queue (a transaction of its own in
PostgreSQL); `steady_db_tx_rate`, measured over the warm-up, is that rate.
PostgreSQL backends publish their counts at most once a second, so the
window's edges blur by about a second of it. The server's own counters
(/metrics, exact) split its reads: `wakeups` the shared reads, `catchup` the
rest (catch-up reads from the table, the storm's own). Latency: receipt
less the publish time in the event's data, of the events published between
the cut and all-live. Then publishing goes on for --tail seconds, stops, and
each client's events across the cut are checked against the table: its
stream's events from its first one on, each once, in order (lost,
duplicated, reordered).

--recent-bytes N passes the server's --recent-bytes (0: no recent history)
when the server has that flag; a server without it (an older commit)
runs unchanged, and the RESULT says so in `server_flags`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from common import AddParser, database, load_average, ms, own_cpu, report, server
from loadgen import percentile
from reconnect_load import (
    CountingPublisher,
    Cut,
    Reconnect,
    Subscriber,
    Transactions,
    has_flag,
    open_all,
    restart,
    scrape,
    storm_client,
)


@dataclass
class Check:
    exact: int = 0        # clients whose ids equal their stream's, from their first event on
    lost: int = 0         # ids of their stream (after their first) they never received
    duplicated: int = 0   # ids received more than once
    reordered: int = 0    # clients that got every id once, but not in stream order
    unknown: int = 0      # ids not in their stream (a gap event, another stream)
    no_events: int = 0    # clients that received nothing at all


async def stored(dsn: str, prefix: str) -> dict[int, list[bytes]]:
    """Each stream's positions in stream order, as the frames carry them."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT stream, xid::text::bigint AS xid, id FROM sse_stream.events "
            "WHERE stream LIKE $1 ORDER BY xid, id", prefix + ".u%")
    finally:
        await connection.close()
    streams: dict[int, list[bytes]] = {}
    for row in rows:
        number = int(row["stream"].rsplit(".u", 1)[1])
        streams.setdefault(number, []).append(b"%d-%d" % (row["xid"], row["id"]))
    return streams


def check(streams: dict[int, list[bytes]], subscribers: Sequence[Subscriber],
          stream_of: Sequence[int]) -> Check:
    """Each client's ids against its stream's, from its first received event to the end."""
    result = Check()
    for subscriber, number in zip(subscribers, stream_of, strict=True):
        got = subscriber.ids
        if not got:
            result.no_events += 1
            continue
        ids = streams.get(number, [])
        expected = ids[ids.index(got[0]):] if got[0] in ids else []
        if got == expected:
            result.exact += 1
            continue
        seen = set(got)
        result.lost += len(set(expected) - seen)
        result.duplicated += len(got) - len(seen)
        result.unknown += len(seen - set(expected))
        if len(got) == len(seen) and seen == set(expected):
            result.reordered += 1
    return result


async def reconnect(args: argparse.Namespace) -> dict[str, Any]:
    """Cut every connection at once; time, database work and delivery until all are back."""
    prefix = "r" + uuid.uuid4().hex[:8]
    stream_of = [k % args.streams for k in range(args.subscribers)]
    # No stream limit: closed streams the server has not noticed yet would refuse new ones.
    extra = ["--heartbeat", str(args.heartbeat), "--max-streams", "0"]
    async with database(args) as setup:
        flags = ""
        if args.recent_bytes is not None:
            if await has_flag(setup, "--recent-bytes"):
                flags = f"--recent-bytes {args.recent_bytes}"
                extra += ["--recent-bytes", str(args.recent_bytes)]
            else:
                print("this server has no --recent-bytes (no recent history): not passed",
                      file=sys.stderr)
        publisher = CountingPublisher(setup.dsn, prefix, args.streams, args.rate,
                                      args.warmup + args.timeout + args.tail + 60)
        counts = await Transactions.open(setup.dsn)
        restarting: asyncio.Task[Any] | None = None
        replacement = None
        async with server(setup, *extra, profile=args.profile) as srv:
            try:
                subscribers = [Subscriber(f"/streams/{prefix}.u{k}", n % 100 == 0)
                               for n, k in enumerate(stream_of)]
                cut = Cut()
                opened = time.monotonic()
                await open_all(srv.port, subscribers, cut, args.concurrency, 60)
                open_seconds = time.monotonic() - opened
                publisher.start()
                while publisher.commits == 0 and publisher.process.is_alive():
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # the first second: connections, plans
                load0 = load_average()
                steady_at, steady_tx, steady_pub = time.monotonic(), await counts.read(), \
                    publisher.commits
                await asyncio.sleep(args.warmup)
                before = await scrape(srv.port)
                cpu0, mine0 = srv.cpu_seconds(), own_cpu()
                tx0, pub0 = await counts.read(), publisher.commits
                start = time.monotonic()
                steady = ((tx0 - steady_tx) - (pub0 - steady_pub)) / (start - steady_at)

                # -- the cut ------------------------------------------------------
                cut.wall = time.time()
                how = Reconnect(srv.port, asyncio.Semaphore(args.concurrency), args.jitter,
                                args.retry_wait, 30.0, start + args.timeout)
                if args.cut == "restart":
                    restarting = asyncio.create_task(restart(setup, srv, extra))
                else:
                    for subscriber in subscribers:
                        assert subscriber.connection is not None
                        subscriber.connection.close()
                clients = [asyncio.create_task(storm_client(s, cut, how)) for s in subscribers]
                shown = start
                while cut.live < len(subscribers) and time.monotonic() < how.deadline:
                    await asyncio.sleep(0.05)
                    if time.monotonic() - shown >= 5:
                        shown = time.monotonic()
                        back = sum(1 for s in subscribers if s.back_at)
                        print(f"{shown - start:.0f} s after the cut: {back} connected again, "
                              f"{cut.live} live", file=sys.stderr)
                tx1, pub1 = await counts.read(), publisher.commits
                all_live = all(s.live_at for s in subscribers)
                live_at = max(s.live_at for s in subscribers) if all_live else time.monotonic()
                cut.until = cut.wall + (live_at - start)
                print(f"cut at {cut.wall:.3f}, all live at {cut.until:.3f} (time.time())",
                      file=sys.stderr)
                restart_seconds = None
                if restarting is not None:
                    replacement, ready_at = await restarting
                    restart_seconds = ready_at - start
                live_srv = replacement or srv
                after = await scrape(live_srv.port)
                cpu = live_srv.cpu_seconds() - (0.0 if replacement else cpu0)
                mine = own_cpu() - mine0

                # -- the tail, then the check -------------------------------------
                await asyncio.sleep(args.tail)
                await publisher.stop()
                streams = await stored(setup.dsn, prefix)
                drain_until = time.monotonic() + args.drain
                while time.monotonic() < drain_until and any(
                        not s.ids or s.ids[-1] != streams.get(k, [None])[-1]
                        for s, k in zip(subscribers, stream_of, strict=True)):
                    await asyncio.sleep(0.1)
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)
                for subscriber in subscribers:
                    if subscriber.connection is not None:
                        subscriber.connection.close()
                checked = check(streams, subscribers, stream_of)
            finally:
                await publisher.stop()
                await counts.close()
                if restarting is not None and replacement is None:
                    # Failed or interrupted before it was awaited: its server, if any, too.
                    if not restarting.done():
                        restarting.cancel()
                    done = (await asyncio.gather(restarting, return_exceptions=True))[0]
                    if isinstance(done, tuple):
                        replacement = done[0]
                if replacement is not None:
                    replacement.stop()
    published = publisher.events
    lat = [received - sent for s in subscribers for sent, received in s.storm
           if sent <= cut.until]
    before_cut = [value for s in subscribers for value in s.steady]
    back = [s.back_at - start for s in subscribers if s.back_at]
    catch_up = [s.live_at - s.back_at for s in subscribers if s.live_at and s.back_at]
    # The server's own counts (exact, unlike pg_stat): reads of events, of which
    # the shared live reads (a wake-up each) are the steady part, the rest catch-ups.
    storm_reads = {key: after.get(key, 0.0) - (0.0 if replacement else before.get(key, 0.0))
                   for key in ("reads", "wakeups", "replayed", "from_memory") if key in after}
    if "reads" in storm_reads and "wakeups" in storm_reads:
        storm_reads["catchup"] = storm_reads["reads"] - storm_reads["wakeups"]
    statements = (tx1 - tx0) - (pub1 - pub0) - (1 if counts.own else 0)
    live_seconds = live_at - start
    result = {
        "cut": args.cut, "subscribers": len(subscribers), "streams": args.streams,
        "rate": args.rate, "server_flags": flags,
        "all_live_seconds": round(live_seconds, 2) if all_live else None,
        "clients_live_pct": round(100 * cut.live / len(subscribers), 2),
        "reconnected_seconds": {"p50": round(percentile(back, .5), 2),
                                "p99": round(percentile(back, .99), 2)},
        "connected_to_live_ms": {"p50": ms(percentile(catch_up, .5)),
                                 "p99": ms(percentile(catch_up, .99))},
        "db_statements": statements, "publisher_commits": pub1 - pub0,
        "steady_db_tx_rate": round(steady, 1),
        "server_reads": {key: round(value) for key, value in storm_reads.items()},
        "latency_ms": {"p50": ms(percentile(lat, .5)), "p99": ms(percentile(lat, .99)),
                       "max": ms(max(lat, default=float("nan"))), "samples": len(lat)},
        "steady_latency_ms": {"p50": ms(percentile(before_cut, .5)),
                              "p99": ms(percentile(before_cut, .99))},
        "lost": checked.lost, "duplicated": checked.duplicated, "reordered": checked.reordered,
        "unknown_ids": checked.unknown, "clients_exact": checked.exact,
        "clients_without_events": checked.no_events,
        "gaps": sum(s.gaps for s in subscribers),
        "reconnect_attempts": sum(s.attempts for s in subscribers),
        "connect_failures": sum(s.failures for s in subscribers),
        "restart_seconds": round(restart_seconds, 2) if restart_seconds is not None else None,
        "published": published, "open_seconds": round(open_seconds, 2),
        "server_cpu_s": round(cpu, 2), "loadgen_cpu_s": round(mine, 2),
        "stats_from_other_db": not counts.own, "load_average": load0,
    }
    reads = ", ".join(f"{key} {value:.0f}" for key, value in storm_reads.items()) or "n/a"
    how_cut = ("every client connection closed" if args.cut == "clients"
               else "server stopped (SIGTERM) and started again on its port")
    rows = [("cut", f"{args.cut}: {how_cut}"),
            ("subscribers / streams / rate", f"{len(subscribers)} / {args.streams} / "
                                             f"{args.rate} events/s"),
            ("server flags", flags or "(defaults)"),
            ("all live after (s)", f"{live_seconds:.2f}" if all_live else
             f"NOT all live: {cut.live} of {len(subscribers)} after {live_seconds:.1f} s"),
            ("connected again after p50 / p99 (s)",
             "{p50} / {p99}".format(**result["reconnected_seconds"])),
            ("then live after p50 / p99 (ms)",
             "{p50} / {p99}".format(**result["connected_to_live_ms"])),
            ("db transactions, cut to all-live", f"{statements} (publisher's own "
             f"{pub1 - pub0} not counted; steady rate before the cut {steady:.0f}/s)"),
            ("server's event reads (/metrics)", reads),
            ("latency p50 / p99 / max (ms)",
             "{p50} / {p99} / {max} ({samples} deliveries published in the storm)"
             .format(**result["latency_ms"])),
            ("before the cut: latency p50 / p99 (ms)",
             "{p50} / {p99} (1 client in 100)".format(**result["steady_latency_ms"])),
            ("lost / duplicated / reordered", f"{checked.lost} / {checked.duplicated} / "
                                              f"{checked.reordered}"),
            ("clients exact across the cut", f"{checked.exact} of {len(subscribers)}"
             f" ({checked.no_events} without events, {checked.unknown} unknown ids, "
             f"{result['gaps']} gaps)"),
            ("reconnect attempts (failed)", f"{result['reconnect_attempts']} "
                                            f"({result['connect_failures']})"),
            ("server back after (s)", result["restart_seconds"]
             if restart_seconds is not None else "(not restarted)"),
            ("events published", published),
            ("time to open all (s)", result["open_seconds"]),
            ("server CPU s, cut to all-live", result["server_cpu_s"]),
            ("load generator CPU s, same", result["loadgen_cpu_s"]),
            ("load average before the cut", load0)]
    report("reconnect", rows, result)
    return result


def add_parser(add: AddParser) -> None:
    sub = add("reconnect", "every connection cut at once while events flow; all resume",
              __doc__)
    sub.add_argument("--cut", choices=("clients", "restart"), default="clients",
                     help="clients: close every client connection; restart: stop the server "
                          "(SIGTERM) and start it again on its port")
    sub.add_argument("--subscribers", "-s", type=int, default=10000)
    sub.add_argument("--streams", type=int, default=100, help="client k reads stream k %% N")
    sub.add_argument("--rate", "-r", type=float, default=500, help="events/s over all streams")
    sub.add_argument("--warmup", type=float, default=5, help="seconds of events before the cut")
    sub.add_argument("--jitter", type=float, default=0.5,
                     help="a client reconnects after uniform(0, this) seconds")
    sub.add_argument("--retry-wait", type=float, default=0.25,
                     help="seconds (x 0.5..1.5) before another attempt after a failed one")
    sub.add_argument("--concurrency", type=int, default=100,
                     help="handshakes at once (below the listen backlog, 128)")
    sub.add_argument("--timeout", type=float, default=300,
                     help="seconds after the cut to wait for all clients")
    sub.add_argument("--tail", type=float, default=2,
                     help="seconds of publishing after all are live, before the check")
    sub.add_argument("--recent-bytes", type=int, default=None,
                     help="server --recent-bytes (0: off), if the server has the flag")
    sub.set_defaults(run=reconnect)
