"""Tokens, claims and the containment rule that authorizes a request.

Pure code apart from reading the public key file once at start. A token is a
JWT whose algorithm is fixed by the configuration, never by the token: with a
shared secret only HS256 is accepted, with a public key only the configured
RS256 or ES256. A token naming another algorithm (`none`, or HS256 signed
with the public key as the secret) fails verification.

Claim: ``{"sse_stream": {"subscribe": [patterns], "publish": [patterns]}}``.
A request is allowed when every stream pattern it asks for is contained in
some pattern the token grants (see `allows`).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .errors import InvalidInput
from .patterns import StreamPattern, parse_pattern
from .settings import Settings

CLAIM = "sse_stream"
ASYMMETRIC = ("RS256", "ES256")


class Unauthorized(InvalidInput):
    """No token, or one that does not verify: 401."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(param, detail, status=401, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Grant:
    """What a verified token allows, and until when (`exp`, seconds since the epoch)."""

    subscribe: tuple[StreamPattern, ...]
    publish: tuple[StreamPattern, ...]
    expires_at: float | None = None
    subject: str | None = None


@dataclass(frozen=True)
class TokenVerifier:
    algorithm: str
    key: Any  # the secret (str) or the public key object
    leeway: float = 10.0

    def verify(self, token: str, param: str = "Authorization") -> Grant:
        """The grant of a valid token; raises Unauthorized naming `param`."""
        try:
            claims = jwt.decode(token, self.key, algorithms=[self.algorithm],
                                leeway=self.leeway)
        except jwt.ExpiredSignatureError:
            raise Unauthorized(param, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized(param, "the token is not valid yet (nbf)") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(param, f"the token must be signed with {self.algorithm}") from None
        except jwt.InvalidTokenError:
            raise Unauthorized(param, "the token is not valid (signature, algorithm or "
                               "format)") from None
        return grant_from_claims(claims, param)


def grant_from_claims(claims: Mapping[str, Any], param: str = "Authorization") -> Grant:
    section = claims.get(CLAIM, {})
    if not isinstance(section, dict):
        raise Unauthorized(param, f"the {CLAIM!r} claim must be an object")

    def patterns(name: str) -> tuple[StreamPattern, ...]:
        values = section.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise Unauthorized(param, f"{CLAIM}.{name} must be a list of stream patterns")
        try:
            return tuple(parse_pattern(v, param) for v in values)
        except InvalidInput:
            raise Unauthorized(param, f"{CLAIM}.{name} holds an invalid stream pattern") from None

    exp = claims.get("exp")
    subject = claims.get("sub")
    return Grant(patterns("subscribe"), patterns("publish"),
                 float(exp) if isinstance(exp, (int, float)) else None,
                 subject if isinstance(subject, str) else None)


def allows(granted: Iterable[StreamPattern], requested: Iterable[StreamPattern]) -> bool:
    """True if every requested pattern is contained in some granted pattern.

    Containment, not overlap: a grant of `orders.*` allows `orders.42` and
    `orders.*` but not `orders.>` (it matches `orders.42.lines`) or `>`.
    """
    granted = tuple(granted)
    return all(any(g.contains(r) for g in granted) for r in requested)


def verifier_from_settings(settings: Settings) -> TokenVerifier | None:
    """The configured verifier, or None (protected mode). Raises ValueError on bad config."""
    if settings.jwt_secret and settings.jwt_public_key:
        raise ValueError("configure either jwt_secret (HS256) or jwt_public_key "
                         "(RS256/ES256), not both")
    if settings.jwt_secret:
        algorithm = settings.jwt_algorithm or "HS256"
        if algorithm != "HS256":
            raise ValueError(f"jwt_algorithm {algorithm!r} does not go with jwt_secret: use HS256")
        return TokenVerifier("HS256", settings.jwt_secret, settings.jwt_leeway)
    if settings.jwt_public_key:
        algorithm = settings.jwt_algorithm or "RS256"
        if algorithm not in ASYMMETRIC:
            raise ValueError(f"jwt_algorithm {algorithm!r} does not go with jwt_public_key: "
                             f"use one of {', '.join(ASYMMETRIC)}")
        pem = Path(settings.jwt_public_key).read_bytes()
        # A parsed key object, not the PEM text: PyJWT then refuses to use it
        # as an HMAC secret even if the algorithm list were ever widened.
        key = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(pem)
        return TokenVerifier(algorithm, key, settings.jwt_leeway)
    return None


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


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `30d` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 1h or 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def mint(secret: str, subscribe: Sequence[str], publish: Sequence[str], ttl: float,
         subject: str | None = None, now: float | None = None) -> str:
    """An HS256 token granting `subscribe` and `publish` patterns for `ttl` seconds."""
    for text in (*subscribe, *publish):
        parse_pattern(text, "pattern")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iat": issued, "exp": issued + int(ttl),
                              CLAIM: {"subscribe": list(subscribe), "publish": list(publish)}}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm="HS256")


def parse_pattern_setting(text: str | None, name: str) -> tuple[StreamPattern, ...]:
    """A comma list of patterns from a setting; raises ValueError naming it."""
    if not text:
        return ()
    try:
        return tuple(parse_pattern(item.strip(), name) for item in text.split(",") if item.strip())
    except InvalidInput as error:
        raise ValueError(f"{name}: {error.detail}") from None


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessPolicy:
    """Who may do what: the token verifier (None: protected mode), the streams
    open to everyone, and the proxies whose X-Forwarded-For is believed."""

    verifier: TokenVerifier | None
    anonymous: tuple[StreamPattern, ...] = ()
    cookie: str = "sse_stream_token"
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        proxies: list[Network] = []
        for item in (settings.trusted_proxies or "").split(","):
            if item.strip():
                try:
                    proxies.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError as error:
                    raise ValueError(f"trusted_proxies: {error}") from None
        return cls(verifier_from_settings(settings),
                   parse_pattern_setting(settings.anonymous_subscribe, "anonymous_subscribe"),
                   settings.token_cookie, tuple(proxies))

    def describe(self) -> str:
        """One line for the start-up log: what a client without a token can do."""
        if self.verifier is None:
            mode = ("PROTECTED MODE: no token key configured, only loopback clients may "
                    "subscribe or publish")
        else:
            mode = f"tokens required ({self.verifier.algorithm}) to subscribe or publish"
        if self.anonymous:
            mode += "; anyone may subscribe without a token to " + ", ".join(
                p.text for p in self.anonymous)
        return mode

    def client_address(self, remote: str | None, forwarded_for: str | None) -> Address | None:
        """The client's address: the peer, or, when the peer is a trusted proxy,
        the nearest X-Forwarded-For entry that is not itself a trusted proxy."""
        peer = _address(remote)
        if peer is None or forwarded_for is None or not self._trusted(peer):
            return peer
        hops = [item.strip() for item in forwarded_for.split(",")]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                raise InvalidInput("X-Forwarded-For", "not a list of IP addresses")
            if not self._trusted(address):
                return address
        return _address(hops[0])

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted_proxies)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
