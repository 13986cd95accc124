"""What the test modules share, so that none imports another.

Bounded waiting, the table's order, publishing from SQL, tokens and requests,
embedded clusters, the browser, and the hypothesis strategies that draw
event data and the filters that select it. The SSE clients are `sse`
(aiohttp) and `raw` (a socket), the fault-test load is `load`, and the
`sse-stream serve` process is `server_process` (shared with benchmarks/).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import inspect
import json
import math
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
import server_process
from aiohttp.test_utils import TestServer
from hypothesis import strategies as st
from multidict import CIMultiDict
from raw import RawStream
from sse import Stream

from sse_stream.client import Message
from sse_stream.core.events import parse_position
from sse_stream.core.settings import Settings
from sse_stream.db.embedded import EmbeddedPostgres
from sse_stream.web.app import create_app

T = TypeVar("T")

# The wrapper of `sse-stream serve` lives in server_process (benchmarks/ use it
# too, without the test dependencies); tests take it from here.
ROOT = server_process.ROOT
ServerProcess = server_process.ServerProcess

StartServer = Callable[..., Awaitable[TestServer]]
"""The `start_server` fixture: the app in this process, with settings overrides."""
Serve = Callable[..., ServerProcess]
"""The `serve` fixture: `sse-stream serve` as a child process."""


# -- waiting ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def app_servers() -> AsyncIterator[Callable[[Settings], Awaitable[TestServer]]]:
    """Start the real app on 127.0.0.1 (as many as asked for); close them all after."""
    servers: list[TestServer] = []

    async def start(settings: Settings) -> TestServer:
        server = TestServer(create_app(settings), host="127.0.0.1", shutdown_timeout=5)
        await server.start_server()
        # As `sse-stream serve` does once its app has started (cli.py): the
        # heap that lives as long as the process is kept out of the
        # collector's full collections, which otherwise stall the loop.
        gc.freeze()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0,
                     message: str = "condition not met in time") -> None:
    """Poll `check` (a function, or a coroutine function) until it holds, with a
    bound: no fixed sleeps."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError(message)
        await asyncio.sleep(0.02)


def runner(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    """A function that runs a coroutine on `loop` from another thread and
    returns its result: hypothesis drives a plain function in a worker
    thread (so it can shrink and report), the HTTP work stays on the loop."""

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(30)
        finally:
            future.cancel()

    return run


# -- the table ------------------------------------------------------------------------


async def publish(connection: asyncpg.Connection, stream: str, type_: str, data: Any) -> int:
    value: int = await connection.fetchval(
        "SELECT sse_stream.publish($1, $2, $3::text::jsonb)", stream, type_,
        orjson.dumps(data).decode())
    return value


async def publish_texts(connection: asyncpg.Connection, stream: str, types: list[str],
                        texts: list[str]) -> list[int]:
    """One event per (type, data text), in one statement; the ids in input order."""
    rows = await connection.fetch(
        "SELECT sse_stream.publish($1, t.type, t.data::jsonb)"
        " FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(type, data, n)"
        " ORDER BY t.n", stream, types, texts)
    return [row[0] for row in rows]


async def table_ids(source: asyncpg.Connection | str, stream: str | None = None,
                    type_: str | None = None) -> list[int]:
    """The ids of a stream (of every stream, with None), of one type if given,
    in the table's order, (xid, id): the order every client must see.
    `source` is a connection, or a DSN to connect to."""
    query = ("SELECT id FROM sse_stream.events WHERE ($1::text IS NULL OR stream = $1)"
             " AND ($2::text IS NULL OR type = $2) ORDER BY xid, id")
    if isinstance(source, str):
        connection = await asyncpg.connect(source)
        try:
            rows = await connection.fetch(query, stream, type_)
        finally:
            await connection.close()
    else:
        rows = await source.fetch(query, stream, type_)
    return [row[0] for row in rows]


async def old_events(connection: asyncpg.Connection, stream: str, count: int,
                     days: int = 40) -> list[str]:
    """`count` events of type `old` created `days` ago, one transaction each;
    their positions.

    The table stamps every row with the time of its transaction; only a
    session that disables user triggers (an import, here a test) can backdate.
    """
    positions = []
    for n in range(count):
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            positions.append(await connection.fetchval(
                "INSERT INTO sse_stream.events (stream, type, data, created_at) "
                "VALUES ($1, 'old', $2::text::jsonb, now() - make_interval(days => $3)) "
                "RETURNING xid::text || '-' || id", stream, f'{{"n": {n}}}', days))
    return positions


async def position_of(connection: asyncpg.Connection, event_id: int) -> str:
    """The position of the event with this id."""
    value: str = await connection.fetchval(
        "SELECT xid::text || '-' || id FROM sse_stream.events WHERE id = $1", event_id)
    return value


async def count(connection: asyncpg.Connection, stream: str) -> int:
    value: int = await connection.fetchval(
        "SELECT count(*) FROM sse_stream.events WHERE stream = $1", stream)
    return value


async def replicated(replica: asyncpg.Connection, stream: str, events: int) -> None:
    """Wait (bounded) until a replica holds `events` events of the stream."""

    async def caught_up() -> bool:
        return await count(replica, stream) >= events

    await eventually(caught_up, 20, "the replica did not catch up")


# -- streams -------------------------------------------------------------------------


def event_id(message: Message) -> int:
    # json, not orjson: an envelope may carry a number beyond a double.
    value: int = json.loads(message.data)["id"]
    return value


async def joined(sse: Stream) -> None:
    # The bare id line after retry: the stream is registered with the hub.
    await sse.until(lambda parser: parser.last_event_id != "")


async def stalled(hub: Any, url: str, sndbuf: int) -> tuple[RawStream, Any]:
    """A raw client with a 4 KiB receive window, opened once the hub holds its
    stream, and that stream's subscription, the server's kernel send buffer
    for it cut to `sndbuf` bytes (left alone, Linux grows it to 4 MB on
    loopback): a slow path, end to end. The caller closes the client."""
    client = await RawStream.open(url, rcvbuf=4096)
    try:
        await client.read_until(lambda: client.parser.last_event_id != "")
        await eventually(lambda: len(hub.subscriptions) == 1)
        subscription = next(iter(hub.subscriptions))
        transport = subscription.response._req.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    except BaseException:
        client.close()
        raise
    return client, subscription


async def live_until(sse: Stream, position: str, timeout: float) -> list[int]:
    """The ids a live stream delivers up to `position`: it ends with that
    event or with a bare id: line at or beyond it (a heartbeat)."""
    last = parse_position(position)
    ids: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not sse.parser.last_event_id or parse_position(sse.parser.last_event_id) < last:
        ids.extend(event_id(m) for m in sse.pending)
        sse.pending.clear()
        await sse._fill(max(0.001, deadline - loop.time()))
    ids.extend(event_id(m) for m in sse.pending)
    sse.pending.clear()
    return ids


# -- databases, clusters and browsers ---------------------------------------------------------


@contextlib.asynccontextmanager
async def database(dsn: str) -> AsyncIterator[str]:
    """An empty database of its own on the server of `dsn`, dropped after: its
    DSN. Skips the test where the role may not create databases."""
    name = "fresh_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        pytest.skip("cannot create a database with SSE_STREAM_TEST_DSN")
    try:
        yield urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.contextmanager
def cluster(prefix: str, make: Callable[[Path], EmbeddedPostgres] | None = None
            ) -> Iterator[EmbeddedPostgres]:
    """A started embedded PostgreSQL (fsync off, or what `make` builds in the
    data folder it is given) in a temporary folder, stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = (make or (lambda data: EmbeddedPostgres(data, fast=True)))(folder / "pgdata")
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} is absent (Debian package chromium)")


# -- tokens and requests ----------------------------------------------------------------

SECRET = "a-test-secret-of-at-least-32-bytes-long"


def token(subscribe: list[Any] | None = None, publish_: list[str] | None = None,
          ttl: float | None = 300, key: Any = SECRET, algorithm: str = "HS256",
          where: list[str] | None = None, **claims: Any) -> str:
    """A signed token; `ttl=None` leaves out `exp`, `where` binds filters."""
    section: dict[str, Any] = {"subscribe": subscribe or [], "publish": publish_ or []}
    if where is not None:
        section["where"] = where
    body: dict[str, Any] = {"sse_stream": section}
    if ttl is not None:
        body["exp"] = int(time.time() + ttl)
    body.update(claims)
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, claims: bytes, key: bytes | None = SECRET.encode()) -> str:
    """A JWT of exactly these header and claims bytes, signed with `key`
    (HMAC-SHA256), or with an empty signature when `key` is None."""
    signing_input = b64url(header) + "." + b64url(claims)
    signature = b"" if key is None else hmac.new(key, signing_input.encode(),
                                                 hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def handmade(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand, for what PyJWT refuses to sign (alg none, HS with a PEM)."""
    return signed(orjson.dumps(header), orjson.dumps(claims), key)


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A cookie jar that keeps cookies for 127.0.0.1 (an IP address).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def request(server: TestServer, method: str, path: str, *,
                  headers: dict[str, str] | CIMultiDict[str] | None = None,
                  cookies: dict[str, str] | None = None,
                  json: Any = None, data: Any = None) -> tuple[int, Any, Any]:
    """One request; for a stream, the status and headers once the first bytes arrive.
    A `data` body is sent as application/json unless `headers` name another type."""
    if data is not None and "Content-Type" not in CIMultiDict(headers or {}):
        headers = CIMultiDict(headers or {}, **{"Content-Type": "application/json"})
    async with client() as session:
        if cookies:
            session.cookie_jar.update_cookies(cookies, server.make_url("/"))
        async with session.request(method, server.make_url(path), headers=headers or {},
                                   json=json, data=data,
                                   timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.content_type == "text/event-stream":
                first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
                return response.status, response.headers, first
            body = await response.read()
            if response.content_type in ("application/json", "application/problem+json"):
                return response.status, response.headers, orjson.loads(body)
            return response.status, response.headers, body


def assert_problem(result: tuple[int, Any, Any], status: int, param: str) -> dict[str, Any]:
    code, headers, body = result
    assert code == status, body
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == status and body["param"] == param
    assert {"type", "title", "detail"} <= set(body)
    return dict(body)


async def raw_request(server: TestServer, target: str, lines: list[bytes],
                      method: str = "GET", host: bytes | None = b"127.0.0.1",
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request written byte for byte (header values that are not
    UTF-8, no Host at all); the server closes the connection after answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        head = [f"{method} {target} HTTP/1.0".encode(), *lines]
        if host is not None:
            head.insert(1, b"Host: " + host)
        if body:
            head.append(b"Content-Length: %d" % len(body))
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, content


def assert_raw_problem(result: tuple[int, dict[str, str], bytes], status: int,
                       param: str) -> dict[str, Any]:
    code, headers, content = result
    assert code == status, content
    assert headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = orjson.loads(content)
    assert body["status"] == status and body["param"] == param
    return body


# -- strategies: event data and the filters that select it --------------------------------

Pairs = list[tuple[str, str]]
Leaves = list[tuple[str, list[str]]]


class RawNumber(str):
    """A JSON number written exactly as given (beyond what floats can say)."""


def dump(value: Any) -> str:
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


KEYS = ["a", "b", "c", "0"]
HALF_MIN_SUBNORMAL = f"{5**1075}e-1075"
EDGE_NUMBERS = [
    "0.1000000000000000055511151231257827", "1e-400", "-1e-400", "1e400", "-1e400", "1.0",
    "-0", "-0.0", "1E+2", "9007199254740993.0", "123456789012345678901234567890",
    HALF_MIN_SUBNORMAL, "2.4703282292062328e-324", "2.4703282292062327e-324", "5e-324",
    "1.7976931348623157e308", "1.7976931348623158e308", "1.797693134862315807e308",
    str(2**1024 - 2**970), str(2**1024 - 2**970 - 1), "-" + str(2**1024 - 2**970 - 1),
    str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), str(2**64 - 1), str(2**64),
    "18446744073709551615.0", "0.30000000000000004", "1e16", "1.5e300",
]
EDGE_TEXTS = [
    "10", "1e3", " 5", "5 ", "+5", "05", ".5", "5.", "abc", "", "true", "false", "null", "42",
    "042", "1.0", "-0", "0", "0.1", "0.3", "é", "Z", "a,b", "(x)", 'q"', "\\", "\U0001F600",
    "\uffff", "NaN", "Infinity", "1e99999999999999999999999", "-1e99999999999999999999999",
    "1e-99999999999999999999999", "9007199254740992", "9007199254740993",
]


@st.composite
def decimal_texts(draw: st.DrawFn) -> str:
    mantissa = draw(st.integers(1, 10**25))
    exponent = draw(st.integers(-345, 310))
    sign = draw(st.sampled_from(["", "-"]))
    return f"{sign}{mantissa}e{exponent}"


small_ints = st.integers(-3, 3)
numbers = st.one_of(
    small_ints,
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -1.5, 0.1, 1e16, 2.0**70]),
    st.sampled_from(EDGE_NUMBERS).map(RawNumber),
    decimal_texts().map(RawNumber),
)
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                max_size=4)
strings = st.one_of(st.sampled_from(EDGE_TEXTS), texts)
scalars = st.one_of(numbers, strings, st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8)
documents = st.one_of(st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=4), values)

VALUE_TEXTS = st.one_of(
    st.sampled_from(EDGE_TEXTS),
    st.sampled_from(EDGE_NUMBERS),
    small_ints.map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    decimal_texts(),
    texts,
)


def list_item(value: str, quoted: bool) -> str:
    if quoted or not value or any(c in value for c in ',()"'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str]]]:
    """Each scalar's path with value texts near it, so filters often hit."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, path + (key,))
        return
    if not path or isinstance(value, list) or value is None:
        return
    text = "true" if value is True else "false" if value is False else (
        value if isinstance(value, str) and not isinstance(value, RawNumber) else dump(value))
    near = [text, text + "0", text[:-1], text + "a", text.swapcase(), "Z", "a", "é", "_", "-"]
    if isinstance(value, (int, float, RawNumber)) and not isinstance(value, bool):
        exact = Decimal(text)
        near += [f"{text}.0" if "." not in text and "e" not in text.lower() else text + "1",
                 str(exact + 1), str(exact - 1), str(exact * 2), format(exact, "f")[:18]]
        if isinstance(value, float):
            near += [repr(math.nextafter(value, math.inf)), repr(math.nextafter(value, -math.inf)),
                     format(value, ".17g"), format(value, ".25g")]
    yield ".".join(path), near


@st.composite
def condition_texts(draw: st.DrawFn, in_or: bool, hints: Leaves) -> tuple[str, str]:
    """(path, `[not.]op.value`) written as a client would."""
    hint: tuple[str, list[str]] | None = None
    if draw(st.integers(0, 3)) and hints:
        hint = draw(st.sampled_from(hints))
    value_texts = near_texts = VALUE_TEXTS
    if hint is None:
        path = ".".join(draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)))
    else:
        path = hint[0]
        near_texts = st.sampled_from(hint[1])
        value_texts = st.one_of(near_texts, VALUE_TEXTS)
    op = draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "in", "is"]))
    prefix = "not." if draw(st.booleans()) else ""
    if op == "is":
        operand = draw(st.sampled_from(["null", "true", "false"]))
    elif op == "in":
        items = draw(st.lists(st.tuples(value_texts, st.booleans()), max_size=4))
        operand = "(" + ",".join(list_item(v, q) for v, q in items) + ")"
    else:
        value = draw(near_texts if hint and draw(st.booleans()) else value_texts)
        if in_or:
            value = list_item(value, draw(st.booleans())) if value else value
        operand = value
    return path, f"{prefix}{op}.{operand}"


@st.composite
def filter_pairs(draw: st.DrawFn, hints: Leaves) -> Pairs:
    pairs: Pairs = []
    for path, operation in draw(st.lists(condition_texts(False, hints), max_size=3)):
        pairs.append((f"data.{path}", operation))
    for group in draw(st.lists(st.lists(condition_texts(True, hints), min_size=1, max_size=3),
                               max_size=2)):
        pairs.append(("or", "(" + ",".join(f"data.{p}.{o}" for p, o in group) + ")"))
    if not pairs:
        path, operation = draw(condition_texts(False, hints))
        pairs.append((f"data.{path}", operation))
    return pairs
