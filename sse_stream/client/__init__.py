"""The Python client: `subscribe` yields each event once, in order, and resumes
by itself (client/stream.py); the SSE parser it reads with (client/sseparse.py)."""

from .sseparse import Message, SseParser
from .stream import ControlEvent, StreamEvent, SubscribeError, Subscriber, subscribe

__all__ = ["ControlEvent", "Message", "SseParser", "StreamEvent", "SubscribeError",
           "Subscriber", "subscribe"]
