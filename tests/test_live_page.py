"""The live page at GET / in a real headless Chromium: across a server restart,
its view in the URL, the token, publishing, pause and resume."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import jwt
import pytest
from support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    SECRET,
    Serve,
    StartServer,
    eventually,
    needs_chromium,
    publish,
)

from sse_stream.db.embedded import free_port
from sse_stream.web.handlers import HUB

pytestmark = needs_chromium


@asynccontextmanager
async def chromium_page(profile: Path, height: int) -> AsyncIterator[Any]:
    """A page of a headless Chromium with a profile of its own, 1200 pixels
    wide; the browser closes after the block."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": height})
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


async def _ids(page: object) -> list[int]:
    rows = await page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#events tr.event", "rows => rows.map(r => Number(r.dataset.id))")
    return list(reversed(rows))  # newest first on the page


async def _wait_rows(page: object, count: int, timeout: float = 30) -> list[int]:
    await page.wait_for_function(  # type: ignore[attr-defined]
        f"document.querySelectorAll('#events tr.event').length >= {count}", timeout=timeout * 1000)
    return await _ids(page)


@pytest.mark.timeout(180)
async def test_live_page_shows_events_and_resumes_after_restart(
        serve: Serve, db: asyncpg.Connection, stream: str, tmp_path: Path) -> None:
    port = free_port()
    server = serve("--retry", "200", port=port)
    try:
        await server.ready()
        async with chromium_page(tmp_path / "profile", 640) as page:
            await page.goto(f"{server.url}/")
            await page.fill("#streams", stream)
            await page.fill("#filters", "data.n=gte.0")
            await page.select_option("#start", "0")
            first = [await publish(db, stream, "order.created", {"n": n}) for n in range(2)]
            await page.click("#watch")
            assert await _wait_rows(page, 2) == first
            await page.wait_for_function("document.getElementById('state').textContent === 'open'")
            live = [await publish(db, stream, "order.paid", {"n": n}) for n in range(2, 4)]
            assert await _wait_rows(page, 4) == first + live
            last_before = await page.text_content("#last")

            # The server restarts; events are written while it is away.
            assert await asyncio.to_thread(server.stop) == 0
            await page.wait_for_function(
                "['reconnecting', 'connecting'].includes(document.getElementById('state').textContent)",
                timeout=15_000)
            down = [await publish(db, stream, "order.shipped", {"n": n}) for n in range(4, 6)]
            server = serve("--retry", "200", port=port)
            await server.ready()
            up = [await publish(db, stream, "order.created", {"n": n}) for n in range(6, 8)]
            await page.wait_for_function("document.getElementById('state').textContent === 'open'",
                                         timeout=30_000)
            shown = await _wait_rows(page, 8)
            assert shown == first + live + down + up  # none missing, none doubled
            assert await page.text_content("#count") == "8"
            assert int(await page.text_content("#reconnects") or "0") >= 1
            last = await page.text_content("#last")
            assert last and last != last_before and last != "none"
            # A filter the page sends along is applied by the server.
            await publish(db, stream, "order.created", {"n": -1})
            more = await publish(db, stream, "order.created", {"n": 9})
            assert (await _wait_rows(page, 9))[-1] == more
    finally:
        server.stop()


async def _value(page: object, selector: str) -> str:
    value: str = await page.input_value(selector)  # type: ignore[attr-defined]
    return value


@pytest.mark.timeout(120)
async def test_live_page_view_lives_in_the_url_and_the_token_shows_publishing(
        start_server: StartServer, db: asyncpg.Connection, stream: str, tmp_path: Path) -> None:
    server = await start_server(jwt_secret=SECRET)
    origin = str(server.make_url("")).rstrip("/")
    orders = f"{stream}.orders"
    first = [await publish(db, orders, type_, {"order": 1040 + n, "customer_id": 42,
                                               "total": 19.5 * (n + 1)})
             for n, type_ in enumerate(["order.created", "order.paid", "order.created"])]
    await publish(db, f"{stream}.audit", "audit.logged", {"total": 1})  # not an order.* type
    exp = int(time.time()) + 3600
    writer = jwt.encode({"sse_stream": {"subscribe": [f"{stream}.>"], "publish": [orders]},
                         "exp": exp}, SECRET, algorithm="HS256")
    reader = jwt.encode({"sse_stream": {"subscribe": [f"{stream}.>"]}, "exp": exp}, SECRET,
                        algorithm="HS256")
    view = {"streams": [f"{stream}.*"], "type": ["order.*"], "data.total": ["gte.0"],
            "from": ["0"]}
    async with chromium_page(tmp_path / "profile", 800) as page:
        await page.goto(f"{origin}/")
        assert await page.is_hidden("#publish")
        await page.fill("#token", writer)  # kept in the tab, not in links
        assert await page.is_visible("#publish")

        # A link opens the view: the form shows it and the page watches at once.
        await page.goto(f"{origin}/?" + urlencode(view, doseq=True))
        assert [await _value(page, s) for s in ("#streams", "#types", "#filters", "#start")] \
            == [f"{stream}.*", "order.*", "data.total=gte.0", "0"]
        assert await _wait_rows(page, 3) == first
        await page.wait_for_function("document.getElementById('state').textContent === 'open'")

        # The token may publish to its stream: the form is there, filled in.
        assert await _value(page, "#publish-stream") == orders
        await page.fill("#publish-type", "order.shipped")
        await page.fill("#publish-data",
                        '{"order": 1040, "customer_id": 42, "total": 19.5, "carrier": "DHL"}')
        await page.click("#publish-send")
        await page.wait_for_function(
            "document.getElementById('published').textContent.startsWith('published id')")
        shipped = int((await page.text_content("#published") or "").split()[-1])
        assert await _wait_rows(page, 4) == first + [shipped]
        await page.wait_for_function("document.getElementById('rate').textContent !== '0'")
        assert (await page.text_content("#lag") or "").endswith(("ms", " s", "min", " h"))

        # Pause closes the stream; resume shows what came meanwhile, once.
        await page.click("#pause")
        assert await page.text_content("#state") == "paused"
        assert await page.text_content("#pause") == "Resume"
        await eventually(lambda: not server.app[HUB].subscriptions, 10,
                         "the stream stayed open while paused")
        meanwhile = await publish(db, orders, "order.paid", {"order": 1043, "customer_id": 42,
                                                             "total": 78.0})
        assert len(await _ids(page)) == 4
        await page.click("#pause")
        assert await _wait_rows(page, 5) == first + [shipped, meanwhile]

        # A click shows the whole envelope, pretty.
        await page.click(f"#events tr.event[data-id='{first[1]}']")
        detail = await page.text_content("#events tr.detail pre") or ""
        assert json.loads(detail)["id"] == first[1] and '\n  "data": {\n' in detail
        await page.screenshot(path=str(tmp_path / "live-page.png"))

        # Another view updates the link; reloading the link opens it again.
        await page.fill("#types", "order.paid")
        await page.click("#watch")
        assert await _wait_rows(page, 2) == [first[1], meanwhile]
        assert parse_qs(urlsplit(page.url).query) == {**view, "type": ["order.paid"]}
        await page.reload()
        assert await _value(page, "#types") == "order.paid"
        assert await _wait_rows(page, 2) == [first[1], meanwhile]
        assert writer not in page.url and await _value(page, "#token") == writer

        # A token that may not publish hides the form (the server decides anyway).
        await page.fill("#token", reader)
        assert await page.is_hidden("#publish")
    shot = (tmp_path / "live-page.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    # The picture in docs/clients.md: written when missing or on request, so that a
    # test run does not rewrite a tracked file every time.
    docs = ROOT / "docs" / "live-page.png"
    if not docs.exists() or os.environ.get("SSE_STREAM_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "live-page.png", docs)
