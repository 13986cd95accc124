"""The `sse-stream` command.

Every option is a flag, else SSE_STREAM_<FLAG>, else its default (one rule
and one table, in settings.py). A value that cannot be used ends the command
with one line, `sse-stream <command>: <message>`, and exit 2, before any
database starts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import (
    CommandOptions,
    Settings,
    SettingsError,
    add_flags,
    env_name,
    format_duration,
    given,
)

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("sse_stream")


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
    from .embedded import EmbeddedPostgres

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


def _serve_worker(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from .app import create_app

    _configure_logging(settings)
    if settings.uvloop:
        _use_uvloop()
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # after the lifecycle's start (cleanup_ctx)
    web.run_app(app, host=settings.host, port=settings.port,
                reuse_port=reuse_port or None, handler_cancellation=True,
                shutdown_timeout=settings.shutdown_timeout, print=None,
                access_log=None)


async def _freeze_heap(_app: web.Application) -> None:
    # What exists once the app has started (modules, classes, the app, its
    # pool and hub: about 55 000 objects) lives as long as the process.
    # Frozen, it is left out of the collector's full collections, which
    # otherwise walk it each time: a replay of 600 000 events ran about
    # twenty of them, each pausing the loop for 40 to 150 ms on a loaded
    # machine (tests/test_lag.py).
    gc.freeze()


def _use_uvloop() -> None:
    """Run on uvloop when it is installed (a dependency where it builds): cheaper
    socket writes and callbacks."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from .access import AccessPolicy

    settings = settings_from(args)
    _configure_logging(settings)
    # What the fields cannot check alone (one key of three, a secret's
    # length, the key file) is checked before any database starts too.
    try:
        policy = AccessPolicy.from_settings(settings)
    except (OSError, ValueError) as error:
        return fail(args, str(error))
    with database(settings) as dsn:
        settings = settings.replace(dsn=dsn)
        if settings.migrate:
            from .migrate import migrate_dsn

            asyncio.run(migrate_dsn(dsn))
        # Loud on purpose: an operator must not mistake protected mode for a
        # configured one, nor miss which streams are open to everyone.
        log.log(logging.WARNING if policy.verifier is None or policy.anonymous else logging.INFO,
                "%s", policy.describe())
        print(f"serving on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
        if settings.workers <= 1:
            _serve_worker(settings, reuse_port=False)
        else:
            _run_workers(settings)
    return 0


def _run_workers(settings: Settings) -> None:
    """N processes on one port (SO_REUSEPORT); SIGTERM/SIGINT reach them all."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_serve_worker, args=(settings, True), daemon=False)
               for _ in range(settings.workers)]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: Any) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate_dsn

    settings = settings_from(args)
    _configure_logging(settings)
    with database(settings) as dsn:
        applied = asyncio.run(migrate_dsn(dsn))
        print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from .client import SubscribeError
    from .tail import tail

    options = options_from(args)
    try:
        return asyncio.run(tail(args.url, start=options.start, types=tuple(args.type),
                                filters=tuple(args.filter), token=options.token,
                                state=Path(options.state) if options.state else None,
                                live=args.live))
    except (ValueError, SubscribeError) as error:
        return fail(args, str(error))


async def _prune(dsn: str, older_than: float, batch: int, force: bool, max_hold: float) -> int:
    from datetime import timedelta

    from .retention import prune
    from .store import EventStore

    store = EventStore(dsn)
    await store.open()
    try:
        result = await prune(store, timedelta(seconds=older_than), batch, force=force,
                             max_hold=max_hold)
        position = await store.pruned_position()
    finally:
        await store.close()
    print(f"deleted {result.deleted} event(s) older than {format_duration(older_than)} in "
          f"{result.batches} batch(es); pruned up to "
          f"{position.encode() if position else 'nothing'}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _configure_logging(settings)
    if settings.prune_older_than is None:
        return fail(args, "--older-than is required (e.g. 30d)")
    with database(settings) as dsn:
        return asyncio.run(_prune(dsn, settings.prune_older_than, settings.prune_batch,
                                  settings.prune_past_webhooks, settings.webhooks_max_hold))


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import check_secret, mint
    from .errors import Refusal

    settings, options = settings_from(args), options_from(args)
    if not settings.jwt_secret:
        return fail(args, f"needs the HS256 secret: --jwt-secret or {env_name('jwt_secret')}")

    def patterns(values: list[str]) -> list[str]:
        return [p.strip() for value in values for p in value.split(",") if p.strip()]

    try:
        check_secret(settings.jwt_secret)
        # The server's own audience and issuer settings are the defaults.
        token = mint(settings.jwt_secret, patterns(args.subscribe), patterns(args.publish),
                     options.ttl, subject=args.sub, audience=args.aud or settings.jwt_audience,
                     issuer=args.iss or settings.jwt_issuer, where=args.where,
                     webhooks=patterns(args.webhooks), webhooks_admin=args.webhooks_admin)
    except ValueError as error:
        return fail(args, str(error))
    except Refusal as error:
        return fail(args, error.detail)
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    add_flags(serve, [f.name for f in fields(Settings)])
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    add_flags(migrate, ["dsn", "data_dir", "log_level"])
    migrate.set_defaults(func=cmd_migrate)

    prune = commands.add_parser("prune", help="delete old events in small batches")
    add_flags(prune, ["prune_older_than"], aliases={"prune_older_than": "--older-than"})
    add_flags(prune, ["dsn", "data_dir", "prune_batch", "prune_past_webhooks",
                      "webhooks_max_hold", "log_level"])
    prune.set_defaults(func=cmd_prune)

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

    token = commands.add_parser("token", help="mint an HS256 token with the configured secret")
    add_flags(token, ["jwt_secret"])
    token.add_argument("--subscribe", action="append", default=[], metavar="PATTERN",
                       help="stream pattern the token may read (repeatable or comma list)")
    token.add_argument("--publish", action="append", default=[], metavar="PATTERN",
                       help="stream pattern the token may publish to (repeatable or comma list)")
    token.add_argument("--where", action="append", default=[], metavar="FILTER",
                       help="data filter every stream, replay and page of the token is bound "
                            "to, as in a query: data.customer_id=eq.42 or or=(...) (repeatable, "
                            "ANDed)")
    token.add_argument("--webhooks", action="append", default=[], metavar="PATTERN",
                       help="stream pattern whose webhooks the token may create and manage "
                            "(repeatable); they read no more than its --subscribe and --where")
    token.add_argument("--webhooks-admin", action="store_true",
                       help="the token sees and manages every owner's webhooks on its "
                            "--webhooks patterns, not only its own (--sub)")
    add_flags(token, ["ttl"], CommandOptions)
    token.add_argument("--sub", default=None, help="subject claim (e.g. the user id)")
    token.add_argument("--aud", default=None,
                       help=f"audience claim (default: {env_name('jwt_audience')})")
    token.add_argument("--iss", default=None,
                       help=f"issuer claim (default: {env_name('jwt_issuer')})")
    token.set_defaults(func=cmd_token)
    from . import publish_cli, webhook_cli

    publish_cli.add_command(commands)
    webhook_cli.add_commands(commands)
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
