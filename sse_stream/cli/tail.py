"""`sse-stream tail`: print a stream as JSON Lines, resuming by itself.

Each event is one line: its envelope (`id`, `position`, `stream`, `type`,
`data`, `created_at`); a control event is `{"type": "sse.gap", "position":
..., "data": {...}}`. On a terminal the lines are short and coloured
instead. With a state file, the position after the last printed event is
saved (written to a temporary file, then renamed over the old one, so a
crash leaves the old or the new position, never half of one) and the next
run starts after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from ..client import ControlEvent, StreamEvent, subscribe
from ..core.settings import CommandOptions, add_flags
from .common import fail, options_from

_STREAMS = "/streams/"


@dataclass(frozen=True)
class TailTarget:
    """A stream URL split into the server's base URL, the streams, and query filters."""

    base: str
    streams: str
    types: tuple[str, ...]
    filters: tuple[str, ...]


def parse_target(url: str) -> TailTarget:
    parts = urlsplit(url)
    index = parts.path.find(_STREAMS)
    if parts.scheme not in ("http", "https") or index < 0:
        raise ValueError(f"{url!r}: expected http(s)://HOST/streams/STREAMS")
    streams = unquote(parts.path[index + len(_STREAMS):].rstrip("/"))
    if not streams or "/" in streams:
        raise ValueError(f"{url!r}: expected http(s)://HOST/streams/STREAMS")
    base = f"{parts.scheme}://{parts.netloc}{parts.path[:index]}"
    types: list[str] = []
    filters: list[str] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "type":
            types.append(value)
        else:
            filters.append(f"{key}={value}")
    return TailTarget(base, streams, tuple(types), tuple(filters))


def read_state(path: Path) -> str | None:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    value = document.get("last_event_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


def write_state(path: Path, last_event_id: str) -> None:
    """Replace the state file atomically (same folder, then rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(orjson.dumps({"last_event_id": last_event_id}) + b"\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


_COLOURS = {"position": "\x1b[2m", "stream": "\x1b[36m", "type": "\x1b[1;33m",
            "control": "\x1b[1;35m", "reset": "\x1b[0m"}


def format_line(event: StreamEvent | ControlEvent, pretty: bool) -> str:
    if isinstance(event, ControlEvent):
        if pretty:
            c = _COLOURS
            return (f"{c['position']}{event.position}{c['reset']} {c['control']}{event.type}"
                    f"{c['reset']} {orjson.dumps(event.data).decode()}")
        return orjson.dumps({"type": event.type, "position": event.position,
                             "data": event.data}).decode()
    if pretty:
        c = _COLOURS
        return (f"{c['position']}{event.position}{c['reset']} {c['stream']}{event.stream}"
                f"{c['reset']} {c['type']}{event.type}{c['reset']} "
                f"{orjson.dumps(event.data).decode()}")
    envelope: dict[str, Any] = {"id": event.id, "position": event.position,
                                "stream": event.stream, "type": event.type,
                                "data": event.data, "created_at": event.created_at}
    return orjson.dumps(envelope).decode()


async def tail(url: str, *, start: str | None = None, types: tuple[str, ...] = (),
               filters: tuple[str, ...] = (), token: str | None = None,
               state: Path | None = None, live: bool = True,
               out: TextIO = sys.stdout, pretty: bool | None = None) -> int:
    """Print events until interrupted (or, with `live` False, until caught up)."""
    target = parse_target(url)
    saved = read_state(state) if state is not None else None
    pretty = out.isatty() if pretty is None else pretty
    events = subscribe(target.base, target.streams, types=target.types + types,
                       filters=target.filters + filters, last_event_id=saved or start,
                       token=token, live=live)
    saved_id = saved
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if task is not None:
            loop.add_signal_handler(signum, task.cancel)

    def checkpoint() -> None:
        nonlocal saved_id
        out.flush()
        position = events.last_event_id
        if state is not None and position and position != saved_id:
            write_state(state, position)
            saved_id = position

    try:
        async with events:
            async for event in events:
                out.write(format_line(event, pretty) + "\n")
                if not events.buffered:
                    # Printed before saved: a crash between the two repeats
                    # a line on the next run rather than losing one.
                    checkpoint()
    except asyncio.CancelledError:
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): what it took is saved, not more.
        state = None
        if out is sys.stdout:
            # Quiet the interpreter's own flush of the dead pipe at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        try:
            checkpoint()
        except BrokenPipeError:
            pass
    return 0


def add_commands(commands: Any) -> None:
    tail = commands.add_parser(
        "tail", help="print a stream as JSON Lines, resuming by itself",
        description="Replay what was missed, then follow. URL is http://HOST/streams/STREAMS "
                    "(query filters allowed).")
    tail.add_argument("url")
    add_flags(tail, ["start"], CommandOptions)
    tail.add_argument("--type", action="append", default=[], metavar="T",
                      help="only this type (repeatable, prefix glob *)")
    tail.add_argument("--filter", action="append", default=[], metavar="data.PATH=OP.VALUE",
                      help="data filter (repeatable, ANDed)")
    add_flags(tail, ["token", "state"], CommandOptions)
    # The stream's own name for it is live=false; --no-follow is tail's habit.
    tail.add_argument("--no-live", "--no-follow", dest="live", action="store_false",
                      help="end once caught up (the stream's live=false) instead of following")
    tail.set_defaults(func=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    from ..client import SubscribeError

    options = options_from(args)
    try:
        return asyncio.run(tail(args.url, start=options.start, types=tuple(args.type),
                                filters=tuple(args.filter), token=options.token,
                                state=Path(options.state) if options.state else None,
                                live=args.live))
    except (ValueError, SubscribeError) as error:
        return fail(args, str(error))
