"""The producer's first use of a topic: concurrent first publishes share one metadata read and one schema
registration; a missing topic is a TopicNotFound for every caller, and a topic found missing is looked up
again next time (it may exist by then)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.errors import BrokerUnavailable, TopicNotFound
from streams.kafka.producer import EventProducer
from streams.settings import Settings


class Metadata:
    def __init__(self, topics: set[str]) -> None:
        self._topics = topics

    def topics(self) -> set[str]:
        return set(self._topics)


class Client:
    """Answers fetch_all_metadata after a moment, counting the reads."""

    def __init__(self, topics: set[str]) -> None:
        self.topics, self.reads, self.fail = topics, 0, False

    async def fetch_all_metadata(self) -> Metadata:
        self.reads += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise KafkaConnectionError("broker away")
        return Metadata(self.topics)


def producer_with(client: Client) -> EventProducer:
    producer = EventProducer(Settings())
    producer._producer = type("P", (), {"client": client})()  # type: ignore[assignment]
    return producer


async def test_concurrent_first_publishes_share_one_metadata_read() -> None:
    client = Client({"orders"})
    producer = producer_with(client)
    await asyncio.gather(*(producer.ensure_topic("orders") for _ in range(32)))
    assert client.reads == 1
    await producer.ensure_topic("orders")
    assert client.reads == 1  # known from then on


async def test_a_missing_topic_is_refused_to_every_caller_and_looked_up_again_later() -> None:
    client = Client(set())
    producer = producer_with(client)
    results: list[Any] = await asyncio.gather(*(producer.ensure_topic("ci") for _ in range(8)),
                                              return_exceptions=True)
    assert client.reads == 1 and all(isinstance(r, TopicNotFound) for r in results)
    assert "create it first" in str(results[0])
    client.topics.add("ci")  # created meanwhile
    await producer.ensure_topic("ci")
    assert client.reads == 2


async def test_one_caller_cancelled_does_not_cancel_the_read_for_the_others() -> None:
    client = Client({"orders"})
    producer = producer_with(client)
    first = asyncio.create_task(producer.ensure_topic("orders"))
    second = asyncio.create_task(producer.ensure_topic("orders"))
    await asyncio.sleep(0)
    first.cancel()
    await second
    assert first.cancelled() and client.reads == 1


async def test_kafka_away_is_broker_unavailable_and_the_next_call_reads_again() -> None:
    client = Client({"orders"})
    client.fail = True
    producer = producer_with(client)
    with pytest.raises(BrokerUnavailable, match="cannot read Kafka metadata"):
        await producer.ensure_topic("orders")
    client.fail = False
    await producer.ensure_topic("orders")
    assert client.reads == 2


class Registry:
    """Counts registrations; each takes a moment, as the real one's catch-up round trip does."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def register(self, subject: str, schema: str) -> int:
        self.calls.append(subject)
        await asyncio.sleep(0.01)
        return 7


async def test_concurrent_first_publishes_register_the_schema_once() -> None:
    registry = Registry()
    producer = EventProducer(Settings(), registry=registry)  # type: ignore[arg-type]
    ids = await asyncio.gather(*(producer._schema_id("orders") for _ in range(32)))
    assert ids == [7] * 32 and registry.calls == ["orders-value"]
    await producer._schema_id("orders")
    assert registry.calls == ["orders-value"]  # known from then on
