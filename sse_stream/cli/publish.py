"""`sse-stream publish STREAM TYPE [DATA|-]`: events over SQL, through the
function that HTTP publishing uses (`EventStore.publish`), in batches of
`--batch-size` events per transaction when reading JSON Lines from stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.batch import data_batch
from ..core.errors import DatabaseUnavailable, Refusal
from ..core.settings import CommandOptions, add_flags
from .common import database, fail, options_from, settings_from

if TYPE_CHECKING:
    from ..core.batch import Batch
    from ..db.store import EventStore


def add_commands(commands: Any) -> None:
    """The `publish` command, on the CLI's subparsers."""
    publish = commands.add_parser("publish", help="publish events over SQL")
    add_flags(publish, ["dsn", "data_dir"])
    publish.add_argument("stream")
    publish.add_argument("type")
    publish.add_argument("data", nargs="?", default="null",
                         help="the event's data as JSON (default null), or - to read JSON Lines "
                              "from stdin: each line is the data of one event")
    add_flags(publish, ["batch_size"], CommandOptions)
    publish.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    settings, options = settings_from(args), options_from(args)
    try:
        data_batch(args.stream, args.type, [])  # the names, before any database starts
    except Refusal as error:
        return fail(args, str(error))
    with database(settings) as dsn:
        return asyncio.run(_publish(args, dsn, options.batch_size))


async def _publish(args: argparse.Namespace, dsn: str, batch_size: int) -> int:
    """Publish `data`, or with `-` every line of stdin, in batches; print the ids.

    Each batch is one transaction. A line that is not JSON stops the command
    before its batch is written; the ids printed so far were written.
    """
    from ..db.store import EventStore

    stream, type_ = args.stream, args.type
    lines: Iterable[bytes] = sys.stdin.buffer if args.data == "-" else [args.data.encode()]
    store = EventStore(dsn)
    try:
        await store.open()
        pending: list[bytes] = []
        first_line = 1
        for number, line in enumerate(lines, 1):
            pending.append(line)
            if len(pending) >= batch_size:
                await _publish_lines(store, data_batch(stream, type_, pending, first_line))
                pending, first_line = [], number + 1
        if pending:
            await _publish_lines(store, data_batch(stream, type_, pending, first_line))
    except Refusal as error:
        return fail(args, str(error))
    except DatabaseUnavailable as error:
        return fail(args, f"database unavailable: {error}")
    finally:
        await store.close()
    return 0


async def _publish_lines(store: EventStore, batch: Batch) -> None:
    if batch.count:
        published = await store.publish(batch)
        print("\n".join(map(str, published.ids)), flush=True)
