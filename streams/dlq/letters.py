"""Dead letters: the original record, byte for byte, plus headers that say why it was set aside.

A DLQ record keeps the original key, value and headers, and adds:

    es-dlq-stage          decode | validate | route | produce | process
    es-dlq-error-class    e.g. CodecError, UnknownSchema, ValidationFailed, MessageSizeTooLargeError
    es-dlq-error-message  the error text (at most 2000 characters)
    es-dlq-topic / -partition / -offset / -timestamp   where the original was read (timestamp in ms)
    es-dlq-first-failure  when the first attempt failed (ISO-8601 UTC)
    es-dlq-attempts       how many times it was tried
    es-dlq-destination    the destination that kept failing (stage produce only)

Headers rather than an Avro wrapper (schemas/dlq.avsc documents the same fields): the value stays
the original bytes, so any consumer can read it, and a replay writes it back unchanged.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.envelope import iso

STAGES = ("decode", "validate", "route", "produce", "process")
PREFIX = "es-dlq-"
MAX_MESSAGE = 2000
# Headers the pipeline reads on ingress records.
DESTINATION = "es-destination"  # topic the publisher asked for (app/routes/events.py)
REPLAY_OF = "es-replay-of"  # "<dlq partition>/<dlq offset>" of the entry a replayed record comes from
REPLAY_TO = "es-replay-to"  # the one destination a replayed produce-stage entry goes to


def dead_letter_headers(original: list[tuple[str, bytes]] | None, *, stage: str, error: BaseException | str,
                        error_class: str | None = None, topic: str, partition: int, offset: int,
                        timestamp_ms: int | None, first_failure_ms: int, attempts: int = 1,
                        destination: str | None = None) -> list[tuple[str, bytes]]:
    """Return the headers of a DLQ record: the original ones (minus old DLQ headers) plus why."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    message = str(error)[:MAX_MESSAGE]
    cls = error_class or (type(error).__name__ if isinstance(error, BaseException) else "Error")
    out = [(k, v) for k, v in (original or []) if not k.startswith(PREFIX)]
    out += [
        (PREFIX + "stage", stage.encode()),
        (PREFIX + "error-class", cls.encode()),
        (PREFIX + "error-message", message.encode()),
        (PREFIX + "topic", topic.encode()),
        (PREFIX + "partition", str(partition).encode()),
        (PREFIX + "offset", str(offset).encode()),
        (PREFIX + "timestamp", str(timestamp_ms if timestamp_ms is not None else -1).encode()),
        (PREFIX + "first-failure", iso(datetime.fromtimestamp(first_failure_ms / 1000, UTC)).encode()),
        (PREFIX + "attempts", str(attempts).encode()),
    ]
    if destination is not None:
        out.append((PREFIX + "destination", destination.encode()))
    return out


@dataclass
class DeadLetter:
    """One DLQ record, read back: where it sits, why it is there, and the original record."""

    partition: int
    offset: int
    timestamp_ms: int
    stage: str
    error_class: str
    error_message: str
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int
    first_failure: str
    attempts: int
    destination: str | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)  # the original's own headers

    @property
    def position(self) -> str:
        """Return the entry's position in the DLQ topic as "<partition>/<offset>"."""
        return f"{self.partition}/{self.offset}"

    @classmethod
    def from_record(cls, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
                    value: bytes | None, headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]
                    ) -> DeadLetter:
        """Parse a consumed DLQ record (records without DLQ headers get stage 'unknown')."""
        why: dict[str, str] = {}
        own: list[tuple[str, bytes]] = []
        for name, raw in headers or ():
            if name.startswith(PREFIX):
                why[name[len(PREFIX):]] = raw.decode(errors="replace")
            else:
                own.append((name, raw))

        def number(name: str) -> int:
            try:
                return int(why.get(name, "-1"))
            except ValueError:
                return -1

        return cls(partition, offset, timestamp_ms, why.get("stage", "unknown"), why.get("error-class", ""),
                   why.get("error-message", ""), why.get("topic", ""), number("partition"), number("offset"),
                   number("timestamp"), why.get("first-failure", ""), max(number("attempts"), 0),
                   why.get("destination"), key, value, own)

    def header(self, name: str) -> bytes | None:
        """Return one of the original record's headers."""
        return next((v for k, v in self.headers if k == name), None)

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready dict (bytes as base64; the edge adds the decoded event)."""
        return {
            "position": self.position, "partition": self.partition, "offset": self.offset,
            "stage": self.stage, "error_class": self.error_class, "error_message": self.error_message,
            "original": {"topic": self.original_topic, "partition": self.original_partition,
                         "offset": self.original_offset, "timestamp_ms": self.original_timestamp_ms},
            "first_failure": self.first_failure, "attempts": self.attempts, "destination": self.destination,
            "dead_lettered_at_ms": self.timestamp_ms,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "value_base64": base64.b64encode(self.value).decode() if self.value is not None else None,
        }
