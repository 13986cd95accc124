"""Who may connect, from where: the access policy (tokens or protected
mode, streams open to everyone), the client's address behind trusted
proxies, the Host check of protected mode, and the CORS policy.

Pure code: the handlers and the app apply it to requests.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.errors import Refusal
from ..core.patterns import StreamPattern, parse_pattern
from ..core.settings import Settings
from .auth import TokenVerifier, verifier_from_settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessPolicy:
    """Who may do what: the token verifier (None: protected mode), the streams
    open to everyone, and the proxies whose forwarding headers are believed."""

    verifier: TokenVerifier | None
    anonymous: tuple[StreamPattern, ...] = ()
    cookie: str = "sse_stream_token"
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """Raises ValueError (or OSError for the key file) on a token key that cannot be
        used; the patterns and networks were checked with the settings."""
        return cls(verifier_from_settings(settings),
                   tuple(parse_pattern(p, "anonymous_subscribe")
                         for p in settings.anonymous_subscribe),
                   settings.token_cookie,
                   tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies))

    def describe(self) -> str:
        """One line for the start-up log: what a client without a token can do."""
        if self.verifier is None:
            mode = ("PROTECTED MODE: no token key configured, only loopback clients may "
                    "subscribe or publish")
        else:
            signed = "/".join(self.verifier.algorithms)
            if self.verifier.keys is not None:
                signed += f", keys from {self.verifier.keys.url}"
            mode = f"tokens required ({signed}) to subscribe or publish"
        if self.anonymous:
            mode += "; anyone may subscribe without a token to " + ", ".join(
                p.text for p in self.anonymous)
        return mode

    def client_address(self, remote: str | None, forwarded_for: Sequence[str] = (),
                       forwarded: Sequence[str] = ()) -> Address | None:
        """The client's address: the peer, or, when the peer is a trusted proxy,
        the nearest hop of its forwarding headers that is not itself a trusted proxy.

        `forwarded_for` and `forwarded` are every line of X-Forwarded-For and of
        Forwarded. When a request has both, X-Forwarded-For names the client: it
        is what nearly every proxy appends, while a Forwarded line may then be
        the client's own (`check_loopback` requires both to be loopback).
        """
        peer = _address(remote)
        if peer is None or not self._trusted(peer):
            return peer
        for name, lines in (("X-Forwarded-For", forwarded_for), ("Forwarded", forwarded)):
            if lines:
                return self._nearest_untrusted(name, lines)
        return peer

    def check_loopback(self, remote: str | None, host: str | None,
                       forwarded_for: Sequence[str] = (), forwarded: Sequence[str] = ()) -> None:
        """Protected mode: raise a 403 unless a loopback client asked for a loopback name.

        Forwarding headers from a peer that is not a trusted proxy are refused,
        not ignored: they show that a proxy or tunnel on this machine relays
        other clients, which would all look local. A `Host` that is not a
        loopback name is refused too: a page of another site whose name is
        re-pointed at 127.0.0.1 (DNS rebinding) reaches us from the user's own
        browser, on loopback, but with its own name as the Host. A request
        without Host (HTTP/1.0) names nothing to rebind: browsers always send it.
        """
        peer = _address(remote)
        headers = {"X-Forwarded-For": forwarded_for, "Forwarded": forwarded}
        clients: list[Address | None]
        if peer is not None and self._trusted(peer):
            clients = [self._nearest_untrusted(name, lines)
                       for name, lines in headers.items() if lines] or [peer]
        else:
            for name, lines in headers.items():
                if lines:
                    raise Refusal(name, "the server runs in protected mode and this "
                                  "request was relayed by a peer that is not in "
                                  "trusted_proxies; configure a token key to serve "
                                  "clients through a proxy", status=403)
            clients = [peer]
        if not all(client is not None and client.is_loopback for client in clients):
            raise Refusal("Authorization", "the server runs in protected mode: "
                          "only loopback clients may subscribe or publish", status=403)
        if host is not None and not is_loopback_host(host):
            raise Refusal("Host", f"the server runs in protected mode and {host!r:.80} "
                          "is not a loopback name (localhost, 127.0.0.1, [::1]); "
                          "configure a token key to serve other names", status=403)

    def _nearest_untrusted(self, header: str, lines: Sequence[str]) -> Address:
        """Right to left, the first hop that is not a trusted proxy (all trusted: the first)."""
        hops = _HOPS[header](lines)
        if not hops:
            raise Refusal(header, "names no client address")
        address: Address | None = None
        for hop in reversed(hops):
            address = _node(hop)
            if address is None:
                raise Refusal(header, f"{hop!r:.60} is not an IP address")
            if not self._trusted(address):
                return address
        assert address is not None
        return address

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted_proxies)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    # A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d: the same client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_PORT = re.compile(r"\d{1,5}|_[0-9A-Za-z._-]+")  # RFC 7239 node-port (or obfuscated)


def _node(text: str) -> Address | None:
    """The address of a hop: `203.0.113.9`, `2001:db8::1`, with a port `203.0.113.9:4711`
    or `[2001:db8::1]:4711`; None for anything else (`unknown`, obfuscated names, junk)."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
        return _address(host)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return _address(host) if _PORT.fullmatch(port) else None
    return _address(text)


def _x_forwarded_for_hops(lines: Sequence[str]) -> list[str]:
    return [item for line in lines for item in line.split(",")]


_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_FORWARDED_PART = re.compile(
    rf'\s*(?:(?P<separator>[;,])|(?P<name>{_TCHAR}+)='
    rf'(?P<value>"(?:[^"\\]|\\.)*"|(?:{_TCHAR}|[:\[\]])+))\s*')


def _forwarded_hops(lines: Sequence[str]) -> list[str]:
    """The `for=` node of each element of every Forwarded line (RFC 7239), in order;
    "" for an element without one."""
    hops: list[str] = []
    for line in lines:
        element: dict[str, str] = {}
        position, after_pair = 0, False
        while position < len(line):
            match = _FORWARDED_PART.match(line, position)
            if match is None or (after_pair and match["name"]):
                raise Refusal("Forwarded", "not a list of name=value pairs (RFC 7239)")
            position = match.end()
            after_pair = bool(match["name"])
            if match["name"]:
                name, value = match["name"].lower(), match["value"]
                if name in element:
                    raise Refusal("Forwarded", f"{name}= appears twice in one element")
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                element[name] = value
            elif match["separator"] == ",":
                if element:
                    hops.append(element.get("for", ""))
                element = {}
        if element:
            hops.append(element.get("for", ""))
    return hops


_HOPS = {"X-Forwarded-For": _x_forwarded_for_hops, "Forwarded": _forwarded_hops}

_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:]+))(?::\d{0,5})?")


def is_loopback_host(host: str | None) -> bool:
    """True for a Host header that names this machine's loopback: `localhost`,
    `*.localhost`, `127.x.x.x` or `[::1]`, with or without a port."""
    match = _HOST.fullmatch(host.strip()) if host else None
    if match is None:
        return False
    if match["ipv6"] is not None:
        address = _address(match["ipv6"])
        return address is not None and address.is_loopback
    name = match["name"].lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return isinstance(address, ipaddress.IPv4Address) and address.is_loopback


CORS_METHODS = ("GET", "POST")
# What a browser frontend needs to send; nothing is exposed beyond the
# CORS-safelisted response headers.
CORS_HEADERS = ("Authorization", "Last-Event-ID", "Idempotency-Key", "Content-Type")


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]
    any_origin: bool
    credentials: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy:
        # Settings refuse '*' with credentials.
        origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        return cls(origins - {"*"}, "*" in origins, settings.cors_credentials)

    def allowed(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def headers(self, origin: str) -> dict[str, str]:
        found = {"Access-Control-Allow-Origin": "*" if self.any_origin else origin}
        if not self.any_origin:
            found["Vary"] = "Origin"
        if self.credentials:
            found["Access-Control-Allow-Credentials"] = "true"
        return found


@dataclass
class OpenStreams:
    """Open streams per process and per client address, for the limits."""

    total: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def open(self, client: str, settings: Settings) -> None:
        """Count one more stream for `client`, or raise 503/429 with Retry-After."""
        if settings.max_streams and self.total >= settings.max_streams:
            raise Refusal("streams", f"this server has {self.total} open streams, its "
                          "limit; retry later or elsewhere", status=503,
                          headers={"Retry-After": "5"})
        mine = self.by_client.get(client, 0)
        if settings.max_streams_per_client and mine >= settings.max_streams_per_client:
            raise Refusal("streams", f"{mine} streams are open from {client}, the limit "
                          "per client address (IPv6: per /64)", status=429,
                          headers={"Retry-After": "5"})
        self.total += 1
        self.by_client[client] = mine + 1

    def close(self, client: str) -> None:
        self.total -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]


def client_group(address: Address) -> str:
    """What the per-client limit counts by: an IPv4 address, or an IPv6 address's
    /64 (one host or subscriber line is given a whole /64 and may use any of it)."""
    if address.version == 6:
        return str(ipaddress.ip_network((address, 64), strict=False))
    return str(address)
