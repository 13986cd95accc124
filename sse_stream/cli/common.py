"""What every command shares: its settings and options, the database it
runs against, logging, and the one-line refusal.

Every option is a flag, else SSE_STREAM_<FLAG>, else its default (one rule
and one table, in core/settings.py). A value that cannot be used ends the
command with one line, `sse-stream <command>: <message>`, and exit 2, before
any database starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..core.settings import CommandOptions, Settings, given


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings from a command's flags, the environment and the defaults."""
    return Settings.load(**given(args, Settings))


def options_from(args: argparse.Namespace) -> CommandOptions:
    return CommandOptions.load(**given(args, CommandOptions))


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The DSN to use: the configured one, or that of an embedded PostgreSQL
    started here and stopped when the block ends."""
    if settings.dsn:
        yield settings.dsn
        return
    from ..db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir)
    dsn = server.start()
    print(f"embedded PostgreSQL running, data in {server.data_dir}", file=sys.stderr)
    print(f"DSN: {dsn}", file=sys.stderr)
    print(f"  psql '{dsn}' -c \"SELECT sse_stream.publish('orders', 'order.created', "
          "'{\\\"id\\\": 1}')\"", file=sys.stderr)
    try:
        yield dsn
    finally:
        server.stop()


def fail(args: argparse.Namespace, message: str) -> int:
    """Say why the command refuses, in one line; its exit status is 2."""
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    print(f"sse-stream {command}: {message}", file=sys.stderr)
    return 2


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
