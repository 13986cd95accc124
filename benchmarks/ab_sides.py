"""The two sides of benchmarks/ab.py: where each side's server comes from.

The working side is this checkout run by this interpreter. The REF side is
`git archive REF` unpacked in a cache folder and installed in a venv of its
own, constrained to this environment's package versions, built once per sha
(under a lock) and reused. `check_side` proves which tree a side imports
sse_stream and its sql/ from. Git is only ever read here, never changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_PYTHON_ENV = "SSE_STREAM_BENCH_SERVER_PYTHON"  # read by run.py (common.py)
SERVER_SRC_ENV = "SSE_STREAM_BENCH_SERVER_SRC"
EXTRAS = ("[bench,embedded,fast]", "[fast]", "")  # tried in order


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

