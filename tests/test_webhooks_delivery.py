"""Webhook delivery under failure: receivers that fail at random, concurrent
writers with rollbacks, a slow endpoint beside a fast one, and two `serve`
processes of which one is killed mid-request (docs/webhooks.md, "Delivery
guarantees")."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer
from support import Serve
from webhook_receiver import Receiver, Request, exact_retries, verify

from sse_stream.core.settings import Settings
from sse_stream.web.app import create_app

FAST: dict[str, Any] = {"webhooks_allow_private": True, "webhooks_retry": "0.05s,0.1s,0.2s",
                        "webhooks_timeout": 1.0, "webhooks_lease": 3.0}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver().start()
    yield found
    await found.close()


async def _server(dsn: str, **overrides: Any) -> TestServer:
    server = TestServer(create_app(Settings(dsn=dsn, **{**FAST, **overrides})),
                        host="127.0.0.1", shutdown_timeout=5)
    await server.start_server()
    return server


async def _webhook(db: asyncpg.Connection, url: str, streams: list[str],
                   types: list[str] | None = None, where: list[str] | None = None) -> str:
    row = await db.fetchrow("SELECT id, secret FROM sse_stream.create_webhook($1, $2, $3, $4)",
                            url, streams, types, where or [])
    secret: str = row["secret"]
    return secret


async def _write(dsn: str, stream: str, writer: int, quota: int, seed: int) -> None:
    """Commit `quota` events in transactions of 1 to 5, with one in five
    transactions rolled back, over streams <stream>.a, .b and .c.d."""
    rng = random.Random(seed)
    connection = await asyncpg.connect(dsn)
    try:
        committed = 0
        while committed < quota:
            size = min(rng.randint(1, 5), quota - committed)
            rollback = rng.random() < 0.2
            transaction = connection.transaction()
            await transaction.start()
            for _ in range(size):
                await connection.execute(
                    "SELECT sse_stream.publish($1, $2, $3::text::jsonb)",
                    f"{stream}.{rng.choice(['a', 'b', 'c.d'])}",
                    rng.choice(["order.new", "order.paid", "note"]),
                    orjson.dumps({"w": writer, "amount": rng.randint(0, 99)}).decode())
            if rollback:
                await transaction.rollback()
            else:
                await transaction.commit()
                committed += size
    finally:
        await connection.close()


async def test_random_failures_lose_nothing_and_keep_order(
        fresh_dsn: str, receiver: Receiver, stream: str) -> None:
    """Three webhooks with different filters through 2,000 events from eight
    writers with rollbacks, to a receiver that answers 500, resets, times out
    and answers late: each gets exactly its committed events in stream order,
    duplicates only as exact retries, every signature valid."""
    rng = random.Random(15)
    secrets: dict[str, str] = {}
    bad_signatures: list[str] = []

    async def behave(got: Request) -> int | None:
        try:
            verify(secrets[got.path], got)
        except Exception as error:  # reported below
            bad_signatures.append(f"{got.path}: {error}")
        roll = rng.random()
        if roll < 0.12:
            return 500
        if roll < 0.17:
            return None  # connection reset
        if roll < 0.20:
            await asyncio.sleep(1.3)  # past the request timeout: answered too late
            return 200
        if roll < 0.30:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            return 200
        return 204

    receiver.behave = behave
    db = await asyncpg.connect(fresh_dsn)
    server = await _server(fresh_dsn, webhooks_batch_events=20)
    try:
        selections = {
            "ab": ([f"{stream}.a", f"{stream}.b"], None, None),
            "orders": ([f"{stream}.>"], ["order.*"], None),
            "big": ([f"{stream}.*"], None, ["data.amount=gte.50"]),
        }
        for path, (streams, types, where) in selections.items():
            secrets[path] = await _webhook(db, receiver.url(path), streams, types, where)
        await asyncio.gather(*(_write(fresh_dsn, stream, n, 250, n) for n in range(8)))
        rows = await db.fetch("SELECT id, stream, type, data::text FROM sse_stream.events "
                              "ORDER BY xid, id")
        assert len(rows) == 2000
        expected = {
            "ab": [r["id"] for r in rows if r["stream"] in (f"{stream}.a", f"{stream}.b")],
            "orders": [r["id"] for r in rows if r["type"].startswith("order.")],
            "big": [r["id"] for r in rows if r["stream"] != f"{stream}.c.d"
                    and orjson.loads(r["data"])["amount"] >= 50],
        }
        for path, ids in expected.items():
            events = await receiver.wait_events(path, len(ids), timeout=60)
            assert [e["id"] for e in events] == ids, path
            exact_retries(receiver.of(path))
        assert bad_signatures == []
        outcomes = {r.status for r in receiver.requests}
        assert {None, 500, 200, 204} <= outcomes  # every kind of failure happened
    finally:
        await server.close()
        await db.close()


async def test_a_slow_endpoint_does_not_delay_a_fast_one(fresh_dsn: str, receiver: Receiver,
                                                         stream: str) -> None:
    """While a receiver takes 10 s per request, another webhook's events keep
    arriving at once, with two requests in flight per process at most."""
    release = asyncio.Event()

    async def behave(got: Request) -> int | None:
        if got.path == "slow":
            try:
                async with asyncio.timeout(10):  # 10 s per request, unless released
                    await release.wait()
            except TimeoutError:
                pass
        return 204

    receiver.behave = behave
    db = await asyncpg.connect(fresh_dsn)
    # Two requests in flight at most: the slow webhook holds one, never both.
    server = await _server(fresh_dsn, webhooks_concurrency=2, webhooks_timeout=15.0,
                           webhooks_lease=20.0, webhooks_linger=0.0)
    try:
        await _webhook(db, receiver.url("slow"), [f"{stream}.slow"])
        await _webhook(db, receiver.url("fast"), [f"{stream}.fast"])
        await db.execute("SELECT sse_stream.publish($1, 't', '{}')", f"{stream}.slow")
        await receiver.wait(lambda: len(receiver.of("slow")) == 1)
        latencies = []
        for n in range(10):
            await db.execute("SELECT sse_stream.publish($1, 't', '{}')", f"{stream}.fast")
            started = time.monotonic()
            await receiver.wait_events("fast", n + 1, timeout=5)
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies
        assert receiver.of("slow")[0].ended is None  # still in its request
        release.set()
        assert len(await receiver.wait_events("slow", 1)) == 1
    finally:
        release.set()
        await server.close()
        await db.close()


def _unique(events: list[dict[str, Any]]) -> list[int]:
    """Event ids in the order they first arrived."""
    return list(dict.fromkeys(event["id"] for event in events))


async def test_two_processes_one_killed_mid_request(serve: Serve, fresh_dsn: str,
                                                    receiver: Receiver, stream: str) -> None:
    """Each webhook is delivered by one process at a time: the receiver sees no
    two requests for one webhook overlap, also when the process holding it is
    SIGKILLed mid-request; the other takes over from the cursor, losing nothing.
    (The batch cut short may come again with more events, under a new
    webhook-id: receivers dedupe by event id too.)"""
    async def behave(got: Request) -> int | None:
        await asyncio.sleep(0.4)
        return 204

    receiver.behave = behave
    flags = ["--webhooks-allow-private", "--webhooks-lease", "3", "--webhooks-timeout", "1",
             "--webhooks-retry", "0.1s", "--log-level", "WARNING"]
    servers = [serve(*flags, dsn=fresh_dsn), serve(*flags, dsn=fresh_dsn)]
    db = await asyncpg.connect(fresh_dsn)
    publishing: asyncio.Task[None] | None = None
    try:
        await asyncio.gather(*(server.ready() for server in servers))
        paths = [f"w{n}" for n in range(4)]
        secrets = {path: await _webhook(db, receiver.url(path), [f"{stream}.{path}"])
                   for path in paths}
        pids = {server.pid for server in servers}

        async def owners() -> dict[str, int]:
            rows = await db.fetch("SELECT url, lease_owner FROM sse_stream.webhooks")
            return {r["url"].rsplit("/", 1)[1]: int(r["lease_owner"].split("/")[1])
                    for r in rows if r["lease_owner"]}

        async with asyncio.timeout(15):  # both take their share
            while set((await owners()).values()) != pids or len(await owners()) != 4:
                await asyncio.sleep(0.05)

        async def publish(count: int) -> None:
            writer = await asyncpg.connect(fresh_dsn)  # its own: `db` is queried meanwhile
            try:
                for n in range(count):
                    await writer.execute("SELECT sse_stream.publish($1, 't', $2::jsonb)",
                                         f"{stream}.{paths[n % 4]}", f'{{"n": {n}}}')
                    await asyncio.sleep(0.005)  # a steady trickle of commits
            finally:
                await writer.close()

        publishing = asyncio.create_task(publish(300))
        # Kill the holder of a webhook whose request is in flight.
        async with asyncio.timeout(15):
            while True:
                busy = [r for r in receiver.requests if r.ended is None]
                if busy:
                    break
                await asyncio.sleep(0.01)
        victim_path = busy[0].path
        victim = (await owners())[victim_path]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await publishing
        await publish(40)
        rows = await db.fetch("SELECT id, stream FROM sse_stream.events ORDER BY xid, id")
        for path in paths:
            expected = [r["id"] for r in rows if r["stream"] == f"{stream}.{path}"]
            size = len(expected)
            await receiver.wait(lambda path=path, size=size:  # type: ignore[misc]
                                len(_unique(receiver.delivered(path))) >= size, timeout=30)
            assert _unique(receiver.delivered(path)) == expected, path
            requests = receiver.of(path)
            for got in requests:
                verify(secrets[path], got)
            spans = sorted((r.started, r.ended or float("inf")) for r in requests)
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert start >= end, f"{path}: two requests overlap"
        cut = [r for r in receiver.of(victim_path) if r.started < killed_at < (r.ended or 0)]
        assert cut, "the killed process had a request in flight"
        assert set((await owners()).values()) == pids - {victim}
    finally:
        if publishing is not None and not publishing.done():
            publishing.cancel()
        await db.close()
