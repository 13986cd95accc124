"""`sse-stream serve` as a child process on 127.0.0.1, for tests and benchmarks.

Kept free of test-only dependencies (pytest, hypothesis): the scripts in
benchmarks/ import it too, with this folder on their path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from sse_stream.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m sse_stream.cli serve --dsn DSN` on 127.0.0.1, its output in `log`.

    `python` and `src` choose the interpreter and the source tree it runs
    from (an A/B benchmark runs another checkout); `port` defaults to a free one.
    """

    def __init__(self, dsn: str, log: Path, *extra: str, port: int | None = None,
                 python: str = sys.executable, src: Path = ROOT) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [python, "-m", "sse_stream.cli", "serve", "--dsn", dsn, "--host", "127.0.0.1",
             "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(src)},
            cwd=src)
        self.pid = self.process.pid

    async def ready(self, timeout: float = 60) -> None:
        """Wait (bounded) until /readyz answers 200; fail at once if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"sse-stream serve exited with {self.process.returncode}; "
                                       f"see {self.log_path}")
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError("sse-stream serve did not become ready")
                await asyncio.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self, key: str) -> int:
        """VmRSS or VmHWM (peak RSS) of the process, in KiB (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def errors(self) -> list[str]:
        """Each error the server logged, with the lines that follow it."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return ["\n".join(lines[n:n + 40]) for n, line in enumerate(lines)
                if "Traceback" in line or "ERROR" in line or "never retrieved" in line]
