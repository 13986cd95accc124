"""The browser client /client.js in a real headless Chromium, against real servers.

Each case loads a tiny harness page on the server's origin (Playwright
answers /harness.html itself; /client.js and the streams come from the
server under test) that collects what the client delivers into arrays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Route, async_playwright
from support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SECRET,
    Serve,
    StartServer,
    eventually,
    needs_chromium,
    publish,
    table_ids,
    token,
)

from sse_stream.core.settings import Settings
from sse_stream.db.embedded import free_port
from sse_stream.db.retention import prune
from sse_stream.db.store import EventStore
from sse_stream.web.app import create_app
from sse_stream.web.handlers import HUB

HARNESS = """<!doctype html><meta charset="utf-8"><title>client.js harness</title>
<script type="module">
import { subscribe, SseParser } from "/client.js";
window.SseParser = SseParser;
window.start = (url, options = {}) => {
  window.got = []; window.gaps = []; window.states = []; window.errors = [];
  window.sub = subscribe(url, {
    ...options,
    token: options.token === "ask" ? () => window.mintToken() : options.token,
    onEvent: (event) => got.push(event),
    onGap: (gap) => gaps.push({gap, position: sub.lastEventId}),
    onStateChange: (state) => states.push(state),
    onError: (error) => errors.push({message: error.message, status: error.status, fatal: error.fatal}),
  });
};
window.ready = true;
</script>"""


@dataclass
class Harness:
    page: Page
    page_errors: list[str]  # exceptions nobody caught in the page

    async def start(self, url: str, **options: Any) -> None:
        await self.page.evaluate("([url, options]) => start(url, options)", [url, options])

    async def until(self, condition: str, timeout: float = 20) -> None:
        await self.page.wait_for_function(condition, timeout=timeout * 1000)

    async def ids(self, count: int | None = None, timeout: float = 20) -> list[int]:
        """The ids delivered so far (after waiting for `count` of them)."""
        if count is not None:
            await self.until(f"got.length >= {count}", timeout)
        ids: list[int] = await self.page.evaluate("got.map((e) => e.id)")
        return ids

    async def get(self, expression: str) -> Any:
        return await self.page.evaluate(expression)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_harness(browser: Browser, origin: str, **functions: Any) -> Harness:
    """The harness page on `origin`, with `functions` callable from the page."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    for name, function in functions.items():
        await page.expose_function(name, function)

    async def fulfill(route: Route) -> None:
        await route.fulfill(body=HARNESS, content_type="text/html; charset=utf-8")

    await page.route(origin + "/harness.html", fulfill)
    await page.goto(origin + "/harness.html")
    await page.wait_for_function("window.ready === true", timeout=10_000)
    return Harness(page, errors)


# -- serving -----------------------------------------------------------------------------


async def test_client_files_are_served_with_types_and_revalidation(start_server: StartServer) -> None:
    server = await start_server()
    async with aiohttp.ClientSession() as session:
        for path, content_type in (("/client.js", "text/javascript; charset=utf-8"),
                                   ("/client.d.ts", "application/typescript; charset=utf-8")):
            async with session.get(server.make_url(path)) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == content_type
                assert response.headers["Cache-Control"] == "public, max-age=3600"
                etag = response.headers["ETag"]
                body = await response.text()
            assert "export function subscribe" in body or "export declare function subscribe" in body
            async with session.get(server.make_url(path),
                                   headers={"If-None-Match": f'"other", W/{etag}'}) as response:
                assert response.status == 304
                assert response.headers["ETag"] == etag
                assert await response.read() == b""
        async with session.get(server.make_url("/client.js")) as response:
            assert response.headers["X-TypeScript-Types"] == "/client.d.ts"


# -- the parser, in the browser ----------------------------------------------------------


@needs_chromium
async def test_parser_handles_any_line_end_and_any_chunk_boundary(
        browser: Browser, start_server: StartServer) -> None:
    server = await start_server()
    harness = await open_harness(browser, str(server.make_url("")).rstrip("/"))
    result = await harness.get(r"""(() => {
      const text = "\ufeffretry: 250\r\n: comment\r\nid: 1-1\revent: order.created\ndata: {\"id\":1}\r\n\r\n"
        + "id: 1-2\n\n" + "id: 1-3\ndata:x\ndata\ndata:  y\n\n" + "id: bad\0\nid\0: 9\ndata: z\n\n"
        + "data: é€𝄞\n\n" + "id: 1-9\ndata: never dispatched";
      const run = (chunks) => {
        const out = [];
        const parser = new SseParser((m) => out.push(m), "0");
        for (const chunk of chunks) parser.feed(chunk);
        return {out, last: parser.lastEventId, retry: parser.retry};
      };
      const whole = run([text]);
      const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
      let splits = true;
      for (let i = 0; i <= text.length; i++) splits &&= same(run([text.slice(0, i), text.slice(i)]), whole);
      return {whole, splits, chars: same(run([...text]), whole)};
    })()""")
    assert result["splits"] and result["chars"]
    assert result["whole"]["out"] == [
        {"event": "order.created", "data": '{"id":1}', "lastEventId": "1-1"},
        {"event": "message", "data": None, "lastEventId": "1-2"},  # a bare id: moves the position
        {"event": "message", "data": "x\n\n y", "lastEventId": "1-3"},
        {"event": "message", "data": "z", "lastEventId": "1-3"},  # ids with NUL are ignored
        {"event": "message", "data": "é€𝄞", "lastEventId": "1-3"},
    ]
    assert result["whole"]["last"] == "1-3"  # an unfinished message moves nothing
    assert result["whole"]["retry"] == 250
    assert harness.page_errors == []


# -- resuming ------------------------------------------------------------------------------


@needs_chromium
@pytest.mark.timeout(90)
async def test_server_restart_mid_stream_loses_and_doubles_nothing(
        browser: Browser, serve: Serve, db: asyncpg.Connection, stream: str) -> None:
    port = free_port()
    server = serve("--retry", "200", port=port)
    try:
        await server.ready()
        harness = await open_harness(browser, server.url)
        first = [await publish(db, stream, "order.created", {"n": n}) for n in range(3)]
        await harness.start(f"/streams/{stream}", lastEventId="0")
        assert await harness.ids(3) == first
        await harness.until("sub.state === 'open'")
        live = [await publish(db, stream, "order.paid", {"n": n}) for n in range(3, 5)]
        assert await harness.ids(5) == first + live

        assert await asyncio.to_thread(server.stop) == 0  # ends every stream cleanly
        await harness.until("sub.state === 'reconnecting'", timeout=15)
        down = [await publish(db, stream, "order.shipped", {"n": n}) for n in range(5, 8)]
        server = serve("--retry", "200", port=port)
        await server.ready()
        up = [await publish(db, stream, "order.created", {"n": n}) for n in range(8, 10)]
        await harness.until(f"got.some((e) => e.id === {up[-1]})", timeout=30)
        got = await harness.ids()
        assert got == first + live + down + up == await table_ids(db, stream)
        states = await harness.get("states")
        assert states[:2] == ["connecting", "open"] and states[-1] == "open"
        assert "reconnecting" in states and "closed" not in states
        assert not any(error["fatal"] for error in await harness.get("errors"))
        assert await harness.get("sub.lastEventId")  # a position to save
        assert harness.page_errors == []
    finally:
        server.stop()


@needs_chromium
@pytest.mark.timeout(60)
async def test_token_rotation_before_exp_without_gap_or_repeat(
        browser: Browser, start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    # Tokens live 6 s; the server warns 5 s before exp: about a second after
    # each connection, the client asks token() again and reconnects.
    server = await start_server(jwt_secret=SECRET, token_expiry_margin=5.0, heartbeat=0.5,
                                retry=300)
    minted: list[tuple[float, float]] = []  # (when, exp) of every token handed out

    def mint_token() -> str:
        exp = time.time() + 6
        minted.append((time.time(), exp))
        return jwt.encode({"sse_stream": {"subscribe": [stream]}, "exp": exp}, SECRET,
                          algorithm="HS256")

    harness = await open_harness(browser, str(server.make_url("")).rstrip("/"),
                                 mintToken=mint_token)
    await harness.start(f"/streams/{stream}", token="ask")
    await harness.until("sub.state === 'open' && sub.lastEventId !== ''")
    published: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(minted) < 4:  # three renewals while events keep coming
        assert loop.time() < deadline, f"only {len(minted)} token(s) asked for"
        published.append(await publish(db, stream, "tick", {"n": len(published)}))
        await asyncio.sleep(0.05)
    published.append(await publish(db, stream, "tick", {"n": -1}))
    await harness.until(f"got.some((e) => e.id === {published[-1]})")
    assert await harness.ids() == published  # nothing missing, nothing twice
    assert await harness.get("gaps") == []
    # Each renewal came before the old token's exp: the client did not wait
    # for the old stream to end.
    for (_, exp), (renewed, _) in pairwise(minted):
        assert renewed < exp - 1
    assert not [e for e in await harness.get("errors") if e["status"] == 401]
    assert harness.page_errors == []


@needs_chromium
@pytest.mark.timeout(60)
async def test_gap_after_pruning_reaches_on_gap_and_moves_the_position(
        browser: Browser, fresh_dsn: str, stream: str) -> None:
    db = await asyncpg.connect(fresh_dsn)
    server = TestServer(create_app(Settings(dsn=fresh_dsn, heartbeat=0.5)), host="127.0.0.1")
    store = EventStore(fresh_dsn)
    try:
        await server.start_server()
        harness = await open_harness(browser, str(server.make_url("")).rstrip("/"))
        old = [await publish(db, stream, "order.created", {"n": n}) for n in range(3)]
        await harness.start(f"/streams/{stream}", lastEventId="0")
        assert await harness.ids(3) == old
        saved = await harness.get("got[0].position")  # a frontend saved this, then went away
        last_old = await harness.get("got[2].position")
        await harness.page.evaluate("sub.close()")

        await store.open()
        assert (await prune(store, timedelta(0))).deleted == 3
        new = [await publish(db, stream, "order.paid", {"n": n}) for n in range(3, 5)]
        await harness.start(f"/streams/{stream}", lastEventId=saved)
        assert await harness.ids(2) == new
        gaps = await harness.get("gaps")
        assert gaps == [{"gap": {"requested_after": saved, "resumed_after": last_old},
                         "position": last_old}]
        assert harness.page_errors == []
    finally:
        await store.close()
        await server.close()
        await db.close()


# -- what is delivered ---------------------------------------------------------------------


@needs_chromium
@pytest.mark.timeout(60)
async def test_pattern_over_several_types_delivers_all_in_order_then_close_stops(
        browser: Browser, start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(heartbeat=0.5)
    harness = await open_harness(browser, str(server.make_url("")).rstrip("/"))
    writes = [(f"{stream}.a", "order.created"), (f"{stream}.b", "order.paid"),
              (f"{stream}.a", "note.added"), (f"{stream}.c.d", "order.created"),
              (f"{stream}.b", "invoice.sent"), (f"{stream}.a", "order.shipped")]

    async def write_all() -> list[int]:
        wanted = []
        for name, type_ in writes:
            id_ = await publish(db, name, type_, {"type": type_})
            if name.count(".") == 1 and type_ != "note.added":
                wanted.append(id_)
        return wanted

    replayed = await write_all()
    await harness.start(f"/streams/{stream}.*?type=order.*&type=invoice.sent", lastEventId="0")
    assert await harness.ids(4) == replayed
    await harness.until("sub.state === 'open'")
    live = await write_all()
    assert await harness.ids(8) == replayed + live
    types = await harness.get("got.map((e) => e.type)")
    assert types == ["order.created", "order.paid", "invoice.sent", "order.shipped"] * 2

    # close() aborts the request: the server's stream ends.
    await harness.page.evaluate("sub.close()")
    assert await harness.get("sub.state") == "closed"
    await eventually(lambda: not server.app[HUB].subscriptions, 10,
                     "the stream stayed open after close()")
    assert harness.page_errors == []


@needs_chromium
@pytest.mark.timeout(60)
async def test_refusals_401_asks_token_again_403_closes(
        browser: Browser, start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    tokens = iter(["not-a-token", token([stream])])
    harness = await open_harness(browser, str(server.make_url("")).rstrip("/"),
                                 mintToken=lambda: next(tokens))
    first = await publish(db, stream, "t", {})
    await harness.start(f"/streams/{stream}", token="ask", lastEventId="0")
    assert await harness.ids(1) == [first]
    errors = await harness.get("errors")
    assert [(e["status"], e["fatal"]) for e in errors] == [(401, False)]

    await harness.start(f"/streams/{stream}.other", token=token([stream]))
    await harness.until("sub.state === 'closed'")
    errors = await harness.get("errors")
    assert [(e["status"], e["fatal"]) for e in errors] == [(403, True)]
    assert await harness.get("states") == ["connecting", "closed"]


@needs_chromium
@pytest.mark.timeout(60)
async def test_where_claim_restricts_what_the_page_sees(
        browser: Browser, start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    bound = token([stream], where=["data.customer_id=eq.42"])
    events = [(await publish(db, stream, "order.created", {"customer_id": c}), c)
              for c in (42, 7, 42, 7)]

    harness = await open_harness(browser, str(server.make_url("")).rstrip("/"))
    # Whatever the query asks, the token's filter holds.
    await harness.start(f"/streams/{stream}?or=(data.customer_id.eq.7,data.customer_id.eq.42)",
                        token=bound, lastEventId="0")
    await harness.until("got.length >= 2 && sub.state === 'open'")
    events += [(await publish(db, stream, "order.paid", {"customer_id": c}), c)
               for c in (7, 42, 7, 42)]
    wanted = [id_ for id_, customer in events if customer == 42]
    await harness.until(f"got.some((e) => e.id === {wanted[-1]})")
    assert await harness.ids() == wanted
    assert harness.page_errors == []
