"""The worker's writes: one idempotent acks=all producer, bounded retries, then the DLQ.

Each ingress record becomes a `Work`: the records it must write (its outputs, its dedup changelog
entry, or its dead letter). `dispatch` queues them all on the producer at once, in the agent's order,
so the records of one subject reach their destinations in ingress order. When the broker has
acknowledged the last of them (acks=all), the Work calls `done`, which acks the ingress record to
Faust; only then may its offset be committed.

A failed write is sent again after a backoff that doubles from `route_backoff_ms` (at most 5 s),
`route_max_attempts` times in all; then `give_up` turns it into a DLQ record, or drops it (for writes
that are not destinations). DLQ writes are retried for as long as it takes, since dropping one would
lose the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.errors import BrokerUnavailable, redact
from streams.kafka.topics import TopicManager
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0
Headers = list[tuple[str, bytes]]
ROUTE, CHANGELOG, LEDGER, DEAD_LETTER = "route", "changelog", "ledger", "dead-letter"


class Output:
    """One record to write, what it is for (`kind`), and how often writing it has failed."""

    __slots__ = ("topic", "value", "key", "headers", "partition", "kind", "work", "attempts", "first_failure_ms")

    def __init__(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None,
                 partition: int | None = None, kind: str = ROUTE) -> None:
        self.topic, self.value, self.key, self.headers, self.partition = topic, value, key, headers, partition
        self.kind = kind
        self.work: Work | None = None
        self.attempts = 0
        self.first_failure_ms = 0


class Work:
    """The writes one ingress record needs; `done(work)` runs once all of them are acknowledged."""

    __slots__ = ("outputs", "pending", "done", "give_up", "failed")

    def __init__(self, outputs: list[Output], done: Callable[[Work], None],
                 give_up: Callable[[Output, BaseException], Output | None] | None = None) -> None:
        self.outputs, self.done, self.give_up = outputs, done, give_up
        self.pending = len(outputs)
        self.failed: list[Output] = []  # destinations that went to the DLQ instead
        for out in outputs:
            out.work = self

    def output_done(self) -> None:
        """Count one acknowledged write; the last one finishes the work."""
        self.pending -= 1
        if not self.pending:
            self.done(self)


class Delivery:
    """Producer, destination topics created on first use, retries and dead letters of failed writes."""

    def __init__(self, settings: Settings, topics: TopicManager) -> None:
        self.settings = settings
        self.topics = topics
        self._producer: AIOKafkaProducer | None = None
        self._known: set[str] = set()
        self._retries: set[asyncio.Future] = set()
        self._backoff_s = settings.route_backoff_ms / 1000
        self._max_attempts = settings.route_max_attempts

    async def start(self) -> None:
        """Connect the producer."""
        if self._producer is not None:
            return
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.client_id}-worker", acks="all",
            enable_idempotence=True, linger_ms=s.worker_linger_ms, request_timeout_ms=s.request_timeout_ms,
            max_request_size=max(1_048_576, s.max_event_bytes + 65_536),
            max_batch_size=max(65_536, min(s.max_event_bytes + 4096, 1_048_576)),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(f"Kafka at {redact(s.kafka_bootstrap_servers)} did not answer: {exc}") from exc
        self._producer = producer
        log.info("Worker producer started (acks=all, idempotent, linger %d ms).", s.worker_linger_ms)

    async def stop(self) -> None:
        """Cancel pending retries, flush what was sent and disconnect; calling it twice is harmless."""
        for retry in list(self._retries):
            retry.cancel()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.flush()
            await producer.stop()
            log.info("Worker producer stopped.")

    # ------------------------------------------------------------------ topics

    def missing(self, topics: Iterable[str]) -> list[str]:
        """Return the topics not yet known to exist (no I/O)."""
        return [t for t in topics if t not in self._known]

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create destination topics that do not exist, with the topic manager's defaults."""
        for topic in topics:
            if topic not in self._known:
                await self.topics.ensure(topic)
                self._known.add(topic)

    # ------------------------------------------------------------------ sending

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None,
                   partition: int | None = None) -> asyncio.Future:
        """Queue one record outside any Work (changelog tombstones); return its delivery future."""
        return await self._require().send(topic, value, key=key, partition=partition)

    async def dispatch(self, work: Work) -> None:
        """Queue every write of a Work on the producer now (no waiting for acknowledgements)."""
        for out in work.outputs:
            await self._send(out)

    async def _send(self, out: Output) -> None:
        try:
            fut = await self._require().send(out.topic, out.value, key=out.key, partition=out.partition,
                                             headers=out.headers)
        except (KafkaError, BrokerUnavailable) as exc:
            self._failed(out, exc)
            return
        fut.add_done_callback(partial(self._sent, out))

    def _sent(self, out: Output, fut: asyncio.Future) -> None:
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is None:
            assert out.work is not None
            out.work.output_done()
        else:
            self._failed(out, exc)

    def _failed(self, out: Output, exc: BaseException) -> None:
        out.attempts += 1
        if not out.first_failure_ms:
            out.first_failure_ms = int(time.time() * 1000)
        work = out.work
        if out.kind == DEAD_LETTER or out.attempts < self._max_attempts or work is None or work.give_up is None:
            delay = min(self._backoff_s * 2 ** (out.attempts - 1), MAX_BACKOFF_S)
            log.warning("Writing to %s failed (attempt %d: %s: %s); trying again in %.2f s.",
                        out.topic, out.attempts, type(exc).__name__, exc, delay)
            asyncio.get_running_loop().call_later(delay, self._retry, out)
            return
        if out.kind == ROUTE:
            log.error("Writing to %s failed %d times (%s: %s); sending the record to the DLQ.",
                      out.topic, out.attempts, type(exc).__name__, exc)
            work.failed.append(out)
        replacement = work.give_up(out, exc)
        if replacement is None:  # the owner drops this write
            work.output_done()
            return
        replacement.work = work
        self._retry(replacement)

    def _retry(self, out: Output) -> None:
        task = asyncio.ensure_future(self._send(out))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerUnavailable("worker producer is not connected to Kafka")
        return self._producer
