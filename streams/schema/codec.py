"""Avro codec in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.

fastavro is used on the hot path (see bench/codec_bench.py for the figures against `avro`).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, Protocol

import fastavro
import orjson

from streams.errors import CodecError, UnknownSchema

MAGIC = 0
_HEADER = struct.Struct(">bI")


class SchemaSource(Protocol):
    """What the codec needs from a registry: writer schemas by id."""

    def schema_by_id(self, schema_id: int) -> str | None: ...

    async def fetch_schema(self, schema_id: int) -> str: ...


def load_schema_text(path: Path | str) -> str:
    """Return the canonical JSON text of an .avsc file (the file is the source of truth)."""
    return orjson.dumps(orjson.loads(Path(path).read_bytes())).decode()


class AvroCodec:
    """Encode records with one reader/writer schema; decode any registered writer version into it."""

    def __init__(self, schema_text: str, source: SchemaSource | None = None) -> None:
        self.schema_text = schema_text
        self.schema = fastavro.parse_schema(orjson.loads(schema_text))
        self.schema_name: str | None = self.schema.get("name") if isinstance(self.schema, dict) else None
        self.schema_id: int | None = None
        self._source = source
        self._writers: dict[int, Any] = {}

    @classmethod
    def from_file(cls, path: Path | str, source: SchemaSource | None = None) -> AvroCodec:
        """Build a codec from an .avsc file, parsing the schema once."""
        return cls(load_schema_text(path), source)

    def bind(self, schema_id: int) -> None:
        """Remember the registry id of this codec's own schema (used when encoding)."""
        self.schema_id = schema_id
        self._writers[schema_id] = None  # None means: writer schema == reader schema

    def encode(self, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        """Return framed Avro bytes for `record`, raising CodecError if it does not fit the schema."""
        sid = self.schema_id if schema_id is None else schema_id
        if sid is None:
            raise CodecError("codec has no schema id; register the schema first (bind)")
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, sid))
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"record does not match schema {self.schema_name}: {exc}") from exc
        return buf.getvalue()

    @staticmethod
    def schema_id_of(data: bytes) -> int:
        """Return the schema id in framed bytes, raising CodecError if they are not our wire format."""
        if len(data) < 5:
            raise CodecError(f"record of {len(data)} bytes is too short for the Confluent wire format")
        magic, sid = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodecError(f"unknown magic byte {magic}; expected 0 (Confluent wire format)")
        return sid

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode framed bytes whose writer schema is already known (hot path, no I/O)."""
        sid = self.schema_id_of(data)
        if sid not in self._writers:
            text = self._source.schema_by_id(sid) if self._source else None
            if text is None:
                raise UnknownSchema(f"schema id {sid} is not registered")
            self._add_writer(sid, text)
        return self._read(data, sid)

    async def decode_async(self, data: bytes) -> dict[str, Any]:
        """Decode framed bytes, fetching an unknown writer schema from the registry first."""
        sid = self.schema_id_of(data)
        if sid not in self._writers and self._source is not None and self._source.schema_by_id(sid) is None:
            self._add_writer(sid, await self._source.fetch_schema(sid))
        return self.decode(data)

    def _add_writer(self, sid: int, text: str) -> None:
        try:
            parsed = fastavro.parse_schema(orjson.loads(text))
        except (ValueError, orjson.JSONDecodeError, fastavro.schema.SchemaParseException) as exc:
            raise CodecError(f"schema id {sid} is not valid Avro: {exc}") from exc
        same = orjson.loads(text) == orjson.loads(self.schema_text)
        self._writers[sid] = None if same else parsed

    def _read(self, data: bytes, sid: int) -> dict[str, Any]:
        writer = self._writers[sid]
        buf = io.BytesIO(data)
        buf.seek(5)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(buf, self.schema, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self.schema)
        except Exception as exc:  # fastavro raises many kinds on corrupt input
            raise CodecError(f"cannot decode record with schema id {sid}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise CodecError(f"record with schema id {sid} has {len(data) - buf.tell()} trailing bytes")
        return record  # type: ignore[return-value]
