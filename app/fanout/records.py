"""Turn Kafka records into the events clients see: decoded once, framed once, shared by all readers."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from app.sse.framing import format_event
from streams.dlq.letters import DeadLetter
from streams.envelope import iso, record_to_json
from streams.errors import BrokerUnavailable, UnknownSchema
from streams.schema.codec import AvroCodec

log = logging.getLogger(__name__)

# Partitions of each topic, in the order of a filter's sorted topics: topic -> next offset per partition.
Positions = dict[str, list[int]]
# Offsets a position may hold beside real ones (never signed into a token; catch-up replaces them):
LOST = -1  # a durable connection lost it (no committed offset, no kept copy): a `reset`, then the log start
NEW = -2  # the partition was unknown when the position was taken: read it from its first offset, after the others
DLQ_EVENT_TYPE = "eventstream.dlq.entry"
RECIPIENTS = "recipients"  # the key of a targeted event's recipients (absent on every other event)
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
# Errors of reading the registry, not of the record: the record is tried again, never skipped.
RETRIABLE = (BrokerUnavailable, KafkaError, TimeoutError)


class RecordDecoder:
    """Decode Avro records into CloudEvents JSON dicts that also name their topic, partition and offset.

    A record that is not an event (garbage bytes, an unknown schema id, a record that breaks the
    envelope) is skipped, counted per topic in `undecodable`, and logged once per topic and kind with
    its position; when the registry cannot be reached the record is retried with backoff instead."""

    def __init__(self, codec: AvroCodec, dlq_topic: str | None = None) -> None:
        self.codec = codec
        self.dlq_topic = dlq_topic  # its records are dead letters, shown as `eventstream.dlq.entry` events
        self.undecodable: dict[str, int] = {}  # topic -> records skipped (the metrics read it from the hub)
        self._logged: set[tuple[str, str]] = set()  # (topic, kind) already logged

    @property
    def skipped(self) -> int:
        """Return how many records were skipped, all topics together."""
        return sum(self.undecodable.values())

    async def decode(self, record: ConsumerRecord) -> dict[str, Any] | None:
        """Return the event of a record, or None (counted, logged once per kind) for a record that is not one."""
        value = record.value
        if value is None:
            return None
        if record.topic == self.dlq_topic:
            return await self._dead_letter(record)
        delay = RETRY_FIRST_S
        while True:
            try:
                event = await self._event(value)
                break
            except RETRIABLE as exc:  # the registry (a Kafka topic) cannot be read: not the record's fault
                self._log_once(record, type(exc).__name__, exc, f"retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:  # bytes from the log are untrusted: any decoding error skips the record
                self.undecodable[record.topic] = self.undecodable.get(record.topic, 0) + 1
                self._log_once(record, type(exc).__name__, exc, "skipping it")
                return None
        event["topic"] = record.topic
        event["partition"] = record.partition
        event["offset"] = record.offset
        return event

    async def _event(self, value: bytes) -> dict[str, Any]:
        try:
            decoded = self.codec.decode(value)
        except UnknownSchema:
            decoded = await self.codec.decode_async(value)
        return record_to_json(decoded)

    async def _dead_letter(self, record: ConsumerRecord) -> dict[str, Any]:
        """Return a DLQ record as an event: stage, error, original position, and the original event if it decodes."""
        entry = DeadLetter.from_record(record.partition, record.offset, record.timestamp, record.key, record.value,
                                       record.headers)
        original = None
        if entry.value is not None and entry.stage not in ("decode", "unknown"):
            try:
                original = await self._event(entry.value)
            except Exception:  # the entry is shown whether or not its original decodes
                original = None
        data = entry.as_dict()
        data["event"] = original
        return {"specversion": "1.0", "id": f"dlq-{entry.position}", "source": "/eventstream/dlq",
                "type": DLQ_EVENT_TYPE, "subject": entry.original_topic or None,
                "time": iso(datetime.fromtimestamp(max(record.timestamp, 0) / 1000, UTC)),
                "datacontenttype": "application/json", "tags": [entry.stage], "extensions": {}, "data": data,
                "topic": record.topic, "partition": record.partition, "offset": record.offset}

    def _log_once(self, record: ConsumerRecord, kind: str, exc: BaseException, action: str) -> None:
        if (record.topic, kind) in self._logged:
            return
        self._logged.add((record.topic, kind))
        what = "cannot be decoded yet" if isinstance(exc, RETRIABLE) else "is not an event"
        log.warning("Record %s-%d@%d %s (%s: %s); %s. Later ones of this kind on %s are not logged.",
                    record.topic, record.partition, record.offset, what, kind, exc, action, record.topic)


def public(event: dict[str, Any]) -> dict[str, Any]:
    """Return the event as a reader sees it: without `recipients`, so no recipient learns who else got it
    (the same dict when it has none; only an admin's history shows the list)."""
    if RECIPIENTS not in event:
        return event
    return {k: v for k, v in event.items() if k != RECIPIENTS}


def frame_body(event: dict[str, Any]) -> bytes:
    """Frame an event without its id line: `event:` its type, `data:` the JSON (see `app.sse.framing.with_id`)."""
    return format_event(orjson.dumps(public(event)).decode(), event=event["type"])
