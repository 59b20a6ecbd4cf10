"""The edge's families at scrape time, from a hub without Kafka: every family present, latency once per
event and filter group, and streams counted by kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.fanout.hub import Hub
from app.observe import EDGE_FAMILIES, HttpFigures, edge_registry
from tests.unit.fakes import TOPIC, event


def state_for(hub: Hub, *, members: int = 2) -> Any:
    """Return app state around `hub` (its fake catch-up pool given the figures the real one has)."""
    hub.catchup.busy, hub.catchup.size, hub.catchup.waiting = 1, 8, 0  # type: ignore[attr-defined, misc]
    ready = asyncio.Event()
    ready.set()
    services = SimpleNamespace(ready=ready, connections=SimpleNamespace(live={}, shared={}),
                               endpoints=SimpleNamespace(streams_here=lambda: 0))
    watch = SimpleNamespace(kafka={"up": True}, group={"error": None, "members": [{}] * members, "total_lag": 7})
    return SimpleNamespace(services=services, hub=hub, watch=watch)


def scrape(state: Any, figures: HttpFigures | None = None) -> dict[str, list[Any]]:
    text = generate_latest(edge_registry(state, figures or HttpFigures())).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample(found: dict[str, list[Any]], name: str, family: str | None = None, **labels: str) -> float:
    for s in found[family or name.removesuffix("_total")]:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")


def test_every_edge_family_is_exported(hub: Hub) -> None:
    found = scrape(state_for(hub))
    assert {name.removesuffix("_total") for name in EDGE_FAMILIES} <= set(found)
    assert sample(found, "eventstream_kafka_up") == 1
    assert sample(found, "eventstream_worker_group_members") == 2
    assert sample(found, "eventstream_undecodable_records_total", "eventstream_undecodable_records",
                  topic=TOPIC) == 0


def test_latency_is_observed_once_per_event_and_group_not_per_client(hub: Hub, connect: Callable[..., Any]) -> None:
    for _ in range(5):
        connect({"types": ["a.*"]})
    connect({"types": ["a.b"]})
    tail = hub.tails[TOPIC]
    tail.ingress_ms = int(time.time() * 1000) - 20
    hub._dispatch(tail, 0, 0, event(0))
    assert hub.deliveries == 6
    assert hub.latency.count == 2  # two filter groups, six clients
    assert 0.015 < hub.latency.sum / hub.latency.count < 5
    found = scrape(state_for(hub))
    assert sample(found, "eventstream_delivery_latency_seconds_count", "eventstream_delivery_latency_seconds") == 2
    assert sample(found, "eventstream_deliveries_total") == 6


def test_records_without_ingress_time_are_delivered_but_not_timed(hub: Hub, connect: Callable[..., Any]) -> None:
    connect()
    hub._dispatch(hub.tails[TOPIC], 0, 0, event(0))
    assert hub.deliveries == 1 and hub.latency.count == 0


def test_streams_are_counted_by_kind(hub: Hub, connect: Callable[..., Any]) -> None:
    for _ in range(3):
        connect()
    figures = HttpFigures()
    figures.stats_streams = 1
    state = state_for(hub)
    state.services.connections.live = {"c1": {"status": "connected"}}
    state.services.connections.shared = {"c2": {"s1": print, "s2": print}}  # two member streams of one connection
    state.services.endpoints.streams_here = lambda: 1
    found = scrape(state, figures)
    kinds = {s.labels["kind"]: s.value for s in found["eventstream_streams_active"]}
    assert kinds == {"plain": 1, "durable": 1, "shared": 2, "endpoint": 1, "stats": 1}


def test_a_scrape_before_the_lifespan_says_the_edge_is_not_ready() -> None:
    found = scrape(SimpleNamespace())
    assert sample(found, "eventstream_edge_ready") == 0 and sample(found, "eventstream_kafka_up") == 0


def test_undecodable_records_are_exported_per_topic(hub: Hub) -> None:
    hub.decoder.undecodable["other"] = 3
    found = scrape(state_for(hub))
    counts = {s.labels["topic"]: s.value for s in found["eventstream_undecodable_records"] if s.name.endswith("_total")}
    assert counts == {TOPIC: 0, "other": 3}
