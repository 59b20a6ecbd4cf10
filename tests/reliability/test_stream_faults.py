"""Slow fault tests of the SSE edge (run by `make reliability`): many Python subscribers on one topic
while events keep coming and the edge is killed with SIGKILL twice; every subscriber must end with
every event exactly once, whether it resumes through Kafka catch-up or the replay buffer."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from app.subscriber_client import StreamEvent, subscribe_to_topic
from streams.kafka.producer import EventProducer
from tests.integration.stream_helpers import assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration
SUBSCRIBERS = 100
RATE = 40  # events per second
SECONDS = 16


@pytest.mark.timeout(300)
@pytest.mark.parametrize("replay", [0, 2000], ids=["catch-up-from-kafka", "replay-buffer"])
async def test_every_subscriber_gets_every_event_once_across_two_edge_kills(
        kafka_bootstrap: str, tmp_path: Path, new_topic, replay: int) -> None:
    settings = private_settings(kafka_bootstrap, stream_retry_ms=300, stream_replay_records=replay,
                                stream_catchup_readers=4)
    edge = start_edge(settings, tmp_path)
    port = int(edge.url.rsplit(":", 1)[1])
    topic = await new_topic()
    received: list[list[StreamEvent]] = [[] for _ in range(SUBSCRIBERS)]

    async def consume(index: int) -> None:
        async for event in subscribe_to_topic(topic, base_url=edge.url, retry_delay=0.3, max_retries=100):
            received[index].append(event)

    tasks = [asyncio.create_task(consume(i)) for i in range(SUBSCRIBERS)]
    total = RATE * SECONDS
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await asyncio.sleep(2.0)  # everyone connected and live

            async def steady() -> None:
                for seq in range(total):
                    await publish_seq(producer, topic, seq, 1)
                    await asyncio.sleep(1 / RATE)

            publisher = asyncio.create_task(steady())
            for at in (4.0, 5.0):
                await asyncio.sleep(at)
                edge.stop(signal.SIGKILL)
                await asyncio.sleep(0.5)
                edge = start_edge(settings, tmp_path, port=port)
            await publisher
        async with asyncio.timeout(90):
            while any(len(events) < total for events in received):
                await asyncio.sleep(0.5)
        for events in received:
            assert_exact([e.data["data"]["seq"] for e in events], range(total))
    finally:
        for task in tasks:
            task.cancel()
        edge.stop()
