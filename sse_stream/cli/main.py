"""The `sse-stream` command: one parser, each command group registering
itself (serve, tail, token, publish, webhooks); none imports this module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.settings import SettingsError
from . import publish, serve, tail, token, webhooks
from .common import fail

DESCRIPTION = """Filtered, resumable Server-Sent Events streams from a PostgreSQL event table.

Every option is a flag, else SSE_STREAM_<FLAG>, else its default. A value
that cannot be used ends the command with one line, `sse-stream <command>:
<message>`, and exit 2, before any database starts."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-stream", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (serve, tail, token, publish, webhooks):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except SettingsError as error:
        return fail(args, str(error))
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
