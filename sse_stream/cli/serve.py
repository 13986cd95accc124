"""`sse-stream serve`, `migrate` and `prune`: the server and its database."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..core.settings import Settings, add_flags, format_duration
from .common import configure_logging, database, fail, settings_from

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("sse_stream")


def add_commands(commands: Any) -> None:
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


def _serve_worker(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from ..web.app import create_app

    configure_logging(settings)
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


def cmd_serve(args: argparse.Namespace) -> int:
    from ..access.policy import AccessPolicy

    settings = settings_from(args)
    configure_logging(settings)
    # What the fields cannot check alone (one key of three, a secret's
    # length, the key file) is checked before any database starts too.
    try:
        policy = AccessPolicy.from_settings(settings)
    except (OSError, ValueError) as error:
        return fail(args, str(error))
    with database(settings) as dsn:
        settings = settings.replace(dsn=dsn)
        if settings.migrate:
            from ..db.migrate import migrate_dsn

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
    from ..db.migrate import migrate_dsn

    settings = settings_from(args)
    configure_logging(settings)
    with database(settings) as dsn:
        applied = asyncio.run(migrate_dsn(dsn))
        print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    return 0


async def _prune(dsn: str, older_than: float, batch: int, force: bool, max_hold: float) -> int:
    from datetime import timedelta

    from ..db.retention import prune
    from ..db.store import EventStore

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
    configure_logging(settings)
    if settings.prune_older_than is None:
        return fail(args, "--older-than is required (e.g. 30d)")
    with database(settings) as dsn:
        return asyncio.run(_prune(dsn, settings.prune_older_than, settings.prune_batch,
                                  settings.prune_past_webhooks, settings.webhooks_max_hold))
