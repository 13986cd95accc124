"""sse-stream benchmarks: `python benchmarks/run.py SCENARIO [options]`.

Scenarios: fanout, filtered, peruser, idle, replay, page, churn, reconnect, hostile,
webhooks, standby, one module each in benchmarks/scenarios/ (`run.py SCENARIO --help`
gives a scenario's details and options; benchmarks/README.md the overview).
Each starts its own `sse-stream serve` process on 127.0.0.1 (and, without
--dsn, its own embedded PostgreSQL with fsync off), runs for a bounded time,
prints a table and one JSON line (prefixed `RESULT `), and stops what it
started by PID. The load generator runs in this process (benchmarks/loadgen.py).

The server under test: by default this checkout, run by this interpreter.
`--server-python PATH --server-src DIR` (or the environment variables
SSE_STREAM_BENCH_SERVER_PYTHON and SSE_STREAM_BENCH_SERVER_SRC) run the server,
and the schema migration, from another source tree with its own interpreter
(a venv with that tree installed, so that its sql/ is the one found), while
the load generator, the publisher and the embedded PostgreSQL stay this
checkout's: that is how benchmarks/ab.py compares two commits.

Publishing: events are written with SQL in batches, one INSERT ... SELECT
generate_series per transaction, so the publisher is never the bottleneck.
At a rate R up to 100 events/s a transaction carries one event (R tx/s);
above that there are 100 transactions per second of R/100 events each
(R=1000: 100 tx/s of 10 events). `--rate 0` ("max") commits batches of
`--batch` events (default 100) back to back on one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# benchmarks/ itself, so that the helpers and scenarios/ import from any working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SERVER_PYTHON_ENV, SERVER_SRC_ENV
from loadgen import raise_open_files
from scenarios import (
    churn,
    fanout,
    hostile,
    idle,
    page,
    peruser,
    reconnect,
    replay,
    standby,
    webhooks,
)

# In the order of `run.py --help`; fanout declares filtered too.
SCENARIOS = (fanout, peruser, idle, replay, page, churn, reconnect, hostile, webhooks, standby)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="scenario", required=True)

    def add(name: str, help_text: str, description: str | None) -> argparse.ArgumentParser:
        """A scenario's subcommand, with the options every scenario takes."""
        sub = commands.add_parser(name, help=help_text, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--dsn", help="PostgreSQL to use (default: an embedded one)")
        sub.add_argument("--keep-logs", action="store_true", help="keep the server log")
        sub.add_argument("--profile", metavar="FILE",
                         help="record the server with py-spy: FILE.svg (flame graph) or FILE.txt "
                              "(collapsed stacks)")
        sub.add_argument("--heartbeat", type=float, default=15.0, help="server --heartbeat")
        sub.add_argument("--drain", type=float, default=10.0,
                         help="seconds to wait for deliveries after publishing stops")
        sub.add_argument("--server-python", metavar="PATH",
                         help=f"interpreter that runs the server and its migration (env "
                              f"{SERVER_PYTHON_ENV}; default: this one)")
        sub.add_argument("--server-src", metavar="DIR",
                         help=f"source tree of the server (env {SERVER_SRC_ENV}; default: this "
                              f"checkout)")
        return sub

    for scenario in SCENARIOS:
        scenario.add_parser(add)
    return parser


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = await args.run(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_open_files()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
