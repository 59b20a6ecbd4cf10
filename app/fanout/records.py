"""Turn Kafka records into the events clients see: decoded once, framed once, shared by all readers."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from app.sse.framing import format_event
from streams.envelope import record_to_json
from streams.errors import CodecError, UnknownSchema
from streams.schema.codec import AvroCodec

log = logging.getLogger(__name__)

# Partitions of each topic, in the order of a filter's sorted topics: topic -> next offset per partition.
Positions = dict[str, list[int]]


class RecordDecoder:
    """Decode Avro records into CloudEvents JSON dicts that also name their topic, partition and offset."""

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec
        self.skipped = 0

    async def decode(self, record: ConsumerRecord) -> dict[str, Any] | None:
        """Return the event of a record, or None (logged) for a record that is not an event."""
        value = record.value
        if value is None:
            return None
        try:
            try:
                decoded = self.codec.decode(value)
            except UnknownSchema:
                decoded = await self.codec.decode_async(value)
            event = record_to_json(decoded)
        except (CodecError, ValueError, KeyError) as exc:
            self.skipped += 1
            log.warning("Skipping record %s-%d@%d that is not an event: %s",
                        record.topic, record.partition, record.offset, exc)
            return None
        event["topic"] = record.topic
        event["partition"] = record.partition
        event["offset"] = record.offset
        return event


def frame_body(event: dict[str, Any]) -> bytes:
    """Frame an event without its id line: `event:` its type, `data:` the JSON (see `sse.with_id`)."""
    return format_event(orjson.dumps(event).decode(), event=event["type"])
