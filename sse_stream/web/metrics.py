"""Prometheus metrics, read from the hub's own counters at scrape time.

Nothing on the hot path touches a prometheus object: the hub counts with
plain integers (and two small bucket arrays updated once per wake-up or once
per event read, never per subscriber), and `HubCollector` turns them into
metric families when /metrics is scraped.

No label carries a client-chosen value unless the operator asks for it
(`metrics_stream_labels`): stream names can be user ids or other private
data, and anyone who can scrape would read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..core.stats import MAX_PATTERN_LABELS, OTHER, HubStats

__all__ = ["MAX_PATTERN_LABELS", "OTHER", "HubCollector", "webhook_families"]


class HubCollector(Collector):
    """Reads one process's hub, listener, store and retention on each scrape."""

    def __init__(self, source: Callable[[], dict[str, Any]], stream_labels: bool = False) -> None:
        # `source` returns the live objects (hub, listener, store, retention):
        # the app creates them in its lifecycle, after the registry exists.
        self.source = source
        self.stream_labels = stream_labels
        self.labelled: set[str] = set()

    def _label(self, text: str) -> str:
        if text in self.labelled:
            return text
        if len(self.labelled) < MAX_PATTERN_LABELS:
            self.labelled.add(text)
            return text
        return OTHER

    def collect(self) -> Iterator[Metric]:
        objects = self.source()
        hub = objects.get("hub")
        if hub is None:
            return
        listener, store, retention = (objects.get("listener"), objects.get("store"),
                                      objects.get("retention"))
        stats: HubStats = hub.stats
        subscriptions = list(hub.subscriptions)
        catching_up = sum(not subscription.joined for subscription in subscriptions)
        if self.stream_labels:
            open_streams = GaugeMetricFamily(
                "sse_stream_open_streams", "Open SSE streams, by the streams they asked for "
                f"(the first {MAX_PATTERN_LABELS} distinct values, then 'other').",
                labels=["streams"])
            by_label: dict[str, int] = {}
            for subscription in subscriptions:
                label = self._label(subscription.streams)
                by_label[label] = by_label.get(label, 0) + 1
            for label, count in sorted(by_label.items()):
                open_streams.add_metric([label], count)
            yield open_streams
        else:
            yield GaugeMetricFamily("sse_stream_open_streams", "Open SSE streams.",
                                    value=len(subscriptions))
        yield GaugeMetricFamily("sse_stream_streams_catching_up",
                                "Open streams reading from the table instead of the live flow.",
                                value=catching_up)

        def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_text, value=value)

        yield counter("sse_stream_events_delivered", "Events written to live streams.",
                      stats.delivered)
        yield counter("sse_stream_events_replayed", "Events written by catch-up (replay) reads.",
                      stats.replayed)
        yield counter("sse_stream_wakeups", "Shared reads started (NOTIFY, poll or reconnect).",
                      stats.wakeups)
        yield counter("sse_stream_events_read", "Events read by the shared live read.",
                      stats.events_read)
        yield counter("sse_stream_catchups", "Slow streams moved from the live flow back to "
                      "catching up from the table.", stats.catchups)
        yield counter("sse_stream_gaps", "sse.gap events sent (a start or a live stream that "
                      "retention overtook, or a position this database never handed out).",
                      stats.gaps)
        yield counter("sse_stream_streams_opened", "Streams opened.", stats.opened)
        reads = HistogramMetricFamily("sse_stream_events_per_wakeup",
                                      "Events read per wake-up of the shared read.")
        reads.add_metric([], stats.read_sizes.cumulative(), sum_value=stats.read_sizes.total)
        yield reads
        lag = HistogramMetricFamily(
            "sse_stream_delivery_lag_seconds",
            "Seconds from an event's created_at (the start of its writing transaction) to the "
            "shared fan-out that writes it to live streams; once per event read.")
        lag.add_metric([], stats.lag.cumulative(), sum_value=stats.lag.total)
        yield lag
        yield GaugeMetricFamily("sse_stream_ready", "1 when the last shared read reached the "
                                "database.", value=1 if hub.ready else 0)
        if listener is not None:
            yield counter("sse_stream_listener_reconnects",
                          "Times the LISTEN connection was lost and made again.",
                          listener.reconnects)
            yield counter("sse_stream_notifications", "NOTIFY wake-ups received.",
                          listener.notifications)
            yield GaugeMetricFamily("sse_stream_listener_connected",
                                    "1 while the LISTEN connection is up.",
                                    value=1 if listener.connected else 0)
        standby = hub.lag if hub.polling else None
        if hub.polling:
            yield counter("sse_stream_standby_probes", "Probes of the live standby's replay "
                          "position (each read follows only when it moved).", stats.probes)
            yield counter("sse_stream_standby_waits", "Reads that found a position the live "
                          "standby had not replayed yet (waited for, never a gap).",
                          stats.standby_waits)
        if standby is not None:
            yield GaugeMetricFamily("sse_stream_live_source_in_recovery", "1 while the live "
                                    "source is a standby (0 once promoted).",
                                    value=1 if standby.recovery else 0)
            yield GaugeMetricFamily("sse_stream_standby_replay_lag_seconds", "How far the live "
                                    "standby's replay is behind what it received, in seconds.",
                                    value=standby.seconds)
            yield GaugeMetricFamily("sse_stream_standby_replay_lag_bytes", "Bytes of the "
                                    "primary's WAL the live standby has not replayed.",
                                    value=standby.bytes)
        recent = hub.recent
        yield GaugeMetricFamily("sse_stream_recent_bytes", "Memory held by recent history "
                                "(--recent-bytes), about.", value=recent.bytes)
        yield GaugeMetricFamily("sse_stream_recent_events", "Events held in recent history.",
                                value=len(recent))
        yield counter("sse_stream_events_replayed_from_memory", "Events written by catch-ups "
                      "served from recent history instead of the table.", stats.replayed_recent)
        yield counter("sse_stream_match_errors", "Event and selector tests that raised "
                      "(logged; the event was not sent to that selector).", stats.match_errors)
        if store is not None:
            yield counter("sse_stream_database_reads", "Event reads (shared and catch-up).",
                          store.reads)
            yield counter("sse_stream_replica_reads", "Catch-up reads sent to the replica DSN.",
                          store.replica_reads)
            yield counter("sse_stream_skipped_rows", "Rows a reader could not turn into an "
                          "event (logged and skipped; never holds the live read back).",
                          store.skipped_rows)
            refused = CounterMetricFamily(
                "sse_stream_capacity_refusals", "Requests refused with 503 because the "
                "database capacity of their kind stayed busy.", labels=["kind"])
            waiting = GaugeMetricFamily(
                "sse_stream_capacity_waiting", "Requests waiting for a database connection "
                "of their kind.", labels=["kind"])
            for capacity in (store.reads_capacity, store.publish_capacity):
                refused.add_metric([capacity.name], capacity.refused)
                waiting.add_metric([capacity.name], capacity.waiting)
            yield refused
            yield waiting
        if retention is not None:
            yield counter("sse_stream_pruned_events", "Events deleted by retention.",
                          retention.deleted)
        deliverer = objects.get("deliverer")
        if deliverer is not None:
            yield from webhook_families(deliverer)


def webhook_families(deliverer: Any) -> Iterator[Metric]:
    """The deliverer's metrics, labelled by `Tally`; lag is for the webhooks
    this process holds, so that each webhook is counted by one process."""
    tally = deliverer.tally

    def by_label(name: str, help_text: str, values: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, help_text, labels=["webhook"])
        for label, value in sorted(values.items()):
            family.add_metric([label], value)
        return family

    yield by_label("sse_stream_webhook_attempts", "Webhook requests made.", tally.attempts)
    yield by_label("sse_stream_webhook_failures", "Webhook requests that failed (no 2xx).",
                   tally.failures)
    yield by_label("sse_stream_webhook_delivered_events", "Events acknowledged by a 2xx.",
                   tally.delivered)
    yield CounterMetricFamily("sse_stream_webhook_reads", "Webhook batches read from the table "
                              "(a webhook that keeps up takes its events from the shared read).",
                              value=tally.reads)
    states = GaugeMetricFamily("sse_stream_webhooks", "Webhooks by state (the whole database, "
                               "as this process last counted).", labels=["state"])
    for state, count in sorted(deliverer.states.items()):
        states.add_metric([state], count)
    yield states
    yield GaugeMetricFamily("sse_stream_webhooks_disabled", "Webhooks disabled after "
                            "continuous failure (or with filters that do not parse).",
                            value=deliverer.states.get("disabled", 0))
    yield GaugeMetricFamily("sse_stream_webhooks_held", "Webhooks this process delivers "
                            "(holds the lease of).", value=len(deliverer.targets))
    events = GaugeMetricFamily("sse_stream_webhook_lag_events", "Matching events after the "
                               "cursor (at least, past the count's scan budget).",
                               labels=["webhook"])
    seconds = GaugeMetricFamily("sse_stream_webhook_lag_seconds", "Age of the oldest "
                                "undelivered event (0: none).", labels=["webhook"])
    lag: dict[str, tuple[int, float]] = {}
    for id_, backlog in deliverer.backlogs.items():
        label = tally.label(id_)
        behind, age = lag.get(label, (0, 0.0))
        lag[label] = (behind + backlog.behind, max(age, backlog.age or 0.0))
    for label, (behind, age) in sorted(lag.items()):
        events.add_metric([label], behind)
        seconds.add_metric([label], age)
    yield events
    yield seconds
    latency = HistogramMetricFamily("sse_stream_webhook_request_seconds",
                                    "Webhook request time, start to response or failure.")
    latency.add_metric([], deliverer.sender.latency.cumulative(),
                       sum_value=deliverer.sender.latency.total)
    yield latency
