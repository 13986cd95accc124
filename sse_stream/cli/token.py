"""`sse-stream token`: mint an HS256 token with the configured secret."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.settings import CommandOptions, add_flags, env_name
from .common import fail, options_from, settings_from


def add_commands(commands: Any) -> None:
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


def cmd_token(args: argparse.Namespace) -> int:
    from ..access.auth import check_secret, mint
    from ..core.errors import Refusal

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
