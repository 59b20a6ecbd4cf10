"""A small replicated table on a compacted Kafka topic: every process tails it, so all of them see
the same keys, and the topic (not any one process) is the source of truth across restarts.

The reader runs supervised (streams/supervise.py) and goes on from the next offset it has not applied;
every Kafka error or timeout reaches callers as BrokerUnavailable, which they retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import BrokerUnavailable, redact
from streams.kafka import clients
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
Listener = Callable[[str, dict[str, Any] | None], None]


class CompactedTable:
    """JSON values by string key on a one-partition compacted topic; None deletes (a tombstone)."""

    def __init__(self, settings: Settings, topic: str, *, ignore: frozenset[str] = frozenset()) -> None:
        """`ignore`: keys this process writes but never needs to read back (their records are skipped
        unparsed, e.g. an edge's own presence entry of every stream it holds)."""
        self.settings = settings
        self.topic = topic
        self._ignore = ignore
        self._tp = TopicPartition(topic, 0)
        self._data: dict[str, dict[str, Any]] = {}
        self._applied = 0  # next offset to apply
        self._progress = asyncio.Condition()
        self._listeners: list[Listener] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the topic if needed, read it to the end, and keep tailing it."""
        if self._reader is not None:
            return
        s = self.settings
        try:
            async with TopicManager(s) as topics:
                await topics.ensure(self.topic, partitions=1, cleanup_policy="compact", retention_ms=-1,
                                    replication_factor=min(s.default_replication_factor, await _brokers(topics)))
            self._producer = clients.producer(s, "table", acks="all", enable_idempotence=True, linger_ms=0)
            self._consumer = clients.reader(s, "table", fetch_max_wait_ms=50)
            await self._producer.start()
            await self._consumer.start()
            self._consumer.assign([self._tp])
            await self._consumer.seek_to_beginning(self._tp)
        except KafkaError as exc:
            await self.stop()
            raise BrokerUnavailable(f"table {self.topic}: Kafka at {redact(s.kafka_bootstrap_servers)}: {exc}") from exc
        self._reader = supervise(f"table-{self.topic}", self._read_loop, context=f"reading table {self.topic}")
        try:
            await self.catch_up()
        except BaseException:
            await self.stop()  # nothing half-started is left behind: the caller retries start()
            raise

    async def stop(self) -> None:
        """Stop tailing and disconnect; calling it twice is harmless."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await clients.close_all(self._consumer, self._producer)
        self._consumer = self._producer = None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(key, value_or_None)` for every change applied from now on."""
        self._listeners.append(listener)

    async def _read_loop(self) -> None:
        assert self._consumer is not None
        self._consumer.seek(self._tp, self._applied)  # after a failure, go on from the first record not applied
        while True:
            try:
                batch = await self._consumer.getmany(self._tp, timeout_ms=500)
            except KafkaError as exc:
                log.warning("Reading table %s failed, retrying: %s", self.topic, exc)
                await asyncio.sleep(1)
                continue
            for record in batch.get(self._tp, []):
                self._apply(record.key, record.value)
                self._applied = record.offset + 1
            if batch:
                async with self._progress:
                    self._progress.notify_all()

    def _apply(self, raw_key: bytes | None, raw_value: bytes | None) -> None:
        if raw_key is None:
            return
        key = raw_key.decode()
        if key in self._ignore:
            return
        try:
            value = orjson.loads(raw_value) if raw_value is not None else None
        except orjson.JSONDecodeError:
            log.warning("Ignoring a record of table %s that is not JSON (key %r).", self.topic, key)
            return
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value
        for listener in self._listeners:
            try:
                listener(key, value)
            except Exception:  # one listener's bug must not stop the table for everyone
                log.exception("A listener of table %s failed on key %r; going on.", self.topic, key)

    async def _wait_applied(self, offset: int, timeout: float = 15.0) -> None:
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self._applied > offset), timeout)
        except TimeoutError:
            raise BrokerUnavailable(f"table {self.topic}: offset {offset} was not read back within {timeout:.0f}s "
                                    f"(applied up to {self._applied})") from None

    async def catch_up(self) -> None:
        """Wait until everything written to the topic before this call has been applied here."""
        assert self._consumer is not None, "start() first"
        try:
            end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        except KafkaError as exc:
            raise BrokerUnavailable(f"table {self.topic}: reading its end failed: {exc}") from exc
        if end > 0:
            await self._wait_applied(end - 1)

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        """Write a value (None deletes) and return once it is applied locally (read-your-writes)."""
        if self._producer is None:
            raise BrokerUnavailable(f"table {self.topic} is not connected")
        payload = orjson.dumps(value) if value is not None else None
        try:
            meta = await (await self._producer.send(self.topic, payload, key=key.encode(), partition=0))
        except KafkaError as exc:
            raise BrokerUnavailable(f"writing to table {self.topic} failed: {exc}") from exc
        await self._wait_applied(meta.offset)

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the value of `key`, or None."""
        return self._data.get(key)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Iterate over a snapshot of all keys and values."""
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        return len(self._data)


async def _brokers(topics: TopicManager) -> int:
    """Return how many brokers the cluster has (so single-node setups get replication factor 1)."""
    return max(1, await topics.broker_count())
