"""The Python subscriber against real edge processes: decoded events, reconnects that lose nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from app.subscriber_client import StreamEvent, SubscriptionError, subscribe, subscribe_to_topic
from streams.kafka.producer import EventProducer
from tests.integration.conftest import free_port
from tests.integration.stream_helpers import assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration


async def test_subscriber_reconnects_across_an_edge_kill_without_gap(kafka_bootstrap: str, tmp_path: Path,
                                                                     new_topic) -> None:
    settings = private_settings(kafka_bootstrap, stream_retry_ms=200)
    edge = start_edge(settings, tmp_path)
    topic = await new_topic()
    received: list[StreamEvent] = []
    subscription = subscribe_to_topic(topic, base_url=edge.url, retry_delay=0.2, max_retries=50)

    async def consume() -> None:
        async for event in subscription:
            received.append(event)

    async def until(count: int) -> None:
        async with asyncio.timeout(30):
            while len(received) < count:
                await asyncio.sleep(0.05)

    task = asyncio.create_task(consume())
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await asyncio.sleep(0.5)  # connected and live
            await publish_seq(producer, topic, 0, 10)
            await until(10)
            edge.stop(signal.SIGKILL)
            await publish_seq(producer, topic, 10, 15)
            edge = start_edge(settings, tmp_path, port=int(edge.url.rsplit(":", 1)[1]))
            await publish_seq(producer, topic, 25, 5)
            await until(30)
        assert_exact([e.data["data"]["seq"] for e in received], range(30))
        assert subscription.reconnects >= 1 and received[-1].type == "test.seq"
        assert subscription.last_event_id == received[-1].id
    finally:
        task.cancel()
        edge.stop()


async def test_subscriber_raises_on_a_refused_filter(kafka_bootstrap: str, tmp_path: Path) -> None:
    edge = start_edge(private_settings(kafka_bootstrap), tmp_path)
    try:
        with pytest.raises(SubscriptionError) as info:
            async for _ in subscribe({"topics": ["no-such-topic-here"]}, base_url=edge.url):
                pass
        assert info.value.status == 404
    finally:
        edge.stop()


async def test_subscriber_gives_up_after_max_retries() -> None:
    subscription = subscribe(None, base_url=f"http://127.0.0.1:{free_port()}", max_retries=2, retry_delay=0.01)
    with pytest.raises(ConnectionError, match="gave up after 2"):
        async for _ in subscription:
            pass
    assert subscription.reconnects == 2
