"""The SSE response: the only code that writes the wire format.

It is aiohttp-sse's EventSourceResponse (headers, lifecycle) with two
changes. Its ping task, one timer per stream firing whether or not the stream
is busy, is not started: the hub's single heartbeat walks the silent streams
instead. And the hub writes without awaiting (`write_nowait`): one write per
stream per wake-up, straight to the transport, with the transport's buffer
size as the back-pressure signal.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

KEEPALIVE = b": keepalive\n\n"


class StreamClosed(ConnectionError):
    """The client went away; nothing more can be written."""


class SseResponse(EventSourceResponse):
    def __init__(self, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(headers=headers)
        self._chunked = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # StreamResponse.prepare, not EventSourceResponse.prepare: that one
        # starts the per-stream ping task this server does without.
        writer = await web.StreamResponse.prepare(self, request)
        self._chunked = bool(getattr(writer, "chunked", False))
        return writer

    async def start(self, preamble: bytes) -> None:
        """Send the headers with the first bytes (aiohttp buffers headers)."""
        await self.write(preamble)

    def write_nowait(self, data: bytes) -> None:
        """Queue `data` on the socket now; raises StreamClosed if it is gone."""
        request = self._req
        transport = request.transport if request is not None else None
        if transport is None or transport.is_closing():
            raise StreamClosed()
        if self._chunked:
            transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            transport.write(data)

    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        request = self._req
        transport = request.transport if request is not None else None
        if transport is None:
            return 0
        return transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        request = self._req
        transport = request.transport if request is not None else None
        return transport is None or transport.is_closing()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        request = self._req
        if request is None or request.transport is None or request.transport.is_closing():
            raise StreamClosed()
        writer = self._payload_writer
        if writer is not None:
            await writer.drain()

    async def finish(self) -> None:
        """End the response cleanly (the last chunk), if the client is there."""
        if not self.is_closing():
            try:
                await self.write_eof()
            except (ConnectionError, RuntimeError):
                pass
