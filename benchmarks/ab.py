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
import fcntl
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "benchmarks" / "run.py"
SERVER_PYTHON_ENV = "SSE_STREAM_BENCH_SERVER_PYTHON"  # read by run.py
SERVER_SRC_ENV = "SSE_STREAM_BENCH_SERVER_SRC"
EXTRAS = ("[bench,embedded,fast]", "[fast]", "")  # tried in order
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

# A scenario's settings (the last part of a field's name): no direction.
SETTINGS = {"mode", "subscribers", "rate", "seconds", "events", "clients", "each", "streams",
            "rows", "limit", "passes", "query", "level", "heartbeat_s", "interval_s",
            "server_flags", "page_loops", "replays"}
# Field-name fragments that tell which direction is better; checked in this order.
NEUTRAL = ("load_average", "load_seconds", "loadgen_", "samples", "settle_s", "offered",
           "published", "slack_s", "page_passes", "replays_ended", "empty_pages",
           "events_checked", "page_bytes", "churn_windows", "rss_before")
LOWER = ("latency", "_ms", "cpu", "rss", "lost", "duplicated", "misdelivered", "failures",
         "closed_early", "seconds", "worst_silence", "timeouts", "errors", "refusals", "ratio")
HIGHER = ("per_s", "pct", "complete", "kept", "on_time", "exact", "delivered")


# -- sides ------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """Where one side's server comes from."""

    key: str      # "ref" or "work"
    label: str    # for the tables: the ref's short sha, or "working tree"
    python: str
    src: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, SERVER_PYTHON_ENV: self.python, SERVER_SRC_ENV: str(self.src)}


def git(*args: str) -> str:
    """A read-only git command in this checkout (never one that changes its state)."""
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(ref: str) -> tuple[str, str]:
    """(full sha, subject line) of a ref."""
    sha = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return sha, git("log", "-1", "--format=%s", sha)


def working_label() -> str:
    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"working tree ({head}{' + changes' if changed else ''})"


def frozen_versions(python: str) -> list[str]:
    """`name==version` of every non-editable package of `python`'s environment."""
    done = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"],
                          capture_output=True, text=True, timeout=120)
    return [line for line in done.stdout.splitlines()
            if "==" in line and not line.startswith(("-", "#")) and " @ " not in line]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so two ab.py runs never build the same cache at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_side(python: str, src: Path) -> dict[str, Any]:
    """Where `python` imports sse_stream, its sql/ and uvloop from, with `src` on PYTHONPATH."""
    probe = ("import json, importlib.util, sse_stream, sse_stream.sql, sse_stream.cli\n"
             "print(json.dumps({'package': sse_stream.__file__,\n"
             "  'sql': list(sse_stream.sql.__path__)[0],\n"
             "  'uvloop': importlib.util.find_spec('uvloop') is not None}))")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=src, env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode:
        raise SystemExit(f"{python} cannot import sse_stream from {src}:\n{done.stderr}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for what in ("package", "sql"):
        if not Path(found[what]).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"{python} imports {what} from {found[what]}, not from {src}")
    return found


def prepare_ref(sha: str, cache: Path, rebuild: bool) -> tuple[Path, Path]:
    """(python, source tree) of `sha`: unpacked and installed once, then reused."""
    folder = cache / sha
    src, venv, ready = folder / "src", folder / "venv", folder / "ready.json"
    python = venv / "bin" / "python"
    want = {"sha": sha, "python": sys.version}
    with locked(cache / f"{sha}.lock"):
        if ready.exists() and not rebuild:
            try:
                if json.loads(ready.read_text()) == want and python.exists():
                    return python, src
            except ValueError:
                pass
        print(f"ab: preparing {sha[:12]} in {folder}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", sha],
                                   stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, timeout=300)
        assert archive.stdout is not None
        archive.stdout.close()
        if archive.wait(60) or untar.returncode:
            raise SystemExit(f"git archive {sha} | tar -x failed")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        constraints = folder / "constraints.txt"
        constraints.write_text("\n".join(frozen_versions(sys.executable)) + "\n")
        attempts = [(extras, use) for extras in EXTRAS for use in (True, False)]
        for extras, use_constraints in attempts:
            command = [str(python), "-m", "pip", "install", "--quiet", "-e", f"{src}{extras}"]
            if use_constraints:
                command[4:4] = ["-c", str(constraints)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if done.returncode == 0:
                how = "with" if use_constraints else "WITHOUT"
                print(f"ab: installed {src}{extras} {how} this environment's versions",
                      file=sys.stderr)
                break
            print(f"ab: pip install -e {src}{extras} failed:\n{done.stderr.strip()[-1500:]}",
                  file=sys.stderr)
        else:
            raise SystemExit(f"could not install {sha} in {venv}")
        ready.write_text(json.dumps(want))
    return python, src


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


# -- comparing --------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts and lists as dotted names: latency_ms.p99, levels.1.live_ms.p50."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{position}" if prefix else str(position))
    else:
        yield prefix, value


def direction(name: str) -> int:
    """-1 when lower is better, +1 when higher is, 0 when the name does not tell."""
    lowered = name.lower()
    if lowered.rsplit(".", 1)[-1] in SETTINGS:
        return 0
    for fragments, sign in ((NEUTRAL, 0), (LOWER, -1), (HIGHER, 1)):
        if any(fragment in lowered for fragment in fragments):
            return sign
    return 0


def numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass
class Row:
    name: str
    ref: list[float]
    work: list[float]
    ratio: float | None
    verdict: str
    sign: int


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)   # "name=value" equal everywhere
    differing: list[str] = field(default_factory=list)  # non-numeric values that differ


def compare(ref: list[dict[str, Any]], work: list[dict[str, Any]], noise: float) -> Comparison:
    names: list[str] = []
    values: dict[str, dict[str, list[Any]]] = {}
    for key, results in (("ref", ref), ("work", work)):
        for result in results:
            for name, value in flatten(result):
                if name == "scenario":
                    continue
                if name not in values:
                    names.append(name)
                    values[name] = {"ref": [], "work": []}
                values[name][key].append(value)
    comparison = Comparison()
    for name in names:
        both = values[name]["ref"] + values[name]["work"]
        sign = direction(name)
        # The settings, and zero losses or 100 %, equal in every run: listed once, not as rows.
        if (len(both) == len(ref) + len(work) and all(value == both[0] for value in both)
                and (not sign or both[0] in (0, 100) or not isinstance(both[0], (int, float)))):
            comparison.constant.append(f"{name}={both[0]}")
            continue
        ref_numbers = [n for n in map(numeric, values[name]["ref"]) if n is not None]
        work_numbers = [n for n in map(numeric, values[name]["work"]) if n is not None]
        if not ref_numbers and not work_numbers:
            comparison.differing.append(
                f"{name}: {values[name]['ref']} -> {values[name]['work']}")
            continue
        ratio = None
        if ref_numbers and work_numbers:
            old, new = statistics.median(ref_numbers), statistics.median(work_numbers)
            if old:
                ratio = new / old
            elif not new:
                ratio = 1.0
            else:
                ratio = math.inf
        verdict = ""
        if ratio is not None and sign:
            if abs(ratio - 1) <= noise:
                verdict = "same"
            else:
                verdict = "better" if (ratio > 1) == (sign > 0) else "worse"
        comparison.rows.append(Row(name, ref_numbers, work_numbers, ratio, verdict, sign))
    return comparison


def summary(numbers: list[float]) -> str:
    if not numbers:
        return "n/a"
    middle = fmt(statistics.median(numbers))
    if len(numbers) > 1:
        return f"{middle} ({fmt(min(numbers))}–{fmt(max(numbers))})"
    return middle


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    if math.isinf(ratio):
        return "inf"
    return f"{ratio:.2g}" if 0 < ratio < 0.1 else f"{ratio:.2f}"


def table(comparison: Comparison, ref_label: str, work_label: str) -> list[list[str]]:
    rows = [["field", ref_label, work_label, "work/ref", "better is", ""]]
    for row in comparison.rows:
        rows.append([row.name, summary(row.ref), summary(row.work),
                     ratio_text(row.ratio),
                     {-1: "lower", 1: "higher", 0: ""}[row.sign], row.verdict])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) if i == 0 or i >= 4 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
        if number == 0:
            lines.append("  " + "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |",
             "|---|" + "---:|" * 3 + "---|---|"]
    for row in rows[1:]:
        cells = list(row)
        if cells[5] in ("better", "worse"):
            cells[5] = f"**{cells[5]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
