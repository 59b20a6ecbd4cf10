"""No silent stall or gap, on a real broker: undecodable records are skipped and the stream goes on, a
topic grown while streamed is read whole, times before 1970 are a 400, and a Last-Event-ID below a deleted
range gets a `reset` event before the records that are left."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewPartitions, RecordsToDelete

from streams.kafka import clients
from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from tests.conftest import unique
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import SSEClient, assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str) -> Settings:
    """Return settings whose tails look for new partitions every second and keep no replay window."""
    return private_settings(kafka_bootstrap, stream_metadata_refresh_s=1.0, stream_replay_records=0)


@pytest.fixture(scope="module")
def edge(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_edge(settings, tmp_path_factory.mktemp("edges"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def topics(settings: Settings) -> AsyncIterator[TopicManager]:
    async with TopicManager(settings) as manager:
        yield manager


async def make_topic(topics: TopicManager, settings: Settings, partitions: int) -> str:
    name = f"{settings.topic_prefix}.{unique('h')}"
    await topics.ensure(name, partitions=partitions)
    return name


async def test_garbage_bytes_and_an_unknown_schema_id_do_not_stop_the_stream(
        edge: Proc, settings: Settings, topics: TopicManager) -> None:
    topic = await make_topic(topics, settings, 1)
    client = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await publish_seq(producer, topic, 0, 3)
            await client.wait_for(3)
            raw = clients.producer(settings, "test-garbage")
            await raw.start()
            try:
                await raw.send_and_wait(topic, b"\x07 not avro at all", partition=0)
                await raw.send_and_wait(topic, b"\x00" + struct.pack(">I", 987_654) + b"\x02", partition=0)
            finally:
                await raw.stop()
            await publish_seq(producer, topic, 3, 10)
        await client.wait_for(13, timeout=20)
        assert_exact(client.seqs(), range(13))
        async with httpx.AsyncClient() as http:
            stats = (await http.get(edge.url + "/api/v1/events/stream/stats")).json()
        assert stats["undecodable"].get(topic) == 2
    finally:
        await client.close()


async def test_a_topic_grown_while_streamed_is_read_whole(
        edge: Proc, settings: Settings, topics: TopicManager) -> None:
    topic = await make_topic(topics, settings, 3)
    client = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await publish_seq(producer, topic, 0, 30)
        await client.wait_for(30)
        admin = clients.admin(settings, "test-grow")
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=6)})
        finally:
            await admin.close()
        async with asyncio.timeout(15):
            while len(await topics.partitions(topic)) < 6:
                await asyncio.sleep(0.2)
        async with EventProducer(settings, linger_ms=0) as producer:  # a new producer sees all six partitions
            positions = await publish_seq(producer, topic, 30, 60)
        assert {p.partition for p in positions} >= {3, 4, 5}
        await client.wait_for(90, timeout=30)
        assert_exact(client.seqs(), range(90))
        by_subject: dict[str, list[int]] = {}
        for message in client.messages:
            event = orjson.loads(message.data)
            by_subject.setdefault(event["subject"], []).append(event["data"]["seq"])
        assert all(seqs == sorted(seqs) for seqs in by_subject.values()), "a subject's events arrived out of order"
    finally:
        await client.close()


async def test_times_before_1970_are_a_400_naming_the_field(edge: Proc) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as http:
        for path in ("/api/v1/events/stream", "/api/v1/events/history"):
            resp = await http.get(path, params={"since": "1900-01-01"})
            assert resp.status_code == 400 and resp.json()["field"] == "since", (path, resp.text)
        resp = await http.post("/api/v1/connections", json={"start": "1900-01-01T00:00:00Z"})
        assert resp.status_code == 400 and resp.json()["field"] == "start", resp.text


async def test_a_last_event_id_below_a_deleted_range_gets_a_reset_then_the_rest(
        edge: Proc, settings: Settings, topics: TopicManager) -> None:
    topic = await make_topic(topics, settings, 1)
    first = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await publish_seq(producer, topic, 0, 20)
        await first.wait_for(20)
    finally:
        await first.close()
    token = first.messages[5].id  # the position after offset 5
    admin = clients.admin(settings, "test-delete")
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=15)}, timeout_ms=10_000)
    finally:
        await admin.close()
    resumed = await SSEClient(edge.url, filter={"topics": [topic]}, headers={"Last-Event-ID": token or ""}).start()
    try:
        await resumed.wait_for(6)
        reset, *rest = resumed.messages
        assert reset.event == "reset", resumed.raw[:300]
        assert orjson.loads(reset.data) == {"reason": "deleted", "topic": topic, "partition": 0, "requested": 6,
                                            "from": 15}
        assert [orjson.loads(m.data)["data"]["seq"] for m in rest] == list(range(15, 20))
    finally:
        await resumed.close()

