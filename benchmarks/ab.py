"""A/B benchmarks: the same scenarios against a git ref and the working tree.

    python benchmarks/ab.py REF "SCENARIO [ARGS]" ["SCENARIO [ARGS]" ...] [options]
    python benchmarks/ab.py b2041ef "peruser --mode filter" "peruser --mode stream" --runs 3
    python benchmarks/ab.py HEAD "peruser --mode stream --subscribers 100 --seconds 3" --runs 1
    python benchmarks/ab.py b2041ef --suite targets --runs 3 --markdown /tmp/ab.md

Each quoted string is one invocation of benchmarks/run.py (its scenario name
and options). Every run uses THIS checkout's benchmarks/run.py, so the load
generator, the publisher and the embedded PostgreSQL are the same on both
sides; only the server differs. The working side's server is this checkout
run by this interpreter; the REF side's server (and its schema migration) runs
from `git archive REF` unpacked in a cache folder, installed in a venv of its
own (`pip install -e 'SRC[bench,embedded,fast]'`, constrained to the package
versions of this interpreter's environment, so both sides run the same
aiohttp, asyncpg, orjson and uvloop). The cache, ~/.cache/sse-stream-ab/<sha>
(or $SSE_STREAM_AB_CACHE, or --cache), is reused for the same commit.

--runs N runs every scenario N times on each side, in pairs whose order
alternates (REF, work; work, REF; ...) so that a drift of the machine falls on
both sides alike. For every numeric field of the RESULT line it prints the
median of each side (with min-max when N > 1) and the ratio work / REF, and
says which is better when the field's name tells the direction (latency, ms,
CPU, RSS, seconds, lost: lower; per_s, pct, complete, delivered: higher) and
the ratio is outside 1 +- --noise. Fields equal in every run of both sides
(the scenario's settings, zero losses) are listed once under the table.
Absolute numbers drift on a shared machine; ratios from one run do not.

Each run is bounded by --timeout seconds (then SIGINT, so run.py stops its
server and database, and SIGKILL to its process group a minute later). The
output of every run is kept in a log folder (printed at the end); --json FILE
writes every run's RESULT, --markdown FILE the tables ready to paste.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ab_compare import compare, markdown_table, table, text_table
from ab_sides import ROOT, Side, check_side, prepare_ref, resolve, working_label

RUN_PY = ROOT / "benchmarks" / "run.py"
RESULT_PREFIX = "RESULT "

# The scenarios whose ratios the performance issue asks for (run.py defaults otherwise).
SUITES: dict[str, list[str]] = {
    "targets": [
        "peruser --mode filter",
        "peruser --mode stream",
        "peruser --mode filter --subscribers 10000 --rate 200",
        "replay",
        "page",
        "fanout --subscribers 1000 --rate 1000",
        "idle",
        "churn",
    ],
    "quick": [
        "peruser --mode filter --subscribers 200 --seconds 5",
        "peruser --mode stream --subscribers 200 --seconds 5",
        "replay --events 100000 --clients 20 --each 5000",
        "page --rows 20000 --passes 2",
        "fanout --subscribers 200 --rate 500 --seconds 5",
        "idle --streams 200 --seconds 10",
        "churn --seconds 5",
    ],
}


# -- runs -------------------------------------------------------------------------


@dataclass
class Run:
    """One run of one scenario on one side."""

    scenario: int
    side: str
    seconds: float
    status: str                      # "ok", "timeout", "exit N", "no RESULT"
    result: dict[str, Any] | None
    log: Path
    load_average: float


def other_benchmarks() -> list[str]:
    """Command lines of benchmark or test runs on this machine that are not ours."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if ("benchmarks/run.py" in cmdline or "pytest" in cmdline) and "ab.py" not in cmdline:
            found.append(f"{entry.name} {cmdline[:120]}")
    return found


def wait_quiet(limit: float) -> None:
    """Wait (at most `limit` s, polling every 10 s) while other benchmarks or tests run."""
    deadline = time.monotonic() + limit
    busy = other_benchmarks()
    if busy and limit > 0:
        print(f"ab: waiting up to {limit:.0f} s for: {'; '.join(busy)}", file=sys.stderr)
    while busy and time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        busy = other_benchmarks()
    if busy:
        print(f"ab: measuring while these run: {'; '.join(busy)}", file=sys.stderr)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the run's process group (run.py then stops its server), SIGKILL after 60 s."""
    for sig, grace in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_once(index: int, text: str, side: Side, logs: Path, number: int,
             timeout: float) -> Run:
    args = shlex.split(text)
    log = logs / f"{number:02d}-{side.key}-{index}-{args[0]}.log"
    load = round(os.getloadavg()[0], 2)
    start = time.monotonic()
    with log.open("wb") as out:
        out.write(f"# {side.label}: {side.python} {side.src}\n# run.py {text}\n".encode())
        out.flush()
        process = subprocess.Popen([sys.executable, str(RUN_PY), *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=side.env(), cwd=ROOT,
                                   start_new_session=True)
        try:
            process.wait(timeout)
            status = "ok" if process.returncode == 0 else f"exit {process.returncode}"
        except subprocess.TimeoutExpired:
            stop_group(process)
            status = "timeout"
        except KeyboardInterrupt:
            stop_group(process)
            raise
    seconds = time.monotonic() - start
    result = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX):])
            except ValueError:
                pass
    if result is None and status == "ok":
        status = "no RESULT"
    return Run(index, side.key, seconds, status, result, log, load)


# -- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/ab.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", help="any git ref or sha: the old side")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help='one run.py invocation per argument, quoted: "peruser --mode filter"')
    parser.add_argument("--suite", choices=sorted(SUITES), action="append", default=[],
                        help="add a preset list of scenarios: " + "; ".join(
                            f"{name}: {', '.join(items)}" for name, items in SUITES.items()))
    parser.add_argument("--runs", "-n", type=int, default=1, help="runs per scenario and side")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="ratios within 1 +- this are called the same")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as markdown")
    parser.add_argument("--json", metavar="FILE", help="write every run's RESULT")
    parser.add_argument("--logs", metavar="DIR", help="folder for the runs' output "
                        "(default: a new /tmp/sse-stream-ab-*)")
    parser.add_argument("--cache", metavar="DIR",
                        default=os.environ.get("SSE_STREAM_AB_CACHE",
                                               str(Path.home() / ".cache" / "sse-stream-ab")),
                        help="where REF's source and venv are kept, per sha")
    parser.add_argument("--rebuild", action="store_true", help="reinstall REF's venv")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to this long while other benchmarks or "
                             "pytest run on the machine (default: only warn)")
    parser.add_argument("--show", action="store_true", help="print each run's own table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = [text for suite in args.suite for text in SUITES[suite]] + args.scenarios
    if not scenarios:
        raise SystemExit("name at least one scenario, e.g. \"peruser --mode stream\", or --suite")
    for text in scenarios:
        if not shlex.split(text):
            raise SystemExit("an empty scenario")
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")

    sha, subject = resolve(args.ref)
    ref_python, ref_src = prepare_ref(sha, Path(args.cache), args.rebuild)
    ref = Side("ref", f"{args.ref} ({sha[:9]})" if not sha.startswith(args.ref) else sha[:9],
               str(ref_python), ref_src)
    work = Side("work", working_label(), sys.executable, ROOT)
    found = {side.key: check_side(side.python, side.src) for side in (ref, work)}
    if found["ref"]["uvloop"] != found["work"]["uvloop"]:
        print("ab: WARNING: uvloop is installed on one side only", file=sys.stderr)
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="sse-stream-ab-"))
    logs.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    print(f"A: {ref.label} {subject!r}\n   server {ref.python}, {ref.src}")
    print(f"B: {work.label}\n   server {work.python}, {work.src}")
    print(f"{len(scenarios)} scenario(s) x {args.runs} run(s) per side, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; logs in {logs}\n",
          flush=True)

    runs: list[Run] = []
    number = 0
    total = len(scenarios) * args.runs * 2
    for index, text in enumerate(scenarios):
        for repeat in range(args.runs):
            pair = (ref, work) if repeat % 2 == 0 else (work, ref)
            for side in pair:
                number += 1
                wait_quiet(args.wait_quiet)
                print(f"[{number}/{total}] {side.key:<4} {text} ...", end=" ", flush=True)
                run = run_once(index, text, side, logs, number, args.timeout)
                runs.append(run)
                print(f"{run.status}, {run.seconds:.0f} s (load {run.load_average})", flush=True)
                if args.show or run.status not in ("ok", "timeout"):
                    tail = run.log.read_text(errors="replace").splitlines()
                    shown = [line for line in tail if not line.startswith(RESULT_PREFIX)]
                    print("\n".join("    " + line for line in shown[-(40 if args.show else 15):]))

    command = "python benchmarks/ab.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    markdown = [f"## A/B: {ref.label} vs {work.label}", "",
                f"`{command}`: {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
                f"{args.runs} run(s) per side in alternating pairs; medians (min–max), "
                f"ratio = work / ref.", ""]
    for index, text in enumerate(scenarios):
        mine = [run for run in runs if run.scenario == index]
        done = {key: [run.result for run in mine if run.side == key and run.result is not None]
                for key in ("ref", "work")}
        failed = [f"{run.side}: {run.status} ({run.log})" for run in mine if run.status != "ok"]
        comparison = compare(done["ref"], done["work"], args.noise)
        rows = table(comparison, ref.label, "work")
        loads = ", ".join(f"{run.side} {run.load_average}" for run in mine)
        print(f"\n== {text}  ({len(done['ref'])} + {len(done['work'])} runs; load at start: "
              f"{loads})")
        print(text_table(rows))
        markdown += [f"### `{text}`", "", markdown_table(rows), ""]
        for label, items in (("same in every run", comparison.constant),
                             ("differs (not numeric)", comparison.differing),
                             ("FAILED", failed)):
            if items:
                print(f"  {label}: " + ", ".join(items))
                markdown += [f"{label}: " + ", ".join(f"`{item}`" for item in items), ""]
    print(f"\nlogs: {logs}")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(markdown).rstrip() + "\n")
        print(f"markdown: {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "ref": {"ref": args.ref, "sha": sha, "subject": subject, "python": ref.python,
                    "src": str(ref.src)},
            "work": {"label": work.label, "python": work.python, "src": str(work.src)},
            "started": started.isoformat(), "scenarios": scenarios,
            "runs": [{"scenario": scenarios[run.scenario], "side": run.side,
                      "status": run.status, "seconds": round(run.seconds, 1),
                      "load_average": run.load_average, "log": str(run.log),
                      "result": run.result} for run in runs]}, indent=1))
        print(f"json: {args.json}")
    return 0 if all(run.status == "ok" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
