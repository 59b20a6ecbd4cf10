"""EventProducer against a real broker: positions, defaults, keys, compression, errors."""

from __future__ import annotations

import pytest

from streams.envelope import record_to_json
from streams.errors import TopicNotFound, ValidationFailed
from streams.kafka.producer import EventProducer
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from tests.kafka_utils import read_all

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("compression", ["snappy", "lz4", "zstd", "gzip", "none"])
async def test_publish_returns_the_position_where_kafka_stored_the_event(settings, new_topic, compression) -> None:
    topic = await new_topic()
    async with EventProducer(settings, compression=compression) as producer:
        pos = await producer.publish({"source": "/t", "type": "t.one", "subject": "s1", "data": {"n": 1}}, topic)
        codec = AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", producer.registry)
        [rec] = await read_all(settings.kafka_bootstrap_servers, topic)
        assert (rec.topic, rec.partition, rec.offset) == (pos.topic, pos.partition, pos.offset)
        assert rec.key == b"s1"
        event = record_to_json(codec.decode(rec.value))
    assert event["id"] == pos.id and event["data"] == {"n": 1} and event["time"].endswith("Z")


async def test_publish_batch_keeps_per_subject_order_on_one_partition(settings, new_topic) -> None:
    topic = await new_topic()
    events = [{"source": "/t", "type": "t", "subject": f"job-{i % 3}", "data": {"i": i}} for i in range(60)]
    async with EventProducer(settings) as producer:
        positions = await producer.publish_batch(events, topic)
    by_subject: dict[str, set[int]] = {}
    for event, pos in zip(events, positions, strict=True):
        by_subject.setdefault(event["subject"], set()).add(pos.partition)
    assert all(len(parts) == 1 for parts in by_subject.values())
    for subject in by_subject:
        offsets = [p.offset for e, p in zip(events, positions, strict=True) if e["subject"] == subject]
        assert offsets == sorted(offsets)


async def test_publish_batch_with_one_invalid_event_writes_nothing(settings, new_topic) -> None:
    topic = await new_topic()
    async with EventProducer(settings) as producer:
        with pytest.raises(ValidationFailed, match=r"events\[2\]\.type"):
            await producer.publish_batch([{"source": "/t", "type": "t"}] * 2 + [{"source": "/t"}], topic)
    assert await read_all(settings.kafka_bootstrap_servers, topic) == []


async def test_publish_to_missing_topic_says_so_quickly(settings) -> None:
    async with EventProducer(settings) as producer:
        with pytest.raises(TopicNotFound, match="does not exist"):
            await producer.publish({"source": "/t", "type": "t"}, "no-such-topic-here")


async def test_published_events_survive_producer_restart_and_decode_with_fresh_registry(settings, new_topic) -> None:
    topic = await new_topic(partitions=1)
    async with EventProducer(settings) as producer:
        await producer.publish({"source": "/t", "type": "t", "id": "keep-me"}, topic)
    async with SchemaRegistry(settings) as registry:
        codec = AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", registry)
        [rec] = await read_all(settings.kafka_bootstrap_servers, topic, partitions=1)
        assert (await codec.decode_async(rec.value))["id"] == "keep-me"
