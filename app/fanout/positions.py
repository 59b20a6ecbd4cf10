"""Where streams start: end offsets, offsets for a time, and log starts, from one shared consumer."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.records import Positions
from streams.errors import BrokerUnavailable, redact
from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)


class OffsetsReader:
    """Answer offset questions (no group, no assignment) for any partitions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect, raising BrokerUnavailable when Kafka does not answer."""
        if self._consumer is not None:
            return
        s = self.settings
        consumer = clients.reader(s, "offsets")
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerUnavailable(f"Kafka at {redact(s.kafka_bootstrap_servers)} did not answer: {exc}") from exc
        self._consumer = consumer

    async def stop(self) -> None:
        """Disconnect; calling it twice is harmless."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BrokerUnavailable("offsets reader is not connected to Kafka")
        return self._consumer

    async def end(self, layout: dict[str, int]) -> Positions:
        """Return the end offset (next offset to be written) of every partition in `layout`."""
        return await self._edge(layout, "end")

    async def beginning(self, layout: dict[str, int]) -> Positions:
        """Return the first offset still in the log for every partition in `layout`."""
        return await self._edge(layout, "log start")

    async def _edge(self, layout: dict[str, int], which: Literal["end", "log start"]) -> Positions:
        """Read one edge of the log (end or log start) for every partition in `layout`."""
        consumer = self._require()
        read = consumer.end_offsets if which == "end" else consumer.beginning_offsets
        try:
            offsets = await read(list(_tps(layout)))
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading {which} offsets failed: {exc}") from exc
        return _positions(layout, offsets)

    async def at_time(self, layout: dict[str, int], ts_ms: int) -> Positions:
        """Return the first offset whose record time is >= `ts_ms`, or the end where there is none."""
        tps = list(_tps(layout))
        try:
            found = await self._require().offsets_for_times({tp: ts_ms for tp in tps})
        except KafkaError as exc:
            raise BrokerUnavailable(f"looking up offsets for a time failed: {exc}") from exc
        ends = await self.end(layout)
        return {topic: [found[TopicPartition(topic, p)].offset if found.get(TopicPartition(topic, p))
                        else ends[topic][p] for p in range(n)] for topic, n in layout.items()}


def _tps(layout: dict[str, int]) -> Iterable[TopicPartition]:
    for topic, count in layout.items():
        for partition in range(count):
            yield TopicPartition(topic, partition)


def _positions(layout: dict[str, int], offsets: dict[TopicPartition, int]) -> Positions:
    return {topic: [offsets[TopicPartition(topic, p)] for p in range(n)] for topic, n in layout.items()}
