"""`sse-stream tail` as a real process: resumes across a server restart and its own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
from support import ROOT, Serve, publish

from sse_stream.cli.tail import format_line, parse_target, read_state, write_state
from sse_stream.client import ControlEvent, StreamEvent
from sse_stream.db.embedded import free_port


def _key(position: str) -> tuple[int, ...]:
    return tuple(map(int, position.split("-")))


class TailProcess:
    def __init__(self, url: str, out: Path, *args: str) -> None:
        self.out = out
        self.file = out.open("wb")
        self.errors = out.with_suffix(".err")
        self.error_file = self.errors.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sse_stream.cli", "tail", url, *args],
            stdout=self.file, stderr=self.error_file, env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT)

    def lines(self) -> list[dict[str, object]]:
        text = self.out.read_bytes().decode()
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    async def wait_lines(self, count: int, timeout: float = 30) -> list[dict[str, object]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(lines := self.lines()) < count:
            assert self.process.poll() is None, self.errors.read_text()
            assert loop.time() < deadline, f"{len(lines)} of {count} lines"
            await asyncio.sleep(0.05)
        return lines

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.file.close()
            self.error_file.close()


async def test_tail_resumes_across_server_restart_and_its_own(
        serve: Serve, db: asyncpg.Connection, stream: str, tmp_path: Path) -> None:
    port = free_port()
    server = serve("--retry", "100", port=port)
    tails: list[TailProcess] = []
    try:
        await server.ready()
        url = f"{server.url}/streams/{stream}"
        state = tmp_path / "tail.state"
        before = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        first = TailProcess(url, tmp_path / "out1.jsonl", "--from", "0", "--state", str(state))
        tails.append(first)
        await first.wait_lines(3)
        live = [await publish(db, stream, "t", {"n": n}) for n in range(3, 6)]
        await first.wait_lines(6)

        # The server goes away; events are written while it is down.
        assert await asyncio.to_thread(server.stop) == 0
        down = [await publish(db, stream, "t", {"n": n}) for n in range(6, 9)]
        server = serve("--retry", "100", port=port)
        await server.ready()
        up = [await publish(db, stream, "t", {"n": n}) for n in range(9, 11)]
        lines = await first.wait_lines(11)

        # tail itself stops; its state names its last line; more events meanwhile.
        assert await asyncio.to_thread(first.stop) == 0
        saved = read_state(state)
        # The last printed event's position, or past it (a bare id line).
        assert saved is not None and _key(saved) >= _key(str(lines[-1]["position"]))
        missed = [await publish(db, stream, "t", {"n": n}) for n in range(11, 14)]
        # --from 0 is ignored: the state file wins.
        second = TailProcess(url, tmp_path / "out2.jsonl", "--from", "0", "--state", str(state))
        tails.append(second)
        more = await second.wait_lines(3)
        later = [await publish(db, stream, "t", {"n": n}) for n in range(14, 16)]
        more = await second.wait_lines(5)
        assert await asyncio.to_thread(second.stop) == 0
        more = second.lines()
    finally:
        for process in tails:
            process.stop()
        server.stop()
    printed = [line["id"] for line in lines] + [line["id"] for line in more]
    assert printed == before + live + down + up + missed + later
    assert lines[0]["stream"] == stream and lines[0]["type"] == "t" and lines[0]["data"] == {"n": 0}


def test_tail_target_and_state_file(tmp_path: Path) -> None:
    target = parse_target("http://127.0.0.1:8080/streams/orders.*,b?type=x&data.total=gt.5")
    assert target.base == "http://127.0.0.1:8080" and target.streams == "orders.*,b"
    assert target.types == ("x",) and target.filters == ("data.total=gt.5",)
    state = tmp_path / "state"
    assert read_state(state) is None
    write_state(state, "12-34")
    write_state(state, "12-35")
    assert read_state(state) == "12-35"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_pretty_lines_on_a_terminal() -> None:
    event = StreamEvent(12, "782-12", "orders", "order.created", {"id": 42}, "2026-11-26T14:03:07Z")
    pretty = format_line(event, pretty=True)
    assert "\x1b[" in pretty and "782-12" in pretty and "order.created" in pretty
    assert '{"id":42}' in pretty and "\n" not in pretty
    assert orjson.loads(format_line(event, pretty=False)) == {
        "id": 12, "position": "782-12", "stream": "orders", "type": "order.created",
        "data": {"id": 42}, "created_at": "2026-11-26T14:03:07Z"}
    gap = ControlEvent("sse.gap", {"requested_after": "1-1", "resumed_after": "2-2"}, "2-2")
    assert orjson.loads(format_line(gap, pretty=False)) == {
        "type": "sse.gap", "position": "2-2", "data": {"requested_after": "1-1", "resumed_after": "2-2"}}


def test_tail_refuses_a_bad_url() -> None:
    result = subprocess.run([sys.executable, "-m", "sse_stream.cli", "tail", "http://x/nope"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and "streams" in result.stderr
