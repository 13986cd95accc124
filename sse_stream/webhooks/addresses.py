"""Where a webhook may connect: the one rule for hosts, addresses and ports.

Pure but for resolving names at creation: no aiohttp, so that the rule does
not depend on how one version of the client, or of the C library, reads a
host. URLs are read with yarl, the parser the client itself uses, since a
guard that reads a URL differently from the client is the classic way round
it.

A host is read as the WHATWG URL standard (and inet_aton) reads it:
`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` and `127.0.0.1.` are all
127.0.0.1; a host that is numeric by that standard but not a valid address
is refused, never passed on as a name. An address is refused by what it is
and by the IPv4 address it carries (mapped, compatible, 6to4, NAT64,
Teredo). At delivery an address written in the URL is rewritten to its
canonical text (`AddressGuard.target`), so the client connects to exactly
the address that was checked, whatever it would make of the odd forms; a
name is left alone (TLS needs it) and every address it resolves to is
checked by the resolver (sender.GuardedResolver, `check_resolved`), since
DNS may point elsewhere than it did at creation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING

from yarl import URL

from ..core.errors import Refusal

if TYPE_CHECKING:
    from ..core.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 5.0  # seconds to resolve a URL's host at creation

_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"),
           16: frozenset("0123456789abcdef")}
_ZONE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_LOW32 = 0xFFFFFFFF
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # ::a.b.c.d, deprecated (RFC 4291)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix (RFC 6052)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use (RFC 8215)


def _ipv4_number(part: str) -> int:
    """One part of a numeric host (WHATWG "IPv4 number parser"): decimal,
    octal after a leading 0, hex after 0x (and "0x" alone is 0)."""
    if not part:
        raise ValueError("an empty part")
    radix, digits = 10, part
    if part.startswith("0x"):
        radix, digits = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        radix, digits = 8, part[1:]
    # Checked by hand: int() would take "_", "+", spaces and non-ASCII digits.
    if not set(digits) <= _DIGITS[radix]:
        raise ValueError(f"{part!r} is not a number (base {radix})")
    return int(digits, radix) if digits else 0


def _ends_in_number(last: str) -> bool:
    """WHATWG's test of whether a host is meant as IPv4: its last part is
    decimal digits, or a valid hex number."""
    if last and set(last) <= _DIGITS[10]:
        return True
    try:
        _ipv4_number(last)
    except ValueError:
        return False
    return True


def parse_host(host: str) -> Address | None:
    """The address a URL host is written as, or None for a name.

    IPv4 as WHATWG and inet_aton read it: 1 to 4 parts, each decimal, octal
    (leading 0) or hex (0x), the last filling the remaining bytes, one
    trailing dot allowed. IPv6 with or without brackets, a %zone stripped.
    Raises ValueError for a host that is numeric (its last part is a number)
    but not a valid address, and for a `%` outside an IPv6 zone."""
    text = host.lower()
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed or ":" in text:
        address, percent, zone = text.strip("[]").partition("%")
        if percent and not (zone and set(zone) <= _ZONE):
            raise ValueError(f"{host!r}: a bad IPv6 zone")
        return ipaddress.IPv6Address(address)
    if "%" in text:
        raise ValueError(f"{host!r}: % is not allowed in a host")
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _ends_in_number(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError(f"{host!r}: more than 4 parts in a numeric host")
    *head, last = [_ipv4_number(part) for part in parts]
    if any(number > 255 for number in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(f"{host!r}: a part is out of range")
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that `address` reaches through: IPv4-mapped,
    IPv4-compatible, 6to4, NAT64 (64:ff9b::/96) or Teredo (the client)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own
        return ipaddress.IPv4Address(int(address) & _LOW32)
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & _LOW32)
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _kind(address: Address) -> str | None:
    for reason in ("loopback", "link_local", "multicast", "private", "unspecified",
                   "reserved"):
        if getattr(address, "is_" + reason):
            return reason.replace("_", "-")
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "private"  # fec0::/10, deprecated, which ipaddress calls global
    return None if address.is_global else "not public"


def refusal(address: Address) -> str | None:
    """Why a webhook may not connect to `address` ("loopback", "private",
    "link-local", "multicast", "unspecified", "reserved", "not public"), or
    None. An IPv6 address that carries an IPv4 one is refused by the IPv4
    first; a tunnel's (6to4, Teredo, compatible) must also be global itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "not public"  # mapped as its network chooses
        carried = carried_ipv4(address)
        if carried is not None:
            reason = _kind(carried)
            if reason is not None:
                return reason
            # Mapped and NAT64 addresses are only notations for the IPv4
            # address the packets go to (ipaddress calls both reserved).
            if address.ipv4_mapped is not None or address in _NAT64:
                return None
    return _kind(address)


class AddressGuard:
    """Refuses targets on this host or its networks, unless `allow_private`,
    and ports not in `ports` (when there are any)."""

    def __init__(self, allow_private: bool, ports: tuple[int, ...] = ()) -> None:
        self.allow_private = allow_private
        self.ports = ports

    @classmethod
    def of(cls, settings: Settings) -> AddressGuard:
        """The guard of `webhooks_allow_private` and `webhooks_ports`."""
        return cls(settings.webhooks_allow_private,
                   tuple(int(port) for port in settings.webhooks_ports))

    def _literal(self, host: str) -> Address | None:
        try:
            address = parse_host(host)
        except ValueError as error:
            raise OSError(f"not a valid host: {error}") from None
        if address is not None and not self.allow_private:
            reason = refusal(address)
            if reason is not None:
                shown = str(address) if host.strip("[]") == str(address) else \
                    f"{host} ({address})"
                raise OSError(f"{shown} is a {reason} address: refused "
                              "(webhooks_allow_private)")
        return address

    def check_host(self, host: str) -> None:
        """Raise OSError for a host written as a refused address, in any form,
        or numeric but invalid. A name passes: its addresses are checked where
        it is resolved."""
        self._literal(host)

    def check_port(self, url: str | URL) -> None:
        """Raise OSError for a URL whose port (given, else 443 or 80 by scheme)
        is not allowed."""
        port = URL(url).port
        if self.ports and port not in self.ports:
            allowed = ", ".join(map(str, self.ports))
            raise OSError(f"port {port} is not allowed (webhooks_ports: {allowed})")

    def check_resolved(self, name: str, found: str) -> None:
        """Raise OSError when `name` resolved to `found`, a refused address (or
        not an address at all)."""
        if self.allow_private:
            return
        try:
            address = ipaddress.ip_address(found.partition("%")[0])
        except ValueError:
            raise OSError(f"{name} resolves to {found!r}, not an address: refused") from None
        reason = refusal(address)
        if reason is not None:
            raise OSError(f"{name} resolves to {found}, a {reason} address: refused "
                          "(webhooks_allow_private)")

    def target(self, url: str) -> str:
        """The URL to connect to for `url`: a host written as an address, in
        any form, becomes its canonical text; a name stays. Raises OSError for
        a refused address or port, or an invalid host."""
        parsed = URL(url)
        self.check_port(parsed)
        address = self._literal(parsed.host or "")
        if address is None:
            return url
        text = str(address)
        if isinstance(address, ipaddress.IPv6Address):
            zone = (parsed.host or "").partition("%")[2]
            text += f"%{zone}" if zone else ""  # a link-local address needs its zone
        return str(parsed.with_host(text))

    async def check_url(self, url: str, param: str = "url") -> None:
        """At creation: refuse (Refusal naming `param`) a URL whose port is not
        allowed, or whose host is, or resolves to, a refused address (every
        address it resolves to is checked)."""
        parsed = URL(url)
        host = parsed.host or ""
        try:
            self.check_port(parsed)
            if self._literal(host) is not None or self.allow_private:
                return
        except OSError as error:
            raise Refusal(param, str(error)) from None
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                found = await asyncio.get_running_loop().getaddrinfo(
                    host, parsed.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise Refusal(param, f"{host} did not resolve within "
                          f"{RESOLVE_TIMEOUT:g} s") from None
        except OSError as error:
            raise Refusal(param, f"{host} does not resolve: {error}") from None
        try:
            for *_, sockaddr in found:
                self.check_resolved(host, str(sockaddr[0]))
        except OSError as error:
            raise Refusal(param, str(error)) from None
