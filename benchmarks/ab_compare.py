"""Comparing the RESULT lines of benchmarks/ab.py's two sides, and the tables.

Every numeric field of a RESULT (nested ones as dotted names) gets the
median of each side and the ratio work / REF; its name tells which direction
is better, if any. Fields equal in every run of both sides (the settings,
zero losses) are listed once rather than as rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# A scenario's settings (the last part of a field's name): no direction.
SETTINGS = {"mode", "subscribers", "rate", "seconds", "events", "clients", "each", "streams",
            "rows", "limit", "passes", "query", "level", "heartbeat_s", "interval_s",
            "server_flags", "page_loops", "replays"}
# Field-name fragments that tell which direction is better; checked in this order.
NEUTRAL = ("load_average", "load_seconds", "loadgen_", "samples", "settle_s", "offered",
           "published", "slack_s", "page_passes", "replays_ended", "empty_pages",
           "events_checked", "page_bytes", "churn_windows", "rss_before")
LOWER = ("latency", "_ms", "cpu", "rss", "lost", "duplicated", "misdelivered", "failures",
         "statements",
         "closed_early", "seconds", "worst_silence", "timeouts", "errors", "refusals", "ratio")
HIGHER = ("per_s", "pct", "complete", "kept", "on_time", "exact", "delivered")


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

