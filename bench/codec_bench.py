#!/usr/bin/env python3
"""Codec cost per event: the `avro` package against `fastavro`, encode and decode, on the envelope schema.

Run: .venv/bin/python bench/codec_bench.py [--n 20000]
"""

from __future__ import annotations

import argparse
import io
import time
from datetime import UTC, datetime

import avro.io
import avro.schema
import fastavro

from streams.envelope import Event
from streams.schema.codec import AvroCodec, load_schema_text
from streams.settings import ROOT


def sample_record() -> dict:
    """Return a typical ~250-byte event record."""
    return Event(id="0f8fad5bd9cb469fa16570867728950e", source="/ci/runner-7", type="workflow.step.finished",
                 subject="run-4711", time=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
                 data={"status": "failed", "step": "unit-tests", "duration_ms": 48213, "attempt": 2,
                       "url": "https://ci.example/run/4711"},
                 tags=["ci", "nightly"], extensions={"traceparent": "00-4bf92f3577b34da6-00f067aa0ba902b7-01"},
                 ).to_record()


def per_event_us(fn, n: int) -> float:
    """Return mean microseconds per call over n calls (after a warm-up)."""
    for _ in range(min(1000, n)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    """Print µs/event for each library and direction, and which one the hot path uses."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    text = load_schema_text(ROOT / "schemas" / "envelope.avsc")
    rec = sample_record()

    codec = AvroCodec(text)
    codec.bind(1)
    framed = codec.encode(rec)

    fa_schema = codec.schema
    body = framed[5:]

    def fa_encode() -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fa_schema, rec)
        return buf.getvalue()

    def fa_decode() -> dict:
        return fastavro.schemaless_reader(io.BytesIO(body), fa_schema, None)

    av_schema = avro.schema.parse(text)
    writer, reader = avro.io.DatumWriter(av_schema), avro.io.DatumReader(av_schema)

    def av_encode() -> bytes:
        buf = io.BytesIO()
        writer.write(rec, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    def av_decode() -> dict:
        return reader.read(avro.io.BinaryDecoder(io.BytesIO(body)))

    assert av_encode() == fa_encode() == body, "the two libraries must produce the same bytes"
    rows = [
        ("avro", "encode", per_event_us(av_encode, n // 4)),
        ("avro", "decode", per_event_us(av_decode, n // 4)),
        ("fastavro", "encode", per_event_us(fa_encode, n)),
        ("fastavro", "decode", per_event_us(fa_decode, n)),
        ("AvroCodec (fastavro + framing)", "encode", per_event_us(lambda: codec.encode(rec), n)),
        ("AvroCodec (fastavro + framing)", "decode", per_event_us(lambda: codec.decode(framed), n)),
    ]
    print(f"codec benchmark: envelope schema, {len(framed)}-byte framed event, n={n}")
    for lib, op, us in rows:
        print(f"  {lib:32s} {op:6s} {us:8.2f} µs/event  ({1e6 / us:>10,.0f} events/s)")
    speed_enc = rows[0][2] / rows[2][2]
    speed_dec = rows[1][2] / rows[3][2]
    print(f"  fastavro is {speed_enc:.1f}x faster encoding and {speed_dec:.1f}x faster decoding: the hot path uses it.")


if __name__ == "__main__":
    main()
