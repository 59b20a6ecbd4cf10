"""Envelope rules on decoded records (streams/worker/validation.py): one success, a table of failures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.envelope import Event
from streams.errors import PayloadTooLarge, ValidationFailed
from streams.worker.validation import check_record


def record(**changes: Any) -> dict[str, Any]:
    rec = Event(id="e1", source="/s", type="t", subject="s", time=datetime(2026, 1, 1, tzinfo=UTC)).to_record()
    rec.update(changes)
    return rec


def test_record_from_a_valid_event_passes() -> None:
    check_record(record(), 200, 1000)


@pytest.mark.parametrize(("changes", "size", "error", "field"), [
    ({"id": ""}, 10, ValidationFailed, "id"),
    ({"id": "x" * 257}, 10, ValidationFailed, "id"),
    ({"source": ""}, 10, ValidationFailed, "source"),
    ({"type": "t" * 257}, 10, ValidationFailed, "type"),
    ({"subject": "s" * 1025}, 10, ValidationFailed, "subject"),
    ({"time": None}, 10, ValidationFailed, "time"),
    ({"extensions": {"Bad-Name": "x"}}, 10, ValidationFailed, "extensions.Bad-Name"),
    ({}, 1001, PayloadTooLarge, None),
], ids=["empty-id", "long-id", "empty-source", "long-type", "long-subject", "no-time", "bad-extension",
        "too-large"])
def test_record_breaking_a_rule_is_refused_naming_it(changes: dict[str, Any], size: int, error: type,
                                                     field: str | None) -> None:
    with pytest.raises(error) as caught:
        check_record(record(**changes), size, 1000)
    assert getattr(caught.value, "field", None) == field
