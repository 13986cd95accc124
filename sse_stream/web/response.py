"""The response that writes the SSE wire format (core/wire.py) to a client.

SseResponse is aiohttp-sse's EventSourceResponse (headers, lifecycle) with
two changes. Its ping task, one timer per stream firing whether or not the
stream is busy, is not started: the hub's single heartbeat walks the silent
streams instead. And the hub writes without awaiting (`write_nowait`): one
write per stream per wake-up, straight to the transport, with the
transport's buffer size as the back-pressure signal.

An idle stream is mostly memory (docs/scaling.md, idle streams), so once
its headers are out it lets go of what only the start of a response needs.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse
from multidict import CIMultiDict

from ..core.wire import Payload


class StreamClosed(ConnectionError):
    """The client went away; nothing more can be written."""


class SseResponse(EventSourceResponse):
    def __init__(self, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(headers=headers)
        self._chunked = False
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # StreamResponse.prepare, not EventSourceResponse.prepare: that one
        # starts the per-stream ping task this server does without.
        writer = await web.StreamResponse.prepare(self, request)
        self._chunked = bool(getattr(writer, "chunked", False))
        self._transport = request.transport
        # aiohttp times every new connection out if no request arrives
        # (`keepalive_timeout`), with a timer that stays armed while the
        # request is handled. A stream outlives it: end it now. keep_alive()
        # only cancels it here (a handler runs only on a keep-alive
        # connection); the idle connection after the response gets a new one.
        request.protocol.keep_alive(True)
        return writer

    async def start(self, preamble: bytes) -> None:
        """Send the headers with the first bytes (aiohttp buffers headers)."""
        await self.write(preamble)
        # Sent: nothing reads them again (on_response_prepare ran before),
        # and a stream holds on to its response for its whole life.
        self._headers = CIMultiDict()

    def write_nowait(self, data: bytes | Payload) -> None:
        """Queue `data` on the socket now; raises StreamClosed if it is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise StreamClosed()
        payload = data if isinstance(data, Payload) else Payload(data)
        transport.write(payload.framed() if self._chunked else payload.data)

    def pending_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        transport = self._transport
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
