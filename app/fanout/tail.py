"""One shared reader per topic at the end of the log; every live client of the process hangs off it.

It reads with no consumer group (partitions assigned, no offsets committed) and a short
`fetch_max_wait_ms`, because aiokafka's default lets the broker hold a fetch for 500 ms. Its loop runs
supervised (streams/supervise.py): after a failure it restarts from `pos`, the next offset it owes the
hub, so no record is lost or repeated. Every `stream_metadata_refresh_s`, and at once when asked
(`refresh`), it looks for partitions added to the topic and reads them from their first offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.records import RecordDecoder
from app.fanout.replay import ReplayBuffer, ReplayEntry
from streams.errors import BrokerUnavailable, StreamError, redact
from streams.kafka import clients
from streams.metrics import ingress_time_ms
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
# Called for every record in partition order: (tail, partition, offset, event or None).
Deliver = Callable[["TailReader", int, int, dict[str, Any] | None], None]
PartitionCount = Callable[[], Awaitable[int]]  # the topic's partition count, fresh from the brokers
METADATA_TIMEOUT_S = 10.0
_generations = itertools.count(1)


class TailReader:
    """Read new records of one topic and hand each to `deliver`; `pos` is the next offset per partition."""

    def __init__(self, settings: Settings, topic: str, partitions: int, decoder: RecordDecoder,
                 deliver: Deliver, *, partition_count: PartitionCount | None = None,
                 on_give_up: Callable[[BaseException], None] | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.partitions = partitions
        self.pos: list[int] = [0] * partitions
        self.dispatched = 0  # records handed to the hub so far (versions replay frames, with `generation`)
        self.generation = next(_generations)  # unique per tail: a tail recreated after idling counts from 0 again
        self.ingress_ms: int | None = None  # ingress append time (epoch ms) of the record being delivered
        self.last_record_at: float | None = None  # epoch s of the last record read (the health report's age)
        self.replay = ReplayBuffer(partitions, 0, self.pos)
        self._decoder = decoder
        self._deliver = deliver
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._partition_count = partition_count
        self._on_give_up = on_give_up
        self._refresh: asyncio.Future[None] | None = None  # a refresh asked for, resolved once done

    async def start(self) -> None:
        """Connect, read the replay window before the end of every partition, and start reading."""
        if self._consumer is not None:
            return
        s = self.settings
        consumer = clients.reader(s, "tail", auto_offset_reset="latest", fetch_max_wait_ms=s.stream_fetch_max_wait_ms)
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
        except BaseException:
            await consumer.stop()  # never leak a consumer, whatever failed
            raise
        self._consumer = consumer
        self._task = supervise(f"tail-{self.topic}", self._run, context=f"tailing {self.topic}",
                               on_give_up=self._on_give_up)
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

    async def __aenter__(self) -> TailReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def refresh(self, timeout: float = METADATA_TIMEOUT_S) -> None:
        """Look for new partitions now (a token names more than this tail knows); return once done or timed out."""
        if self._task is None:
            return
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._refresh), timeout)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer, decode, deliver = self._consumer, self._decoder.decode, self._deliver
        loop = asyncio.get_running_loop()
        interval = self.settings.stream_metadata_refresh_s
        next_refresh = loop.time() + interval
        for p, offset in enumerate(self.pos):  # a restart goes on exactly after the last record delivered
            consumer.seek(TopicPartition(self.topic, p), offset)
        while True:
            if self._refresh is not None or loop.time() >= next_refresh:
                asked, self._refresh = self._refresh, None
                await self._grow(consumer)
                next_refresh = loop.time() + interval
                if asked is not None and not asked.done():
                    asked.set_result(None)
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("Tail of %s failed to fetch, retrying: %s", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self.ingress_ms = ingress_time_ms(record.headers)
                    deliver(self, tp.partition, record.offset, await decode(record))
            if batch:
                self.last_record_at = time.time()

    async def _grow(self, consumer: AIOKafkaConsumer) -> None:
        """Start reading partitions added to the topic, from their first offset (clients see them at once)."""
        if self._partition_count is None:
            return
        try:
            count = await asyncio.wait_for(self._partition_count(), METADATA_TIMEOUT_S)
            if count <= self.partitions:
                return
            new = [TopicPartition(self.topic, p) for p in range(self.partitions, count)]
            begins = await asyncio.wait_for(consumer.beginning_offsets(new), METADATA_TIMEOUT_S)
        except (StreamError, KafkaError, TimeoutError) as exc:
            log.warning("Could not look for new partitions of %s, will retry: %s", self.topic, exc)
            return
        first = [begins[tp] for tp in new]
        tps = [TopicPartition(self.topic, p) for p in range(count)]
        consumer.assign(tps)  # a new assignment forgets positions: seek every partition to where the tail is
        for tp, offset in zip(tps, self.pos + first, strict=True):
            consumer.seek(tp, offset)
        self.pos.extend(first)  # the same list the hub signs tokens from
        self.replay.low.extend(first)
        log.info("Topic %s grew from %d to %d partitions; reading the new ones from %s.", self.topic,
                 self.partitions, count, first)
        self.partitions = count
