"""Async publisher that backend services import: Avro envelopes to Kafka, idempotent, acks=all."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streams.envelope import Event, parse_event
from streams.errors import BrokerUnavailable, PayloadTooLarge, StreamError, TopicNotFound, redact
from streams.kafka import clients
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Compression, Settings, get_settings
from streams.singleflight import SingleFlight

log = logging.getLogger(__name__)
COMPRESSIONS = ("snappy", "lz4", "zstd", "gzip", "none")


@dataclass(frozen=True, slots=True)
class Position:
    """Where Kafka stored one event."""

    topic: str
    partition: int
    offset: int
    id: str

    def as_dict(self) -> dict[str, Any]:
        """Return the position as JSON-ready dict."""
        return {"id": self.id, "topic": self.topic, "partition": self.partition, "offset": self.offset}


class EventProducer:
    """Publish events (validated, id/time filled in, Avro-encoded) and return their positions.

    Use `async with EventProducer() as p: await p.publish({...})`. The producer is idempotent with
    acks=all, so a retried send never duplicates a record and an acknowledged one survives a broker loss
    within min.insync.replicas.
    """

    def __init__(self, settings: Settings | None = None, *, registry: SchemaRegistry | None = None,
                 compression: Compression | None = None, linger_ms: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.settings = settings or get_settings()
        codec = compression or self.settings.compression
        if codec not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {codec!r}")
        if linger_ms is not None and linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms!r}")
        self.compression = codec
        self.linger_ms = self.settings.linger_ms if linger_ms is None else linger_ms
        self._owns_registry = registry is None
        self.registry = registry or SchemaRegistry(self.settings)
        self.codec = AvroCodec.from_file(self.settings.schemas_dir / "envelope.avsc", self.registry)
        self._producer: AIOKafkaProducer | None = None
        self._schema_ids: dict[str, int] = {}
        self._known_topics: set[str] = set()
        # First publishes to a topic share one metadata read and one schema registration.
        self._topic_lookups: SingleFlight[str, bool] = SingleFlight()
        self._registrations: SingleFlight[str, int] = SingleFlight()
        self._headers = [(k, v.encode()) for k, v in (headers or {}).items()]
        # Unacknowledged sends per topic -> when they were enqueued (insertion order: the first is the oldest).
        self._unacked: dict[str, dict[asyncio.Future[Any], float]] = {}

    async def start(self) -> None:
        """Connect to Kafka (and the registry topic), raising BrokerUnavailable if Kafka does not answer."""
        if self._producer is not None:
            return
        if self._owns_registry:
            await self.registry.start()
        producer = clients.producer(
            self.settings, "producer",
            acks="all",
            enable_idempotence=True,
            compression_type=None if self.compression == "none" else self.compression,
            linger_ms=self.linger_ms,
            max_request_size=max(1_048_576, self.settings.max_event_bytes + 4096),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(
                f"Kafka at {redact(self.settings.kafka_bootstrap_servers)} did not answer: {exc}") from exc
        self._producer = producer
        log.info("Producer started (compression %s, linger %d ms).", self.compression, self.linger_ms)

    async def stop(self) -> None:
        """Flush pending sends and disconnect; calling it twice is harmless."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
            log.info("Producer stopped.")
        if self._owns_registry:
            await self.registry.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ encoding

    async def _schema_id(self, topic: str) -> int:
        """Register the envelope under `<topic>-value` once per topic (TopicNameStrategy)."""
        sid = self._schema_ids.get(topic)
        if sid is None:
            sid = await self._registrations.run(f"{topic}-value", self._register)
            self._schema_ids[topic] = sid
            self.codec.bind(sid)
        return sid

    async def _register(self, subject: str) -> int:
        return await self.registry.register(subject, self.codec.schema_text)

    def encode(self, event: Event, schema_id: int) -> bytes:
        """Return the framed Avro bytes of one event, refusing it when over max_event_bytes."""
        value = self.codec.encode(event.to_record(), schema_id)
        if len(value) > self.settings.max_event_bytes:
            raise PayloadTooLarge(
                f"event {event.id!r} is {len(value)} bytes encoded; the limit is "
                f"{self.settings.max_event_bytes} bytes (ES_MAX_EVENT_BYTES)")
        return value

    async def prepare(self, events: Iterable[Any], topic: str | None = None) -> tuple[str, list[tuple[Event, bytes]]]:
        """Validate and encode every event before anything is written (all or nothing)."""
        topic = topic or self.settings.ingress_topic
        await self.ensure_topic(topic)
        sid = await self._schema_id(topic)
        parsed = [parse_event(e, where=f"events[{i}]") for i, e in enumerate(events)]
        return topic, [(e, self.encode(e, sid)) for e in parsed]

    async def ensure_topic(self, topic: str) -> None:
        """Raise TopicNotFound unless the topic exists (Kafka would otherwise wait for it).

        Concurrent first publishes to a topic share one metadata read: it lists every topic of the
        cluster, about 0.1 s of decoding at 4,700 topics, which 32 requests at once would each repeat."""
        if topic in self._known_topics:
            return
        if not await self._topic_lookups.run(topic, self._topic_exists):
            raise TopicNotFound(f"topic {topic!r} does not exist; create it first (POST /api/v1/topics)")
        self._known_topics.add(topic)

    async def _topic_exists(self, topic: str) -> bool:
        producer = self._require()
        try:
            meta = await producer.client.fetch_all_metadata()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read Kafka metadata: {exc}") from exc
        return topic in meta.topics()

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: Any, topic: str | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> Position:
        """Publish one event (dict or Event) and return where Kafka stored it."""
        topic, prepared = await self.prepare([event], topic)
        [position] = await self._send_prepared(topic, prepared, headers)
        return position

    async def publish_batch(self, events: Iterable[Any], topic: str | None = None,
                            headers: Sequence[tuple[str, bytes]] = ()) -> list[Position]:
        """Publish many events, validated as a whole first; return positions in input order."""
        topic, prepared = await self.prepare(events, topic)
        return await self._send_prepared(topic, prepared, headers)

    async def _send_prepared(self, topic: str, prepared: list[tuple[Event, bytes]],
                             headers: Sequence[tuple[str, bytes]]) -> list[Position]:
        """Enqueue in input order (so per-subject order holds), then wait for every acknowledgement.

        The wait is bounded by `publish_timeout_s`: past it the caller gets BrokerUnavailable (503), and
        while an earlier send to the topic is still unacknowledged past that bound, new sends are refused
        at once. A timed-out send stays queued in the idempotent producer, so it may still be written.
        """
        producer = self._require()
        timeout = self.settings.publish_timeout_s
        self._refuse_if_overdue(topic, timeout)
        hdrs = (self._headers + list(headers)) or None
        pending: list[tuple[str, asyncio.Future[Any]]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):  # enqueueing waits for metadata or buffer space
                count = 0
                for event, value in prepared:
                    key = event.subject.encode() if event.subject is not None else None
                    partition = None
                    if key is None:  # placed by id: copies of one event meet in one partition (worker dedup)
                        count = count or len(await producer.partitions_for(topic))
                        partition = id_partition(event.id, count)
                    fut = await producer.send(topic, value, key=key, partition=partition, headers=hdrs)
                    self._track(topic, fut)
                    pending.append((event.id, fut))
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka did not accept the events for {topic!r}: {exc}") from exc
        except TimeoutError:
            raise self._timed_out(topic, timeout, prepared, enqueued=len(pending)) from None
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        _, late = await asyncio.wait([fut for _, fut in pending], timeout=remaining)  # never cancels a send
        if late:
            raise self._timed_out(topic, timeout, prepared, enqueued=len(pending))
        positions = []
        for event_id, fut in pending:
            if (failure := fut.exception()) is not None:
                raise BrokerUnavailable(f"Kafka did not acknowledge event {event_id!r}: {failure!r}") from failure
            meta = fut.result()
            positions.append(Position(meta.topic, meta.partition, meta.offset, event_id))
        return positions

    def _track(self, topic: str, fut: asyncio.Future[Any]) -> None:
        """Remember an unacknowledged send until Kafka answers it (success or failure)."""
        waiting = self._unacked.setdefault(topic, {})
        waiting[fut] = time.monotonic()

        def done(f: asyncio.Future[Any]) -> None:
            waiting.pop(f, None)
            if not f.cancelled():
                f.exception()  # retrieved: a send nobody waits for any more must not log "never retrieved"

        fut.add_done_callback(done)

    def _refuse_if_overdue(self, topic: str, timeout: float) -> None:
        """Fail fast while Kafka leaves an earlier send to `topic` unacknowledged past the timeout."""
        waiting = self._unacked.get(topic)
        if waiting:
            oldest = next(iter(waiting.values()))
            overdue = time.monotonic() - oldest
            if overdue > timeout:
                raise BrokerUnavailable(
                    f"Kafka has not acknowledged events for {topic!r} for {overdue:.0f}s; nothing was written, "
                    f"retry later")

    def _timed_out(self, topic: str, timeout: float, prepared: list[tuple[Event, bytes]], *,
                   enqueued: int) -> BrokerUnavailable:
        """Build the error of a publish Kafka did not acknowledge in time, naming the ids to retry with."""
        log.warning("Kafka did not acknowledge %d event(s) for %s within %.1fs.", enqueued, topic, timeout)
        error = BrokerUnavailable(
            f"Kafka did not acknowledge the event(s) for {topic!r} within {timeout:g}s (ES_PUBLISH_TIMEOUT_S); "
            f"they may have been written: retry with the same id (the routing worker drops copies by id)")
        error.extra = {"ids": [event.id for event, _ in prepared]}  # app/problems.py adds them to the body
        return error

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerUnavailable("producer is not connected to Kafka yet")
        return self._producer


def id_partition(event_id: str, partitions: int) -> int:
    """Return the partition of an event without subject: by id, as Kafka's default partitioner would."""
    return (murmur2(event_id.encode()) & 0x7FFFFFFF) % partitions


async def publish(event: Any, topic: str | None = None) -> Position:
    """Publish one event with a short-lived producer (convenience for scripts; reuse EventProducer in services)."""
    async with EventProducer() as producer:
        return await producer.publish(event, topic)


async def publish_batch(events: Iterable[Any], topic: str | None = None) -> list[Position]:
    """Publish many events with a short-lived producer (convenience for scripts)."""
    async with EventProducer() as producer:
        return await producer.publish_batch(events, topic)


__all__ = ["EventProducer", "Position", "publish", "publish_batch", "StreamError"]
