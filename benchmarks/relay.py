"""A TCP relay that adds a fixed one-way delay in each direction: the stand-in
for `tc netem delay`, for kernels without traffic-control qdiscs.

    python benchmarks/relay.py '[{"listen": ["10.213.0.1", 40001],
                                  "target": ["10.213.0.2", 5432], "delay": 0.001}]'

Each link listens on `listen` and, for every connection it accepts, opens one
to `target`; bytes read on either side are written to the other `delay`
seconds later (FIFO per direction, pipelined: the delay adds latency, not a
bandwidth limit), and a close travels the same way, after the bytes before
it. Reading stops while the other side's send buffer is full (the socket's
own flow control), so memory stays bounded by what one delay holds.

Not modelled: loss, jitter, a bandwidth limit, the delay of the TCP
handshake itself (the relay accepts at once and connects to the target
while the client's first bytes wait). Run as a script it prints `ready` once
every link listens and runs until SIGTERM or SIGINT; benchmarks/multihost.py
starts it and stops it by PID.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
from dataclasses import dataclass
from typing import cast


@dataclass(frozen=True)
class Link:
    listen: tuple[str, int]
    target: tuple[str, int]
    delay: float  # seconds, one way, each direction


class DelayedSide(asyncio.Protocol):
    """One socket of a relayed connection: what it reads goes to `peer` after `delay`."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: DelayedSide | None = None
        self.early: list[bytes] = []  # read before the peer exists (the target connecting)
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    # what this side reads, delayed, to the peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.send_later(data)

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.peer.send_later(None)
        return False  # close this side once EOF is read: the peer closes after the delay

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.send_later(None)

    def join(self, peer: DelayedSide) -> None:
        self.peer = peer
        for data in self.early:
            peer.send_later(data)
        self.early.clear()
        if self.closed:
            peer.send_later(None)

    # what this side writes, `delay` after the peer read it

    def send_later(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        transport = self.transport
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if transport is None or transport.is_closing():
                self.queue.clear()
                return
            if data is None:
                self.queue.clear()
                transport.close()  # after whatever is buffered
                return
            transport.write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and \
                not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


async def serve(link: Link) -> asyncio.Server:
    """Listen on `link.listen`; relay each connection to `link.target`."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def connect(client: DelayedSide) -> None:
        try:
            _, target = await asyncio.wait_for(loop.create_connection(
                lambda: DelayedSide(link.delay), *link.target), 10)
        except (OSError, TimeoutError):
            if client.transport is not None:
                client.transport.abort()
            return
        client.join(target)
        target.join(client)

    def accepted() -> DelayedSide:
        client = DelayedSide(link.delay)
        task = loop.create_task(connect(client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client

    return await loop.create_server(accepted, *link.listen, reuse_address=True, backlog=1024)


def parse_links(text: str) -> list[Link]:
    return [Link(tuple(item["listen"]), tuple(item["target"]), float(item["delay"]))
            for item in json.loads(text)]


async def run(links: list[Link]) -> None:
    servers = [await serve(link) for link in links]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> int:
    links = parse_links(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(links))
    else:
        uvloop.run(run(links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
