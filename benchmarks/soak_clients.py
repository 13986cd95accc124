"""The subscribers of benchmarks/soak.py: what each asks for and how it reads.

A subscriber picks streams (exact names, `*` and `>` patterns, lists),
optionally a type glob and a data filter, each paired with a predicate that
evaluates it here in Python, independently of the server's own code; it
starts at position 0, hangs up now and then (often in the middle of a
frame) and resumes with Last-Event-ID, recording the position of every
event it receives.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

Predicate = Callable[[str, str, Any], bool]  # (stream, type, data) -> matches


def _number(data: Any, key: str) -> float | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(data: Any, key: str) -> str | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def stream_choices(prefix: str) -> list[tuple[str, Predicate]]:
    a, b, c = f"{prefix}.a", f"{prefix}.b", f"{prefix}.c"
    return [
        (f"{prefix}.>", lambda s, t, d: True),
        (a, lambda s, t, d: s == a),
        (f"{a},{b}", lambda s, t, d: s in (a, b)),
        (f"{c}.*", lambda s, t, d: s.startswith(c + ".")),
        (f"{prefix}.*", lambda s, t, d: s.count(".") == 1),
        (f"{b},{c}.>", lambda s, t, d: s == b or s.startswith(c + ".")),
    ]


TYPE_CHOICES: list[tuple[str, Predicate]] = [
    ("", lambda s, t, d: True),
    ("type=order.*", lambda s, t, d: t.startswith("order.")),
    ("type=audit", lambda s, t, d: t == "audit"),
]


def _k(d: Any) -> float | None:
    return _number(d, "k")


DATA_CHOICES: list[tuple[str, Predicate]] = [
    ("", lambda s, t, d: True),
    ("data.k=eq.3", lambda s, t, d: _k(d) == 3),
    ("data.k=gt.6", lambda s, t, d: (k := _k(d)) is not None and k > 6),
    ("data.k=in.(1,2,5)", lambda s, t, d: _k(d) in (1, 2, 5)),
    ("data.k=not.in.(0,1)", lambda s, t, d: _k(d) not in (0, 1)),
    ("data.tag=eq.red", lambda s, t, d: _text(d, "tag") == "red"),
    ("data.opt=is.null", lambda s, t, d: not isinstance(d, dict) or d.get("opt") is None),
    ("or=(data.k.lt.2,data.tag.eq.blue)",
     lambda s, t, d: ((k := _k(d)) is not None and k < 2) or _text(d, "tag") == "blue"),
    ("data.k=gte.5&data.tag=neq.green",
     lambda s, t, d: (k := _k(d)) is not None and k >= 5 and _text(d, "tag") != "green"),
]


@dataclass
class Subscriber:
    number: int
    path: str                    # /streams/...?... (with last_event_id=0)
    matches: Predicate
    rng: random.Random
    received: list[str] = field(default_factory=list)   # positions of events, in order
    last_id: str = ""
    connections: int = 0
    errors: int = 0
    target: int | None = None
    settling: bool = False       # the end: stop hanging up on purpose

    def done(self) -> bool:
        return self.target is not None and len(self.received) >= self.target


def make_subscriber(number: int, prefix: str, rng: random.Random) -> Subscriber:
    streams, by_stream = rng.choice(stream_choices(prefix))
    type_query, by_type = rng.choice(TYPE_CHOICES)
    data_query, by_data = rng.choice(DATA_CHOICES)
    query = "&".join(q for q in ("last_event_id=0", type_query, data_query) if q)

    def matches(s: str, t: str, d: Any) -> bool:
        return by_stream(s, t, d) and by_type(s, t, d) and by_data(s, t, d)

    return Subscriber(number, f"/streams/{streams}?{query}", matches,
                      random.Random(rng.random()))


# -- the client side ------------------------------------------------------------


def parse_frames(buffer: bytes, subscriber: Subscriber) -> bytes:
    """Consume the complete frames in `buffer`; return the incomplete rest.

    The server writes LF line ends only, so a frame ends at a blank line. As
    in a browser, a frame's id becomes the last event id when the frame is
    complete, whether or not it carries data.
    """
    *frames, rest = buffer.split(b"\n\n")
    for frame in frames:
        frame_id: bytes | None = None
        has_data = False
        for line in frame.split(b"\n"):
            if line.startswith(b"id:"):
                frame_id = line[4:] if line.startswith(b"id: ") else line[3:]
            elif line.startswith(b"data:"):
                has_data = True
        if frame_id is not None:
            subscriber.last_id = frame_id.decode()
            if has_data:
                subscriber.received.append(subscriber.last_id)
    return rest


async def subscribe(subscriber: Subscriber, base: str, session: aiohttp.ClientSession,
                    mean_session: float) -> None:
    rng = subscriber.rng
    # It reads on after the writers stop, until the end sets its target.
    while not subscriber.done():
        headers = {"Last-Event-ID": subscriber.last_id} if subscriber.last_id else {}
        subscriber.connections += 1
        hang_up_at = (time.monotonic() + rng.expovariate(1 / mean_session)
                      if not subscriber.settling else float("inf"))
        try:
            async with session.get(base + subscriber.path, headers=headers) as response:
                if response.status != 200:
                    subscriber.errors += 1
                    await asyncio.sleep(0.2 + rng.random())
                    continue
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer = parse_frames(buffer + chunk, subscriber)
                    if subscriber.done():
                        return
                    if time.monotonic() > hang_up_at and not subscriber.settling:
                        break  # hang up, often in the middle of a frame
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            subscriber.errors += 1
        await asyncio.sleep(rng.uniform(0, 0.3))

