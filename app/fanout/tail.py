"""One shared reader per topic at the end of the log; every live client of the process hangs off it.

It reads with no consumer group (partitions assigned, no offsets committed) and a short
`fetch_max_wait_ms`, because aiokafka's default lets the broker hold a fetch for 500 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.records import RecordDecoder
from app.fanout.replay import ReplayBuffer, ReplayEntry
from streams.errors import BrokerUnavailable, redact
from streams.settings import Settings

log = logging.getLogger(__name__)
# Called for every record in partition order: (tail, partition, offset, event or None).
Deliver = Callable[["TailReader", int, int, dict[str, Any] | None], None]


class TailReader:
    """Read new records of one topic and hand each to `deliver`; `pos` is the next offset per partition."""

    def __init__(self, settings: Settings, topic: str, partitions: int, decoder: RecordDecoder,
                 deliver: Deliver) -> None:
        self.settings = settings
        self.topic = topic
        self.partitions = partitions
        self.pos: list[int] = [0] * partitions
        self.dispatched = 0  # records handed to the hub so far (versions replay frames)
        self.replay = ReplayBuffer(partitions, 0, self.pos)
        self._decoder = decoder
        self._deliver = deliver
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, read the replay window before the end of every partition, and start reading."""
        if self._consumer is not None:
            return
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.client_id}-tail", group_id=None,
            enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=s.stream_fetch_max_wait_ms,
            request_timeout_ms=s.request_timeout_ms)
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            await consumer.start()
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            self.pos = [ends[tp] for tp in tps]
            await self._fill_replay(consumer, tps)
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerUnavailable(
                f"cannot tail {self.topic!r} at {redact(s.kafka_bootstrap_servers)}: {exc}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"tail-{self.topic}")
        log.info("Tailing %s from %s.", self.topic, self.pos)

    async def _fill_replay(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Read the last records before the end into the replay buffer (later ones are delivered)."""
        size = self.settings.stream_replay_records
        window = max(1, size // self.partitions) if size else 0
        begins = await consumer.beginning_offsets(tps)
        starts = [max(begins[tp], end - window) for tp, end in zip(tps, self.pos, strict=True)]
        self.replay = ReplayBuffer(self.partitions, size, starts)
        ends = list(self.pos)
        for tp in tps:
            consumer.seek(tp, starts[tp.partition])
        for _ in range(50):
            if all([await consumer.position(tp) >= ends[tp.partition] for tp in tps]):
                return
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    event = await self._decoder.decode(record)
                    if record.offset < ends[tp.partition]:
                        self.replay.append(ReplayEntry(tp.partition, record.offset, event))
                    else:
                        self._deliver(self, tp.partition, record.offset, event)
        log.warning("Could not read the replay window of %s in time; starting with an empty one.", self.topic)
        self.replay = ReplayBuffer(self.partitions, size, self.pos)
        for tp in tps:
            consumer.seek(tp, self.pos[tp.partition])

    async def stop(self) -> None:
        """Stop reading and disconnect; calling it twice is harmless."""
        task, consumer, self._task, self._consumer = self._task, self._consumer, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await consumer.stop()
            log.info("Stopped tailing %s.", self.topic)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer, decode, deliver = self._consumer, self._decoder.decode, self._deliver
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("Tail of %s failed to fetch, retrying: %s", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    deliver(self, tp.partition, record.offset, await decode(record))
