"""Helpers for tests that look at what really landed in Kafka."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


async def read_all(servers: str, topic: str, partitions: int | None = None) -> list[ConsumerRecord]:
    """Read every record of `topic` from the beginning to the current end (no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) if partitions is None else range(partitions)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < end[tp]:
                    return True
            return False

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for recs in batch.values():
                records.extend(recs)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()
