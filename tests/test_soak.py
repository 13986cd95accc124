"""The soak, CI-sized: 25 s of load, then every subscriber checked against the table.

benchmarks/soak.py runs a real `sse-stream serve` process against the test
database with filtered subscribers that hang up and resume, writers with
rollbacks, and a listener kill every 4 seconds. It exits 0 only if every
subscriber received exactly its share of the table, once, in order.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import ROOT


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_soak_loses_and_doubles_nothing(dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--dsn", dsn, "--duration", "25",
         "--subscribers", "60", "--mean-session", "3", "--kill-every", "4", "--settle", "60",
         "--json"],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    report = json.loads(lines[-1])
    assert report["failures"] == [] and report["server_errors"] == [], report
    assert (report["lost"], report["doubled"], report["reordered"]) == (0, 0, 0)
    assert report["ok"] and result.returncode == 0
    # The load really happened: rollbacks, resumes, listener kills, many checks.
    assert report["transactions_rolled_back"] > 0
    assert report["events_committed"] > 500
    assert report["events_checked"] > 5000
    assert report["reconnects"] > 100
    # Every kill found a listener: it reconnected after each one.
    assert report["listener_kills"] >= 4
    assert report["listener_kills"] == report["listener_kill_attempts"]
