"""AvroCodec: Confluent framing, golden bytes, schema resolution, bad input."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import orjson
import pytest

from streams.errors import CodecError, UnknownSchema
from streams.schema.codec import AvroCodec, load_schema_text
from streams.settings import ROOT

ENVELOPE = ROOT / "schemas" / "envelope.avsc"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class Source:
    """A schema-id table standing in for the registry (the codec's only dependency)."""

    def __init__(self, schemas: dict[int, str]) -> None:
        self.schemas = schemas

    def schema_by_id(self, schema_id: int) -> str | None:
        return self.schemas.get(schema_id)

    async def fetch_schema(self, schema_id: int) -> str:
        raise UnknownSchema(f"schema id {schema_id} is not registered")


def record(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"id": "e1", "source": "/s", "type": "t.x", "subject": None, "time": T0,
                               "datacontenttype": "application/json", "data": '{"a":1}', "tags": ["x"],
                               "extensions": {"k": "v"}, "recipients": None}
    base.update(over)
    return base


def test_encode_writes_magic_byte_and_schema_id_then_avro() -> None:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(7)
    data = codec.encode(record(id="a", source="b", type="c", data=None, tags=[], extensions={}))
    assert data[:5] == b"\x00" + struct.pack(">I", 7)
    micros = int(T0.timestamp() * 1_000_000)
    # Avro: strings are zigzag length + bytes; union index 0 (null) for subject; long for time.
    assert data[5:11] == b"\x02a\x02b\x02c"
    assert data[11:12] == b"\x00"  # subject: null branch
    assert data.endswith(b"\x00\x00\x00\x00")  # data null, empty tags, empty extensions, recipients null
    assert codec.decode(data)["time"] == T0 and micros > 0


def test_decode_round_trips_every_attribute() -> None:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(1)
    rec = record(subject="job-1", data=b"\x00\xff", recipients=["alice", "conn-1"])
    assert codec.decode(codec.encode(rec)) == rec


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (b"\x01\x00\x00\x00\x01abc", "magic byte 1"),
    (b"\x00\x00\x00\x00\x63\x02a", "schema id 99 is not registered"),
    (b"\x00\x00\x00\x00\x01\xff\xff\xff", "cannot decode"),
], ids=["empty", "wrong-magic", "unknown-id", "garbage-body"])
def test_decode_refuses_bytes_that_are_not_our_wire_format(data: bytes, message: str) -> None:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(1)
    with pytest.raises(CodecError, match=message):
        codec.decode(data)


def test_decode_refuses_trailing_bytes() -> None:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(1)
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(codec.encode(record()) + b"\x00")


def test_encode_refuses_record_missing_required_field() -> None:
    codec = AvroCodec.from_file(ENVELOPE)
    codec.bind(1)
    rec = record()
    del rec["source"]
    with pytest.raises(CodecError):
        codec.encode(rec)


def _schema_without(field: str) -> str:
    schema = orjson.loads(load_schema_text(ENVELOPE))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    return orjson.dumps(schema).decode()


def _schema_with_extra_field() -> str:
    schema = orjson.loads(load_schema_text(ENVELOPE))
    schema["fields"].append({"name": "priority", "type": "int", "default": 5})
    return orjson.dumps(schema).decode()


def test_decode_resolves_older_writer_schema_with_reader_defaults() -> None:
    old = _schema_without("tags")
    writer = AvroCodec(old)
    writer.bind(3)
    rec = record()
    del rec["tags"]
    reader = AvroCodec.from_file(ENVELOPE, Source({3: old}))
    reader.bind(4)
    decoded = reader.decode(writer.encode(rec))
    assert decoded["tags"] == [] and decoded["id"] == "e1"


def test_decode_resolves_newer_writer_schema_by_ignoring_unknown_fields() -> None:
    new = _schema_with_extra_field()
    writer = AvroCodec(new)
    writer.bind(9)
    reader = AvroCodec.from_file(ENVELOPE, Source({9: new}))
    reader.bind(4)
    decoded = reader.decode(writer.encode(record(priority=1)))
    assert "priority" not in decoded and decoded["source"] == "/s"


async def test_decode_async_asks_the_source_for_unknown_ids() -> None:
    codec = AvroCodec.from_file(ENVELOPE, Source({}))
    with pytest.raises(UnknownSchema):
        await codec.decode_async(b"\x00\x00\x00\x00\x05\x02a")


ENVELOPE_V1 = ROOT / "tests" / "fixtures" / "envelope-v1.avsc"  # the envelope before `recipients` (git history)


def test_records_of_the_envelope_before_recipients_decode_with_recipients_null() -> None:
    old = load_schema_text(ENVELOPE_V1)
    writer = AvroCodec(old)
    writer.bind(1)
    rec = record()
    del rec["recipients"]
    reader = AvroCodec.from_file(ENVELOPE, Source({1: old}))
    reader.bind(2)
    decoded = reader.decode(writer.encode(rec))
    assert decoded == {**rec, "recipients": None}


def test_the_envelope_before_recipients_reads_records_that_name_recipients() -> None:
    old = load_schema_text(ENVELOPE_V1)
    writer = AvroCodec.from_file(ENVELOPE)
    writer.bind(2)
    reader = AvroCodec(old, Source({2: load_schema_text(ENVELOPE)}))
    reader.bind(1)
    decoded = reader.decode(writer.encode(record(recipients=["alice"])))
    assert "recipients" not in decoded and decoded["id"] == "e1"  # an old worker forwards the bytes unchanged
