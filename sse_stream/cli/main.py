"""The `sse-stream` command: one parser, each command group registering
itself (serve, tail, token, publish, webhooks); none imports this module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.settings import SettingsError
from . import publish, serve, tail, token, webhooks
from .common import fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-stream", description=__doc__,
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
