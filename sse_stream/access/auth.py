"""Tokens, claims and the containment rule that authorizes a request.

Pure code apart from reading the public key file once at start and the key
set of `--jwks-url` (sse_stream/jwks.py). A token is a JWT whose algorithm
is fixed by the configuration, never by the token: with a shared secret only
HS256 is accepted, with a public key only the configured RS256 or ES256, with
a JWKS only RS256/ES256 and the algorithm of the key its `kid` names. A token
naming another algorithm (`none`, or HS256 signed with the public key as the
secret) fails verification.

Claim: ``{"sse_stream": {"subscribe": [grants], "publish": [patterns],
"where": [filters], "webhooks": [patterns], "webhooks_admin": true}}``
(`webhooks`: the streams whose webhooks the token may create and manage;
`webhooks_admin`: it sees and manages every owner's, docs/webhooks.md). A
subscribe grant is a pattern, or ``{"pattern": P, "where": [filters]}``
binding data filters to it; the token-wide `where` binds filters to every
grant (see `Grant.cover`).
A request is allowed when every stream pattern it asks for is contained in
some pattern the token grants (see `allows`). `exp` is required unless the
configuration allows non-expiring tokens; a configured audience and issuer
are required too. Every check is PyJWT's; whatever a token holds, a bad one
is an `Unauthorized` (401), never another error.

Without a key the server runs in protected mode (access.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from ..core.errors import Refusal
from ..core.filter_syntax import parse_data_filters
from ..core.filters import MAX_FILTERS, AnyOf, Condition
from ..core.patterns import StreamPattern, parse_pattern
from ..core.settings import Settings
from .jwks import KeySet

CLAIM = "sse_stream"
ASYMMETRIC = ("RS256", "ES256")
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32


class Unauthorized(Refusal):
    """No token, or one that does not verify: 401."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(param, detail, status=401, headers={"WWW-Authenticate": "Bearer"})


Terms = tuple[Condition | AnyOf, ...]  # data filters, ANDed (filters.DataFilter.terms)


@dataclass(frozen=True)
class Scope:
    """One subscribe grant: a pattern and the data filters bound to it, the
    token-wide ones first (empty: unfiltered), parsed and as the token
    wrote them."""

    pattern: StreamPattern
    where: Terms = ()
    texts: tuple[str, ...] = ()


Coverage = tuple[tuple[Scope, ...], ...]  # per requested pattern: the grants covering it


@dataclass(frozen=True)
class Grant:
    """What a verified token allows, and until when (`exp`, seconds since the epoch)."""

    subscribe: tuple[Scope, ...]
    publish: tuple[StreamPattern, ...]
    expires_at: float | None = None
    subject: str | None = None
    webhooks: tuple[StreamPattern, ...] = ()
    issuer: str | None = None
    webhooks_admin: bool = False

    def cover(self, requested: Sequence[StreamPattern],
              anonymous: Sequence[StreamPattern] = (), param: str = "streams") -> Coverage:
        """The grants that cover each of `requested`, whose data filters bind
        a subscription to it (Selector.scoped): the scopes of the token that
        contain the pattern, and an unfiltered one where an anonymous pattern
        (anyone may read it without a token) contains it.

        Each pattern of a request gets the filters of its own grants, so one
        connection may read `orders.eu` as one customer and `news` unfiltered.
        A pattern that several grants cover gets their union (an event passes
        if it passes any of them): each grant alone would let the client read
        it, so together they grant no more than separate requests would.
        A pattern that no grant contains is a 403 naming `param`.
        """
        found = []
        for pattern in requested:
            scopes = tuple(scope for scope in self.subscribe if scope.pattern.contains(pattern))
            if any(granted.contains(pattern) for granted in anonymous):
                scopes += (Scope(pattern),)
            if not scopes:
                raise Refusal(param, f"the token does not allow to subscribe "
                              f"{pattern.text!r}", status=403)
            found.append(scopes)
        return tuple(found)


@dataclass(frozen=True)
class TokenVerifier:
    """Checks tokens: signed with `key` by one of `algorithms`, or, with a
    key set (JWKS), by the key its `kid` names (and that key's algorithm)."""

    algorithms: tuple[str, ...]
    key: Any = None  # the secret (str) or the public key object; None with `keys`
    leeway: float = 10.0
    require_exp: bool = True
    audience: str | None = None
    issuer: str | None = None
    keys: KeySet | None = None

    async def verify(self, token: str, param: str = "Authorization") -> Grant:
        """The grant of a valid token; raises Unauthorized naming `param`.

        With a key set, a `kid` the set does not hold may wait for one
        rate-limited, bounded refresh of it (KeySet.find).
        """
        # A JWT is base64url segments and dots. Header bytes that are not
        # UTF-8 reach us as surrogate escapes, which PyJWT's own str-to-bytes
        # step cannot encode: refuse anything that is not ASCII first.
        if not token.isascii():
            raise Unauthorized(param, "the token is not valid: a JWT is ASCII only")
        if self.keys is None:
            return self.decode(token, self.key, self.algorithms, param)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except Exception:
            raise Unauthorized(param, "the token is not valid (format)") from None
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized(param, "the token is not valid: its kid is not a string")
        found = await self.keys.find(kid)
        if found is None:
            raise Unauthorized(param, self.keys.missing(kid))
        return self.decode(token, found.key, (found.algorithm_name,), param)

    def decode(self, token: str, key: Any, algorithms: Sequence[str], param: str) -> Grant:
        """Verify `token` with `key`, accepting only `algorithms`."""
        required = [name for name, needed in (("exp", self.require_exp),
                                              ("aud", self.audience is not None),
                                              ("iss", self.issuer is not None)) if needed]
        try:
            claims = jwt.decode(token, key, algorithms=list(algorithms),
                                leeway=self.leeway, audience=self.audience, issuer=self.issuer,
                                options={"require": required})
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(param, f"the token has no {error.claim!r} claim, which this "
                               "server requires") from None
        except jwt.ExpiredSignatureError:
            raise Unauthorized(param, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized(param, "the token is not valid yet (nbf)") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(param, "the token must be signed with "
                               f"{' or '.join(algorithms)}") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(param, "the token is not for this server (aud)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(param, "the token is not from the expected issuer (iss)") from None
        except jwt.InvalidTokenError:
            raise Unauthorized(param, "the token is not valid (signature, algorithm, claims or "
                               "format)") from None
        except Exception:
            # Garbage that PyJWT does not foresee (a header field of an
            # unexpected JSON type, ...) is still only a bad token.
            raise Unauthorized(param, "the token is not valid (format)") from None
        return grant_from_claims(claims, param)


def grant_from_claims(claims: Mapping[str, Any], param: str = "Authorization") -> Grant:
    section = claims.get(CLAIM, {})
    if not isinstance(section, dict):
        raise Unauthorized(param, f"the {CLAIM!r} claim must be an object")

    def pattern(value: Any, name: str) -> StreamPattern:
        try:
            return parse_pattern(value, param)
        except Refusal:
            raise Unauthorized(param, f"{name} holds an invalid stream pattern") from None

    def where(values: Any, name: str) -> Terms:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise Unauthorized(param, f"{name} must be a list of data filters such as "
                               "'data.customer_id=eq.42'")
        try:
            return parse_where(values, name)
        except Refusal as error:
            raise Unauthorized(param, error.detail) from None

    publish = section.get("publish", [])
    if not isinstance(publish, list) or not all(isinstance(v, str) for v in publish):
        raise Unauthorized(param, f"{CLAIM}.publish must be a list of stream patterns")
    webhooks = section.get("webhooks", [])
    if not isinstance(webhooks, list) or not all(isinstance(v, str) for v in webhooks):
        raise Unauthorized(param, f"{CLAIM}.webhooks must be a list of stream patterns")
    everywhere = where(section.get("where", []), f"{CLAIM}.where")
    everywhere_texts = tuple(section.get("where", []))
    admin = section.get("webhooks_admin", False)
    if not isinstance(admin, bool):
        raise Unauthorized(param, f"{CLAIM}.webhooks_admin must be true or false")
    subscribe = section.get("subscribe", [])
    if not isinstance(subscribe, list):
        raise Unauthorized(param, f"{CLAIM}.subscribe must be a list of stream patterns "
                           "and {\"pattern\", \"where\"} objects")
    scopes = []
    for index, item in enumerate(subscribe):
        name = f"{CLAIM}.subscribe[{index}]"
        if isinstance(item, str):
            scopes.append(Scope(pattern(item, name), everywhere, everywhere_texts))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str) \
                or set(item) - {"pattern", "where"}:
            # An unknown field (a misspelt "where") must not grant the pattern unfiltered.
            raise Unauthorized(param, f"{name} must be a stream pattern or an object with "
                               "only \"pattern\" and \"where\"")
        terms = (*everywhere, *where(item.get("where", []), f"{name}.where"))
        if _count(terms) > MAX_FILTERS:
            raise Unauthorized(param, f"{name}.where and {CLAIM}.where hold more than "
                               f"{MAX_FILTERS} data filters together")
        scopes.append(Scope(pattern(item["pattern"], name), terms,
                            (*everywhere_texts, *item.get("where", []))))

    exp = claims.get("exp")
    try:
        expires_at = float(exp) if isinstance(exp, (int, float)) else None
    except OverflowError:  # an integer beyond any float: no end in sight
        expires_at = None
    subject, issuer = claims.get("sub"), claims.get("iss")
    return Grant(tuple(scopes), tuple(pattern(v, f"{CLAIM}.publish") for v in publish),
                 expires_at, subject if isinstance(subject, str) else None,
                 tuple(pattern(v, f"{CLAIM}.webhooks") for v in webhooks),
                 issuer if isinstance(issuer, str) else None, admin)


def parse_where(texts: Sequence[str], name: str) -> Terms:
    """A `where` list: data filters in the query syntax, `data.<path>=<op>.<value>`
    or `or=(...)`, each split at its first `=`, at most MAX_FILTERS (each member
    of an or= counting). Raises Refusal naming `name`."""
    pairs = []
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not (key == "or" or key.startswith("data.")):
            raise Refusal(name, f"{name}: {text[:60]!r} is not a data filter "
                          "(data.<path>=<op>.<value> or or=(...))")
        pairs.append((key, value))
    try:
        parsed = parse_data_filters(pairs)
    except Refusal as error:
        # repr: the text comes from a token, and may hold what JSON cannot (surrogates).
        raise Refusal(name, f"{name}: {error.param[:60]!r}: {error.detail}") from None
    return parsed.terms if parsed is not None else ()


def _count(terms: Terms) -> int:
    return sum(len(t.conditions) if isinstance(t, AnyOf) else 1 for t in terms)


def allows(granted: Iterable[StreamPattern], requested: Iterable[StreamPattern]) -> bool:
    """True if every requested pattern is contained in some granted pattern.

    Containment, not overlap: a grant of `orders.*` allows `orders.42` and
    `orders.*` but not `orders.>` (it matches `orders.42.lines`) or `>`.
    """
    granted = tuple(granted)
    return all(any(g.contains(r) for g in granted) for r in requested)


def verifier_from_settings(settings: Settings) -> TokenVerifier | None:
    """The configured verifier, or None (protected mode). Raises ValueError on bad config."""
    configured = [name for name in ("jwt_secret", "jwt_public_key", "jwks_url")
                  if getattr(settings, name)]
    if len(configured) > 1:
        raise ValueError(f"configure one of jwt_secret (HS256), jwt_public_key or jwks_url "
                         f"(RS256/ES256), not {' and '.join(configured)}")

    def verifier(algorithms: tuple[str, ...], key: Any = None,
                 keys: KeySet | None = None) -> TokenVerifier:
        return TokenVerifier(algorithms, key, settings.jwt_leeway,
                             require_exp=not settings.allow_non_expiring_tokens,
                             audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                             keys=keys)

    if settings.jwt_secret:
        algorithm = settings.jwt_algorithm or "HS256"
        if algorithm != "HS256":
            raise ValueError(f"jwt_algorithm {algorithm!r} does not go with jwt_secret: use HS256")
        check_secret(settings.jwt_secret)
        return verifier(("HS256",), settings.jwt_secret)
    if settings.jwt_public_key:
        algorithm = settings.jwt_algorithm or "RS256"
        if algorithm not in ASYMMETRIC:
            raise ValueError(f"jwt_algorithm {algorithm!r} does not go with jwt_public_key: "
                             f"use one of {', '.join(ASYMMETRIC)}")
        pem = Path(settings.jwt_public_key).read_bytes()
        # A parsed key object, not the PEM text: PyJWT then refuses to use it
        # as an HMAC secret even if the algorithm list were ever widened.
        key = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(pem)
        return verifier((algorithm,), key)
    if settings.jwks_url:
        if settings.jwt_algorithm and settings.jwt_algorithm not in ASYMMETRIC:
            raise ValueError(f"jwt_algorithm {settings.jwt_algorithm!r} does not go with "
                             f"jwks_url: use one of {', '.join(ASYMMETRIC)} (or leave it unset "
                             "for both)")
        algorithms = (settings.jwt_algorithm,) if settings.jwt_algorithm else ASYMMETRIC
        keys = KeySet(settings.jwks_url, algorithms, refresh=settings.jwks_refresh,
                      min_refresh=settings.jwks_min_refresh)
        return verifier(algorithms, keys=keys)
    return None


def check_secret(secret: str) -> None:
    """Raise ValueError for an HS256 secret shorter than MIN_SECRET_BYTES (a guessable key
    lets anyone mint tokens offline) or one that is not text."""
    try:
        size = len(secret.encode())
    except UnicodeEncodeError:
        raise ValueError("jwt_secret is not valid UTF-8 text") from None
    if size < MIN_SECRET_BYTES:
        raise ValueError(f"jwt_secret is {size} bytes, fewer than {MIN_SECRET_BYTES}: use a "
                         "random secret such as the output of 'openssl rand -hex 32'")


def find_token(headers: Mapping[str, str], query: Mapping[str, str],
               cookies: Mapping[str, str], cookie_name: str) -> tuple[str, str] | None:
    """(token, where) from `Authorization: Bearer`, `access_token`, or the cookie, in that order."""
    header = headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization", "expected 'Authorization: Bearer <token>'")
        return value.strip(), "Authorization"
    parameter = query.get("access_token")
    if parameter is not None:
        return parameter, "access_token"
    cookie = cookies.get(cookie_name)
    if cookie:
        return cookie, cookie_name
    return None


def mint(secret: str, subscribe: Sequence[str], publish: Sequence[str], ttl: float,
         subject: str | None = None, now: float | None = None, audience: str | None = None,
         issuer: str | None = None, where: Sequence[str] = (),
         webhooks: Sequence[str] = (), webhooks_admin: bool = False) -> str:
    """An HS256 token granting `subscribe` and `publish` patterns for `ttl` seconds,
    its reading bound to the data filters `where` (token-wide), and the
    management of webhooks on the `webhooks` patterns (of every owner's with
    `webhooks_admin`)."""
    for text in (*subscribe, *publish, *webhooks):
        parse_pattern(text, "pattern")
    parse_where(where, "where")
    issued = int(time.time() if now is None else now)
    section: dict[str, Any] = {"subscribe": list(subscribe), "publish": list(publish)}
    if where:
        section["where"] = list(where)
    if webhooks:
        section["webhooks"] = list(webhooks)
    if webhooks_admin:
        section["webhooks_admin"] = True
    claims: dict[str, Any] = {"iat": issued, "exp": issued + int(ttl), CLAIM: section}
    for name, value in (("sub", subject), ("aud", audience), ("iss", issuer)):
        if value is not None:
            claims[name] = value
    return jwt.encode(claims, secret, algorithm="HS256")
