"""The `sse-stream` command. Every flag also reads SSE_STREAM_<FLAG>."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Sequence

from .settings import Settings, env_name

if TYPE_CHECKING:
    from .batch import Batch
    from .store import EventStore

log = logging.getLogger("sse_stream")


def _add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    by_name = {item.name: item for item in fields(Settings)}
    for name in names:
        item = by_name[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{item.metadata.get('help', '')} (env {env_name(name)})"
        if item.type == "bool":
            parser.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(item.type), str)
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {item.name: getattr(args, item.name, None) for item in fields(Settings)}
    return Settings.load(**flags)


def _ensure_database(settings: Settings) -> tuple[Settings, Any]:
    """Start the embedded PostgreSQL when no DSN is configured."""
    if settings.dsn:
        return settings, None
    from .embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir)
    dsn = server.start()
    print(f"embedded PostgreSQL running, data in {server.data_dir}", file=sys.stderr)
    print(f"DSN: {dsn}", file=sys.stderr)
    print(f"  psql '{dsn}' -c \"SELECT sse_stream.publish('orders', 'order.created', "
          "'{\\\"id\\\": 1}')\"", file=sys.stderr)
    return settings.replace(dsn=dsn), server


def _serve_worker(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from .app import create_app

    _configure_logging(settings)
    if not settings.no_uvloop:
        _use_uvloop()
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                reuse_port=reuse_port or None, handler_cancellation=True,
                shutdown_timeout=settings.shutdown_timeout, print=None,
                access_log=None)


def _use_uvloop() -> None:
    """Run on uvloop when it is installed (a dependency where it builds): cheaper
    socket writes and callbacks."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from .access import AccessPolicy

    settings = _settings(args)
    _configure_logging(settings)
    # Access settings are checked before any database starts: a bad key or
    # a short secret costs nothing but this message.
    try:
        policy = AccessPolicy.from_settings(settings)
    except (OSError, ValueError) as error:
        print(f"sse-stream serve: {error}", file=sys.stderr)
        return 2
    settings, embedded = _ensure_database(settings)
    try:
        if not settings.no_migrate:
            from .migrate import migrate_dsn

            assert settings.dsn is not None
            asyncio.run(migrate_dsn(settings.dsn))
        # Loud on purpose: an operator must not mistake protected mode for a
        # configured one, nor miss which streams are open to everyone.
        log.log(logging.WARNING if policy.verifier is None or policy.anonymous else logging.INFO,
                "%s", policy.describe())
        print(f"serving on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
        if settings.workers <= 1:
            _serve_worker(settings, reuse_port=False)
        else:
            _run_workers(settings)
    finally:
        if embedded is not None:
            embedded.stop()
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
    settings = _settings(args)
    _configure_logging(settings)
    settings, embedded = _ensure_database(settings)
    try:
        from .migrate import migrate_dsn

        assert settings.dsn is not None
        applied = asyncio.run(migrate_dsn(settings.dsn))
        print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


async def _publish(dsn: str, stream: str, type_: str, data: str, batch_size: int) -> int:
    """Publish `data`, or with `-` every line of stdin, in batches; print the ids.

    Each batch is one transaction. A line that is not JSON stops the command
    before its batch is written; the ids printed so far were written.
    """
    from .batch import data_batch
    from .errors import DatabaseUnavailable, Refusal
    from .store import EventStore

    def fail(message: str) -> int:
        print(f"sse-stream publish: {message}", file=sys.stderr)
        return 2

    try:
        data_batch(stream, type_, [])  # the names, before connecting
    except Refusal as error:
        return fail(str(error))
    lines: Iterable[bytes] = sys.stdin.buffer if data == "-" else [data.encode()]
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
        return fail(str(error))
    except DatabaseUnavailable as error:
        return fail(f"database unavailable: {error}")
    finally:
        await store.close()
    return 0


async def _publish_lines(store: EventStore, batch: Batch) -> None:
    if batch.count:
        published = await store.publish(batch)
        print("\n".join(map(str, published.ids)), flush=True)


def cmd_publish(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings, embedded = _ensure_database(settings)
    try:
        assert settings.dsn is not None
        return asyncio.run(_publish(settings.dsn, args.stream, args.type, args.data,
                                    args.batch_size))
    finally:
        if embedded is not None:
            embedded.stop()


def cmd_tail(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .client import SubscribeError
    from .tail import tail

    try:
        return asyncio.run(tail(args.url, start=args.start, types=tuple(args.type),
                                filters=tuple(args.filter), token=args.token,
                                state=Path(args.state) if args.state else None,
                                live=not args.no_follow))
    except (ValueError, SubscribeError) as error:
        print(f"sse-stream tail: {error}", file=sys.stderr)
        return 2


async def _prune(dsn: str, older_than: str, batch: int, force: bool) -> int:
    from .retention import parse_age, prune
    from .store import EventStore

    age = parse_age(older_than)
    store = EventStore(dsn)
    await store.open()
    try:
        result = await prune(store, age, batch, force=force)
        position = await store.pruned_position()
    finally:
        await store.close()
    print(f"deleted {result.deleted} event(s) older than {older_than} in {result.batches} "
          f"batch(es); pruned up to {position.encode() if position else 'nothing'}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    older_than = args.older_than or settings.prune_older_than
    if not older_than:
        print("sse-stream prune: --older-than is required (e.g. 30d)", file=sys.stderr)
        return 2
    settings, embedded = _ensure_database(settings)
    try:
        assert settings.dsn is not None
        return asyncio.run(_prune(settings.dsn, older_than, settings.prune_batch,
                                  settings.prune_past_webhooks))
    except ValueError as error:
        print(f"sse-stream prune: {error}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            embedded.stop()


def _env_default(name: str) -> str | None:
    return os.environ.get(env_name(name)) or None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import check_secret, mint, parse_duration
    from .errors import Refusal

    settings = _settings(args)
    if not settings.jwt_secret:
        print("sse-stream token: needs the HS256 secret: --jwt-secret or "
              f"{env_name('jwt_secret')}", file=sys.stderr)
        return 2
    try:
        check_secret(settings.jwt_secret)
    except ValueError as error:
        print(f"sse-stream token: {error}", file=sys.stderr)
        return 2

    def patterns(values: list[str]) -> list[str]:
        return [p.strip() for value in values for p in value.split(",") if p.strip()]

    try:
        ttl = parse_duration(args.ttl)
        # The server's own audience and issuer settings are the defaults.
        token = mint(settings.jwt_secret, patterns(args.subscribe), patterns(args.publish), ttl,
                     subject=args.sub, audience=args.aud or settings.jwt_audience,
                     issuer=args.iss or settings.jwt_issuer, where=args.where,
                     webhooks=patterns(args.webhooks))
    except ValueError as error:
        print(f"sse-stream token: --ttl: {error}", file=sys.stderr)
        return 2
    except Refusal as error:
        print(f"sse-stream token: {error.detail}", file=sys.stderr)
        return 2
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-stream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    _add_setting_flags(serve, [f.name for f in fields(Settings)])
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    _add_setting_flags(migrate, ["dsn", "data_dir", "log_level"])
    migrate.set_defaults(func=cmd_migrate)

    publish = commands.add_parser("publish", help="publish events over SQL")
    _add_setting_flags(publish, ["dsn", "data_dir"])
    publish.add_argument("stream")
    publish.add_argument("type")
    publish.add_argument("data", nargs="?", default="null",
                         help="the event's data as JSON (default null), or - to read JSON Lines "
                              "from stdin: each line is the data of one event")
    publish.add_argument("--batch-size", type=_positive_int, default=500,
                         help="events per transaction when reading stdin (default 500)")
    publish.set_defaults(func=cmd_publish)

    prune = commands.add_parser("prune", help="delete old events in small batches")
    prune.add_argument("--older-than", default=None, metavar="AGE",
                       help="age such as 30d, 12h, 90m (env SSE_STREAM_PRUNE_OLDER_THAN)")
    _add_setting_flags(prune, ["dsn", "data_dir", "prune_batch", "prune_past_webhooks",
                               "log_level"])
    prune.set_defaults(func=cmd_prune)

    tail = commands.add_parser(
        "tail", help="print a stream as JSON Lines, resuming by itself",
        description="Replay what was missed, then follow. URL is http://HOST/streams/STREAMS "
                    "(query filters allowed).")
    tail.add_argument("url")
    tail.add_argument("--from", dest="start", default=_env_default("from"), metavar="POSITION",
                      help="start after this position (0: the oldest event; default: live "
                           "only) (env SSE_STREAM_FROM)")
    tail.add_argument("--type", action="append", default=[], metavar="T",
                      help="only this type (repeatable, prefix glob *)")
    tail.add_argument("--filter", action="append", default=[], metavar="data.PATH=OP.VALUE",
                      help="data filter (repeatable, ANDed)")
    tail.add_argument("--token", default=_env_default("token"),
                      help="bearer token (env SSE_STREAM_TOKEN)")
    tail.add_argument("--state", default=_env_default("state"), metavar="FILE",
                      help="read the start position from FILE and keep saving it there; it wins "
                           "over --from (env SSE_STREAM_STATE)")
    tail.add_argument("--no-follow", action="store_true",
                      help="end once caught up instead of following")
    tail.set_defaults(func=cmd_tail)

    token = commands.add_parser("token", help="mint an HS256 token with the configured secret")
    _add_setting_flags(token, ["jwt_secret"])
    token.add_argument("--subscribe", action="append", default=[], metavar="PATTERN",
                       help="stream pattern the token may read (repeatable or comma list)")
    token.add_argument("--publish", action="append", default=[], metavar="PATTERN",
                       help="stream pattern the token may publish to (repeatable or comma list)")
    token.add_argument("--where", action="append", default=[], metavar="FILTER",
                       help="data filter every stream, replay and page of the token is bound "
                            "to, as in a query: data.customer_id=eq.42 or or=(...) (repeatable, "
                            "ANDed)")
    token.add_argument("--webhooks", action="append", default=[], metavar="PATTERN",
                       help="stream pattern whose webhooks the token may manage (repeatable)")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 30d (default 1h)")
    token.add_argument("--sub", default=None, help="subject claim (e.g. the user id)")
    token.add_argument("--aud", default=None,
                       help=f"audience claim (default: {env_name('jwt_audience')})")
    token.add_argument("--iss", default=None,
                       help=f"issuer claim (default: {env_name('jwt_issuer')})")
    token.set_defaults(func=cmd_token)
    from .webhook_cli import add_commands
    add_commands(commands, _add_setting_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
