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
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.dlq.letters import PREFIX, REPLAY_OF, REPLAY_TO, DeadLetter
from streams.errors import BrokerUnavailable, DeadLetterNotFound, StreamError, redact
from streams.kafka.producer import Position, id_partition
from streams.schema.codec import AvroCodec
from streams.settings import Settings

log = logging.getLogger(__name__)


def matches(entry: DeadLetter, stage: str | None, error: str | None) -> bool:
    """Tell whether an entry fits a filter: exact stage, and `error` inside "ErrorClass: message"."""
    if stage is not None and entry.stage != stage:
        return False
    return error is None or error.lower() in f"{entry.error_class}: {entry.error_message}".lower()


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Read every record of a topic from its beginning to its end now (no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                client_id=f"{settings.client_id}-dlq-reader", group_id=None,
                                request_timeout_ms=settings.request_timeout_ms)
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp: end for tp, end in ends.items() if end > 0}
        out: list[Any] = []
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < todo.get(tp, -1))
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        return sorted(out, key=lambda r: (r.partition, r.offset))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read {topic}: {exc}") from exc
    finally:
        await consumer.stop()


class DeadLetterStore:
    """Lists DLQ entries and replays them into the ingress topic."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self.settings, self.codec = settings, codec
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        """Close the producer; calling it twice is harmless."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def entries(self) -> list[DeadLetter]:
        """Return every DLQ entry, oldest first within each partition."""
        records = await read_topic(self.settings, self.settings.dlq_topic)
        return [DeadLetter.from_record(r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers or ()))
                for r in records]

    async def replayed(self) -> dict[str, dict[str, Any]]:
        """Return the ledger: DLQ position -> what the worker recorded when the replay went through."""
        ledger: dict[str, dict[str, Any]] = {}
        for rec in await read_topic(self.settings, self.settings.dlq_replays_topic):
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
        """Return the number of matching entries and one page of them."""
        found = [e for e in await self.entries() if matches(e, stage, error)]
        return len(found), found[offset:offset + limit]

    async def get(self, position: str) -> DeadLetter:
        """Return the entry at a position ("<partition>/<offset>"), raising DeadLetterNotFound."""
        for entry in await self.entries():
            if entry.position == position:
                return entry
        raise DeadLetterNotFound(f"no DLQ entry at position {position!r} of {self.settings.dlq_topic}")

    async def replay(self, *, positions: Iterable[str] | None = None, stage: str | None = None,
                     error: str | None = None, value: bytes | None = None, key: bytes | None = None,
                     force: bool = False) -> list[dict[str, Any]]:
        """Write entries back to the ingress topic; `value`/`key` replace the original (one position)."""
        async with self._lock:
            entries = await self.entries()
            if positions is not None:
                wanted = list(dict.fromkeys(positions))
                by_position = {e.position: e for e in entries}
                missing = [p for p in wanted if p not in by_position]
                if missing:
                    raise DeadLetterNotFound(f"no DLQ entry at {', '.join(missing)} of {self.settings.dlq_topic}")
                chosen = [by_position[p] for p in wanted if matches(by_position[p], stage, error)]
            else:
                chosen = [e for e in entries if matches(e, stage, error)]
            ledger = await self.replayed()
            results: list[dict[str, Any]] = []
            pending: list[tuple[DeadLetter, asyncio.Future[Any]]] = []
            producer = await self._client()
            try:
                for entry in chosen:
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
                    pending.append((entry, fut))
                metas = await asyncio.gather(*(f for _, f in pending))
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot write replays to {self.settings.ingress_topic}: {exc}") from exc
            for (entry, _), meta in zip(pending, metas, strict=True):
                pos = Position(meta.topic, meta.partition, meta.offset, "")
                results.append({"position": entry.position, "status": "replayed",
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
            producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all",
                                        enable_idempotence=True, client_id=f"{s.client_id}-dlq-replay",
                                        request_timeout_ms=s.request_timeout_ms,
                                        max_request_size=max(1_048_576, s.max_event_bytes + 65_536))
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                raise BrokerUnavailable(f"Kafka at {redact(s.kafka_bootstrap_servers)} did not answer: {exc}") \
                    from exc
            self._producer = producer
        return self._producer
