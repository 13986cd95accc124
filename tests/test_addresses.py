"""The SSRF guard (sse_stream/webhooks/addresses.py): how a host is read, which
addresses are refused, and that a refused target is never connected to,
whatever the installed aiohttp makes of the odd forms.

No database: the connect-time tests post with a real Sender to a real
receiver on 127.0.0.1 (tests/webhook_receiver.py). Fake resolvers answer
with refused addresses, which the guard refuses before any connection; the
only address ever connected to is 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from webhook_receiver import Receiver

from sse_stream.core.errors import Refusal
from sse_stream.core.settings import Settings
from sse_stream.webhooks.addresses import AddressGuard, parse_host, refusal
from sse_stream.webhooks.sender import GuardedResolver, Sender
from sse_stream.webhooks.store import Outcome

# Written forms of 127.0.0.1 that ipaddress does not read but the C library
# (and the WHATWG URL standard) do.
ODD_LOOPBACK = ["2130706433", "0177.0.0.1", "127.1", "0x7f.1", "0x7F.0.0.1", "127.0.0.1.",
                "017700000001", "0x7f000001", "127.0.1"]
# Resolved addresses that reach a refused IPv4 address, or are refused themselves.
REFUSED_ANSWERS = [("::ffff:127.0.0.1", "loopback"), ("2002:7f00:1::1", "loopback"),
                   ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a00:1", "private"),
                   ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
                   ("fe80::1", "link-local"), ("10.0.0.1", "private")]


# -- reading a host ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ODD_LOOPBACK + ["127.0.0.1", "0X7F.1", "0x7f.0x0.0.0x1"])
def test_numeric_forms_of_loopback(host: str) -> None:
    assert parse_host(host) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize("host,address", [
    ("0", "0.0.0.0"), ("0x", "0.0.0.0"), ("00", "0.0.0.0"), ("4294967295", "255.255.255.255"),
    ("1.16777215", "1.255.255.255"), ("10.1.65535", "10.1.255.255"), ("1.2.3.0x", "1.2.3.0"),
    ("0300.0250.1.1", "192.168.1.1"), ("93.184.216.34", "93.184.216.34")])
def test_ipv4_parts(host: str, address: str) -> None:
    assert parse_host(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", [
    "256.0.0.1", "1.2.3.256", "4294967296", "1.16777216", "0x100.1", "1.2.3.4.5",
    "08", "0.09.0.1", "0xg.1", "1..2", "127.0.0.1..1", "foo.09", "example.0x1",
    "1_0.0.0.1", "+1.0.0.1", "١٢٧.0.0.1", "%31%32%37.0.0.1", "example.com%00",
    "[127.0.0.1]", "[::ffff:0177.0.0.1]", "[fe80::1%]", "[fe80::1%a/b]", "[1::2::3]"])
def test_invalid_numeric_hosts_are_errors_not_names(host: str) -> None:
    with pytest.raises(ValueError):
        parse_host(host)


@pytest.mark.parametrize("host", ["example.com", "EXAMPLE.com.", "a.b.c.d.e", "0x1g",
                                  "1.2.3.x", "localhost", "xn--bcher-kva.example", "127.0.0.1.."])
def test_names_are_none(host: str) -> None:
    assert parse_host(host) is None


@pytest.mark.parametrize("host,address", [
    ("[::1]", "::1"), ("::1", "::1"), ("[FE80::1%eth0]", "fe80::1"), ("fe80::1%25eth0", "fe80::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"), ("[2606:4700::1111]", "2606:4700::1111")])
def test_ipv6_with_and_without_brackets_and_zone(host: str, address: str) -> None:
    assert parse_host(host) == ipaddress.IPv6Address(address)


# -- which addresses are refused ----------------------------------------------------------


@pytest.mark.parametrize("address,reason", [
    *REFUSED_ANSWERS,
    ("::7f00:1", "loopback"), ("::a00:1", "private"),  # compatible, deprecated
    ("::8.8.8.8", "reserved"),  # compatible: its IPv4 is public, the IPv6 is not
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("2002:a9fe:a9fe::1", "link-local"), ("2002:c0a8:101::1", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b:1::808:808", "not public"), ("64:ff9b:1::a00:1", "not public"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo, client 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo, public client
    ("fec0::1", "private"), ("::", "private"), ("::1", "loopback"),
    ("100.64.0.1", "not public"), ("0.0.0.0", "private"), ("224.0.0.1", "multicast")])
def test_refused_addresses_and_what_they_carry(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", [
    "93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::808:808",
    "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


# -- the guard ----------------------------------------------------------------------------


def test_check_host() -> None:
    guard = AddressGuard(allow_private=False)
    for host in ODD_LOOPBACK + ["0", "[::ffff:7f00:1]", "64:ff9b::a00:1"]:
        with pytest.raises(OSError, match="refused"):
            guard.check_host(host)
    for host in ["999.1.1.1", "foo.09"]:
        for allow in (False, True):
            with pytest.raises(OSError, match="not a valid host"):
                AddressGuard(allow_private=allow).check_host(host)
    guard.check_host("93.184.216.34")
    guard.check_host("example.com")  # a name: the resolver checks it
    AddressGuard(allow_private=True).check_host("2130706433")


def test_target_rewrites_addresses_and_leaves_names() -> None:
    guard = AddressGuard(allow_private=True)
    assert guard.target("http://2130706433:8080/a?b=%20c") == "http://127.0.0.1:8080/a?b=%20c"
    assert guard.target("http://0x7f.1/x") == "http://127.0.0.1/x"
    assert guard.target("https://[0:0::1]:8443/") == "https://[::1]:8443/"
    assert guard.target("https://Example.com/h") == "https://Example.com/h"
    public = AddressGuard(allow_private=False)
    assert public.target("https://1572395042/h") == "https://93.184.216.34/h"
    with pytest.raises(OSError, match=r"0x7f\.1 \(127\.0\.0\.1\) is a loopback address"):
        public.target("http://0x7f.1/x")
    with pytest.raises(OSError, match="not a valid host"):
        guard.target("http://1.2.3.256/")


def test_ports() -> None:
    guard = AddressGuard(allow_private=True, ports=(443, 8443))
    guard.check_port("https://example.com/")
    guard.check_port("http://example.com:8443/")
    for url in ["http://example.com/", "https://example.com:444/", "http://127.0.0.1:80"]:
        with pytest.raises(OSError, match="webhooks_ports"):
            guard.check_port(url)
        with pytest.raises(OSError, match="not allowed"):
            guard.target(url)
    AddressGuard(allow_private=True).check_port("http://example.com:1/")
    assert AddressGuard.of(Settings(webhooks_ports="443,8443")).ports == (443, 8443)
    assert AddressGuard.of(Settings()).ports == ()


async def test_check_url_at_creation() -> None:
    guard = AddressGuard(allow_private=False, ports=(443, 80))
    for url, detail in [("http://2130706433/x", "loopback"), ("http://0/", "private"),
                        ("http://[::ffff:a00:1]/", "private"), ("http://127.1/", "loopback"),
                        ("https://93.184.216.34:8443/", "port 8443"),
                        ("http://1.2.3.256/", "not a valid host")]:
        with pytest.raises(Refusal) as caught:
            await guard.check_url(url)
        assert caught.value.param == "url" and detail in caught.value.detail, url
    await guard.check_url("https://93.184.216.34/")  # an address: nothing to resolve
    with pytest.raises(Refusal, match="port"):
        await AddressGuard(allow_private=True, ports=(443,)).check_url("http://127.0.0.1/")


# -- at connect time ------------------------------------------------------------------------


class FakeResolver(AbstractResolver):
    """Answers every name with `address`, and records the names asked."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        found = ipaddress.ip_address(self.address)
        return [{"hostname": host, "host": self.address, "port": port,
                 "family": socket.AF_INET6 if found.version == 6 else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver().start()
    yield found
    await found.close()


def _port(receiver: Receiver) -> int:
    assert receiver.server is not None and receiver.server.port is not None
    return receiver.server.port


async def _post(url: str, guard: AddressGuard, resolver: AbstractResolver | None = None
                ) -> Outcome:
    sender = Sender(Settings(webhooks_timeout=5.0, webhooks_connect_timeout=2.0), guard,
                    resolver)
    sender.open()
    try:
        return await sender.post(url, b"k" * 32, b'{"events":[]}', "msg_test", 0)
    finally:
        await sender.close()


@pytest.mark.parametrize("host", ODD_LOOPBACK + ["0"])
async def test_odd_literal_forms_never_connect(receiver: Receiver, host: str) -> None:
    outcome = await _post(f"http://{host}:{_port(receiver)}/w", AddressGuard(False))
    assert not outcome.ok and outcome.status is None
    assert outcome.error is not None and "address: refused" in outcome.error, outcome.error
    assert ("private" if host == "0" else "loopback") in outcome.error
    assert receiver.requests == []


@pytest.mark.parametrize("host", ODD_LOOPBACK + ["0"])
async def test_odd_literal_forms_reach_the_receiver_when_allowed(receiver: Receiver,
                                                                 host: str) -> None:
    """The control of the test above: the same URLs do connect when the guard
    allows them (so there, nothing but the guard stopped them), to the
    address that was checked, whatever aiohttp makes of the odd form."""
    outcome = await _post(f"http://{host}:{_port(receiver)}/w", AddressGuard(True))
    assert outcome.ok and outcome.status == 204, outcome.error
    assert len(receiver.of("w")) == 1


@pytest.mark.parametrize("address,reason", REFUSED_ANSWERS)
async def test_resolver_refuses_every_form(address: str, reason: str) -> None:
    fake = FakeResolver(address)
    with pytest.raises(OSError, match=f"victim.test resolves to {address}, a {reason} address"):
        await GuardedResolver(AddressGuard(False), fake).resolve("victim.test", 80)
    assert fake.asked == ["victim.test"]
    found = await GuardedResolver(AddressGuard(True), fake).resolve("victim.test", 80)
    assert [item["host"] for item in found] == [address]
    public = await GuardedResolver(AddressGuard(False),
                                   FakeResolver("93.184.216.34")).resolve("victim.test", 443)
    assert [item["host"] for item in public] == ["93.184.216.34"]


@pytest.mark.parametrize("address,reason", REFUSED_ANSWERS)
async def test_names_resolving_to_refused_addresses_never_connect(
        receiver: Receiver, address: str, reason: str) -> None:
    fake = FakeResolver(address)
    outcome = await _post(f"http://victim.test:{_port(receiver)}/w", AddressGuard(False), fake)
    assert fake.asked == ["victim.test"]
    assert not outcome.ok and outcome.error is not None
    assert f"a {reason} address: refused" in outcome.error, outcome.error
    assert receiver.requests == []


async def test_names_use_the_given_resolver(receiver: Receiver) -> None:
    """The control of the test above: the session resolves through the fake,
    and connects where it says when the guard allows it."""
    fake = FakeResolver("127.0.0.1")
    outcome = await _post(f"http://victim.test:{_port(receiver)}/w", AddressGuard(True), fake)
    assert outcome.ok and fake.asked == ["victim.test"]
    [got] = receiver.of("w")
    assert got.headers["host"] == f"victim.test:{_port(receiver)}"  # names are not rewritten


async def test_ports_at_connect_time(receiver: Receiver) -> None:
    port = _port(receiver)
    outcome = await _post(f"http://127.0.0.1:{port}/w", AddressGuard(True, (443,)))
    assert not outcome.ok and outcome.error is not None and "webhooks_ports" in outcome.error
    assert receiver.requests == []
    outcome = await _post(f"http://127.0.0.1:{port}/w", AddressGuard(True, (443, port)))
    assert outcome.ok and len(receiver.of("w")) == 1
