"""Across hosts: servers on several "hosts" reading live from a standby and a
cascaded standby, clients hopping between them; nothing lost, doubled or
reordered, and the delivery latency of each path.

    sudo python benchmarks/multihost.py                        # N = 1,2,4,8 servers
    sudo python benchmarks/multihost.py --servers 1,2 --seconds 5
    python benchmarks/multihost.py --loopback                  # no namespaces (any user)

Hosts are Linux network namespaces (benchmarks/netns.py), each joined to the
root namespace by a veth pair with a /30 of 10.213.0.0/16:
  A        the primary (embedded PostgreSQL, fsync off);
  B        a streaming hot standby of A (over a near link);
  C        a cascaded standby, streaming from B over the far link (its base
           backup comes from A: see benchmarks/multihost_db.py);
  S1..Sk   the server processes (`sse-stream serve`), N of them per round,
           server i on S(i mod k); even i: --live-dsn B and --dsn A over near
           links; odd i: --live-dsn C (near) and --dsn A over the far link
           (N=1 runs one server, on B).
Clients, the writers and the relays run in the root namespace.

Delay: links are near (--near-delay, 1 ms one way) or far (--far-delay,
20 ms one way), each direction. `tc netem` cannot add it here (the kernel has
no traffic-control qdiscs), so every connection between hosts goes through a
delaying TCP relay (benchmarks/relay.py) in the root namespace, listening on
the destination host's gateway address: B->A replication, C->B replication
(far), servers -> A, B, C, clients -> servers, writers -> A. A relay adds a
fixed delay per direction and models nothing else (no loss, no jitter, no
bandwidth limit). Without namespaces (not root, no `ip netns`, or
--loopback) every host is 127.0.0.1 and the same relays run on ports of
127.0.0.1; the output says so.

Each round (one N): W writers commit for --seconds on A (1 to 3 events per
transaction on --streams streams, commits out of id order, --rollback of
them rolled back); --clients clients read from position 0, hang up at random
moments and resume with Last-Event-ID on another random server
(benchmarks/multihost_load.py). Then every client's events are checked
against the table on A in stream order (xid, id): lost, duplicated,
reordered, extra, sse.gap must all be 0, every client must reach its last
event within --drain, and no server may log an error. Latency: receipt less
the writer's time before COMMIT, for events that reached a connection
already open (via B, via C, all). Prints a table per round and a `RESULT `
JSON line; exits 1 if any check failed, 3 if --require-netns and namespaces
could not be made. Every namespace, veth and process it made is removed or
stopped by PID at the end, also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's sse_stream
from loadgen import percentile
from multihost_db import HostPostgres, dsn, replayed, start_primary, start_standby, stop_cluster
from multihost_load import (
    Client,
    Endpoint,
    Receipt,
    check,
    latencies,
    selections,
    table,
    write,
)
from netns import Host, HostProcess, Network, free_port

ROOT = Path(__file__).resolve().parent.parent
RELAY = Path(__file__).resolve().parent / "relay.py"
HERE = Host("root", None, "127.0.0.1", "127.0.0.1", "127.0.0.1/32")


def start_relays(links: list[dict[str, Any]], log: Path, stack: ExitStack) -> HostProcess:
    """benchmarks/relay.py for `links`, in the root namespace; waits for `ready`."""
    relay = HostProcess(HERE, [sys.executable, str(RELAY), json.dumps(links)], log)
    stack.callback(relay.stop)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text(errors="replace"):
        if not relay.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the relays did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return relay


def link(via: Host, port: int, delay: float) -> dict[str, Any]:
    return {"listen": [via.gateway, free_port(via.gateway)], "target": [via.address, port],
            "delay": delay}


async def ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/readyz") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become ready")
            await asyncio.sleep(0.1)


class Topology:
    """The hosts, the databases on A, B, C and the relays that reach them."""

    def __init__(self, args: argparse.Namespace, network: Network, folder: Path,
                 stack: ExitStack) -> None:
        self.args, self.network, self.folder, self.stack = args, network, folder, stack
        self.hosts = network.hosts
        self.servers = [h for name, h in self.hosts.items() if name.startswith("S")]
        self.password = ""
        self.to: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        args, hosts = self.args, self.hosts
        ports = {name: free_port() for name in "ABC"}
        near, far = args.near_delay, args.far_delay
        links = {"A": link(hosts["A"], ports["A"], near),
                 "A far": link(hosts["A"], ports["A"], far),
                 "B": link(hosts["B"], ports["B"], near),
                 "B far": link(hosts["B"], ports["B"], far),
                 "C": link(hosts["C"], ports["C"], near)}
        self.to = {name: tuple(item["listen"]) for name, item in links.items()}
        start_relays(list(links.values()), self.folder / "relays-db.log", self.stack)
        clusters: list[HostPostgres] = []
        for name, via in (("A", None), ("B", "A"), ("C", "B far")):
            cluster = HostPostgres(self.folder / f"pg-{name}", hosts[name], ports[name])
            self.stack.callback(stop_cluster, cluster)  # before it starts: stops what started
            if via is None:
                start_primary(cluster, self.network.networks())
            else:
                start_standby(clusters[0], cluster, self.to[via])
            clusters.append(cluster)
        self.password = clusters[0].password or ""
        from sse_stream.db.migrate import migrate_dsn

        await migrate_dsn(self.dsn("A"))
        self.monitor = await asyncpg.connect(self.dsn("A"), command_timeout=60)
        for name in "BC":
            await replayed(self.dsn(name), self.monitor, 60)
        cascade = await asyncpg.connect(self.dsn("C"))
        try:
            self.cascade_upstream = dict(await cascade.fetchrow(
                "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver") or {})
        finally:
            await cascade.close()

    def dsn(self, name: str) -> str:
        return dsn(self.password, *self.to[name])

    async def round(self, count: int) -> dict[str, Any]:
        """One round: `count` servers, the writers, the clients, the check."""
        args = self.args
        prefix = f"mh{count}x{uuid.uuid4().hex[:6]}"
        with ExitStack() as stack:
            servers: list[tuple[HostProcess, str, tuple[str, int]]] = []
            relay_links = []
            for index in range(count):
                host = self.servers[index % len(self.servers)]
                source = "B" if index % 2 == 0 else "C"
                port = free_port()
                argv = [sys.executable, "-m", "sse_stream.cli", "serve",
                        "--dsn", self.dsn("A" if source == "B" else "A far"),
                        "--live-dsn", self.dsn(source), "--host", host.address,
                        "--port", str(port), "--no-migrate", "--log-level", "WARNING",
                        "--standby-poll", str(args.poll), "--heartbeat", "5",
                        # Clients come from other hosts: not loopback, so no
                        # protected mode for the round's streams.
                        "--anonymous-subscribe", f"{prefix}.>"]
                process = HostProcess(host, argv, self.folder / f"serve-n{count}-{index}.log",
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
                stack.callback(process.stop)
                relay_links.append(link(host, port, args.near_delay))
                servers.append((process, source, (host.address, port)))
            start_relays(relay_links, self.folder / f"relays-n{count}.log", stack)
            await asyncio.gather(*(ready(f"http://{a}:{p}") for _, _, (a, p) in servers))
            endpoints = [Endpoint(f"http://{item['listen'][0]}:{item['listen'][1]}", source)
                         for item, (_, source, _) in zip(relay_links, servers)]
            clients = [Client(i, spec, streams, endpoints,
                              random.Random(args.seed * 7919 + count * 131 + i))
                       for i, (spec, streams) in enumerate(
                           selections(prefix, args.streams, args.clients))]
            deadline = time.monotonic() + args.seconds + args.drain
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                tasks = [asyncio.create_task(c.run(session, deadline)) for c in clients]
                streams = [f"{prefix}.s{k}" for k in range(args.streams)]
                commits = await write(self.dsn("A"), streams, args.writers, args.rate,
                                      args.seconds, args.rollback, args.seed)
                rows = await table(self.monitor, prefix)
                for client in clients:
                    mine = [p for p, stream in rows if stream in client.streams]
                    client.final = mine[-1] if mine else ""
                await asyncio.gather(*tasks)
            errors = [e for process, _, _ in servers for e in process.errors()]
        if args.dump:
            with open(args.dump, "ab") as out:
                out.write(orjson.dumps({"servers": count, "table": rows, "clients": [
                    {"spec": c.spec, "received": [(r.position, r.source, r.at) for r in
                                                  c.receipts]} for c in clients]}) + b"\n")
        return self.summary(count, clients, commits, rows, errors)

    def summary(self, count: int, clients: list[Client], commits: Any,
                rows: list[tuple[str, str]], errors: list[str]) -> dict[str, Any]:
        verdicts = [check([r.position for r in c.receipts],
                          [p for p, stream in rows if stream in c.streams]) for c in clients]
        lat = {"all": latencies(clients, commits)}
        for source in "BC":
            lat[source] = latencies(clients, commits, partial(from_source, source))
        table_set = {p for p, _ in rows}
        return {
            "servers": count, "events": len(rows), "transactions": commits.transactions,
            "rollbacks": commits.rollbacks, "clients": len(clients),
            "commits_out_of_xid_order": commits.out_of_order(),
            "deliveries": sum(v.received for v in verdicts),
            "reconnects": sum(c.connections - 1 for c in clients),
            "lost": sum(v.lost for v in verdicts),
            "duplicated": sum(v.duplicated for v in verdicts),
            "reordered": sum(v.reordered for v in verdicts),
            "extra": sum(v.extra for v in verdicts), "gaps": sum(c.gaps for c in clients),
            "unfinished": sum(1 for c in clients if not c.finished()),
            "refused": sum(c.refused for c in clients),
            "last_refusal": next((c.refusal for c in clients if c.refusal), None),
            "failed_connections": sum(c.failures for c in clients),
            "table_vs_writers": len(table_set ^ set(commits.times)),
            "server_errors": len(errors), "first_error": errors[0][:2000] if errors else None,
            "latency_ms": {key: {"p50": round(percentile(v, .5) * 1000, 1),
                                 "p99": round(percentile(v, .99) * 1000, 1), "samples": len(v)}
                           for key, v in lat.items()},
        }


def from_source(source: str, receipt: Receipt) -> bool:
    return receipt.source == source


COLUMNS = ("N", "events", "clients", "reconnects", "lost", "duplicated", "reordered", "gaps",
           "p50 ms", "p99 ms", "p50/p99 via B", "p50/p99 via C")


def row(result: dict[str, Any]) -> list[str]:
    lat = result["latency_ms"]
    pair = {k: "-" if not lat[k]["samples"] else f"{lat[k]['p50']}/{lat[k]['p99']}"
            for k in "BC"}
    return [str(result[k]) for k in ("servers", "events", "clients", "reconnects", "lost",
                                      "duplicated", "reordered", "gaps")] + \
        [str(lat["all"]["p50"]), str(lat["all"]["p99"]), pair["B"], pair["C"]]


def failed(result: dict[str, Any]) -> list[str]:
    keys = ("lost", "duplicated", "reordered", "extra", "gaps", "unfinished",
            "table_vs_writers", "server_errors")
    return [f"{key}={result[key]}" for key in keys if result[key]]


async def run(args: argparse.Namespace, network: Network, folder: Path,
              stack: ExitStack) -> int:
    topology = Topology(args, network, folder, stack)
    await topology.start()
    try:
        print(f"cascade C streams from {topology.cascade_upstream} (the far relay to B)")
        widths = [max(len(c), 13 if c.startswith("p50/") else 8) for c in COLUMNS]
        print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)), flush=True)
        results = []
        for count in [int(n) for n in args.servers.split(",") if n.strip()]:
            result = await topology.round(count)
            results.append(result)
            print("  ".join(v.rjust(w) for v, w in zip(row(result), widths)), flush=True)
            print(f"    {result['transactions']} commits ({result['commits_out_of_xid_order']} "
                  f"after a later transaction's), {result['rollbacks']} rollbacks, "
                  f"{result['deliveries']} deliveries, {result['refused']} refused and "
                  f"{result['failed_connections']} failed connections", flush=True)
            if failed(result):
                print(f"    FAILED: {', '.join(failed(result))}", flush=True)
                if result["first_error"]:
                    print(result["first_error"], flush=True)
    finally:
        await topology.monitor.close()
    ok = not any(failed(r) for r in results)
    hosts = f"LOOPBACK ({network.fallback})" if network.loopback else "network namespaces"
    print(f"\nmultihost: {'every check passed' if ok else 'CHECKS FAILED'}; hosts: {hosts}"
          f"; delays by relay.py (not tc netem): near {args.near_delay * 1000:g} ms, far "
          f"{args.far_delay * 1000:g} ms one way")
    print("RESULT " + orjson.dumps({
        "scenario": "multihost", "hosts": "loopback" if network.loopback else "netns",
        "fallback": network.fallback, "delay": "relay", "near_delay_s": args.near_delay,
        "far_delay_s": args.far_delay, "poll_s": args.poll, "seconds": args.seconds,
        "writers": args.writers, "rate_tx_per_s": args.rate, "rollback": args.rollback,
        "cpus": os.cpu_count(), "ok": ok, "rounds": results}).decode(), flush=True)
    return 0 if ok else 1


def describe(network: Network, args: argparse.Namespace) -> None:
    if network.loopback:
        print(f"NOTE: hosts are LOOPBACK, not network namespaces: {network.fallback}. "
              "Every host is 127.0.0.1; the delaying relays run on 127.0.0.1 ports.")
    print(f"delays: near {args.near_delay * 1000:g} ms, far {args.far_delay * 1000:g} ms one "
          "way per direction, added by a delaying TCP relay (benchmarks/relay.py) on every "
          f"path between hosts, NOT by tc netem (tc netem here: {network.netem()})")
    for host in network.hosts.values():
        role = {"A": "primary", "B": "standby of A (near)",
                "C": "cascaded standby of B (far link)"}.get(host.name, "servers")
        print(f"  {host.name:<3} {host.netns or 'loopback':<16} {host.address:<15} {role}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/multihost.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="1,2,4,8", help="server counts N, comma-separated")
    parser.add_argument("--server-hosts", type=int, default=4, help="server namespaces S1..Sk")
    parser.add_argument("--seconds", type=float, default=10, help="writing time per round")
    parser.add_argument("--drain", type=float, default=30,
                        help="seconds after writing for every client to reach its last event")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100, help="transactions/s, all writers")
    parser.add_argument("--rollback", type=float, default=0.15, help="share rolled back")
    parser.add_argument("--near-delay", type=float, default=0.001, help="seconds, one way")
    parser.add_argument("--far-delay", type=float, default=0.020, help="seconds, one way")
    parser.add_argument("--poll", type=float, default=0.02, help="servers' --standby-poll")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loopback", action="store_true", help="no namespaces: 127.0.0.1")
    parser.add_argument("--require-netns", action="store_true",
                        help="exit 3 instead of falling back to loopback")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--dump", metavar="FILE",
                        help="append each round's table and every client's receipts (JSON lines)")
    return parser.parse_args(argv)


def _exit_on_signal(number: int, _frame: object) -> None:
    raise SystemExit(128 + number)  # unwinds through every `finally` and the ExitStack


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _exit_on_signal)
    folder = Path(tempfile.mkdtemp(prefix="sse-stream-multihost-"))
    os.chmod(folder, 0o755)  # the clusters' folders below belong to the server's user
    names = ["A", "B", "C"] + [f"S{k + 1}" for k in range(args.server_hosts)]
    code = 1
    with ExitStack() as stack:
        stack.callback(lambda: None if args.keep_logs else shutil.rmtree(folder, True))
        network = Network.create(names, loopback="--loopback given" if args.loopback else None)

        def close_network() -> None:
            left = network.close()
            if left:
                print(f"could not delete: {left}", file=sys.stderr)

        stack.callback(close_network)
        if network.loopback and args.require_netns:
            print(f"multihost: no network namespaces ({network.fallback})", file=sys.stderr)
            return 3
        describe(network, args)
        code = asyncio.run(run(args, network, folder, stack))
    if args.keep_logs:
        print(f"logs kept in {folder}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
