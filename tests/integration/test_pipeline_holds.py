"""Writes that cannot be made now: a destination write held failing is never committed past, survives a
kill -9 and is delivered exactly once; a retriable error holds its partition, in order, and never sends the
record to the DLQ while the other partitions go on; ingress partitions added while the worker runs are
processed once, with the dedup changelog grown to follow.

A destination is made to fail retriably by deleting it (the broker does not create topics on demand):
the producer answers UnknownTopicOrPartition / metadata timeouts until the topic exists again."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewPartitions
from aiokafka.partitioner import murmur2

from streams.kafka import clients
from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from tests.integration.pipeline_helpers import (
    READY,
    RawWriter,
    ensure_topics,
    event,
    header,
    ids,
    pipeline_settings,
    records_of,
    settle,
    start_worker,
    wait_log,
    wait_records,
)

pytestmark = pytest.mark.integration
RULES = """\
version: 1
rules:
  - {name: held, match: {type: "held.*"}, to: "{p}.held"}
"""


def held_settings(kafka_bootstrap: str, tmp: Path) -> Settings:
    # Short request timeout and two attempts: the worker before this change sent a record to the DLQ after
    # about two request timeouts of a retriable error.
    return pipeline_settings(kafka_bootstrap, tmp, RULES, request_timeout_ms=2000, route_max_attempts=2,
                             route_backoff_ms=50)


def partition_of(key: bytes, partitions: int = 3) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def delete_topic(settings: Settings, name: str) -> None:
    async with TopicManager(settings) as topics:
        await topics.delete(name, force=True)


async def committed(settings: Settings, partition: int) -> int | None:
    """Return the worker group's committed ingress offset of a partition."""
    admin = clients.admin(settings, "test")
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.worker_app_id)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(settings.ingress_topic, partition))
    return meta.offset if meta is not None and meta.offset >= 0 else None


def in_dlq(settings: Settings, prefix: str):  # noqa: ANN201
    """Return a check listing the event ids starting with `prefix` that are in the DLQ."""
    async def check() -> list[str]:
        async with RawWriter(settings) as raw:
            found = []
            for rec in await records_of(settings, settings.dlq_topic):
                decoded = await raw.codec.decode_async(rec.value)
                if decoded["id"].startswith(prefix):
                    found.append(decoded["id"])
            return found
    return check


async def test_held_write_is_not_committed_past_and_after_kill_9_is_delivered_exactly_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = held_settings(kafka_bootstrap, tmp_path)
    held = f"{settings.topic_prefix}.held"
    await ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        await wait_log(worker, READY)
        async with EventProducer(settings) as producer:
            await producer.publish(event("warm", type="held.x"))  # creates the destination
            await wait_records(settings, held, 1)
            await delete_topic(settings, held)
            # One batch, one subject: the first record's destination write fails, the later ones finish.
            await producer.publish_batch([event("held-1", type="held.x")] + [event(f"after-{i}") for i in range(9)])
        await wait_records(settings, settings.default_topic, 9,
                           keep=lambda r: (header(r, "es-id") or b"").startswith(b"e-after-"))
        await asyncio.sleep(3)  # six commit intervals
        partition = partition_of(b"s")
        assert await committed(settings, partition) == 1  # offset 0 was e-warm; e-held-1 (offset 1) is not done
        worker.stop(signal.SIGKILL)
        worker = start_worker(settings, tmp_path, "restarted")  # creates the destination again on first use
        await wait_records(settings, held, 1, timeout=60, keep=lambda r: header(r, "es-id") == b"e-held-1")
        counts = ids(await settle(lambda: records_of(settings, held)) +
                     await records_of(settings, settings.default_topic))
        assert counts["e-held-1"] == 1
        assert all(counts[f"e-after-{i}"] == 1 for i in range(9)), counts
        assert await in_dlq(settings, "e-held-")() == []
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_retriable_error_holds_its_partition_in_order_and_never_dead_letters(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = held_settings(kafka_bootstrap, tmp_path)
    held = f"{settings.topic_prefix}.held"
    other = next(f"o-{n}" for n in range(100) if partition_of(f"o-{n}".encode()) != partition_of(b"s"))
    await ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        await wait_log(worker, READY)
        async with EventProducer(settings) as producer:
            await producer.publish(event("warm", type="held.x"))
            await wait_records(settings, held, 1)
            await delete_topic(settings, held)
            for i in range(1, 4):  # spread over longer than two request timeouts
                await producer.publish(event(f"held-{i}", type="held.x", data={"seq": i}))
                await asyncio.sleep(1.5)
            await producer.publish(event("other-1", subject=other))
        # Another partition goes on while this one is held.
        await wait_records(settings, settings.default_topic, 1, keep=lambda r: header(r, "es-id") == b"e-other-1")
        await asyncio.sleep(2)
        assert await in_dlq(settings, "e-held-")() == []
        assert "Writing" in worker.log() and "holding ingress partition" in worker.log()
        await ensure_topics(settings, held)  # the destination is back
        found = await wait_records(settings, held, 3, timeout=60,
                                   keep=lambda r: (header(r, "es-id") or b"").startswith(b"e-held-"))
        found = [r for r in await settle(lambda: records_of(settings, held))
                 if (header(r, "es-id") or b"").startswith(b"e-held-")]
        assert [header(r, "es-id") for r in sorted(found, key=lambda r: r.offset)] == [
            b"e-held-1", b"e-held-2", b"e-held-3"]
        assert await in_dlq(settings, "e-held-")() == []
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_ingress_partitions_added_while_running_are_processed_once_and_the_changelog_follows(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka_bootstrap, tmp_path)
    await ensure_topics(settings)
    changelog = f"{settings.worker_app_id}-dedup-changelog"
    worker = start_worker(settings, tmp_path)
    try:
        await wait_log(worker, READY)
        admin = clients.admin(settings, "test")
        await admin.start()
        try:
            await admin.create_partitions({settings.ingress_topic: NewPartitions(total_count=5)})
        finally:
            await admin.close()
        async with RawWriter(settings) as raw:  # the worker notices the new partitions within seconds
            for partition in (3, 4):
                for i in range(5):
                    value = raw.encode(event(f"grow-{partition}-{i}"))
                    await raw.send(value, partition=partition)
                    await raw.send(value, partition=partition)  # the same event twice: dropped once
        wanted = {f"e-grow-{p}-{i}" for p in (3, 4) for i in range(5)}
        await wait_records(settings, settings.default_topic, 10, timeout=60,
                           keep=lambda r: (header(r, "es-id") or b"").decode() in wanted)
        assert "ingress partitions [0, 1, 2, 3, 4]" in worker.log()
        counts = ids(await settle(lambda: records_of(settings, settings.default_topic)))
        assert {i: counts[i] for i in wanted} == dict.fromkeys(wanted, 1)
        assert await in_dlq(settings, "e-grow-")() == []
        entries = await records_of(settings, changelog)
        assert {r.partition for r in entries if (r.key or b"").startswith(b"e-grow-")} == {3, 4}
        assert not re.search(r"AssertionError|Traceback", worker.log())
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
