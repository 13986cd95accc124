"""Loads the named queries of sql/*.sql and the numbered migrations.

The SQL files live in the top-level sql/ folder of a checkout and are shipped
inside the package as `sse_stream.sql` by `pip install`.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_NAME_RE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def sql_dir() -> Path:
    """The folder holding the .sql files: a source checkout's own sql/ when
    this code runs from one (so that a checkout never runs another's SQL),
    else the installed package's."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.cfg").is_file() and (checkout / "sql" / "queries.sql").is_file():
        return checkout / "sql"
    try:
        installed = Path(str(resources.files("sse_stream.sql")))
        if (installed / "queries.sql").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    return checkout / "sql"


@cache
def _queries() -> dict[str, str]:
    # queries.sql, and the query files of one concern each (webhooks.sql):
    # every .sql file that is not a migration; a name is defined once.
    queries: dict[str, str] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        if _MIGRATION_RE.match(path.name):
            continue
        parts = _NAME_RE.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in queries:
                raise ValueError(f"{path.name}: the query {name!r} is defined twice")
            lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
            queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def query(name: str) -> str:
    """The SQL text of the named block of sql/queries.sql (or of another
    query file in sql/, such as webhooks.sql)."""
    return _queries()[name]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every sql/NNNN_name.sql, in order."""
    found = []
    for path in sql_dir().iterdir():
        match = _MIGRATION_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path.read_text()))
    return sorted(found)
