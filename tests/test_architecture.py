"""The tree is the architecture: which part of sse_stream/ may import which,
checked on the source (docs/architecture.md states the same rules).

Every import counts, at any depth of a module (a lazy import inside a
function, one under TYPE_CHECKING): a circle or a forbidden edge that only
one code path takes is still a circle or a forbidden edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sse_stream"
BENCHMARKS = ROOT / "benchmarks"
MAX_LINES = 400

# Each part and the parts it may import (besides itself). A DAG: no circle
# between parts can form.
PARTS: dict[str, set[str]] = {
    "core": set(),  # values and rules: events, patterns, filters, selector, wire, settings
    "client": set(),  # the Python client: stands alone
    "access": {"core"},  # tokens, claims, JWKS, who may connect
    "db": {"core"},  # every statement: store, listener, migrations, retention
    "engine": {"core", "db"},  # the hub: shared read, fan-out, catch-up, heartbeat
    "webhooks": {"core", "db", "access"},  # model, store, deliverer, sender, addresses
    "web": {"core", "access", "db", "engine", "webhooks"},  # the aiohttp app and handlers
    "cli": {"core", "access", "db", "engine", "webhooks", "web", "client"},
}
# Third-party modules a part must not import (prefixes).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("aiohttp", "aiohttp_sse", "asyncpg", "prometheus_client", "jwt", "yarl", "socket",
             "uvloop"),
    "client": ("asyncpg", "prometheus_client", "aiohttp.web", "aiohttp_sse"),
    "access": ("asyncpg", "prometheus_client", "aiohttp.web", "aiohttp_sse"),
    "db": ("aiohttp", "aiohttp_sse", "prometheus_client", "jwt"),
    "engine": ("aiohttp", "aiohttp_sse", "asyncpg", "prometheus_client", "jwt"),
    "webhooks": ("aiohttp.web", "aiohttp_sse", "prometheus_client", "jwt"),
}
# Modules outside db/ that may talk to PostgreSQL themselves.
ASYNCPG_ALSO = {"sse_stream.webhooks.store"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, absolute, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module
            # `from . import x` and `from .pkg import mod` import modules too.
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if (ROOT / (candidate.replace(".", "/") + ".py")).exists() or \
                        (ROOT / candidate.replace(".", "/") / "__init__.py").exists():
                    yield candidate


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph[module_name(path)] = set(imports(path))
    return graph


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    if pieces[0] != "sse_stream" or len(pieces) < 2 or pieces[1] not in PARTS:
        return None
    return pieces[1]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle among the graph's own modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_lives_in_a_part() -> None:
    loose = [m for m in package_graph() if part_of(m) is None and m not in (
        "sse_stream", "sse_stream.__main__")]
    assert loose == [], f"modules outside the parts {sorted(PARTS)}: {loose}"


def test_parts_import_only_what_their_rule_allows() -> None:
    wrong = []
    for module, targets in package_graph().items():
        part = part_of(module)
        if part is None:
            continue
        for target in targets:
            other = part_of(target)
            if other is not None and other != part and other not in PARTS[part]:
                wrong.append(f"{module} imports {target} ({part} may not import {other})")
            if target == "sse_stream" or (target.startswith("sse_stream.") and other is None
                                          and not target.startswith("sse_stream.sql")):
                wrong.append(f"{module} imports {target}, which is in no part")
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN.get(part, ())):
                wrong.append(f"{module} imports {target} ({part} may not)")
            if target.split(".")[0] == "asyncpg" and part != "db" and module not in ASYNCPG_ALSO:
                wrong.append(f"{module} imports asyncpg: only db/ and {ASYNCPG_ALSO} may")
    assert wrong == []


def test_no_circles_in_the_package() -> None:
    graph = package_graph()
    # A package's __init__ re-exporting its own modules is not a circle.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not (module.startswith(t + ".") and
                                                      t in graph)}
    assert find_circle(graph) is None, " -> ".join(find_circle(graph) or [])


def test_no_circles_in_the_benchmarks() -> None:
    """Benchmark scripts import their helpers by name (benchmarks/ is on sys.path)."""
    names = {p.relative_to(BENCHMARKS).with_suffix("").as_posix().replace("/", "."): p
             for p in BENCHMARKS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in found if t in names and t != name}
    circle = find_circle(graph)
    assert circle is None, " -> ".join(circle or [])


@pytest.mark.parametrize("folder", [PACKAGE, BENCHMARKS], ids=["sse_stream", "benchmarks"])
def test_no_module_is_over_the_size_limit(folder: Path) -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in folder.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_the_check_sees_a_circle_and_a_forbidden_edge() -> None:
    """The checks above can fail."""
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
    engine = {m: t for m, t in package_graph().items() if part_of(m) == "engine"}
    assert engine and all("sse_stream.web" not in {part_of(t) and t.rsplit(".", 1)[0]
                                                   for t in targets}
                          for targets in engine.values())
    assert "sse_stream.engine" in {m.rsplit(".", 1)[0] for m in package_graph()
                                   if part_of(m) == "engine"}
    assert "engine" in PARTS["web"] and "web" not in PARTS["engine"]
