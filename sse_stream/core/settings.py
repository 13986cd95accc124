"""One Settings object, parsed once into types. Every field is a CLI flag and
an SSE_STREAM_* variable.

One rule reads every value, for every command (`load`): the flag if one was
given, else the environment variable SSE_STREAM_<FLAG> (DATABASE_URL stands in
for SSE_STREAM_DSN; an empty variable is unset), else the default. The field's
kind parses text from either, and the same text given to `Settings(...)` in
Python: a duration becomes a float of seconds (`parse_duration`, the one
duration grammar), a comma list a tuple of str. Every value is checked when
the object is built, so a bad one raises SettingsError, naming its flag,
before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from .values import (
    OPTIONAL,
    SECONDS,
    SWITCH,
    TEXT,
    Choice,
    Duration,
    Durations,
    Kind,
    Switch,
    Whole,
    Words,
    format_duration,
    network,
    parse_duration,
    port_number,
    stream_pattern,
)

__all__ = ["CommandOptions", "Settings", "SettingsError", "add_flags", "env_name",
           "format_duration", "given", "parse_duration"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Table = TypeVar("Table", bound=DataclassInstance)


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message starts with its flag."""


def _field(default: Any, help: str, kind: Kind = TEXT, **extra: Any) -> Any:
    """A field of a table of settings. `extra`: flag (when it is not --<name>),
    metavar, default_text (for --help), also_env (a second variable), negated_env
    (a variable, kept from an older name, that means the opposite)."""
    return field(default=default, metadata={"help": help, "kind": kind, **extra})


@dataclass(frozen=True)
class Settings:
    """Everything the server and the commands are configured with (see the module)."""

    dsn: str | None = _field(None, "PostgreSQL DSN", OPTIONAL, default_text="embedded",
                             also_env="DATABASE_URL")
    replica_dsn: str | None = _field(None, "DSN for bulk replay reads (catch-up history)",
                                     OPTIONAL)
    live_dsn: str | None = _field(None, "DSN of the live read, catch-up's last stretch and "
                                  "pages: a hot standby, polled (NOTIFY does not reach it); "
                                  "--dsn stays the primary for writes, webhooks and retention",
                                  OPTIONAL, default_text="--dsn, woken by NOTIFY")
    standby_poll: float = _field(0.02, "with --live-dsn, how often the live source is probed "
                                 "for replayed changes (a read follows only when it moved)",
                                 Duration(positive=True))
    standby_wait: float = _field(2.0, "how long a page waits for the live source to replay a "
                                 "position it has not reached yet, before a 503", SECONDS)
    live_generic_plan: bool = _field(True, "plan the live read's statements once (PostgreSQL's "
                                     "generic plan, the same index plan) instead of on every "
                                     "wake-up", SWITCH)
    max_standby_lag: float = _field(30.0, "replay lag of the live source past which /readyz "
                                    "answers 503, so that a load balancer drains the server",
                                    Duration(positive=True))
    data_dir: str = _field(".sse-stream/pgdata", "data folder of the embedded PostgreSQL")
    host: str = _field("127.0.0.1", "address to listen on")
    port: int = _field(8080, "port to listen on", Whole(0, 65535))
    workers: int = _field(1, "server processes sharing the port", Whole(1))
    migrate: bool = _field(True, "migrate the schema at start", SWITCH,
                           negated_env="SSE_STREAM_NO_MIGRATE")
    heartbeat: float = _field(15.0, "seconds of silence before a keepalive", SECONDS)
    retry: int = _field(2000, "reconnect delay sent to clients, in ms", Whole(0))
    poll_interval: float = _field(1.0, "seconds between reads when no NOTIFY arrives", SECONDS)
    # 10 ms, not 3: with one event per commit a read's fixed cost (its round
    # trip, the notification, the timers: ~200 µs) was most of a delivery's;
    # at 500 commits/s a read then carries about five instead of one or two
    # (peruser --mode stream: 0.58x the CPU per delivery, p50 +4 ms;
    # docs/scaling.md, "Wake-ups").
    coalesce_window: float = _field(0.010, "while commits arrive faster, the shared read runs "
                                    "at most once per window (0: on every doorbell)", SECONDS)
    # Each page is decoded and fanned out in one go, without yielding the
    # loop: 1000 rows cost up to 65 ms under load and stalled heartbeats when
    # several streams replayed at once; 200 rows keep it under 10 ms at the
    # same replay throughput (tests/test_lag.py).
    page_size: int = _field(200, "rows per shared live read", Whole(1))
    # A replay page is PostgreSQL's bytes, joined and written: little Python
    # work per row, so larger pages cost the loop little (tests/test_lag.py).
    replay_page_size: int = _field(1000, "rows per catch-up (replay) read", Whole(1))
    recent_bytes: int = _field(64 << 20, "memory for recent history: resumes from inside it are "
                               "served from memory instead of the table (0: off)", Whole(0))
    max_pending: int = _field(1 << 20, "bytes a client may have unsent before it is moved to "
                              "catching up from the table", Whole(0))
    # Database capacity, by kind of work (see docs/guarantees.md "Hostile
    # load"): the live read has a connection of its own besides these.
    pool_size: int = _field(4, "connections for replays and pages (catch-up reads) per process",
                            Whole(1))
    publish_pool_size: int = _field(2, "connections for HTTP publishing per process", Whole(1))
    capacity_wait: float = _field(2.0, "how long a page or publish waits for a connection of "
                                  "its kind before a 503", SECONDS)
    statement_timeout: float = _field(10.0, "how long any statement of the server may run",
                                      SECONDS)
    scan_rows: int = _field(10_000, "rows of its streams one page or catch-up read examines at "
                            "most", Whole(1))
    page_bytes: int = _field(1 << 20, "bytes of event data per page or catch-up read, about "
                             "(one event always fits)", Whole(1))
    listener_keepalive: float = _field(10.0, "time between listener health checks", SECONDS)
    shutdown_timeout: float = _field(10.0, "time to end streams on shutdown", SECONDS)
    prune_older_than: float | None = _field(
        None, "delete events older than this age", Duration(optional=True, example="30d"),
        default_text="keep everything")
    prune_interval: float = _field(300.0, "time between periodic prunes", SECONDS)
    prune_batch: int = _field(10_000, "rows deleted per prune statement", Whole(1))
    idempotency_ttl: float = _field(86400.0, "how long an Idempotency-Key of HTTP publishing is "
                                    "remembered, at least", SECONDS)
    log_level: str = _field("INFO", "logging level",
                            Choice(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True,
                                   also=logging.getLevelNamesMapping()))
    uvloop: bool = _field(True, "run on uvloop when it is installed (off: asyncio's own event "
                          "loop)", SWITCH, negated_env="SSE_STREAM_NO_UVLOOP")
    metrics_stream_labels: bool = _field(
        False, "label sse_stream_open_streams by the streams clients asked for (first 50 "
               "values, then 'other'); off: no client-chosen text in /metrics", SWITCH)
    # Access control (docs/security.md).
    jwt_secret: str | None = _field(None, "HS256 shared secret for tokens (32 bytes or more)",
                                    OPTIONAL)
    jwt_public_key: str | None = _field(None, "PEM file of the RS256/ES256 public key", OPTIONAL)
    jwt_algorithm: str | None = _field(
        None, "token algorithm: HS256 with a secret, RS256 or ES256 with a key or a JWKS",
        Choice(("HS256", "RS256", "ES256"), optional=True),
        default_text="HS256 with a secret, RS256 with a key, both with a JWKS")
    jwks_url: str | None = _field(None, "URL of a JSON Web Key Set: RS256/ES256 tokens are "
                                  "verified by the key their kid names (instead of a secret "
                                  "or key file)", OPTIONAL)
    jwks_refresh: float = _field(300.0, "time between fetches of the JWKS",
                                 Duration(positive=True))
    jwks_min_refresh: float = _field(30.0, "time at least between fetches of the JWKS that "
                                     "tokens with an unknown kid cause (and retries after a "
                                     "failure)", SECONDS)
    jwt_leeway: float = _field(10.0, "clock skew allowed on exp/nbf", SECONDS)
    allow_non_expiring_tokens: bool = _field(False, "accept tokens without an exp claim "
                                             "(off: refused)", SWITCH)
    jwt_audience: str | None = _field(None, "tokens must carry this aud claim (unset: a token "
                                      "with an aud is refused)", OPTIONAL)
    jwt_issuer: str | None = _field(None, "tokens must carry this iss claim", OPTIONAL)
    token_cookie: str = _field("sse_stream_token", "cookie that may carry the token")
    token_expiry_margin: float = _field(30.0, "time before a token's exp to send "
                                        "sse.token-expiring", SECONDS)
    anonymous_subscribe: tuple[str, ...] = _field((), "stream patterns anyone may read without "
                                                  "a token", Words(stream_pattern))
    trusted_proxies: tuple[str, ...] = _field((), "proxy addresses or networks whose "
                                              "X-Forwarded-For and Forwarded headers are "
                                              "believed", Words(network))
    cors_origins: tuple[str, ...] = _field((), "origins allowed by CORS (or *)", Words())
    cors_credentials: bool = _field(False, "allow cookies/credentials on CORS requests (never "
                                    "with *)", SWITCH)
    max_streams: int = _field(10000, "open streams per process (0: no limit)", Whole(0))
    # Off by default: behind a proxy that is not in trusted_proxies every
    # client has the proxy's address, and a per-address limit would cap them all.
    max_streams_per_client: int = _field(0, "open streams per client address (0: no limit)",
                                         Whole(0))
    max_query: int = _field(8192, "bytes of query string accepted", Whole(0))
    # Webhooks (docs/webhooks.md): the deliverer that `serve` runs, and its limits.
    webhooks: bool = _field(True, "deliver webhooks from this process (off: the /webhooks API "
                            "stays)", SWITCH, negated_env="SSE_STREAM_NO_WEBHOOKS")
    webhooks_allow_private: bool = _field(False, "allow webhook URLs that resolve to loopback, "
                                          "private, link-local or multicast addresses", SWITCH)
    webhooks_retry: tuple[float, ...] = _field(
        (5.0, 30.0, 120.0, 600.0, 3600.0), "delays before the attempts after 1, 2, ... failures "
        "in a row, the last one repeating (with jitter)", Durations())
    webhooks_disable_after: float = _field(259200.0, "continuous failure after which a webhook "
                                           "is disabled", SECONDS)
    webhooks_concurrency: int = _field(32, "webhook requests in flight per process (one per "
                                       "webhook at most)", Whole(1))
    webhooks_linger: float = _field(0.25, "how long a busy webhook waits after a request began "
                                    "before the next, so that its events travel in fewer, "
                                    "larger requests (a quiet one sends at once)", SECONDS)
    webhooks_batch_events: int = _field(100, "events per webhook request, at most", Whole(1))
    webhooks_batch_bytes: int = _field(256 * 1024, "bytes of event data per webhook request, "
                                       "about (one event always fits)", Whole(1))
    webhooks_connect_timeout: float = _field(5.0, "time to connect to a webhook's URL",
                                             Duration(positive=True))
    webhooks_timeout: float = _field(10.0, "time a webhook request may take in all (connect, "
                                     "send, response)", Duration(positive=True))
    webhooks_lease: float = _field(30.0, "time a process holds a webhook without renewing; "
                                   "another takes over after it dies (at least "
                                   "--webhooks-timeout + 2s)", SECONDS)
    webhooks_connections: int = _field(2, "database connections for webhook delivery per "
                                       "process", Whole(1))
    webhooks_ports: tuple[str, ...] = _field((), "the only ports webhook URLs may name (443 "
                                             "for https and 80 for http when a URL names "
                                             "none)", Words(port_number), default_text="any port")
    webhooks_per_owner: int = _field(100, "webhooks one token subject (sub and iss) may own "
                                     "(0: no limit)", Whole(0))
    webhooks_max_hold: float = _field(604800.0, "how long after its cursor last moved a paused "
                                      "or failing webhook holds "
                                      "retention back; past it, retention prunes as if it "
                                      "were not there (it gets sse.gap)", SECONDS)
    prune_past_webhooks: bool = _field(False, "retention prunes by age even past the cursor of "
                                       "webhooks (they get sse.gap); off: it waits for webhooks "
                                       "that are not disabled", SWITCH)

    def __post_init__(self) -> None:
        _normalize(self)
        if "*" in self.cors_origins and self.cors_credentials:
            raise SettingsError("--cors-origins: '*' cannot go with --cors-credentials: list "
                                "the origins")
        if self.webhooks_lease < self.webhooks_timeout + 2:
            # A request must end well before the lease that covers it lapses.
            raise SettingsError(f"--webhooks-lease: must be at least --webhooks-timeout + 2s "
                                f"({format_duration(self.webhooks_timeout + 2)}), not "
                                f"{format_duration(self.webhooks_lease)}")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Flags (None: not given) over `environ` (default os.environ) over defaults."""
        return _load(cls, environ, flags)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CommandOptions:
    """The options of single commands, read by the same rule as Settings: tail's
    --from, --token and --state, publish's --batch-size, token's --ttl."""

    start: str | None = _field(None, "start after this position (0: the oldest event)",
                               OPTIONAL, flag="--from", metavar="POSITION",
                               default_text="live only")
    token: str | None = _field(None, "bearer token", OPTIONAL)
    state: str | None = _field(None, "read the start position from FILE and keep saving it "
                               "there; it wins over --from", OPTIONAL, metavar="FILE")
    batch_size: int = _field(500, "events per transaction when reading stdin", Whole(1))
    ttl: float = _field(3600.0, "lifetime of the token", SECONDS)

    def __post_init__(self) -> None:
        _normalize(self)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> CommandOptions:
        return _load(cls, environ, flags)


def env_name(field_name: str) -> str:
    return "SSE_STREAM_" + field_name.upper()


def _flag(item: dataclasses.Field[Any]) -> str:
    return str(item.metadata.get("flag", "--" + item.name.replace("_", "-")))


def _env_names(item: dataclasses.Field[Any]) -> list[str]:
    names = [env_name(_flag(item)[2:].replace("-", "_"))]
    return names + ([item.metadata["also_env"]] if "also_env" in item.metadata else [])


def _kind(item: dataclasses.Field[Any]) -> Kind:
    kind: Kind = item.metadata["kind"]
    return kind


def _normalize(table: DataclassInstance) -> None:
    """Parse and check every field of a just-built table, in place (it is frozen)."""
    for item in fields(table):
        try:
            value = _kind(item).value(getattr(table, item.name))
        except ValueError as error:
            raise SettingsError(f"{_flag(item)}: {error}") from None
        object.__setattr__(table, item.name, value)


def _load(cls: type[Table], environ: Mapping[str, str] | None, flags: Mapping[str, Any]) -> Table:
    """The rule: each field from its flag, else its variable(s), else its default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in fields(cls):
        raw, source = flags.get(item.name), "flag"
        for name in _env_names(item):
            if raw is None and env.get(name):
                raw, source = env[name], name
        negated = item.metadata.get("negated_env")
        if raw is None and negated and env.get(negated):
            raw, source = env[negated], negated
        if raw is None:
            continue
        try:
            value = _kind(item).value(raw)
        except ValueError as error:
            where = "" if source == "flag" else f" (from {source})"
            raise SettingsError(f"{_flag(item)}: {error}{where}") from None
        values[item.name] = not value if source == negated else value
    return cls(**values)


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str],
              table: type[DataclassInstance] = Settings,
              aliases: Mapping[str, str] | None = None) -> None:
    """A flag per named field of `table`, its --help showing the kind of value,
    the default and the variable. Every value stays None unless given: `load`
    applies the rule (see `given`). A switch has both forms (--x and --no-x)."""
    by_name = {item.name: item for item in fields(table)}
    for name in names:
        item = by_name[name]
        kind = _kind(item)
        flags = [_flag(item), *([aliases[name]] if aliases and name in aliases else [])]
        parts = [kind.describe(item.default),
                 "default " + item.metadata.get("default_text", kind.show(item.default)),
                 "env " + " or ".join(_env_names(item))]
        text = f"{item.metadata['help']} ({'; '.join(p for p in parts if p)})".replace("%", "%%")
        dest = f"{table.__name__}.{name}"  # apart from a command's other arguments
        if isinstance(kind, Switch):
            parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(*flags, dest=dest, default=None, help=text,
                                metavar=item.metadata.get("metavar", kind.metavar or name.upper()))


def given(args: argparse.Namespace, table: type[DataclassInstance]) -> dict[str, Any]:
    """What the flags of `add_flags` hold in parsed `args`, by field (None: not given)."""
    return {item.name: getattr(args, f"{table.__name__}.{item.name}", None)
            for item in fields(table)}
