"""One Settings object. Every field is a CLI flag and an SSE_STREAM_* variable.

`Settings.load(**flags)` takes, for each field, the command-line value if one
was given, else the environment variable SSE_STREAM_<FIELD> (DATABASE_URL
stands in for SSE_STREAM_DSN), else the default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping


def env_name(field_name: str) -> str:
    return "SSE_STREAM_" + field_name.upper()


@dataclass(frozen=True)
class Settings:
    dsn: str | None = field(default=None, metadata={"help": "PostgreSQL DSN (default: embedded)"})
    replica_dsn: str | None = field(default=None, metadata={"help": "DSN for replay reads"})
    data_dir: str = field(default=".sse-stream/pgdata",
                          metadata={"help": "data folder of the embedded PostgreSQL"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    workers: int = field(default=1, metadata={"help": "server processes sharing the port"})
    no_migrate: bool = field(default=False, metadata={"help": "do not migrate at start"})
    heartbeat: float = field(default=15.0, metadata={"help": "seconds of silence before a keepalive"})
    retry: int = field(default=2000, metadata={"help": "reconnect delay sent to clients (ms)"})
    poll_interval: float = field(default=1.0,
                                 metadata={"help": "seconds between reads when no NOTIFY arrives"})
    coalesce_window: float = field(default=0.003,
                                   metadata={"help": "seconds: while commits arrive faster, the "
                                                     "shared read runs at most once per window "
                                                     "(0: read on every doorbell)"})
    # Each page is decoded and fanned out in one go, without yielding the
    # loop: 1000 rows cost up to 65 ms under load and stalled heartbeats when
    # several streams replayed at once; 200 rows keep it under 10 ms at the
    # same replay throughput (tests/test_lag.py).
    page_size: int = field(default=200, metadata={"help": "rows per shared live read"})
    # A replay page is PostgreSQL's bytes, joined and written: little Python
    # work per row, so larger pages cost the loop little (tests/test_lag.py).
    replay_page_size: int = field(default=1000,
                                  metadata={"help": "rows per catch-up (replay) read"})
    max_pending: int = field(default=1 << 20,
                             metadata={"help": "bytes a client may have unsent before it is "
                                               "moved to catching up from the table"})
    # Database capacity, by kind of work (see docs/guarantees.md "Hostile
    # load"): the live read has a connection of its own besides these.
    pool_size: int = field(default=4, metadata={"help": "connections for replays and pages "
                                                          "(catch-up reads) per process"})
    publish_pool_size: int = field(default=2, metadata={"help": "connections for HTTP "
                                                                "publishing per process"})
    capacity_wait: float = field(default=2.0,
                                 metadata={"help": "seconds a page or publish waits for a "
                                                   "connection of its kind before a 503"})
    statement_timeout: float = field(default=10.0,
                                     metadata={"help": "seconds any statement of the server "
                                                       "may run"})
    scan_rows: int = field(default=10_000,
                           metadata={"help": "rows of its streams one page or catch-up read "
                                             "examines at most"})
    page_bytes: int = field(default=1 << 20,
                            metadata={"help": "bytes of event data per page or catch-up read, "
                                              "about (one event always fits)"})
    listener_keepalive: float = field(default=10.0,
                                      metadata={"help": "seconds between listener health checks"})
    shutdown_timeout: float = field(default=10.0,
                                    metadata={"help": "seconds to end streams on shutdown"})
    prune_older_than: str | None = field(
        default=None, metadata={"help": "delete events older than this age (30d, 12h, ...); "
                                        "default: keep everything"})
    prune_interval: float = field(default=300.0,
                                  metadata={"help": "seconds between periodic prunes"})
    prune_batch: int = field(default=10_000,
                             metadata={"help": "rows deleted per prune statement"})
    idempotency_ttl: float = field(
        default=86400.0, metadata={"help": "seconds an Idempotency-Key of HTTP publishing is "
                                           "remembered, at least (default 24 h)"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})
    no_uvloop: bool = field(default=False,
                            metadata={"help": "run on asyncio's own event loop even when uvloop "
                                              "is installed"})
    metrics_stream_labels: bool = field(
        default=False, metadata={"help": "label sse_stream_open_streams by the streams clients "
                                         "asked for (first 50 values, then 'other'); off: no "
                                         "client-chosen text in /metrics"})
    # Access control (see README "Security").
    jwt_secret: str | None = field(default=None,
                                   metadata={"help": "HS256 shared secret for tokens (32 bytes "
                                                     "or more)"})
    jwt_public_key: str | None = field(default=None,
                                       metadata={"help": "PEM file of the RS256/ES256 public key"})
    jwt_algorithm: str | None = field(default=None,
                                      metadata={"help": "token algorithm: HS256 with a secret, "
                                                        "RS256 (default) or ES256 with a key, "
                                                        "RS256 or ES256 with a JWKS (default: "
                                                        "both)"})
    jwks_url: str | None = field(default=None,
                                 metadata={"help": "URL of a JSON Web Key Set: RS256/ES256 "
                                                   "tokens are verified by the key their kid "
                                                   "names (instead of a secret or key file)"})
    jwks_refresh: float = field(default=300.0,
                                metadata={"help": "seconds between fetches of the JWKS"})
    jwks_min_refresh: float = field(default=30.0,
                                    metadata={"help": "seconds at least between fetches of the "
                                                      "JWKS that tokens with an unknown kid "
                                                      "cause (and retries after a failure)"})
    jwt_leeway: float = field(default=10.0,
                              metadata={"help": "seconds of clock skew allowed on exp/nbf"})
    allow_non_expiring_tokens: bool = field(
        default=False, metadata={"help": "accept tokens without an exp claim (default: refused)"})
    jwt_audience: str | None = field(
        default=None, metadata={"help": "tokens must carry this aud claim (unset: a token with "
                                        "an aud is refused)"})
    jwt_issuer: str | None = field(default=None,
                                   metadata={"help": "tokens must carry this iss claim"})
    token_cookie: str = field(default="sse_stream_token",
                              metadata={"help": "cookie that may carry the token"})
    token_expiry_margin: float = field(default=30.0,
                                       metadata={"help": "seconds before a token's exp to send "
                                                         "sse.token-expiring"})
    anonymous_subscribe: str | None = field(default=None,
                                            metadata={"help": "comma list of stream patterns "
                                                              "anyone may read without a token"})
    trusted_proxies: str | None = field(default=None,
                                        metadata={"help": "comma list of proxy addresses whose "
                                                          "X-Forwarded-For and Forwarded "
                                                          "headers are believed"})
    cors_origins: str | None = field(default=None,
                                     metadata={"help": "comma list of origins allowed by CORS "
                                                       "(or *)"})
    cors_credentials: bool = field(default=False,
                                   metadata={"help": "allow cookies/credentials on CORS requests"})
    max_streams: int = field(default=10000,
                             metadata={"help": "open streams per process (0: no limit)"})
    # Off by default: behind a proxy that is not in trusted_proxies every
    # client has the proxy's address, and a per-address limit would cap them all.
    max_streams_per_client: int = field(default=0,
                                        metadata={"help": "open streams per client address "
                                                          "(0: no limit)"})
    max_query: int = field(default=8192, metadata={"help": "bytes of query string accepted"})
    # Webhooks (docs/webhooks.md): the deliverer that `serve` runs, and its limits.
    no_webhooks: bool = field(default=False,
                              metadata={"help": "do not deliver webhooks from this process "
                                                "(the /webhooks API stays)"})
    webhooks_allow_private: bool = field(
        default=False, metadata={"help": "allow webhook URLs that resolve to loopback, private, "
                                         "link-local or multicast addresses"})
    webhooks_retry: str = field(default="5s,30s,2m,10m,1h",
                                metadata={"help": "delays before the attempts after 1, 2, ... "
                                                  "failures in a row, the last one repeating "
                                                  "(with jitter)"})
    webhooks_disable_after: str = field(default="3d",
                                        metadata={"help": "continuous failure after which a "
                                                          "webhook is disabled (90s, 12h, 3d)"})
    webhooks_concurrency: int = field(default=32,
                                      metadata={"help": "webhook requests in flight per "
                                                        "process (one per webhook at most)"})
    webhooks_linger: float = field(default=0.25,
                                   metadata={"help": "seconds a busy webhook waits after a "
                                                     "request began before the next, so that "
                                                     "its events travel in fewer, larger "
                                                     "requests (a quiet one sends at once)"})
    webhooks_batch_events: int = field(default=100,
                                       metadata={"help": "events per webhook request, at most"})
    webhooks_batch_bytes: int = field(default=256 * 1024,
                                      metadata={"help": "bytes of event data per webhook "
                                                        "request, about (one event always fits)"})
    webhooks_connect_timeout: float = field(default=5.0,
                                            metadata={"help": "seconds to connect to a "
                                                              "webhook's URL"})
    webhooks_timeout: float = field(default=10.0,
                                    metadata={"help": "seconds a webhook request may take in "
                                                      "all (connect, send, response)"})
    webhooks_lease: float = field(default=30.0,
                                  metadata={"help": "seconds a process holds a webhook without "
                                                    "renewing; another takes over after it "
                                                    "dies (at least webhooks_timeout + 2)"})
    webhooks_connections: int = field(default=2,
                                      metadata={"help": "database connections for webhook "
                                                        "delivery per process"})
    prune_past_webhooks: bool = field(
        default=False, metadata={"help": "retention prunes by age even past the cursor of "
                                         "webhooks (they get sse.gap); default: it waits for "
                                         "webhooks that are not disabled"})

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            if flags.get(item.name) is not None:
                values[item.name] = flags[item.name]
                continue
            raw = env.get(env_name(item.name))
            if raw is None and item.name == "dsn":
                raw = env.get("DATABASE_URL")
            if raw is not None:
                values[item.name] = _convert(item, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(item: dataclasses.Field[Any], raw: str) -> Any:
    kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
    try:
        if kind == "bool":
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as error:
        raise ValueError(f"{env_name(item.name)}={raw!r}: {error}") from error
    return raw or None if kind.startswith("str |") else raw
