"""The live page at GET / in a real headless Chromium, across a server restart."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from conftest import publish
from sse_stream.embedded import free_port
from test_serve import ROOT, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent (Debian package chromium)")


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
        dsn: str, db: asyncpg.Connection, stream: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    server = ServerProcess(dsn, port, tmp_path / "serve.log", "--retry", "200")
    try:
        await server.ready()
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 640})
            try:
                page = context.pages[0] if context.pages else await context.new_page()
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
                server = ServerProcess(dsn, port, tmp_path / "serve.log", "--retry", "200")
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
                await page.screenshot(path=str(tmp_path / "live-page.png"))
            finally:
                await context.close()
    finally:
        server.stop()
    shot = (tmp_path / "live-page.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    # The README's picture: written when missing or on request, so that a
    # test run does not rewrite a tracked file every time.
    docs = ROOT / "docs" / "live-page.png"
    if not docs.exists() or os.environ.get("SSE_STREAM_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "live-page.png", docs)
