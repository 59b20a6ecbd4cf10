"""History pages from a real edge: filters, stable pagination while events keep arriving, cursors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration
HISTORY = "/api/v1/events/history"


@pytest.fixture(scope="module")
def history_settings(kafka_bootstrap: str) -> Settings:
    """Return settings shared by this module's edge and producer."""
    return private_settings(kafka_bootstrap)


@pytest.fixture(scope="module")
def edge(history_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Return one edge process for the module."""
    proc = start_edge(history_settings, tmp_path_factory.mktemp("edge"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def producer(history_settings: Settings) -> AsyncIterator[EventProducer]:
    """Return a producer on the module's settings."""
    async with EventProducer(history_settings, linger_ms=0) as producer:
        yield producer


def page(edge: Proc, flt: dict[str, Any], **params: Any) -> dict[str, Any]:
    """GET one history page and return its body."""
    resp = httpx.get(edge.url + HISTORY, params={"filter": orjson.dumps(flt).decode(), **params}, timeout=20)
    assert resp.status_code == 200, resp.text
    return resp.json()


def read_all(edge: Proc, flt: dict[str, Any], **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` to the end; return every event and the number of pages."""
    events, pages, cursor = [], 0, None
    while True:
        body = page(edge, flt, **params, **({"offset": cursor} if cursor else {}))
        events += body["events"]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return events, pages


async def test_pages_cover_everything_once_in_a_stable_order_while_events_arrive(
        edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 250)
    flt = {"topics": [topic]}
    first = page(edge, flt, limit=100)
    assert len(first["events"]) == 100 and first["next"]
    await publish_seq(producer, topic, 250, 50)  # arrive between pages: not part of this walk
    second = page(edge, flt, limit=100, offset=first["next"])
    again = page(edge, flt, limit=100, offset=first["next"])
    assert second == again  # a cursor always gives the same page
    third = page(edge, flt, limit=100, offset=second["next"])
    assert third["next"] is None and len(third["events"]) == 50
    seqs = [e["data"]["seq"] for e in first["events"] + second["events"] + third["events"]]
    assert_exact(seqs, range(250))
    keys = [(e["time"], e["topic"], e["partition"], e["offset"]) for e in first["events"] + second["events"]]
    per_partition: dict[int, list[int]] = {}
    for _, _, partition, offset in keys:
        per_partition.setdefault(partition, []).append(offset)
    assert all(offsets == sorted(offsets) for offsets in per_partition.values())
    fresh, _ = read_all(edge, flt, limit=1000)
    assert_exact([e["data"]["seq"] for e in fresh], range(300))  # a new walk sees the new events


@pytest.mark.parametrize(("flt", "expected"), [
    ({"types": ["order.*"]}, {0, 1, 2}),
    ({"sources": ["/shop/app"]}, {2, 3}),
    ({"subjects": ["cust-1"]}, {0, 2}),
    ({"tags": ["vip"]}, {2, 3}),
    ({"where": {"status": ["failed", "error"]}}, {1, 2}),
    ({"where": {"amount": 10}}, {0}),
    ({"types": ["order.*"], "tags": ["vip"], "where": {"status": "error"}}, {2}),
    ({"types": ["nothing.*"]}, set()),
], ids=["types", "sources", "subjects", "tags", "where-membership", "where-number", "combined", "none"])
async def test_history_applies_each_filter_field(edge: Proc, producer: EventProducer, new_topic,
                                                 flt: dict, expected: set[int]) -> None:
    topic = await new_topic()
    await producer.publish_batch([
        {"source": "/shop/web", "type": "order.created", "subject": "cust-1", "data": {"n": 0, "amount": 10}},
        {"source": "/shop/web", "type": "order.paid", "subject": "cust-2", "data": {"n": 1, "status": "failed"}},
        {"source": "/shop/app", "type": "order.paid", "subject": "cust-1", "tags": ["vip"],
         "data": {"n": 2, "status": "error"}},
        {"source": "/shop/app", "type": "user.login", "tags": ["vip", "x"], "data": {"n": 3, "status": "ok"}},
        {"source": "/ops", "type": "deploy.done", "data": {"n": 4, "amount": "10"}},
    ], topic)
    events, _ = read_all(edge, {"topics": [topic], **flt})
    assert {e["data"]["n"] for e in events} == expected


async def test_history_since_starts_at_that_time(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 5)
    await asyncio.sleep(0.05)
    since = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.05)
    await publish_seq(producer, topic, 5, 5)
    events, _ = read_all(edge, {"topics": [topic]}, since=since)
    assert sorted(e["data"]["seq"] for e in events) == list(range(5, 10))


async def test_short_limit_walks_in_many_pages(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 23)
    events, pages = read_all(edge, {"topics": [topic]}, limit=5)
    assert pages == 5
    assert_exact([e["data"]["seq"] for e in events], range(23))


@pytest.mark.parametrize(("params", "status"), [
    ({"limit": "0"}, 422), ({"limit": "1001"}, 422), ({"offset": "garbage"}, 400),
    ({"filter": '{"where": {}}'}, 400),
], ids=["limit-zero", "limit-over-max", "bad-cursor", "bad-filter"])
def test_bad_history_request_gets_problem_json(edge: Proc, params: dict, status: int) -> None:
    resp = httpx.get(edge.url + HISTORY, params=params, timeout=10)
    assert resp.status_code == status and resp.headers["content-type"].startswith("application/problem+json")


async def test_cursor_of_another_filter_is_refused(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 3)
    cursor = page(edge, {"topics": [topic]}, limit=1)["next"]
    resp = httpx.get(edge.url + HISTORY, timeout=10, params={
        "filter": orjson.dumps({"topics": [topic], "types": ["x"]}).decode(), "offset": cursor})
    assert resp.status_code == 400 and resp.json()["title"] == "Invalid cursor"
