"""Envelope rules checked on a decoded Avro record, without building a pydantic model per record.

The Avro schema already guarantees types and required fields; what is left are the limits that
`streams.envelope.Event` enforces at the edge, so a record written straight to the ingress topic
(bypassing the edge) meets the same rules before it is forwarded.
"""

from __future__ import annotations

from typing import Any

from streams.envelope import EXTENSION_NAME
from streams.errors import PayloadTooLarge, ValidationFailed

# (attribute, smallest length, largest length), as in streams.envelope.Event.
LIMITS = (("id", 1, 256), ("source", 1, 1024), ("type", 1, 256))
SUBJECT_MAX = 1024


def check_record(record: dict[str, Any], size: int, max_bytes: int) -> None:
    """Raise ValidationFailed (or PayloadTooLarge) naming the first envelope rule the record breaks."""
    if size > max_bytes:
        raise PayloadTooLarge(f"record is {size} bytes; the limit is {max_bytes} bytes (ES_MAX_EVENT_BYTES)")
    for name, low, high in LIMITS:
        value = record.get(name)
        if not isinstance(value, str) or not low <= len(value) <= high:
            got = "missing" if value is None else f"{len(value)} characters" if isinstance(value, str) else "not text"
            raise ValidationFailed(f"{name}: required attribute must be {low}-{high} characters, got {got}",
                                   field=name)
    subject = record.get("subject")
    if subject is not None and len(subject) > SUBJECT_MAX:
        raise ValidationFailed(f"subject: at most {SUBJECT_MAX} characters, got {len(subject)}", field="subject")
    if record.get("time") is None:
        raise ValidationFailed("time: required attribute is missing", field="time")
    for name in record.get("extensions") or ():
        if not EXTENSION_NAME.match(name):
            raise ValidationFailed(
                f"extensions.{name}: extension names must be 1-20 lowercase letters or digits",
                field=f"extensions.{name}")
