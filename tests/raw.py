"""A raw-socket SSE client for fault tests: it controls its receive buffer,
when it reads, and exactly how many bytes it reads before hanging up.

It speaks HTTP/1.0, so the body is the bare SSE bytes (no chunk framing) and
the server ends the connection when the stream ends.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from sse_stream.client import Message, SseParser


class RawStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = SseParser()
        self.body = b""       # every body byte read so far
        self.messages: list[Message] = []
        self.ended = False
        self._head = b""

    @classmethod
    async def open(cls, url: str, headers: dict[str, str] | None = None,
                   rcvbuf: int | None = None) -> RawStream:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            # Before connect: the window the server may fill is set at the handshake.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), 10)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.0", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(sock)
        await stream._read_head()
        return stream

    async def _read_head(self) -> None:
        loop = asyncio.get_running_loop()
        while b"\r\n\r\n" not in self._head:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 10)
            if not chunk:
                raise EOFError("no response head")
            self._head += chunk
        head, _, rest = self._head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        assert b" 200 " in status, head
        self._take(rest)

    def _take(self, data: bytes) -> None:
        self.body += data
        self.messages.extend(self.parser.feed(data))

    async def read(self, size: int = 65536, timeout: float = 10.0) -> bytes:
        """Read up to `size` body bytes (b"" at the end of the stream)."""
        loop = asyncio.get_running_loop()
        chunk = await asyncio.wait_for(loop.sock_recv(self.sock, size), timeout)
        if not chunk:
            self.ended = True
        self._take(chunk)
        return chunk

    async def read_exactly(self, count: int, timeout: float = 10.0) -> None:
        """Read until `count` body bytes in total have been read (or the end)."""
        while len(self.body) < count and not self.ended:
            await self.read(count - len(self.body), timeout)

    async def read_until(self, done: object, timeout: float = 10.0) -> None:
        """Read until `done()` holds; a bounded wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():  # type: ignore[operator]
            if self.ended:
                raise EOFError("stream ended")
            await self.read(timeout=max(0.001, deadline - loop.time()))

    @property
    def local_address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.sock.getsockname()
        return address

    def close(self) -> None:
        self.sock.close()
