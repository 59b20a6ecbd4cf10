"""The edge's Prometheus families, built at scrape time from the plain counters the hub, the HTTP
middleware and the Kafka watch keep: nothing here runs per delivery or per client write.

A scrape walks the live streams once only to find the durable ones' lag (when there are any), and
reads everything else in constant time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from app.durable.stream import TrackedConnection
from app.fanout.subscribers import LIVE
from app.observe.http import HttpFigures
from streams.metrics import histogram_family

# Every family the edge exports (the Grafana board and the alert rules may name only these).
EDGE_FAMILIES = (
    "eventstream_streams_active", "eventstream_streams_max", "eventstream_stream_opens_total",
    "eventstream_deliveries_total", "eventstream_delivery_latency_seconds", "eventstream_published_total",
    "eventstream_publish_latency_seconds", "eventstream_slow_client_fallbacks_total",
    "eventstream_slow_clients_closed_total", "eventstream_catchup_readers_busy", "eventstream_catchup_readers_max",
    "eventstream_catchup_waiting_clients", "eventstream_replay_hits_total", "eventstream_undecodable_records_total",
    "eventstream_kafka_up", "eventstream_connections_lag_records", "eventstream_worker_group_members",
    "eventstream_worker_group_lag_records", "eventstream_http_requests_total", "eventstream_edge_ready",
)


def durable_lag(hub: Any) -> list[int]:
    """Return the lag (records) of each durable stream of this edge: frames queued while live, else
    the records between its catch-up position and the tails."""
    out = []
    for sub in hub.subscribers:
        if not isinstance(sub.conn, TrackedConnection):
            continue
        if sub.state == LIVE or sub.position is None:
            out.append(len(sub.conn.buffer))
            continue
        behind = 0
        for topic, offsets in sub.position.items():
            tail = hub.tails.get(topic)
            if tail is not None:
                behind += sum(max(0, end - at) for end, at in zip(tail.pos, offsets, strict=False))
        out.append(behind)
    return out


class EdgeCollector(Collector):
    """Read the edge's counters when Prometheus scrapes."""

    def __init__(self, state: Any, figures: HttpFigures) -> None:
        self.state = state  # the app's state: services, hub and watch appear once the lifespan runs
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        """Yield every edge family from the current counters."""
        yield from self._http()
        services = getattr(self.state, "services", None)
        hub = getattr(self.state, "hub", None)
        watch = getattr(self.state, "watch", None)
        ready = services is not None and services.ready.is_set()
        yield GaugeMetricFamily("eventstream_edge_ready", "1 when this edge has connected every component.",
                                value=1 if ready else 0)
        up = GaugeMetricFamily("eventstream_kafka_up", "1 when Kafka answered the edge's last probe (every 5 s).")
        up.add_metric([], 1 if ready and (watch is None or watch.kafka["up"]) else 0)
        yield up
        if hub is not None:
            yield from self._hub(hub, services)
        if watch is not None:
            yield from self._group(watch)

    def _http(self) -> Iterator[Metric]:
        f = self.figures
        requests = CounterMetricFamily("eventstream_http_requests", "HTTP responses by route template, method "
                                                                    "and status.", labels=["route", "method", "status"])
        for (route, method, status), n in sorted(f.requests.items()):
            requests.add_metric([route, method, status], n)
        yield requests
        opens = CounterMetricFamily("eventstream_stream_opens", "Event stream requests by outcome.",
                                    labels=["outcome"])
        for outcome, n in sorted(f.stream_opens.items()):
            opens.add_metric([outcome], n)
        yield opens
        published = CounterMetricFamily("eventstream_published", "Publish requests by outcome.", labels=["outcome"])
        for outcome, n in sorted(f.published.items()):
            published.add_metric([outcome], n)
        yield published
        yield histogram_family("eventstream_publish_latency_seconds",
                               "HTTP publish request to Kafka's acknowledgment (accepted publishes).",
                               f.publish_latency)

    def _hub(self, hub: Any, services: Any) -> Iterator[Metric]:
        durable = len(services.connections.live) if services is not None else 0
        named = services.endpoints.streams_here() if services is not None else 0
        shared = sum(len(streams) for streams in services.connections.shared.values()) if services is not None else 0
        streams = GaugeMetricFamily("eventstream_streams_active", "Open SSE streams by kind (plain, durable, "
                                                                  "shared: members of shared connections, "
                                                                  "endpoint: named endpoints, stats: the edge's "
                                                                  "own stats stream).", labels=["kind"])
        streams.add_metric(["plain"], max(0, len(hub.subscribers) - durable - named))
        streams.add_metric(["durable"], durable)
        streams.add_metric(["shared"], shared)
        streams.add_metric(["endpoint"], named)
        streams.add_metric(["stats"], self.figures.stats_streams)
        yield streams
        yield GaugeMetricFamily("eventstream_streams_max", "Stream limit of this edge (ES_STREAM_MAX_CLIENTS).",
                                value=hub.settings.stream_max_clients)
        yield CounterMetricFamily("eventstream_deliveries", "Events written to clients (live, replayed, caught up).",
                                  value=hub.deliveries)
        yield histogram_family("eventstream_delivery_latency_seconds",
                               "Ingress append to the frame written to the clients' sockets, once per event and "
                               "filter group.", hub.latency)
        yield CounterMetricFamily("eventstream_slow_client_fallbacks", "Clients sent back to catch-up because "
                                                                      "their buffer overflowed.", value=hub.fallbacks)
        yield CounterMetricFamily("eventstream_slow_clients_closed", "Clients closed because they stayed too slow.",
                                  value=hub.slow_closed)
        yield GaugeMetricFamily("eventstream_catchup_readers_busy", "Catch-up readers running a job.",
                                value=hub.catchup.busy)
        yield GaugeMetricFamily("eventstream_catchup_readers_max",
                                "Catch-up readers at most (ES_STREAM_CATCHUP_READERS).", value=hub.catchup.size)
        yield GaugeMetricFamily("eventstream_catchup_waiting_clients", "Clients waiting for a catch-up reader.",
                                value=hub.catchup.waiting)
        yield CounterMetricFamily("eventstream_replay_hits", "Clients served from the tails' replay buffers.",
                                  value=hub.replays)
        undecodable = CounterMetricFamily("eventstream_undecodable_records", "Records the edge skipped because "
                                                                             "they are not events, by topic.",
                                          labels=["topic"])
        counts = dict.fromkeys(hub.tails, 0)  # every tailed topic, so a rate() has a series from the start
        counts.update(hub.decoder.undecodable)  # topic -> records skipped (app/fanout/records.py)
        for topic, n in sorted(counts.items()):
            undecodable.add_metric([topic], n)
        yield undecodable
        lag = durable_lag(hub) if durable else []
        connections = GaugeMetricFamily("eventstream_connections_lag_records", "Lag of the durable connections "
                                                                               "streaming here, as max and sum.",
                                        labels=["aggregate"])
        connections.add_metric(["max"], max(lag, default=0))
        connections.add_metric(["sum"], sum(lag))
        yield connections

    def _group(self, watch: Any) -> Iterator[Metric]:
        group = watch.group
        if group.get("error") is not None:
            return
        yield GaugeMetricFamily("eventstream_worker_group_members", "Members of the routing workers' consumer "
                                                                    "group (Kafka's admin API).",
                                value=len(group["members"]))
        yield GaugeMetricFamily("eventstream_worker_group_lag_records", "Ingress records not committed by the "
                                                                        "worker group.", value=group["total_lag"])


def edge_registry(state: Any, figures: HttpFigures) -> CollectorRegistry:
    """Return a registry of the edge's families plus the process, platform and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(state, figures))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
