"""Exact resume with Last-Event-ID (after a disconnect, a kill -9, on another edge), `since`, and the
hand-over from catch-up to the live tail while events keep arriving."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import SSEClient, assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=[0, 2000], ids=["from-kafka", "from-replay-buffer"])
def resume_settings(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    """Return settings shared by this module's edges and producer: every test runs once resuming
    through Kafka catch-up readers (no replay buffer) and once from the tails' replay buffers."""
    return private_settings(kafka_bootstrap, stream_retry_ms=300, stream_replay_records=request.param)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a directory for edge logs."""
    return tmp_path_factory.mktemp("edges")


@pytest.fixture(scope="module")
def edge(resume_settings: Settings, logs: Path) -> Iterator[Proc]:
    """Return one long-lived edge for the tests that do not restart it."""
    proc = start_edge(resume_settings, logs)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def producer(resume_settings: Settings) -> AsyncIterator[EventProducer]:
    """Return a producer on the module's settings."""
    async with EventProducer(resume_settings, linger_ms=0) as producer:
        yield producer


def assert_partition_order(client: SSEClient) -> None:
    """Assert offsets only grow within each partition, as Kafka stored them."""
    last: dict[int, int] = {}
    for message in client.messages:
        data = orjson.loads(message.data)
        assert data["offset"] > last.get(data["partition"], -1), "events of a partition arrived out of order"
        last[data["partition"]] = data["offset"]


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_after_disconnect_delivers_what_was_missed_exactly_once(
        resume_settings: Settings, edge: Proc, producer: EventProducer, new_topic, via: str) -> None:
    topic = await new_topic()
    flt = {"topics": [topic]}
    first = await SSEClient(edge.url, filter=flt).start()
    await publish_seq(producer, topic, 0, 10)
    await first.wait_for(10)
    token = first.last_id
    await first.close()
    await publish_seq(producer, topic, 10, 25)  # while the client is away
    resume = {"headers": {"last-event-id": token}} if via == "header" else {"params": {"lastEventId": token}}
    second = await SSEClient(edge.url, filter=flt, **resume).start()  # type: ignore[arg-type]
    try:
        await second.wait_for(25)
        await publish_seq(producer, topic, 35, 5)  # and live after the hand-over
        await second.wait_for(30)
        assert_exact(first.seqs() + second.seqs(), range(40))
        assert_partition_order(second)
        stats = httpx.get(edge.url + "/api/v1/events/stream/stats").json()
        used = "replays" if resume_settings.stream_replay_records else "catchup_jobs"
        assert stats[used] >= 1, stats
    finally:
        await second.close()


async def test_resume_after_kill_9_and_restart_is_exact(resume_settings: Settings, logs: Path,
                                                        producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    flt = {"topics": [topic]}
    doomed = start_edge(resume_settings, logs)
    client = await SSEClient(doomed.url, filter=flt).start()
    await publish_seq(producer, topic, 0, 10)
    await client.wait_for(10)
    doomed.stop(signal.SIGKILL)
    await asyncio.wait_for(client.ended.wait(), 10)
    await publish_seq(producer, topic, 10, 30)  # while no edge runs
    restarted = start_edge(resume_settings, logs, port=int(doomed.url.rsplit(":", 1)[1]))
    again = await SSEClient(restarted.url, filter=flt, headers={"last-event-id": client.last_id or ""}).start()
    try:
        await again.wait_for(30)
        await publish_seq(producer, topic, 40, 5)
        await again.wait_for(35)
        assert_exact(client.seqs() + again.seqs(), range(45))
    finally:
        await again.close()
        await client.close()
        restarted.stop()


async def test_resume_on_a_second_edge_process_is_exact(resume_settings: Settings, logs: Path, edge: Proc,
                                                        producer: EventProducer, new_topic) -> None:
    other = start_edge(resume_settings, logs)
    topic = await new_topic()
    flt = {"topics": [topic]}
    try:
        on_a = await SSEClient(edge.url, filter=flt).start()
        await publish_seq(producer, topic, 0, 12)
        await on_a.wait_for(12)
        await on_a.close()
        await publish_seq(producer, topic, 12, 12)
        on_b = await SSEClient(other.url, filter=flt, headers={"last-event-id": on_a.last_id or ""}).start()
        await on_b.wait_for(12)
        await publish_seq(producer, topic, 24, 6)
        await on_b.wait_for(18)
        await on_b.close()
        assert_exact(on_a.seqs() + on_b.seqs(), range(30))
    finally:
        other.stop()


async def test_since_starts_at_that_time(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 6)
    await asyncio.sleep(0.05)
    since = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.05)
    await publish_seq(producer, topic, 100, 6)
    client = await SSEClient(edge.url, filter={"topics": [topic]}, params={"since": since}).start()
    try:
        await client.wait_for(6)
        await publish_seq(producer, topic, 200, 2)
        await client.wait_for(8)
        assert sorted(client.seqs()) == [*range(100, 106), 200, 201]
    finally:
        await client.close()


async def test_hand_over_from_catch_up_to_live_under_steady_publishing(
        edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    await publish_seq(producer, topic, 0, 400)  # a backlog to catch up on
    total = 400 + 300

    async def steady() -> None:
        for seq in range(400, total):  # ~150 events/s, one at a time, during the hand-over
            await publish_seq(producer, topic, seq, 1)
            await asyncio.sleep(1 / 150)

    publisher = asyncio.create_task(steady())
    await asyncio.sleep(0.3)
    client = await SSEClient(edge.url, filter={"topics": [topic]}, params={"since": "2000-01-01T00:00:00Z"}).start()
    try:
        await publisher
        await client.wait_for(total, timeout=30)
        assert_exact(client.seqs(), range(total))
        assert_partition_order(client)
        stats = httpx.get(edge.url + "/api/v1/events/stream/stats").json()
        assert stats["catching_up"] == 0 and stats["live"] >= 1
    finally:
        await client.close()
