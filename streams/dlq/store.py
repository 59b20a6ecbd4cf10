"""The DLQ seen from the edge: list entries, and write chosen ones back to the ingress topic.

A replayed record carries the header es-replay-of (the entry's DLQ position, "<partition>/<offset>")
and, for an entry of stage `produce`, es-replay-to (the one destination that failed, so the others do
not get a second copy). When the worker has forwarded it, it writes the position to the compacted
ledger topic `settings.dlq_replays_topic`; entries found there are not replayed again unless forced.
Two replays of one entry racing each other both reach the ingress topic, and the worker's dedup
(keyed by event id and es-replay-of) forwards one of them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.dlq.letters import PREFIX, REPLAY_OF, REPLAY_TO, DeadLetter
from streams.errors import BrokerUnavailable, DeadLetterNotFound, StreamError, redact
from streams.kafka import clients
from streams.kafka.producer import Position, id_partition
from streams.schema.codec import AvroCodec
from streams.settings import Settings

log = logging.getLogger(__name__)
Results = list[dict[str, Any]]  # one dict per entry; an alias, since the class's own `list` shadows the builtin


def matches(entry: DeadLetter, stage: str | None, error: str | None) -> bool:
    """Tell whether an entry fits a filter: exact stage, and `error` inside "ErrorClass: message"."""
    if stage is not None and entry.stage != stage:
        return False
    return error is None or error.lower() in f"{entry.error_class}: {entry.error_message}".lower()


SCAN_BATCH = 500  # records per fetch while scanning: what a listing holds in memory besides its page


async def scan(settings: Settings, topic: str) -> AsyncGenerator[Any, None]:
    """Yield the records of a topic up to its end now, partition by partition in offset order, one fetch
    at a time: a listing holds one batch and its page, never the whole topic."""
    consumer = clients.reader(settings, "dlq-reader")
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            if starts[tp] >= ends[tp]:
                continue
            consumer.assign([tp])
            consumer.seek(tp, starts[tp])
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=SCAN_BATCH)
                for record in batch.get(tp, ()):
                    if record.offset < ends[tp]:
                        yield record
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read {topic}: {exc}") from exc
    finally:
        await consumer.stop()


async def read_at(settings: Settings, topic: str, positions: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """Return the records at these (partition, offset) positions that exist, reading only those offsets."""
    wanted = sorted(set(positions))
    found: dict[tuple[int, int], Any] = {}
    if not wanted:
        return found
    consumer = clients.reader(settings, "dlq-reader")
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted({p for p, _ in wanted} & partitions)]
        if not tps:
            return found
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for partition, offset in wanted:
            tp = TopicPartition(topic, partition)
            if tp not in starts or not starts[tp] <= offset < ends[tp]:
                continue
            consumer.assign([tp])
            consumer.seek(tp, offset)
            while await consumer.position(tp) <= offset:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                record = next(iter(batch.get(tp, ())), None)
                if record is not None:
                    if record.offset == offset:
                        found[(partition, offset)] = record
                    break
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read {topic}: {exc}") from exc
    finally:
        await consumer.stop()
    return found


def _letter(record: Any) -> DeadLetter:
    return DeadLetter.from_record(record.partition, record.offset, record.timestamp, record.key, record.value,
                                  list(record.headers or ()))


def _position(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition("/")
    return int(partition), int(offset)


class DeadLetterStore:
    """Lists DLQ entries and replays them into the ingress topic."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self.settings, self.codec = settings, codec
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open nothing yet: the replay producer connects on the first replay, so an edge that never
        replays holds no extra connection."""

    async def stop(self) -> None:
        """Close the producer; calling it twice is harmless."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> DeadLetterStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def entries(self) -> AsyncGenerator[DeadLetter, None]:
        """Yield every DLQ entry, partition by partition, oldest first (read a batch at a time)."""
        async with contextlib.aclosing(scan(self.settings, self.settings.dlq_topic)) as records:
            async for record in records:
                yield _letter(record)

    async def replayed(self) -> dict[str, dict[str, Any]]:
        """Return the ledger: DLQ position -> what the worker recorded when the replay went through."""
        ledger: dict[str, dict[str, Any]] = {}  # one small entry per replayed position (compacted topic)
        async for rec in scan(self.settings, self.settings.dlq_replays_topic):
            position = (rec.key or b"").decode(errors="replace")
            if rec.value is None:
                ledger.pop(position, None)
            else:
                try:
                    ledger[position] = orjson.loads(rec.value)
                except orjson.JSONDecodeError:
                    ledger[position] = {}
        return ledger

    async def list(self, *, stage: str | None = None, error: str | None = None, limit: int = 50,
                   offset: int = 0) -> tuple[int, list[DeadLetter]]:
        """Return the number of matching entries and one page of them (only the page is kept in memory)."""
        total = 0
        page: builtins.list[DeadLetter] = []
        async for entry in self.entries():
            if matches(entry, stage, error):
                if offset <= total < offset + limit:
                    page.append(entry)
                total += 1
        return total, page

    async def get(self, position: str) -> DeadLetter:
        """Return the entry at a position ("<partition>/<offset>"), raising DeadLetterNotFound."""
        found = await read_at(self.settings, self.settings.dlq_topic, [_position(position)])
        if not found:
            raise DeadLetterNotFound(f"no DLQ entry at position {position!r} of {self.settings.dlq_topic}")
        return _letter(next(iter(found.values())))

    async def _chosen(self, positions: Iterable[str] | None, stage: str | None,
                      error: str | None) -> AsyncIterator[DeadLetter]:
        """Yield the entries a replay names: by position (read one by one), else every match of the filter."""
        if positions is None:
            async with contextlib.aclosing(self.entries()) as entries:
                async for entry in entries:
                    if matches(entry, stage, error):
                        yield entry
            return
        wanted = list(dict.fromkeys(positions))
        found = await read_at(self.settings, self.settings.dlq_topic, [_position(p) for p in wanted])
        by_position = {f"{p}/{o}": _letter(r) for (p, o), r in found.items()}
        missing = [p for p in wanted if p not in by_position]
        if missing:
            raise DeadLetterNotFound(f"no DLQ entry at {', '.join(missing)} of {self.settings.dlq_topic}")
        for p in wanted:
            if matches(by_position[p], stage, error):
                yield by_position[p]

    async def replay(self, *, positions: Iterable[str] | None = None, stage: str | None = None,
                     error: str | None = None, value: bytes | None = None, key: bytes | None = None,
                     force: bool = False) -> Results:
        """Write entries back to the ingress topic; `value`/`key` replace the original (one position)."""
        async with self._lock:
            ledger = await self.replayed()
            results: Results = []
            pending: builtins.list[tuple[str, asyncio.Future[Any]]] = []  # positions only: no record is kept
            producer = await self._client()
            try:
                async for entry in self._chosen(positions, stage, error):
                    done = ledger.get(entry.position)
                    if done is not None and not force:
                        results.append({"position": entry.position, "status": "skipped",
                                        "reason": "already replayed successfully", "replayed": done})
                        continue
                    new_value = value if value is not None else entry.value
                    new_key = key if value is not None else entry.key
                    headers = [(k, v) for k, v in entry.headers if k not in (REPLAY_OF, REPLAY_TO)
                               and not k.startswith(PREFIX)]
                    headers.append((REPLAY_OF, entry.position.encode()))
                    if entry.stage == "produce" and entry.destination:
                        headers.append((REPLAY_TO, entry.destination.encode()))
                    partition = await self._partition(new_key, new_value)
                    fut = await producer.send(self.settings.ingress_topic, new_value, key=new_key,
                                              partition=partition, headers=headers)
                    pending.append((entry.position, fut))
                metas = await asyncio.gather(*(f for _, f in pending))
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot write replays to {self.settings.ingress_topic}: {exc}") from exc
            for (position, _), meta in zip(pending, metas, strict=True):
                pos = Position(meta.topic, meta.partition, meta.offset, "")
                results.append({"position": position, "status": "replayed",
                                "ingress": {"topic": pos.topic, "partition": pos.partition, "offset": pos.offset}})
            log.info("Replayed %d DLQ entries into %s (%d skipped).", len(pending), self.settings.ingress_topic,
                     len(results) - len(pending))
            return results

    async def _partition(self, key: bytes | None, value: bytes | None) -> int | None:
        """Place a record without key by its event id, as the edge does (None if it does not decode)."""
        if key is not None or value is None or self.codec is None:
            return None
        try:
            event_id = (await self.codec.decode_async(value))["id"]
            producer = await self._client()
            return id_partition(event_id, len(await producer.partitions_for(self.settings.ingress_topic)))
        except (StreamError, KafkaError, KeyError):
            return None

    async def _client(self) -> AIOKafkaProducer:
        if self._producer is None:
            s = self.settings
            producer = clients.producer(s, "dlq-replay", acks="all", enable_idempotence=True,
                                        max_request_size=max(1_048_576, s.max_event_bytes + 65_536))
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                raise BrokerUnavailable(f"Kafka at {redact(s.kafka_bootstrap_servers)} did not answer: {exc}") \
                    from exc
            self._producer = producer
        return self._producer
