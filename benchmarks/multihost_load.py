"""The load of benchmarks/multihost.py: writers on the primary, clients that
hop between servers, and the check of what each client got.

Writers: `writers` connections commit transactions of 1 to 3 events on random
streams of the round, each holding its transaction open a random few
milliseconds between inserts, so that transactions commit out of the order
of their ids; about `rollback` of them roll back. A writer records, for every
event it committed, the time just before it sent COMMIT (`Commits.times`,
keyed by position). Their session has synchronous_commit on: the embedded
clusters run with it off (fsync off, for speed), and a commit would then
reach the standbys only when the WAL writer next runs (up to 200 ms).

Clients: each asks for one stream, two streams, or the pattern <round>.*,
from position 0 (everything). It connects to a random server, reads for a
random 0.1 to 1.5 s, hangs up (often mid-frame; a partial frame is dropped),
and resumes on another random server (another than the last, when N > 1)
with Last-Event-ID = the id of the last complete frame. Once the writers
stop it goes on until it has the last event of its streams in the table, or
the drain time ends.

The check, per client: the ids it received, over all its connections in the
order received, against the table's events of its streams ordered by
position (xid, id), read on the primary: lost, duplicated, reordered (an id
below the one before it), extra (not in the table), and any sse.gap.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import orjson

INSERT = """
INSERT INTO sse_stream.events (stream, type, data) VALUES ($1, 'mh.tick', $2::text::jsonb)
RETURNING xid::text AS xid, id
"""

# Ordered by the columns (xid8, bigint), not by the text output column `xid`,
# which ORDER BY would otherwise pick ('1000' sorts before '999').
TABLE = """
SELECT e.xid::text AS xid, e.id, e.stream FROM sse_stream.events e
WHERE e.stream LIKE $1 || '.%' ORDER BY e.xid, e.id
"""


def position(text: str) -> tuple[int, int]:
    xid, _, id_ = text.partition("-")
    return int(xid), int(id_)


@dataclass
class Commits:
    times: dict[str, float] = field(default_factory=dict)  # position -> time before COMMIT
    transactions: int = 0
    rollbacks: int = 0
    xids: list[int] = field(default_factory=list)  # of the committed transactions, in order

    def out_of_order(self) -> int:
        """Commits that came after a commit of a later transaction (a higher xid)."""
        late, highest = 0, -1
        for xid in self.xids:
            late += xid < highest
            highest = max(highest, xid)
        return late


async def write(dsn: str, streams: Sequence[str], writers: int, rate: float, seconds: float,
                rollback: float, seed: int) -> Commits:
    """`writers` concurrent writers at `rate` transactions/s in all, for `seconds`."""
    commits = Commits()
    end = time.monotonic() + seconds
    pause = writers / rate if rate > 0 else 0.0

    async def writer(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        connection = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "on"},
                                           timeout=30, command_timeout=30)
        try:
            serial = 0
            while time.monotonic() < end:
                began = time.monotonic()
                positions = []
                transaction = connection.transaction()
                await transaction.start()
                for _ in range(rng.randint(1, 3)):
                    serial += 1
                    data = orjson.dumps({"w": index, "n": serial}).decode()
                    row = await connection.fetchrow(INSERT, rng.choice(streams), data)
                    positions.append(f"{row['xid']}-{row['id']}")
                    if rng.random() < 0.5:  # hold it open: later transactions commit first
                        await asyncio.sleep(rng.uniform(0, 0.015))
                if rng.random() < rollback:
                    await transaction.rollback()
                    commits.rollbacks += 1
                else:
                    at = time.time()
                    await transaction.commit()
                    commits.transactions += 1
                    commits.xids.append(int(positions[0].partition("-")[0]))
                    for item in positions:
                        commits.times[item] = at
                spent = time.monotonic() - began
                await asyncio.sleep(max(0.0, rng.uniform(0.5, 1.5) * pause - spent))
        finally:
            await connection.close()

    await asyncio.gather(*(writer(index) for index in range(writers)))
    return commits


@dataclass(frozen=True)
class Endpoint:
    """A server as clients reach it: through its relay; `source` names its live DSN."""

    url: str
    source: str


@dataclass
class Receipt:
    position: str
    at: float  # time.time() when the frame was complete
    opened: float  # time.time() when its connection was opened
    source: str


class Client:
    """One reader hopping between servers (see the module)."""

    def __init__(self, index: int, spec: str, streams: frozenset[str],
                 endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        self.index = index
        self.spec = spec
        self.streams = streams
        self.endpoints = endpoints
        self.rng = rng
        self.last_id = "0"
        self.receipts: list[Receipt] = []
        self.gaps = 0
        self.connections = 0
        self.refused = 0  # answers other than 200 (503 while a server stops, ...)
        self.failures = 0  # connections that failed before or while reading
        self.final: str | None = None  # the last position of its streams, once known
        self.refusal: str | None = None  # the last answer other than 200

    def finished(self) -> bool:
        # A keepalive may carry an id past the last event: compare positions.
        if self.final is None:
            return False
        return self.final == "" or (self.last_id != "0" and
                                    position(self.last_id) >= position(self.final))

    async def run(self, session: aiohttp.ClientSession, deadline: float,
                  max_connections: int = 10_000) -> None:
        """Hop between servers until `finished` or `deadline` (monotonic)."""
        endpoint = None
        while not self.finished() and time.monotonic() < deadline and \
                self.connections < max_connections:
            others = [e for e in self.endpoints if e is not endpoint] or list(self.endpoints)
            endpoint = self.rng.choice(others)  # another server than the last, when there is one
            lifetime = min(self.rng.uniform(0.1, 1.5), max(0.01, deadline - time.monotonic()))
            self.connections += 1
            try:
                await asyncio.wait_for(self._read(session, endpoint), lifetime)
            except TimeoutError:
                pass  # the hang-up at a random moment
            except (aiohttp.ClientError, OSError):
                self.failures += 1
                await asyncio.sleep(0.05)

    async def _read(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        opened = time.time()
        headers = {"Last-Event-ID": self.last_id, "Accept": "text/event-stream"}
        async with session.get(f"{endpoint.url}/streams/{self.spec}", headers=headers) as reply:
            if reply.status != 200:
                self.refused += 1
                self.refusal = f"{reply.status} {(await reply.text())[:300]}"
                await asyncio.sleep(0.1)
                return
            frame_id: str | None = None
            kind = "message"
            data = False
            async for raw in reply.content:
                line = raw.rstrip(b"\r\n")
                if line:
                    if line.startswith(b"id: "):
                        frame_id = line[4:].decode()
                    elif line.startswith(b"event: "):
                        kind = line[7:].decode()
                    elif line.startswith(b"data: "):
                        data = True
                    continue
                # A blank line: the frame is complete.
                if data and kind == "sse.gap":
                    self.gaps += 1
                elif data and frame_id is not None:
                    self.receipts.append(Receipt(frame_id, time.time(), opened,
                                                 endpoint.source))
                if frame_id is not None:
                    self.last_id = frame_id
                    if self.finished():
                        return
                frame_id, kind, data = None, "message", False


@dataclass(frozen=True)
class Verdict:
    expected: int
    received: int
    lost: int
    duplicated: int
    reordered: int
    extra: int


def check(received: Sequence[str], expected: Sequence[str]) -> Verdict:
    """`received` (ids, in the order they came) against `expected` (the table, in order)."""
    rank = {item: at for at, item in enumerate(expected)}
    seen: set[str] = set()
    duplicated = reordered = extra = 0
    previous = -1
    for item in received:
        if item in seen:
            duplicated += 1
            continue
        seen.add(item)
        at = rank.get(item)
        if at is None:
            extra += 1
            continue
        if at < previous:
            reordered += 1
        previous = max(previous, at)
    lost = sum(1 for item in expected if item not in seen)
    return Verdict(len(expected), len(received), lost, duplicated, reordered, extra)


async def table(connection: asyncpg.Connection, prefix: str) -> list[tuple[str, str]]:
    """The round's events on the primary, in stream order: (position, stream)."""
    rows = await connection.fetch(TABLE, prefix)
    return [(f"{row['xid']}-{row['id']}", row["stream"]) for row in rows]


def selections(prefix: str, streams: int, clients: int) -> list[tuple[str, frozenset[str]]]:
    """Per client: the path's stream list or pattern, and the streams it covers."""
    names = [f"{prefix}.s{k}" for k in range(streams)]
    chosen = []
    for index in range(clients):
        if index % 3 == 0:
            one = names[index % streams]
            chosen.append((one, frozenset([one])))
        elif index % 3 == 1:
            two = [names[index % streams], names[(index + 1) % streams]]
            chosen.append((",".join(two), frozenset(two)))
        else:
            chosen.append((f"{prefix}.*", frozenset(names)))
    return chosen


def latencies(clients: Sequence[Client], commits: Commits,
              keep: Callable[[Receipt], bool] = lambda receipt: True) -> list[float]:
    """Receipt less the writer's time before COMMIT, for events that reached an
    already open connection (catch-up after a reconnect is not delivery latency)."""
    out = []
    for client in clients:
        for receipt in client.receipts:
            committed = commits.times.get(receipt.position)
            if committed is not None and receipt.opened <= committed and keep(receipt):
                out.append(receipt.at - committed)
    return out
