"""GET /api/v1/stats over a real edge and broker: streams per topic, deliveries, process figures."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from streams.kafka.producer import EventProducer
from tests.integration.stream_helpers import SSEClient, publish_seq

pytestmark = pytest.mark.integration


async def test_stats_count_live_streams_per_topic_and_delivered_events(settings, edge_factory, new_topic) -> None:
    topic = await new_topic()
    edge = edge_factory(settings)
    clients = [await SSEClient(edge.url, filter={"topics": [topic]}).start() for _ in range(3)]
    for _ in range(50):
        got = httpx.get(f"{edge.url}/api/v1/stats").json()
        if got["streams"]["live"] == 3:
            break
        await asyncio.sleep(0.1)
    assert got["streams"]["live_per_topic"] == {topic: 3} and got["tail_readers"] == 1
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 10)
    for client in clients:
        await client.wait_for(10)
    got = httpx.get(f"{edge.url}/api/v1/stats").json()
    assert got["events_delivered"] == 30
    assert got["process"]["rss_mb"] > 0 and got["process"]["open_fds"] > 0 and got["process"]["asyncio_tasks"] > 0
    for client in clients:
        await client.close()
