"""standby: what live reads cost the primary, with and without hot standbys.

    python benchmarks/run.py standby                      # N = 1,2,4,8 servers, 200 commits/s
    python benchmarks/run.py standby --seconds 5 --servers 1,2
    python benchmarks/run.py standby --generic-ab         # and --no-live-generic-plan vs default
    python benchmarks/run.py standby --repeat 3           # medians of 3 sweeps

One embedded primary and one streaming hot standby of it (pg_basebackup -R,
fsync off), on this machine. For each N, N `sse-stream serve` processes on
127.0.0.1 run in two modes:
  primary  no --live-dsn: each server LISTENs on the primary and reads it on
           every NOTIFY;
  standby  --live-dsn the standby: each server polls the standby's replay
           position every --poll and reads the standby when it moved; no
           LISTEN and no live read on the primary.
A publisher in a process of its own commits one event per transaction at
--rate on its own connection to the primary. Over a steady window of
--seconds (after --warmup) the scenario reads:
  primary µs/commit     CPU of all the primary's processes (postmaster and its
                        children, /proc) per commit in the window; (exited):
                        the part spent by children that ended in it
                        (autovacuum workers, mostly), a known source of noise;
  reads/commit          seq_scan + idx_scan of sse_stream.events on the
                        primary (pg_stat_user_tables) per commit;
  standby µs/s/server   CPU of all the standby's processes per second of the
                        window, divided by N (standby mode); the total per
                        second is in the RESULT (in primary mode it is the
                        replay alone);
  server µs/commit      CPU of one server process per commit (mean of N);
  p50 / p99             commit-to-receipt latency of one live subscriber per
                        server (receipt time less the clock_timestamp() the
                        publishing INSERT put in the event's data).
Row N=0 is the publisher alone (no server): the cost of the commits
themselves, and proof that the publisher's INSERTs scan nothing. Then N=1 in
both modes at --fast-rate (default 1,000 commits/s). `--generic-ab` adds
--ab-runs pairs of standby-mode cells, --no-live-generic-plan against the
default, and prints server and standby CPU per commit of each.

Targets (checked and printed, never adjusted): in standby mode the primary's
live reads per commit are 0 and its CPU per commit grows by at most 10 %
over N=1's for every N; at N=1 the standby path's p99 is at most the primary
path's p99 + --poll + 20 ms, at each rate. Identical cells differ by 10 to
20 % in CPU on a small shared machine: `--repeat R` runs the sweep R times,
in alternating order, prints the medians and judges the targets on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from common import AddParser, ServerSide, load_average, ms, report
from loadgen import percentile
from standby_load import Pair, Publisher, delivered, primary_and_standby, sample, servers

MODES = {"none": "publisher only", "primary": "LISTEN primary", "standby": "--live-dsn standby"}


@dataclass(frozen=True)
class Cell:
    servers: int
    mode: str  # a key of MODES
    rate: float
    generic_plan: bool = True


async def measure(pair: Pair, cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    """One cell: start its servers, publish, sample a steady window, stop them."""
    stream = "sb" + uuid.uuid4().hex[:8]
    extra = ["--heartbeat", str(args.heartbeat)]
    if cell.mode == "standby":
        extra += ["--live-dsn", pair.standby_dsn, "--standby-poll", str(args.poll)]
    if not cell.generic_plan:
        extra.append("--no-live-generic-plan")
    await pair.caught_up()
    async with AsyncExitStack() as stack:
        fleet = None
        if cell.servers:
            fleet = await stack.enter_async_context(servers(pair, cell.servers, stream, *extra))
        publisher = Publisher(pair.dsn, stream, cell.rate, args.warmup + args.seconds + 0.5,
                              args.synchronous_commit)
        publisher.start()
        try:
            await publisher.started()
            await asyncio.sleep(args.warmup)
            if fleet:
                fleet.restart_latencies()
            first = await sample(pair, publisher, fleet)
            await asyncio.sleep(args.seconds)
            last = await sample(pair, publisher, fleet)
        finally:
            await publisher.finished(timeout=args.seconds + 30)
        total = publisher.commits
        missing = await delivered(fleet, total, args.drain) if fleet else 0
        lat = fleet.latencies() if fleet else []
    commits = last.commits - first.commits
    window = last.at - first.at
    standby_per_s = (last.standby_cpu - first.standby_cpu) / window
    per_commit = 1e6 / commits if commits else float("nan")
    return {
        "servers": cell.servers, "mode": cell.mode, "rate": cell.rate,
        "generic_plan": cell.generic_plan,
        "commits": commits, "window_s": round(window, 2),
        "commits_per_s": round(commits / window, 1),
        "primary_us_per_commit": round((last.primary_cpu - first.primary_cpu) * per_commit, 1),
        "primary_exited_us_per_commit": round((last.primary_exited - first.primary_exited)
                                              * per_commit, 1),
        "primary_reads": last.reads - first.reads,
        "primary_reads_per_commit": round((last.reads - first.reads) / commits, 3),
        "inserts_per_commit": round((last.inserts - first.inserts) / commits, 3),
        "standby_us_per_s": round(standby_per_s * 1e6),
        "standby_us_per_s_per_server": (round(standby_per_s * 1e6 / cell.servers)
                                        if cell.mode == "standby" else None),
        "standby_us_per_commit": round((last.standby_cpu - first.standby_cpu) * per_commit, 1),
        "server_us_per_commit": (round((last.server_cpu - first.server_cpu) * per_commit
                                       / cell.servers, 1) if cell.servers else None),
        "latency_ms": {"p50": ms(percentile(lat, .5)), "p99": ms(percentile(lat, .99)),
                       "samples": len(lat)},
        "published": total, "missing_deliveries": missing,
    }


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    per_server = number(result["standby_us_per_s_per_server"])
    server = number(result["server_us_per_commit"], 1)
    return (f"{result['servers']:>3}  {MODES[result['mode']]:<19}"
            f"{'' if result['generic_plan'] else ' custom plan':<12}"
            f"{result['rate']:>6.0f} {result['commits_per_s']:>9.1f} "
            f"{result['primary_us_per_commit']:>10.1f} "
            f"{result['primary_exited_us_per_commit']:>8.1f} "
            f"{result['primary_reads_per_commit']:>11.3f} "
            f"{per_server:>13} {number(result['standby_us_per_s']):>10} {server:>10} "
            f"{number(lat['p50'], 1):>7} {number(lat['p99'], 1):>7} "
            f"{result['missing_deliveries']:>7}")


HEADER = (f"{'N':>3}  {'mode':<19}{'':<12}{'rate':>6} {'commits/s':>9} "
          f"{'primary':>10} {'(exited)':>8} {'primary':>11} {'standby':>13} {'standby':>10} "
          f"{'server':>10} {'p50':>7} {'p99':>7} {'missing':>7}\n"
          f"{'':>3}  {'':<19}{'':<12}{'':>6} {'':>9} "
          f"{'µs/commit':>10} {'':>8} {'reads/commit':>11} {'µs/s/server':>13} {'µs/s':>10} "
          f"{'µs/commit':>10} {'ms':>7} {'ms':>7} {'':>7}")

NUMBERS = ("commits_per_s", "primary_us_per_commit", "primary_exited_us_per_commit",
           "primary_reads", "primary_reads_per_commit", "standby_us_per_s",
           "standby_us_per_s_per_server", "standby_us_per_commit", "server_us_per_commit")


def medians(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (N, mode, rate, plan, A/B): the median of its repeats."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in cells:
        key = (cell["servers"], cell["mode"], cell["rate"], cell["generic_plan"], cell["ab"])
        groups.setdefault(key, []).append(cell)
    out = []
    for group in groups.values():
        row_ = dict(group[0])
        for key in NUMBERS:
            values = [c[key] for c in group if c[key] is not None]
            row_[key] = round(statistics.median(values), 3) if values else None
        row_["latency_ms"] = {
            key: round(statistics.median(c["latency_ms"][key] for c in group), 1)
            if all(c["latency_ms"][key] is not None for c in group) else None
            for key in ("p50", "p99", "samples")}
        row_["missing_deliveries"] = sum(c["missing_deliveries"] for c in group)
        row_["primary_reads"] = max(c["primary_reads"] for c in group)
        row_["primary_us_range"] = [min(c["primary_us_per_commit"] for c in group),
                                    max(c["primary_us_per_commit"] for c in group)]
        row_["runs"] = len(group)
        out.append(row_)
    return sorted(out, key=lambda c: (c["ab"], c["rate"], c["servers"], c["mode"] != "primary",
                                      not c["generic_plan"]))


def targets(cells: list[dict[str, Any]], poll: float) -> dict[str, Any]:
    """The issue's targets, evaluated on what was measured."""
    base = [c for c in cells if not c["ab"] and c["servers"]]
    standby = {c["servers"]: c for c in base if c["mode"] == "standby" and
               c["rate"] == base[0]["rate"]}
    reads = {str(n): c["primary_reads"] for n, c in standby.items()}
    cpu = {n: c["primary_us_per_commit"] for n, c in standby.items()}
    one = cpu.get(min(cpu)) if cpu else None
    spread = {str(n): round(value / one - 1, 3) for n, value in cpu.items()} if one else {}
    p99: dict[str, Any] = {}
    for rate in sorted({c["rate"] for c in base if c["servers"] == 1}):
        pair = {c["mode"]: c["latency_ms"]["p99"] for c in base
                if c["servers"] == 1 and c["rate"] == rate}
        if {"primary", "standby"} <= pair.keys():
            bound = round(pair["primary"] + poll * 1000 + 20, 1)
            p99[f"{rate:g}"] = {"standby": pair["standby"], "bound": bound,
                                "met": pair["standby"] <= bound}
    return {
        "zero_primary_reads": {"reads": reads, "met": all(v == 0 for v in reads.values())},
        # "Not growing with N": a cost below N=1's is no failure.
        "flat_primary_cpu": {"vs_n1": spread,
                             "met": bool(spread) and all(v <= 0.10 for v in spread.values())},
        "p99_within_poll_plus_20ms": {"by_rate": p99,
                                      "met": bool(p99) and all(v["met"] for v in p99.values())},
    }


def generic_ab(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    ab = [c for c in cells if c.get("ab")]
    if not ab:
        return None
    sides: dict[str, dict[str, float]] = {}
    for plan, name in ((True, "generic"), (False, "custom")):
        side = [c for c in ab if c["generic_plan"] is plan]
        sides[name] = {key: statistics.median(c[key] for c in side)
                       for key in ("server_us_per_commit", "standby_us_per_commit")}
    ratio = {key: round(sides["generic"][key] / sides["custom"][key], 3)
             for key in sides["generic"] if sides["custom"][key]}
    return {**sides, "generic_over_custom": ratio, "runs": len(ab) // 2}


async def standby(args: argparse.Namespace) -> dict[str, Any]:
    """The cells in order: baseline, N x both modes, fast rate, then the A/B pairs."""
    if args.dsn:
        raise SystemExit("standby: starts its own primary and standby (their CPU is read "
                         "from /proc); --dsn is not supported")
    if args.profile:
        raise SystemExit("standby: runs up to 8 servers per cell; --profile is not supported")
    counts = [int(n) for n in args.servers.split(",") if n.strip()]
    plan: list[tuple[Cell, bool]] = []
    for repeat in range(args.repeat):
        # Each repeat goes the other way round: drift over the run (a
        # checkpoint, the table growing) does not favour one end.
        modes = ("primary", "standby") if repeat % 2 == 0 else ("standby", "primary")
        order = counts if repeat % 2 == 0 else counts[::-1]
        plan.append((Cell(0, "none", args.rate), False))
        plan += [(Cell(n, mode, args.rate), False) for n in order for mode in modes]
        if args.fast_rate:
            plan += [(Cell(1, mode, args.fast_rate), False) for mode in modes]
    for run in range(args.ab_runs if args.generic_ab else 0):
        sides = (True, False) if run % 2 == 0 else (False, True)
        plan += [(Cell(args.ab_servers, "standby", args.rate, side), True) for side in sides]
    cells: list[dict[str, Any]] = []
    load0 = load_average()
    async with primary_and_standby(ServerSide.from_args(args), args.keep_logs) as pair:
        print(HEADER, flush=True)
        for cell, in_ab in plan:
            result = await measure(pair, cell, args)
            result["ab"] = in_ab
            cells.append(result)
            print(row(result), flush=True)
    summary = medians(cells)
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} repeats (load average now {load_average()})")
        print(HEADER)
        for median in summary:
            print(row(median))
    met = targets(summary, args.poll)
    comparison = generic_ab(cells)
    result = {"rate": args.rate, "fast_rate": args.fast_rate, "seconds": args.seconds,
              "synchronous_commit": args.synchronous_commit,
              "poll_s": args.poll, "cpus": os.cpu_count(), "load_average": load0,
              "repeat": args.repeat, "load_average_end": load_average(),
              "medians": summary, "cells": cells, "targets": met, "generic_plan_ab": comparison}
    rows: list[tuple[str, Any]] = [
        ("setup", f"embedded primary + streaming standby (fsync off), {os.cpu_count()} CPUs, "
                  f"load average {load0} at start, {result['load_average_end']} at end"),
        ("publisher", f"{args.rate:g} commits/s (one event each, synchronous_commit "
                      f"{args.synchronous_commit}), window {args.seconds:g} s per cell, "
                      f"{args.repeat} repeat(s): targets on the medians"),
        ("target: 0 primary reads/commit (standby mode)",
         f"{'met' if met['zero_primary_reads']['met'] else 'NOT met'}: reads in window by N "
         f"{met['zero_primary_reads']['reads']}"),
        ("target: primary CPU/commit not growing > 10 %",
         f"{'met' if met['flat_primary_cpu']['met'] else 'NOT met'}: vs N=1 "
         f"{met['flat_primary_cpu']['vs_n1']}"),
        (f"target: standby p99 <= primary p99 + {ms(args.poll)} ms + 20 ms (N=1)",
         f"{'met' if met['p99_within_poll_plus_20ms']['met'] else 'NOT met'}: "
         f"{met['p99_within_poll_plus_20ms']['by_rate']}"),
    ]
    if comparison:
        rows.append(("generic plan A/B (standby mode, medians)",
                     f"server µs/commit generic {comparison['generic']['server_us_per_commit']}"
                     f" vs custom {comparison['custom']['server_us_per_commit']}; standby "
                     f"µs/commit generic {comparison['generic']['standby_us_per_commit']} vs "
                     f"custom {comparison['custom']['standby_us_per_commit']}; ratio "
                     f"{comparison['generic_over_custom']}"))
    report("standby", rows, result)
    return result


def add_parser(add: AddParser) -> None:
    sub = add("standby", "primary CPU and reads per commit with servers on the primary vs on a "
              "hot standby", __doc__)
    sub.add_argument("--servers", default="1,2,4,8", help="server counts N, comma-separated")
    sub.add_argument("--rate", "-r", type=float, default=200, help="commits/s, one event each")
    sub.add_argument("--fast-rate", type=float, default=1000,
                     help="commits/s of the N=1 latency cells (0: skip them)")
    sub.add_argument("--seconds", "-t", type=float, default=10, help="steady window per cell")
    sub.add_argument("--warmup", type=float, default=2.0,
                     help="seconds of publishing before the window opens")
    sub.add_argument("--poll", type=float, default=0.02, help="server --standby-poll, seconds")
    sub.add_argument("--repeat", type=int, default=1,
                     help="run the sweep R times (alternating order) and judge the medians")
    sub.add_argument("--synchronous-commit", choices=("on", "off"), default="on",
                     help="the publisher's synchronous_commit (off, as the embedded clusters "
                          "run, holds a commit back from the standby up to wal_writer_delay)")
    sub.add_argument("--generic-ab", action="store_true",
                     help="also standby-mode cells with --no-live-generic-plan vs the default")
    sub.add_argument("--ab-runs", type=int, default=2, help="pairs of A/B cells (order alternates)")
    sub.add_argument("--ab-servers", type=int, default=1, help="servers N of the A/B cells")
    sub.set_defaults(run=standby)
