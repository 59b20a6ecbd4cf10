"""Envelope validation: defaults, errors naming the field, extensions, JSON conversion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.envelope import Event, parse_event, record_to_json
from streams.errors import ValidationFailed


def test_parse_event_fills_in_id_and_time() -> None:
    before = datetime.now(UTC)
    event = parse_event({"source": "/s", "type": "t"})
    assert len(event.id) == 32 and event.time >= before


def test_two_events_without_id_get_different_ids() -> None:
    assert parse_event({"source": "/s", "type": "t"}).id != parse_event({"source": "/s", "type": "t"}).id


@pytest.mark.parametrize(("raw", "field"), [
    ({"type": "t"}, "source"),
    ({"source": "/s"}, "type"),
    ({"source": "", "type": "t"}, "source"),
    ({"source": "/s", "type": "t", "time": "yesterday"}, "time"),
    ({"source": "/s", "type": "t", "tags": "x"}, "tags"),
], ids=["no-source", "no-type", "empty-source", "bad-time", "tags-not-list"])
def test_parse_event_names_the_bad_field(raw: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_event(raw, where="events[3]")
    assert info.value.field == f"events[3].{field}"
    assert field in str(info.value)


def test_unknown_top_level_attributes_become_extensions() -> None:
    event = parse_event({"source": "/s", "type": "t", "traceparent": "00-ab", "attempt": 3})
    assert event.extensions == {"traceparent": "00-ab", "attempt": "3"}


def test_badly_named_extension_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="Bad_Name"):
        parse_event({"source": "/s", "type": "t", "Bad_Name": "x"})


def test_naive_time_is_taken_as_utc() -> None:
    event = parse_event({"source": "/s", "type": "t", "time": "2026-01-01T10:00:00"})
    assert event.time == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_json_data_round_trips_through_record() -> None:
    event = Event(source="/s", type="t", subject="x", data={"status": "failed", "n": [1, 2]})
    out = record_to_json(event.to_record())
    assert out["data"] == {"status": "failed", "n": [1, 2]}
    assert out["subject"] == "x" and out["time"].endswith("Z")


def test_binary_data_round_trips_as_base64() -> None:
    event = Event(source="/s", type="t", datacontenttype="application/octet-stream", data_base64="AP8=")
    assert event.to_record()["data"] == b"\x00\xff"
    assert record_to_json(event.to_record())["data_base64"] == "AP8="


def test_data_and_data_base64_together_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="either data or data_base64"):
        parse_event({"source": "/s", "type": "t", "data": 1, "data_base64": "AA=="})


def test_recipients_travel_through_the_record_and_back() -> None:
    event = parse_event({"source": "/s", "type": "t", "recipients": ["alice", "c0ffee", "alice"]})
    assert event.recipients == ["alice", "c0ffee"]  # duplicates dropped
    assert record_to_json(event.to_record())["recipients"] == ["alice", "c0ffee"]


def test_an_event_without_recipients_has_no_recipients_key() -> None:
    record = parse_event({"source": "/s", "type": "t"}).to_record()
    assert record["recipients"] is None and "recipients" not in record_to_json(record)


@pytest.mark.parametrize(("recipients", "field"), [
    ([], "recipients"), ([""], "recipients"), (["x" * 257], "recipients"), ("alice", "recipients"),
    ([f"p{i}" for i in range(101)], "recipients"), ([7], "recipients.0"),
], ids=["empty-list", "empty-name", "name-too-long", "not-a-list", "too-many", "not-text"])
def test_bad_recipients_are_refused_naming_the_field(recipients: object, field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_event({"source": "/s", "type": "t", "recipients": recipients})
    assert info.value.field == field and info.value.status == 422
