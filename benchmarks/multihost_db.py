"""PostgreSQL on the hosts of benchmarks/multihost.py: a primary on host A, a
streaming standby of it on B, and a cascaded standby on C that streams from
B over the far link.

`HostPostgres` is sse-stream's EmbeddedPostgres (the same binaries, data
folder, generated password and pg_hba.conf) with two changes, made here and
not in sse_stream/: its tools run inside the host's namespace (`ip netns
exec`, then `setpriv` to the server's user when running as root), and the
server listens on the host's veth address as well as 127.0.0.1, by adding
that address to the `-h` EmbeddedPostgres passes to pg_ctl (the command line
wins over postgresql.conf, so a conf file could not do it). TCP still needs
the generated password (scram-sha-256): `allow` appends pg_hba.conf lines for
the link networks of this topology only, for `all` and for `replication`.

A standby is made by EmbeddedPostgres.replica() (pg_basebackup -R, run on
the primary's host against its own 127.0.0.1), after which `follow` appends
to the standby's postgresql.auto.conf a primary_conninfo through the relay
that stands for the network (the last setting in the file wins). The
cascaded standby's base backup is taken from the primary too, not from B:
PostgreSQL refuses a backup from a standby that replayed WAL written with
full_page_writes off, which fast=True sets; it then streams from B, on the
same timeline, like any cascaded standby.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import asyncpg
from netns import Host

from sse_stream.db.embedded import EmbeddedPostgres, EmbeddedUnavailable

HBA_NOTE = "# benchmarks/multihost.py: the links of its hosts"


class HostPostgres(EmbeddedPostgres):
    """An EmbeddedPostgres whose server runs on `host` (see the module)."""

    def __init__(self, data_dir: Path, host: Host, port: int) -> None:
        super().__init__(data_dir, port=port, fast=True)
        self.host = host

    def _run(self, tool: str, *args: str, check: bool = True, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if self.host.netns is None:
            return super()._run(tool, *args, check=check, input=input, env=env)
        argv = list(args)
        if tool == "pg_ctl" and "-o" in argv:
            at = argv.index("-o") + 1
            if "-h 127.0.0.1" not in argv[at]:
                raise EmbeddedUnavailable("EmbeddedPostgres no longer passes -h 127.0.0.1 to "
                                          "pg_ctl: update benchmarks/multihost_db.py")
            argv[at] = argv[at].replace("-h 127.0.0.1", f"-h 127.0.0.1,{self.host.address}", 1)
        become = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups"] \
            if self.user else []
        command = self.host.command([*become, str(self.bin / tool), *argv])
        # As EmbeddedPostgres does: output to a file (pg_ctl's server inherits
        # it), secrets through `input` or `env`, never the arguments.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(command, text=True, stdout=out, stderr=out, timeout=120,
                                    cwd="/", input=input,
                                    stdin=subprocess.DEVNULL if input is None else None,
                                    env=None if env is None else {**os.environ, **env})
            out.seek(0)
            output = out.read()
        if check and result.returncode != 0:
            raise EmbeddedUnavailable(f"{tool} {' '.join(argv)} on {self.host.name} failed: "
                                      f"{output}")
        return subprocess.CompletedProcess(result.args, result.returncode, output, output)

    def allow(self, networks: list[str]) -> None:
        """Let the link networks in (with the password), and reload if running."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        if HBA_NOTE in text:
            return
        lines = [HBA_NOTE] + [f"host    {database:<11}  all   {network:<14} scram-sha-256"
                              for network in networks for database in ("all", "replication")]
        with hba.open("a") as out:  # in place: the server's owner and mode stay
            out.write("\n".join(lines) + "\n")
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "reload")

    def follow(self, address: str, port: int) -> None:
        """Stream from `address`:`port` (the upstream's relay) from the next start."""
        conninfo = (f"host={address} port={port} user=postgres "
                    f"password={self.password} application_name={self.host.name.lower()}")
        with (self.data_dir / "postgresql.auto.conf").open("a") as out:
            out.write(f"primary_conninfo = '{conninfo}'\n")

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def dsn(password: str, address: str, port: int) -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@{address}:{port}/postgres"


def stop_cluster(cluster: HostPostgres) -> None:
    """Stop a cluster (immediate); SIGKILL a postmaster still there, by its PID."""
    if cluster.pid() is None:
        return
    cluster.stop("immediate")
    pid = cluster.pid()
    if pid is not None:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def start_primary(primary: HostPostgres, networks: list[str]) -> None:
    """Create and start the primary, and let the link networks in."""
    primary.start()
    primary.allow(networks)


def start_standby(source: HostPostgres, standby: HostPostgres, via: tuple[str, int]) -> None:
    """Make `standby` a hot standby from a base backup of `source`, streaming
    through `via` (a relay to its upstream, `source` or a standby of it)."""
    source.replica(standby.data_dir)  # pg_basebackup -R on the source's host
    standby.password = source.password
    standby.follow(*via)
    standby.start()


async def replayed(standby_dsn: str, primary: asyncpg.Connection, timeout: float) -> float:
    """Wait (bounded) until the standby has replayed the primary's current WAL
    position; the seconds it took. Raises TimeoutError."""
    target = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
    start = time.monotonic()
    connection = await asyncpg.connect(standby_dsn, timeout=30)
    try:
        while time.monotonic() - start < timeout:
            if await connection.fetchval(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    target):
                return time.monotonic() - start
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise TimeoutError(f"the standby did not replay {target} in {timeout} s")
