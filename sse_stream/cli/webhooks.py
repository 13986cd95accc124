"""`sse-stream webhooks add|list|show|pause|resume|rewind|delete`.

Manages webhooks in the database directly, through the SQL functions of
sql/0005_webhooks.sql (as `publish` writes events), with the checks of
POST /webhooks: the URL's addresses (unless --webhooks-allow-private) and
port (--webhooks-ports), the streams, types and filters. Prints JSON; `add`
prints the secret, once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from ..core.settings import add_flags

if TYPE_CHECKING:
    from ..webhooks.addresses import AddressGuard


def add_commands(commands: Any) -> None:
    """The `webhooks` command and its actions, on the CLI's subparsers."""
    webhooks = commands.add_parser("webhooks", help="manage webhooks (docs/webhooks.md)")
    actions = webhooks.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a webhook; prints it and its secret (shown "
                             "only now)")
    add.add_argument("url", help="where to POST the events (http:// or https://)")
    add.add_argument("streams", help="comma list of stream names or patterns")
    add.add_argument("--type", action="append", default=None, metavar="T",
                     help="only these types (repeatable, prefix glob *)")
    add.add_argument("--where", action="append", default=[], metavar="data.PATH=OP.VALUE",
                     help="data filter (repeatable, ANDed), or or=(...)")
    add.add_argument("--start", default="now",
                     help="now (default: events committed from now on), 0 (from the oldest "
                          "retained event) or a position")
    add_flags(add, ["dsn", "data_dir", "webhooks_allow_private", "webhooks_ports"])
    listing = actions.add_parser("list", help="every webhook, oldest first")
    add_flags(listing, ["dsn", "data_dir"])
    for name, text in (("show", "one webhook: state, cursor, backlog, last attempts"),
                       ("pause", "stop delivering"),
                       ("resume", "deliver again from the cursor (also after disabled)"),
                       ("delete", "delete the webhook and its attempt log")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id")
        add_flags(action, ["dsn", "data_dir"])
    rewind = actions.add_parser("rewind", help="move the cursor: deliver again after POSITION")
    rewind.add_argument("id")
    rewind.add_argument("position", help="0 (from the oldest retained event) or a position")
    add_flags(rewind, ["dsn", "data_dir"])
    webhooks.set_defaults(func=cmd_webhooks)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from ..webhooks.addresses import AddressGuard
    from .common import database, settings_from

    settings = settings_from(args)
    with database(settings) as dsn:
        return asyncio.run(_run(args, dsn, AddressGuard.of(settings)))


async def _run(args: argparse.Namespace, dsn: str, guard: AddressGuard) -> int:
    from ..core.errors import DatabaseUnavailable, Refusal
    from ..core.events import parse_position
    from ..db.store import EventStore
    from ..webhooks.model import FIRST_PAGE, Webhook, WebhookSpec, new_secret
    from ..webhooks.store import WebhookStore

    def fail(message: str, code: int = 2) -> int:
        print(f"sse-stream webhooks {args.action}: {message}", file=sys.stderr)
        return code

    store = EventStore(dsn)
    try:
        await store.open()
        webhooks = WebhookStore(store)
        if args.action == "add":
            spec = WebhookSpec.parse({"url": args.url, "streams": args.streams,
                                      "type": args.type, "where": args.where,
                                      "start": args.start})
            await guard.check_url(spec.url)
            created = await webhooks.create(spec, new_secret())  # no owner: admin only
            return _print({**created.view(), "secret": created.secret})
        if args.action == "list":
            listed: list[Webhook] = []
            after = FIRST_PAGE
            while page := await webhooks.page(after, 1000, everyone=True):
                listed += page
                after = (page[-1].created_at, page[-1].id)
            return _print({"webhooks": [w.view() for w in listed]})
        try:
            id_ = str(uuid.UUID(args.id))
        except ValueError:
            return fail(f"{args.id!r} is not a webhook id", 1)
        found: Webhook | None
        if args.action == "delete":
            if not await webhooks.delete(id_):
                return fail(f"no webhook {id_}", 1)
            print(f"deleted {id_}")
            return 0
        if args.action == "rewind":
            parse_position(args.position, "position")
            found = await webhooks.rewind(id_, args.position.strip())
        elif args.action == "pause":
            found = await webhooks.pause(id_)
        elif args.action == "resume":
            found = await webhooks.resume(id_)
        else:
            found = await webhooks.get(id_)
        if found is None:
            return fail(f"no webhook {id_}", 1)
        return _print(await webhooks.details(found) if args.action == "show" else found.view())
    except Refusal as error:
        return fail(f"{error.param}: {error.detail}")
    except DatabaseUnavailable as error:
        return fail(f"database unavailable: {error}")
    finally:
        await store.close()


def _print(value: Any) -> int:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    return 0
