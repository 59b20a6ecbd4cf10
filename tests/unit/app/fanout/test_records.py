"""The record decoder: a record that is not an event is skipped, counted per topic and logged once per kind
with its position; a registry that cannot be read is retried; DLQ records become entry events."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from app.fanout import records as records_module
from app.fanout.records import DLQ_EVENT_TYPE, RecordDecoder
from streams.dlq.letters import dead_letter_headers
from streams.errors import BrokerUnavailable, SchemaIdNotFound
from streams.schema.codec import AvroCodec
from tests.unit.streams.schema.test_codec import ENVELOPE, record

DLQ = "dlq-topic"


class Registry:
    """The registry as the codec sees it: knows id 1; `fetch_schema` fails like the real one."""

    def __init__(self, outages: int = 0) -> None:
        self.text = AvroCodec.from_file(ENVELOPE).schema_text
        self.outages = outages  # fetches that fail with BrokerUnavailable before the registry answers
        self.fetched: list[int] = []

    def schema_by_id(self, schema_id: int) -> str | None:
        return self.text if schema_id == 1 and not self.outages else None

    async def fetch_schema(self, schema_id: int) -> str:
        self.fetched.append(schema_id)
        if self.outages:
            self.outages -= 1
            raise BrokerUnavailable("cannot read the end of _schemas")
        if schema_id != 1:
            raise SchemaIdNotFound(f"schema id {schema_id} is not registered")
        return self.text


def encoded(schema_id: int = 1) -> bytes:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(1)
    return codec.encode(record(), schema_id=schema_id)


def rec(value: bytes | None, offset: int = 0, topic: str = "orders", headers: Any = ()) -> Any:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, value=value, key=b"k", timestamp=1_700_000_000_000,
                           headers=list(headers))


def decoder(registry: Registry | None = None) -> RecordDecoder:
    return RecordDecoder(AvroCodec.from_file(ENVELOPE, registry or Registry()), dlq_topic=DLQ)


async def test_garbage_bytes_and_an_unknown_schema_id_are_skipped_and_counted_per_topic() -> None:
    dec = decoder()
    assert await dec.decode(rec(b"\x07garbage", 0)) is None
    assert await dec.decode(rec(encoded(schema_id=999), 1)) is None  # SchemaIdNotFound used to escape
    assert await dec.decode(rec(b"\x00\x00", 0, topic="other")) is None
    event = await dec.decode(rec(encoded(), 2))
    assert event is not None and event["id"] == "e1" and event["offset"] == 2
    assert dec.undecodable == {"orders": 2, "other": 1} and dec.skipped == 3


async def test_each_kind_is_logged_once_per_topic_with_its_position(caplog: pytest.LogCaptureFixture) -> None:
    dec = decoder()
    with caplog.at_level(logging.WARNING, "app.fanout.records"):
        for offset in range(3):
            await dec.decode(rec(b"\x07garbage", offset))
        for offset in range(3, 5):
            await dec.decode(rec(encoded(schema_id=999), offset))
    lines = [r.getMessage() for r in caplog.records if r.name == "app.fanout.records"]
    assert len(lines) == 2 and lines[0].startswith("Record orders-0@0 is not an event (CodecError")
    assert lines[1].startswith("Record orders-0@3 is not an event (SchemaIdNotFound")
    assert dec.undecodable == {"orders": 5}


async def test_a_registry_that_cannot_be_read_is_retried_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "RETRY_FIRST_S", 0.001)
    registry = Registry(outages=2)
    dec = decoder(registry)
    event = await dec.decode(rec(encoded(), 7))
    assert event is not None and event["offset"] == 7 and registry.fetched == [1, 1] and dec.undecodable == {}


async def test_a_dlq_record_is_an_entry_event_with_its_original_when_that_decodes() -> None:
    headers = dead_letter_headers([("h", b"v")], stage="route", error="no rule matched", error_class="RoutingError",
                                  topic="ingress", partition=2, offset=41, timestamp_ms=1_700_000_000_000,
                                  first_failure_ms=1_700_000_000_000)
    event = await decoder().decode(rec(encoded(), 5, topic=DLQ, headers=headers))
    assert event is not None and event["type"] == DLQ_EVENT_TYPE and event["offset"] == 5
    data = event["data"]
    assert (data["stage"], data["error_class"], data["error_message"]) == ("route", "RoutingError", "no rule matched")
    assert data["original"]["topic"] == "ingress" and data["original"]["offset"] == 41
    assert data["event"]["id"] == "e1"


async def test_a_dlq_record_whose_original_does_not_decode_is_still_shown() -> None:
    headers = dead_letter_headers(None, stage="decode", error="unknown magic byte 7", topic="ingress", partition=0,
                                  offset=3, timestamp_ms=None, first_failure_ms=1_700_000_000_000)
    dec = decoder()
    event = await dec.decode(rec(b"\x07garbage", 0, topic=DLQ, headers=headers))
    assert event is not None and event["data"]["stage"] == "decode" and event["data"]["event"] is None
    assert dec.undecodable == {}
