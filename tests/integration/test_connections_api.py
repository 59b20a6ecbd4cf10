"""Durable connections over real HTTP and a real broker: definitions, committed positions, lag, delete, expiry."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import TopicPartition

from streams.kafka.group_offsets import GroupOffsets
from streams.kafka.producer import EventProducer

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(settings, edge_factory):
    return edge_factory(settings)


async def group_known(admin, group: str) -> bool:
    """Tell whether Kafka lists the consumer group (it exists while it has committed offsets)."""
    return any(g[0] == group for g in await admin.list_consumer_groups())


def create(edge, **body) -> dict:
    resp = httpx.post(f"{edge.url}/api/v1/connections", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_create_answers_201_with_id_stream_url_and_options(settings, edge, new_topic) -> None:
    topic = await new_topic()
    got = create(edge, filter={"topics": [topic]}, options={"heartbeatInterval": 5000, "batchSize": 10})
    assert got["stream_url"].endswith(f"/api/v1/connections/{got['id']}/stream")
    assert got["options"]["heartbeatInterval"] == 5000 and got["options"]["bufferMaxSize"] == 1000
    listed = httpx.get(f"{edge.url}/api/v1/connections").json()["connections"]
    assert [c["id"] for c in listed] == [got["id"]]


@pytest.mark.parametrize(("body", "field"), [
    ({"options": {"heartbeatInterval": 10}}, "options.heartbeatInterval"),
    ({"options": {"batchSize": 0}}, "options.batchSize"),
    ({"options": {"bogus": 1}}, "options.bogus"),
    ({"start": "yesterday"}, "start"),
], ids=["heartbeat-too-small", "batch-zero", "unknown-option", "bad-start"])
def test_invalid_options_get_422_naming_the_field(edge, body, field) -> None:
    resp = httpx.post(f"{edge.url}/api/v1/connections", json=body)
    assert resp.status_code == 422 and resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["field"].startswith(field)


def test_unknown_topic_in_filter_gets_404(edge) -> None:
    resp = httpx.post(f"{edge.url}/api/v1/connections", json={"filter": {"topics": ["no-such-topic-x"]}})
    assert resp.status_code == 404 and "no-such-topic-x" in resp.json()["detail"]


async def test_status_lag_matches_kafka_committed_offsets_of_the_group(settings, edge, new_topic) -> None:
    topic = await new_topic(partitions=2)
    conn = create(edge, filter={"topics": [topic]}, start="latest")
    async with EventProducer(settings) as producer:
        await producer.publish_batch([{"source": "/t", "type": "t", "subject": f"s{i}"} for i in range(30)], topic)
    status = httpx.get(f"{edge.url}/api/v1/connections/{conn['id']}/status").json()
    assert status["status"] == "disconnected" and status["totalLag"] == 30
    async with GroupOffsets(settings) as groups:
        group = f"{settings.connection_group_prefix}{conn['id']}"
        committed = await groups.committed(group)
        ends = await groups.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    expected = {(tp.partition, ends[tp] - committed[tp]) for tp in ends}
    assert {(p["partition"], p["lag"]) for p in status["lag"]} == expected


async def test_start_earliest_commits_the_log_start(settings, edge, new_topic) -> None:
    topic = await new_topic(partitions=1)
    async with EventProducer(settings) as producer:
        await producer.publish_batch([{"source": "/t", "type": "t"} for _ in range(5)], topic)
    conn = create(edge, filter={"topics": [topic]}, start="earliest")
    status = httpx.get(f"{edge.url}/api/v1/connections/{conn['id']}/status").json()
    assert status["totalLag"] == 5


async def test_delete_removes_the_consumer_group_and_the_definition(settings, edge, new_topic, admin) -> None:
    topic = await new_topic()
    conn = create(edge, filter={"topics": [topic]})
    group = f"{settings.connection_group_prefix}{conn['id']}"
    assert await group_known(admin, group)
    assert httpx.delete(f"{edge.url}/api/v1/connections/{conn['id']}").status_code == 204
    assert not await group_known(admin, group)
    assert httpx.get(f"{edge.url}/api/v1/connections/{conn['id']}/status").status_code == 404
    assert httpx.delete(f"{edge.url}/api/v1/connections/{conn['id']}").status_code == 404


async def test_connection_created_on_one_edge_is_known_to_another(settings, edge_factory, new_topic) -> None:
    topic = await new_topic()
    first, second = edge_factory(settings), edge_factory(settings)
    conn = create(first, filter={"topics": [topic], "types": ["workflow.*"]})
    for _ in range(50):
        resp = httpx.get(f"{second.url}/api/v1/connections/{conn['id']}/status")
        if resp.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert resp.status_code == 200 and resp.json()["filter"]["types"] == ["workflow.*"]


async def test_idle_connections_expire_with_their_group(settings_factory, edge_factory, new_topic, admin) -> None:
    settings = settings_factory(connection_ttl_s=1, connection_sweep_interval_s=0.5)
    edge = edge_factory(settings)
    topic = await new_topic()
    conn = create(edge, filter={"topics": [topic]})
    for _ in range(100):
        if httpx.get(f"{edge.url}/api/v1/connections/{conn['id']}/status").status_code == 404:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("idle connection did not expire")
    assert not await group_known(admin, f"{settings.connection_group_prefix}{conn['id']}")
