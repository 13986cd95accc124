"""Hosts for benchmarks/multihost.py: Linux network namespaces joined to the
root namespace by veth pairs, or, where namespaces cannot be made, loopback.

Each host gets a namespace (`ssemh<pid>-<name>`) and one veth pair with a
private /30 of its own: host i has 10.213.X.4i/30 (X: a third octet no
address or route here uses yet, so that two runs can coexist), the root
namespace's end is 4i+1 (its `gateway`), the namespace's end 4i+2 (its
`address`, where its services listen), and the namespace's default route
points at the gateway. No forwarding is
switched on anywhere: a host reaches another only through a relay in the
root namespace (benchmarks/relay.py) that listens on the other host's
gateway address, which is a local address of the root namespace, reachable
from every namespace over its own link. Those relays add the links' delay.

Loopback fallback: every host is 127.0.0.1 (address and gateway), services
and relays on ports of their own. `Network.create` falls back (and says why
in `fallback`) when a namespace or veth cannot be made.

`Network.close` deletes every namespace and veth this object made; call it
in a `finally` (benchmarks/multihost.py does, and on SIGTERM). Every process
started on a host (`HostProcess`) is stopped by its PID: `ip netns exec`
replaces itself with the command, so the PID is the command's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SECOND_OCTET = 213  # 10.213.0.0/16: private, and unusual enough to be free


@dataclass(frozen=True)
class Host:
    """One "host": a namespace (None on loopback), where its services listen
    (`address`), where relays to it listen (`gateway`), and its link's network."""

    name: str
    netns: str | None
    address: str
    gateway: str
    network: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's namespace (as is on loopback)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` (of the root namespace) that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_block() -> int:
    """A third octet X with nothing of 10.213.X.0/24 in use in the root namespace,
    starting from one picked by this process's PID (concurrent runs differ)."""
    listing = "".join(subprocess.run(["ip", *what], capture_output=True, text=True,
                                     timeout=30).stdout
                      for what in (["-4", "-o", "addr", "show"], ["-4", "route", "show"]))
    start = os.getpid() % 256
    for step in range(256):
        block = (start + step) % 256
        if f"10.{SECOND_OCTET}.{block}." not in listing:
            return block
    raise OSError(f"10.{SECOND_OCTET}.0.0/16 is all in use here")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Network:
    hosts: dict[str, Host] = field(default_factory=dict)
    fallback: str | None = None  # why this is loopback, when it is
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def loopback(self) -> bool:
        return self.fallback is not None

    @classmethod
    def create(cls, names: Sequence[str], loopback: str | None = None) -> Network:
        """A host per name: namespaces, or loopback when `loopback` (the reason)
        is given or namespaces fail (the reason is kept in `fallback`)."""
        network = cls()
        if loopback is None:
            try:
                network._make_namespaces(names)
                return network
            except (OSError, subprocess.SubprocessError) as error:
                network.close()
                network = cls()
                loopback = f"network namespaces unavailable ({error})"
        network.fallback = loopback
        for name in names:
            network.hosts[name] = Host(name, None, "127.0.0.1", "127.0.0.1", "127.0.0.1/32")
        return network

    def _make_namespaces(self, names: Sequence[str]) -> None:
        if os.geteuid() != 0:
            raise OSError("not root")
        if len(names) > 63:
            raise ValueError("at most 63 hosts: one /30 each in a /24")
        block = _free_block()
        tag = os.getpid() % 100000
        for index, name in enumerate(names):
            netns = f"ssemh{tag}-{name}"
            outside, inside = f"mh{tag}r{index}", f"mh{tag}n{index}"
            base = f"10.{SECOND_OCTET}.{block}."
            gateway, address = f"{base}{4 * index + 1}", f"{base}{4 * index + 2}"
            _ip("netns", "add", netns)
            self._namespaces.append(netns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._links.append(outside)
            _ip("link", "set", inside, "netns", netns)
            _ip("addr", "add", f"{gateway}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", netns, "addr", "add", f"{address}/30", "dev", inside)
            _ip("-n", netns, "link", "set", inside, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "route", "add", "default", "via", gateway)
            self.hosts[name] = Host(name, netns, address, gateway, f"{base}{4 * index}/30")

    def netem(self) -> str:
        """Whether `tc netem` could add delay here, tried on one namespace's own
        loopback (never on the root namespace's): why not, or "available"."""
        host = next((h for h in self.hosts.values() if h.netns), None)
        if host is None:
            return "not tried (loopback)"
        done = subprocess.run(host.command(["tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                            "delay", "1ms"]),
                              capture_output=True, text=True, timeout=30)
        if done.returncode:
            return f"unavailable: {(done.stderr or done.stdout).strip() or done.returncode}"
        subprocess.run(host.command(["tc", "qdisc", "del", "dev", "lo", "root"]),
                       capture_output=True, timeout=30)
        return "available"

    def networks(self) -> list[str]:
        """Every host's link network: the peers PostgreSQL must let in."""
        return sorted({host.network for host in self.hosts.values()})

    def close(self) -> list[str]:
        """Delete every namespace and veth made here; what could not be deleted."""
        left = []
        for netns in reversed(self._namespaces):
            try:
                _ip("netns", "delete", netns)
            except OSError as error:
                left.append(str(error))
        for link in reversed(self._links):
            # Deleting the namespace deleted its end, and so the pair; this is
            # for a veth whose other end never reached a namespace.
            exists = subprocess.run(["ip", "link", "show", link], capture_output=True,
                                    timeout=30).returncode == 0
            if exists:
                try:
                    _ip("link", "delete", link)
                except OSError as error:
                    left.append(str(error))
        self._namespaces.clear()
        self._links.clear()
        return left


class HostProcess:
    """A command on a host, its output in `log`, stopped by its PID."""

    def __init__(self, host: Host, argv: Sequence[str], log: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.host = host
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self.process = subprocess.Popen(host.command(argv), stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                        stdin=subprocess.DEVNULL)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def errors(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return ["\n".join(lines[n:n + 30]) for n, line in enumerate(lines)
                if "Traceback" in line or " ERROR " in line or "never retrieved" in line]
