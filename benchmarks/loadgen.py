"""A cheap SSE load generator: raw asyncio protocols, no HTTP client library.

One `SseConnection` is one TCP connection to 127.0.0.1 carrying one
`GET /streams/...` (HTTP/1.1, with `Last-Event-ID` when resuming). The body
is de-chunked (aiohttp sends chunked transfer encoding) and cut into frames
at the blank line. Most connections only *count*: an event is a frame with a
`data:` line, found with one `bytes.count` per receive, so a thousand
connections cost little CPU in this process. A sample of connections
(`parse=True`) decode every frame's JSON to measure latency and record the
sequence numbers and positions they saw.

Latency: the publisher puts `"ts": extract(epoch from clock_timestamp())` in
the event's data, taken by PostgreSQL while the INSERT runs, inside the
transaction, just before COMMIT. The latency of an event is the time it is
received here minus that timestamp, on the same host clock: it is
commit-to-receipt plus the few hundred microseconds the COMMIT itself takes
(an upper bound of commit-to-receipt). A timestamp taken in Python after
COMMIT returns cannot be put in the data, and matching it up afterwards would
race with the receipt in this very event loop.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

DATA_MARK = b"\ndata: "  # every event frame starts with its id: line, so data follows a \n
KEEPALIVE_MARK = b": keepalive"


def raise_open_files() -> int:
    """Raise the soft open-file limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Received:
    """What a parsing connection decoded: per event its seq, position and latency."""

    seqs: list[int] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


class SseConnection(asyncio.Protocol):
    """One SSE stream over a raw socket.

    Counters: `events` (frames with data), `keepalives` (frames that are a
    keepalive comment), `frames`; `max_gap` is the longest silence between
    two receives after the stream started, `last_id` the last `id:` seen
    (parsing connections only, or `track_id=True`).
    """

    def __init__(self, path: str, last_event_id: str | None = None, *, parse: bool = False,
                 track_id: bool = False, ready_frames: int = 1, host: str = "127.0.0.1") -> None:
        self.request = self._request(path, last_event_id, host)
        self.parse = parse
        self.ready_frames = ready_frames
        self.track_id = track_id or parse
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.events = 0
        self.keepalives = 0
        self.frames = 0
        self.bytes = 0
        self.started = 0.0     # monotonic time of the first body bytes
        self.last_rx = 0.0
        self.max_gap = 0.0
        self.last_id: str | None = last_event_id
        self.received = Received() if parse else None
        self.ready = asyncio.get_running_loop().create_future()   # first frame after headers
        self.done = asyncio.get_running_loop().create_future()    # connection lost
        self._head = b""
        self._chunked = False
        self._chunk_left = 0      # bytes of chunk data still to come
        self._chunk_skip = 0      # bytes of the CRLF after chunk data still to skip
        self._size_line = b""     # a chunk-size line split across receives
        self._body = b""          # de-chunked bytes not yet ending in a blank line

    @staticmethod
    def _request(path: str, last_event_id: str | None, host: str) -> bytes:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Accept: text/event-stream",
                 "Cache-Control: no-cache"]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the stream started "
                                                     f"(status {self.status})"))
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4:]
            self._head = b""
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            self._chunked = any(line.lower().startswith("transfer-encoding:") and "chunked" in
                                line.lower() for line in lines[1:])
            if self.status != 200:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"status {self.status}"))
                self.close()
                return
            if not data:
                return
        now = time.monotonic()
        if self.started:
            gap = now - self.last_rx
            if gap > self.max_gap:
                self.max_gap = gap
        else:
            self.started = now
        self.last_rx = now
        self.bytes += len(data)
        if self._chunked:
            self._dechunk(data)
        else:
            self._feed(data)

    # -- body -------------------------------------------------------------------

    def _dechunk(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size:
            if self._chunk_skip:
                step = min(self._chunk_skip, size - at)
                self._chunk_skip -= step
                at += step
            elif self._chunk_left:
                step = min(self._chunk_left, size - at)
                self._feed(data[at:at + step])
                self._chunk_left -= step
                at += step
                if not self._chunk_left:
                    self._chunk_skip = 2
            else:
                end = data.find(b"\r\n", at)
                if end < 0:
                    self._size_line += data[at:]
                    return
                line = self._size_line + data[at:end]
                self._size_line = b""
                at = end + 2
                length = int(line.split(b";", 1)[0], 16)
                if length == 0:
                    self.close()  # the last chunk: the server ended the stream
                    return
                self._chunk_left = length

    def _feed(self, data: bytes) -> None:
        body = self._body + data if self._body else data
        end = body.rfind(b"\n\n")
        if end < 0:
            self._body = body
            return
        complete, self._body = body[:end + 2], body[end + 2:]
        self.frames += complete.count(b"\n\n")
        if self.parse:
            self._parse(complete)
        else:
            self.events += complete.count(DATA_MARK)
            if KEEPALIVE_MARK in complete:
                self.keepalives += complete.count(KEEPALIVE_MARK)
            if self.track_id:
                self._track_id(complete)
        if self.frames >= self.ready_frames and not self.ready.done():
            self.ready.set_result(None)

    def _track_id(self, complete: bytes) -> None:
        at = complete.rfind(b"id: ")
        while at > 0 and complete[at - 1] != 10:  # only at the start of a line
            at = complete.rfind(b"id: ", 0, at)
        if at >= 0:
            self.last_id = complete[at + 4:complete.index(b"\n", at)].decode()

    def _parse(self, complete: bytes) -> None:
        received = self.received
        assert received is not None
        now = time.time()
        for frame in complete.split(b"\n\n"):
            if not frame:
                continue
            data = None
            for line in frame.split(b"\n"):
                if line.startswith(b"id: "):
                    self.last_id = line[4:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
                elif line.startswith(KEEPALIVE_MARK):
                    self.keepalives += 1
            if data is None:
                continue
            self.events += 1
            envelope: dict[str, Any] = orjson.loads(data)
            received.positions.append(envelope["position"])
            payload = envelope["data"]
            if isinstance(payload, dict):
                if "seq" in payload:
                    received.seqs.append(payload["seq"])
                if "ts" in payload:
                    received.latencies.append(now - payload["ts"])

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(port: int, path: str, last_event_id: str | None = None, *,
                  parse: bool = False, track_id: bool = False,
                  timeout: float = 30.0) -> SseConnection:
    """Open one stream and wait until the server has registered it.

    A live-only stream is registered once its second frame (the bare `id:`
    line after `retry:`) has arrived; a resumed one once `retry:` has (it then
    replays on its own, and may have nothing to send yet).
    """
    loop = asyncio.get_running_loop()
    frames = 1 if last_event_id is not None or "last_event_id=" in path else 2
    _, protocol = await asyncio.wait_for(loop.create_connection(
        lambda: SseConnection(path, last_event_id, parse=parse, track_id=track_id,
                              ready_frames=frames),
        "127.0.0.1", port), timeout)
    await asyncio.wait_for(asyncio.shield(protocol.ready), timeout)
    return protocol


async def connect_many(port: int, paths: list[str], *, parse_every: int = 0,
                       concurrency: int = 200, timeout: float = 60.0) -> list[SseConnection]:
    """Open many streams, `concurrency` at a time (the listen backlog is finite).

    Every `parse_every`-th connection (0: none) parses JSON for latency.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, path: str) -> SseConnection:
        async with gate:
            parse = parse_every > 0 and index % parse_every == 0
            return await connect(port, path, parse=parse, timeout=timeout)

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(paths))))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
