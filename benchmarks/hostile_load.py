"""The load of the hostile scenario (benchmarks/scenarios/hostile.py), and its probe.

Hostile readers: page loops (`GET /streams/S/events?after=...&data.n=eq.-1`
following next_after) and replays (`?last_event_id=0&live=false&data.n=eq.-1`),
both with a filter that matches nothing, so that every one scans the whole
stream; a refusal (503/429) waits its Retry-After, capped. The live probe: a
subscriber that records when each event id arrives, and POSTs on a schedule
whose answers give the ids to match.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from loadgen import SseConnection

REFUSED = (429, 503)
RETRY_AFTER_CAP = 1.0   # seconds: a refusal's Retry-After is honoured up to this
RETRY_AFTER_FLOOR = 0.05  # and a Retry-After of 0 does not make a busy loop


@dataclass
class HostileCounts:
    """What the hostile readers of one level did."""

    pages: int = 0        # pages answered 200
    empty_more: int = 0   # of them: no events but has_more true (a bounded scan)
    passes: int = 0       # page loops that reached has_more false
    replays: int = 0      # replays that ended on their own
    refusals: int = 0     # 503 (or 429) with Retry-After
    timeouts: int = 0     # a page not answered, or a replay silent, for --page-timeout s
    errors: int = 0       # any other status, or a broken connection
    page_seconds: list[float] = field(default_factory=list)


def retry_after(headers: Any) -> float:
    """The Retry-After of a refusal in seconds, within RETRY_AFTER_FLOOR..RETRY_AFTER_CAP."""
    try:
        seconds = float(headers.get("Retry-After", RETRY_AFTER_CAP))
        return max(RETRY_AFTER_FLOOR, min(seconds, RETRY_AFTER_CAP))
    except ValueError:  # an HTTP-date
        return RETRY_AFTER_CAP


async def page_loop(session: aiohttp.ClientSession, base: str, stream: str,
                    counts: HostileCounts, timeout: float) -> None:
    """Page through `stream` with a filter that matches nothing, until cancelled."""
    after = "0"
    limit = aiohttp.ClientTimeout(total=timeout)
    while True:
        url = f"{base}/streams/{stream}/events?after={after}&data.n=eq.-1&limit=1000"
        start = time.monotonic()
        try:
            async with session.get(url, timeout=limit) as response:
                if response.status in REFUSED:
                    counts.refusals += 1
                    await asyncio.sleep(retry_after(response.headers))
                    continue
                if response.status != 200:
                    counts.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                page = orjson.loads(await response.read())
        except TimeoutError:
            counts.timeouts += 1  # ask for the same page again
            continue
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError):
            counts.errors += 1
            await asyncio.sleep(0.1)
            continue
        counts.pages += 1
        counts.page_seconds.append(time.monotonic() - start)
        if page["has_more"]:
            if not page["events"]:
                counts.empty_more += 1
            after = page["next_after"]
        else:
            counts.passes += 1
            after = "0"


async def replay_loop(session: aiohttp.ClientSession, base: str, stream: str,
                      counts: HostileCounts, timeout: float) -> None:
    """Replay `stream` with a filter that matches nothing, reopened when it ends, until cancelled.

    aiohttp rather than loadgen's SseConnection: a refusal's Retry-After is needed.
    """
    url = f"{base}/streams/{stream}?last_event_id=0&live=false&data.n=eq.-1"
    limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    while True:
        try:
            async with session.get(url, timeout=limit,
                                   headers={"Accept": "text/event-stream"}) as response:
                if response.status in REFUSED:
                    counts.refusals += 1
                    await asyncio.sleep(retry_after(response.headers))
                    continue
                if response.status != 200:
                    counts.errors += 1
                    await asyncio.sleep(0.1)
                    continue
                async for _ in response.content.iter_any():
                    pass
        except TimeoutError:
            counts.timeouts += 1
            continue
        except (aiohttp.ClientError, OSError):
            counts.errors += 1
            await asyncio.sleep(0.1)
            continue
        counts.replays += 1


class ArrivalProbe(SseConnection):
    """A live-only subscriber that records when (monotonic) each event id arrived."""

    def __init__(self, path: str) -> None:
        super().__init__(path, parse=True, ready_frames=2)  # registered at its bare id: line
        self.arrived: dict[int, float] = {}

    def _parse(self, complete: bytes) -> None:
        now = time.monotonic()
        for frame in complete.split(b"\n\n"):
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    self.events += 1
                    self.arrived.setdefault(orjson.loads(line[6:])["id"], now)


async def open_probe(port: int, path: str, timeout: float) -> ArrivalProbe:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: ArrivalProbe(path), "127.0.0.1", port), timeout)
    await asyncio.wait_for(asyncio.shield(protocol.ready), timeout)
    return protocol


@dataclass
class Post:
    """One HTTP publish: when its POST started and got its 201, and the id returned."""

    start: float
    end: float | None = None
    id: int | None = None
    outcome: str = "timeout"  # the status, or what went wrong


async def post_one(session: aiohttp.ClientSession, base: str, stream: str, due: float,
                   deadline: float) -> Post:
    """POST one tick at monotonic time `due`; give up at `deadline`."""
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    body = orjson.dumps({"type": "tick", "data": {"sent": time.time()}})
    post = Post(time.monotonic())
    limit = aiohttp.ClientTimeout(total=max(0.1, deadline - post.start))
    try:
        async with session.post(f"{base}/streams/{stream}/events", data=body, timeout=limit,
                                headers={"Content-Type": "application/json"}) as response:
            answer = await response.read()
            post.outcome = str(response.status)
            if response.status == 201:
                post.end = time.monotonic()
                post.id = orjson.loads(answer)["ids"][0]
    except TimeoutError:
        pass
    except (aiohttp.ClientError, OSError) as error:
        post.outcome = type(error).__name__
    return post


INF = float("inf")


@dataclass
class LiveProbe:
    """Live and publish latencies (seconds) of one level's ticks, INF when missing."""

    live: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None


async def measure_live(args: argparse.Namespace, port: int, base: str, stream: str,
                       deadline: float) -> LiveProbe:
    """Subscribe to `stream` live, POST --events ticks --interval apart, match arrivals by id."""
    result = LiveProbe()
    try:
        probe = await open_probe(port, f"/streams/{stream}",
                                 max(0.1, min(30.0, deadline - time.monotonic())))
    except (OSError, ConnectionError, TimeoutError) as error:
        result.error = f"live subscriber: {error!r}"
        return result
    try:
        async with aiohttp.ClientSession() as session:
            first = time.monotonic()
            posts = await asyncio.gather(*(
                post_one(session, base, stream, first + k * args.interval, deadline)
                for k in range(args.events)))
        ids = {post.id for post in posts if post.id is not None}
        drain_until = min(deadline, time.monotonic() + args.drain)
        while time.monotonic() < drain_until and not ids <= probe.arrived.keys():
            await asyncio.sleep(0.05)
    finally:
        probe.close()
    for post in posts:  # a tick not answered, or not delivered, in time counts as infinite
        result.outcomes[post.outcome] = result.outcomes.get(post.outcome, 0) + 1
        result.publish.append(INF if post.end is None else post.end - post.start)
        arrived = probe.arrived.get(post.id) if post.id is not None else None
        result.live.append(INF if arrived is None else arrived - post.start)
    return result

