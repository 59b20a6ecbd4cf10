"""The worker's writes: one idempotent acks=all producer, batches per destination partition, and the
line between errors worth waiting out and errors that send a record to the DLQ.

`write` takes the outputs of a whole fetched batch (its destinations, dedup changelog entries, replay
ledger entries, dead letters), groups them by destination partition in ingress order, and appends each
group to as few producer batches as fit (`send_batch`), so one acknowledgment covers many records. The
batches of one destination partition are sent one after another: a batch that fails leaves the later
ones unsent, so no record overtakes an earlier one of its partition (and so of its subject). Each
output's Work counts its acknowledgments; the last one completes it (streams/worker/pipeline.py).

Errors (`is_permanent`): a record that is too large, an invalid topic, an authorization refusal or a
record the broker calls invalid is permanent: only those reach `give_up`, which turns a destination
write into a dead letter. A batch refused as a whole is first split into single records, so only the
record at fault is dead-lettered. Everything else (broker unavailable, not leader, request timed out,
not enough replicas, metadata not available) is retriable: `settle` sends the failed outputs again, in
their order, with a backoff doubling from `route_backoff_ms` to 5 s, for as long as it takes.
Changelog, ledger and DLQ writes are never given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streams.errors import BrokerUnavailable, redact
from streams.kafka import clients
from streams.kafka.topics import TopicManager
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0
Headers = list[tuple[str, bytes]]
ROUTE, CHANGELOG, LEDGER, DEAD_LETTER = "route", "changelog", "ledger", "dead-letter"
# Kafka error codes that no retry can fix, for the record at hand: MESSAGE_TOO_LARGE, INVALID_TOPIC_EXCEPTION,
# RECORD_LIST_TOO_LARGE, TOPIC_AUTHORIZATION_FAILED, INVALID_TIMESTAMP, UNSUPPORTED_FOR_MESSAGE_FORMAT,
# INVALID_RECORD (org.apache.kafka.common.protocol.Errors).
PERMANENT_CODES = frozenset({10, 17, 18, 29, 32, 43, 87})
Failure = tuple["Output", BaseException]


def is_permanent(exc: BaseException) -> bool:
    """Tell whether a write error concerns the record itself (DLQ) rather than the cluster's state (retry)."""
    return isinstance(exc, KafkaError) and getattr(exc, "errno", None) in PERMANENT_CODES


class Output:
    """One record to write, what it is for (`kind`), its place in ingress order, and how often it failed."""

    __slots__ = ("topic", "value", "key", "headers", "partition", "kind", "work", "attempts", "first_failure_ms",
                 "seq")

    def __init__(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None,
                 partition: int | None = None, kind: str = ROUTE) -> None:
        self.topic, self.value, self.key, self.headers, self.partition = topic, value, key, headers, partition
        self.kind = kind
        self.work: Work | None = None
        self.attempts = 0
        self.first_failure_ms = 0
        self.seq = 0


class Work:
    """The writes one ingress record needs; `done(work)` runs once all of them are acknowledged."""

    __slots__ = ("outputs", "pending", "done", "failed", "partition", "offset")

    def __init__(self, outputs: list[Output], done: Callable[[Work], None], partition: int = -1,
                 offset: int = -1) -> None:
        self.outputs, self.done, self.partition, self.offset = outputs, done, partition, offset
        self.pending = len(outputs)
        self.failed: list[Output] = []  # destinations that went to the DLQ instead
        for out in outputs:
            out.work = self

    def output_done(self) -> None:
        """Count one acknowledged write; the last one completes the work."""
        self.pending -= 1
        if not self.pending:
            self.done(self)
            self.outputs = self.failed = []  # outputs point back here: break the cycle, so it is freed at once


class Delivery:
    """Producer, destination topics created on first use, batched sends, and retries that never give up."""

    def __init__(self, settings: Settings, topics: TopicManager) -> None:
        self.settings = settings
        self.topics = topics
        self._producer: AIOKafkaProducer | None = None
        self._known: set[str] = set()
        self._backoff_s = settings.route_backoff_ms / 1000
        self._hashes: dict[bytes, int] = {}  # key -> murmur2, the default partitioner's hash
        self.retried = 0  # outputs written again after a retriable failure (streams/worker/metrics.py)

    async def start(self) -> None:
        """Connect the producer."""
        if self._producer is not None:
            return
        s = self.settings
        producer = clients.producer(
            s, "worker", acks="all", enable_idempotence=True, linger_ms=s.worker_linger_ms,
            compression_type="snappy", max_request_size=max(1_048_576, s.max_event_bytes + 65_536),
            max_batch_size=1_000_000,  # a whole fetched batch per destination partition; within topic limits
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(f"Kafka at {redact(s.kafka_bootstrap_servers)} did not answer: {exc}") from exc
        self._producer = producer
        log.info("Worker producer started (acks=all, idempotent, snappy, linger %d ms).", s.worker_linger_ms)

    async def stop(self) -> None:
        """Flush what was sent and disconnect; calling it twice is harmless."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await asyncio.wait_for(producer.flush(), self.settings.request_timeout_ms / 1000)
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
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

    async def write(self, outputs: list[Output],
                    wait_s: float | None = None) -> tuple[list[Failure], list[asyncio.Task]]:
        """Send every output once; return the failures seen within `wait_s` and the sends still waiting then."""
        by_topic: dict[str, list[Output]] = {}
        for out in outputs:
            group = by_topic.get(out.topic)
            if group is None:
                group = by_topic[out.topic] = []
            group.append(out)
        tasks = [asyncio.ensure_future(self._topic(topic, outs)) for topic, outs in by_topic.items()]
        done, pending = await asyncio.wait(tasks, timeout=wait_s)
        failed = [f for task in done for f in task.result()]
        return failed, list(pending)

    async def settle(self, failed: list[Failure], give_up: Callable[[Output, BaseException], list[Output]],
                     what: str) -> None:
        """Write failed outputs again until every one is acknowledged; permanent destination errors go to `give_up`."""
        attempt = 0
        while failed:
            again: list[Output] = []
            errors: dict[str, BaseException] = {}
            for out, exc in sorted(failed, key=lambda f: f[0].seq):
                out.attempts += 1
                if not out.first_failure_ms:
                    out.first_failure_ms = _now_ms()
                if out.kind == ROUTE and is_permanent(exc):
                    log.error("Writing to %s failed (%s: %s); sending the record to the DLQ.", out.topic,
                              type(exc).__name__, exc)
                    again.extend(give_up(out, exc))
                    continue
                if out.kind != ROUTE and is_permanent(exc):
                    log.error("Writing a %s record to %s failed (%s: %s); it cannot be dropped, trying again.",
                              out.kind, out.topic, type(exc).__name__, exc)
                errors.setdefault(out.topic, exc)
                again.append(out)
                self.retried += 1
            if errors:
                delay = min(self._backoff_s * 2 ** attempt, MAX_BACKOFF_S)
                attempt += 1
                log.warning("Writing %d records failed (%s); holding %s and trying again in %.2f s.", len(again),
                            "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in errors.items()), what, delay)
                await asyncio.sleep(delay)
            failed, pending = await self.write(again)
            assert not pending

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerUnavailable("worker producer is not connected to Kafka")
        return self._producer

    async def _topic(self, topic: str, outs: list[Output]) -> list[Failure]:
        """Send one topic's outputs, each destination partition's in order; return the failures."""
        try:
            producer = self._require()
            partitions = sorted(await producer.partitions_for(topic))
        except Exception as exc:  # KafkaTimeoutError while the topic's metadata is missing: retriable
            return [(o, exc) for o in outs]
        count = len(partitions)
        by_partition: dict[int, list[Output]] = {}
        failed: list[Failure] = []
        hashes = self._hashes
        for out in outs:
            partition = out.partition
            if partition is None:
                key = out.key
                if key is None:
                    partition = partitions[random.randrange(count)]
                else:
                    h = hashes.get(key)
                    if h is None:
                        if len(hashes) > 100_000:
                            hashes.clear()
                        h = hashes[key] = murmur2(key) & 0x7FFFFFFF
                    partition = partitions[h % count]
            elif partition >= count:  # metadata older than a partition increase: look again, then retry
                producer.client.force_metadata_update()
                failed.append((out, KafkaError(f"{topic} has no partition {partition} in the producer's metadata")))
                continue
            group = by_partition.get(partition)
            if group is None:
                group = by_partition[partition] = []
            group.append(out)
        if len(by_partition) == 1:
            [(partition, group)] = by_partition.items()
            failed += await self._chain(producer, topic, partition, group)
        else:
            for result in await asyncio.gather(*(self._chain(producer, topic, p, g) for p, g in by_partition.items())):
                failed += result
        return failed

    async def _chain(self, producer: AIOKafkaProducer, topic: str, partition: int, outs: list[Output]) -> list[Failure]:
        """Send one destination partition's outputs in batches, each after the previous one is acknowledged."""
        failed: list[Failure] = []
        i, n = 0, len(outs)
        while i < n:
            batch = producer.create_batch()
            start = i
            while i < n:
                out = outs[i]
                if batch.append(key=out.key, value=out.value, timestamp=None, headers=out.headers or []) is None:
                    break
                i += 1
            if i == start:  # one record larger than a batch: alone
                batch.close()
                batch = producer.create_batch()
                batch.append(key=outs[i].key, value=outs[i].value, timestamp=None, headers=outs[i].headers or [])
                i += 1
            taken = outs[start:i]
            try:
                await (await producer.send_batch(batch, topic, partition=partition))
            except Exception as exc:  # anything but the permanent codes is retried
                if is_permanent(exc) and len(taken) > 1:  # find the record at fault: one batch each
                    rest = await self._singles(producer, topic, partition, taken)
                    failed += rest
                    if rest and not is_permanent(rest[-1][1]):
                        return failed + [(o, rest[-1][1]) for o in outs[i:]]
                    continue
                failed += [(o, exc) for o in taken]
                if not is_permanent(exc):
                    return failed + [(o, exc) for o in outs[i:]]  # later ones would overtake: unsent
                continue
            for out in taken:
                out.work.output_done()  # type: ignore[union-attr]
        return failed

    async def _singles(self, producer: AIOKafkaProducer, topic: str, partition: int,
                       outs: list[Output]) -> list[Failure]:
        failed: list[Failure] = []
        for index, out in enumerate(outs):
            batch = producer.create_batch()
            batch.append(key=out.key, value=out.value, timestamp=None, headers=out.headers or [])
            try:
                await (await producer.send_batch(batch, topic, partition=partition))
            except Exception as exc:
                failed.append((out, exc))
                if not is_permanent(exc):
                    return failed + [(o, exc) for o in outs[index + 1:]]
                continue
            out.work.output_done()  # type: ignore[union-attr]
        return failed


def _now_ms() -> int:
    return int(time.time() * 1000)
