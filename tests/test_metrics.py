"""GET /metrics from the hub's counters, and the per-connection log lines."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sse import open_stream
from support import StartServer, publish

from sse_stream.core.stats import MAX_PATTERN_LABELS, OTHER, Buckets


async def _scrape_text(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text: str = await response.text()
            return text


async def _scrape(url: str) -> dict[str, float]:
    text = await _scrape_text(url)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def test_metrics_count_streams_deliveries_replays_and_lag(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server()
    metrics_url = str(server.make_url("/metrics"))
    base = str(server.make_url("/streams/"))
    before = await _scrape(metrics_url)
    await publish(db, stream, "t", {"n": 0})
    async with open_stream(base + stream) as a, open_stream(base + stream) as b, \
            open_stream(base + f"{stream}.*") as c, open_stream(base + f"{stream}.x.>") as d, \
            open_stream(base + stream + "?last_event_id=0&type=zzz") as e:
        for sse in (a, b, c, d, e):
            await sse.until(lambda parser: parser.last_event_id != "")
        for n in range(1, 4):
            await publish(db, stream, "t", {"n": n})
        await a.take(3)
        await b.take(3)
        after = await _scrape(metrics_url)
    assert after["sse_stream_open_streams"] == 5
    assert not any(k.startswith("sse_stream_open_streams{") for k in after)
    assert after["sse_stream_events_delivered_total"] - before.get(
        "sse_stream_events_delivered_total", 0) >= 6
    assert after["sse_stream_streams_opened_total"] == 5
    assert after["sse_stream_wakeups_total"] >= 1
    # One observation per finished wake-up (one may be in progress).
    assert after["sse_stream_wakeups_total"] - 1 <= after["sse_stream_events_per_wakeup_count"] \
        <= after["sse_stream_wakeups_total"]
    assert after["sse_stream_events_per_wakeup_sum"] >= 3
    assert after["sse_stream_delivery_lag_seconds_count"] >= 3
    assert after['sse_stream_delivery_lag_seconds_bucket{le=+Inf}'] == \
        after["sse_stream_delivery_lag_seconds_count"]
    assert "sse_stream_listener_reconnects_total" in after
    assert after["sse_stream_ready"] == 1
    # The filtered replay from 0 read the table (it matched nothing: type zzz).
    assert after["sse_stream_database_reads_total"] > after["sse_stream_wakeups_total"]
    after_close = await _scrape(metrics_url)
    assert after_close["sse_stream_open_streams"] == 0


async def test_no_client_chosen_text_in_metrics_by_default(
        start_server: StartServer, stream: str) -> None:
    server = await start_server()
    url = str(server.make_url(f"/streams/{stream}.secret,{stream}.*?type=t{stream}"))
    async with open_stream(url) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        text = await _scrape_text(str(server.make_url("/metrics")))
    assert "sse_stream_open_streams 1.0" in text
    assert stream not in text


async def test_stream_labels_when_turned_on_are_bounded(start_server: StartServer,
                                                        stream: str) -> None:
    server = await start_server(metrics_stream_labels=True)
    metrics_url = str(server.make_url("/metrics"))
    names = [f"{stream}.{n}" for n in range(MAX_PATTERN_LABELS + 2)]
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

        async def open_one(name: str) -> None:
            sse = await stack.enter_async_context(
                open_stream(str(server.make_url(f"/streams/{name}")), session=session))
            await sse.until(lambda parser: parser.last_event_id != "")

        await open_one(names[0])
        assert (await _scrape(metrics_url))[f"sse_stream_open_streams{{streams={names[0]}}}"] == 1
        for name in names[1:]:
            await open_one(name)
        after = await _scrape(metrics_url)
    labels = {key.split("streams=", 1)[1][:-1]: value for key, value in after.items()
              if key.startswith("sse_stream_open_streams{")}
    # The first 50 distinct values (in the order seen) get a label of their
    # own for the life of the process; every later one is counted as "other".
    assert len(labels) == MAX_PATTERN_LABELS + 1 and labels.pop(OTHER) == 2
    assert names[0] in labels and set(labels) <= set(names)
    assert set(labels.values()) == {1}
    assert "sse_stream_open_streams" not in after


async def test_replayed_events_are_counted(start_server: StartServer, db: asyncpg.Connection,
                                           stream: str) -> None:
    server = await start_server()
    for n in range(4):
        await publish(db, stream, "t", {"n": n})
    async with open_stream(str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))) as sse:
        assert len(await sse.rest()) == 4
    samples = await _scrape(str(server.make_url("/metrics")))
    assert samples["sse_stream_events_replayed_total"] == 4


async def test_one_log_line_at_open_and_close(start_server: StartServer, db: asyncpg.Connection,
                                              stream: str, caplog: pytest.LogCaptureFixture) -> None:
    server = await start_server()
    caplog.set_level(logging.INFO, logger="sse_stream.web.handlers")
    await publish(db, stream, "t", {"n": 1})
    async with open_stream(str(server.make_url(f"/streams/{stream}?last_event_id=0&live=false"))) as sse:
        await sse.rest()
    lines = [r.getMessage() for r in caplog.records if r.name == "sse_stream.web.handlers"]
    opened = [line for line in lines if line.startswith("stream opened")]
    closed = [line for line in lines if line.startswith("stream closed")]
    assert len(opened) == 1 and f"streams={stream}" in opened[0] and "start=0-0" in opened[0]
    assert len(closed) == 1 and "events=1 " in closed[0]
    size = int(closed[0].split("bytes=")[1].split()[0])
    assert size > 100 and "seconds=" in closed[0]


def test_buckets_are_cumulative() -> None:
    buckets = Buckets((1, 5))
    for value in (0, 1, 3, 7, 9):
        buckets.observe(value)
    assert buckets.cumulative() == [("1", 2), ("5", 3), ("+Inf", 5)]
    assert buckets.total == 20 and buckets.count == 5
