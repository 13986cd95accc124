"""A WHATWG Server-Sent Events parser (for the Python client and tests).

`SseParser.feed(bytes)` returns the messages completed by that chunk. Lines
end in CR, LF or CRLF (a CR at the end of a chunk waits for the next one);
a leading BOM is dropped; comment lines are counted; `data` lines are joined
with LF; an `id` containing NUL is ignored; a message with no data updates
the last event id but dispatches nothing, as a browser does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    event: str
    data: str
    last_event_id: str


class SseParser:
    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self.comments = 0
        self._buffer = ""
        self._decoder_pending = b""
        self._started = False
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._id_buffer = last_event_id

    def feed(self, chunk: bytes) -> list[Message]:
        raw = self._decoder_pending + chunk
        # Keep an incomplete UTF-8 sequence at the end for the next chunk.
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte >= 0xC0:
                need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if back < need:
                    cut = len(raw) - back
            break
        self._decoder_pending = raw[cut:]
        text = raw[:cut].decode("utf-8", errors="replace")
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._pending_cr and text:
            # A CR ended the previous chunk: an LF right after it is the same line end.
            if text.startswith("\n"):
                text = text[1:]
            self._pending_cr = False
        self._buffer += text
        messages: list[Message] = []
        start = 0
        buffer = self._buffer
        length = len(buffer)
        index = 0
        while index < length:
            char = buffer[index]
            if char == "\r" or char == "\n":
                line = buffer[start:index]
                if char == "\r":
                    if index + 1 < length:
                        if buffer[index + 1] == "\n":
                            index += 1
                    else:
                        self._pending_cr = True
                message = self._line(line)
                if message is not None:
                    messages.append(message)
                start = index + 1
            index += 1
        self._buffer = buffer[start:]
        return messages

    def _line(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event = ""
            return None
        message = Message(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._event = ""
        self._data = []
        return message
