"""Dead-letter headers: what the worker writes reads back as the same reasons, originals kept apart."""

from __future__ import annotations

import pytest

from streams.dlq.letters import DeadLetter, dead_letter_headers
from streams.dlq.store import matches
from streams.errors import CodecError


def letter(**kwargs: object) -> DeadLetter:
    headers = dead_letter_headers(
        [("es-destination", b"orders"), ("es-dlq-stage", b"old")],
        **{"stage": "produce", "error": CodecError("bad bytes"), "topic": "es.ingress", "partition": 2,
           "offset": 41, "timestamp_ms": 1_700_000_000_000, "first_failure_ms": 1_700_000_000_500,
           "attempts": 5, "destination": "orders", **kwargs})
    return DeadLetter.from_record(0, 7, 1_700_000_001_000, b"k", b"\x00raw", headers)


def test_headers_read_back_as_the_reasons() -> None:
    entry = letter()
    assert (entry.stage, entry.error_class, entry.error_message) == ("produce", "CodecError", "bad bytes")
    assert (entry.original_topic, entry.original_partition, entry.original_offset) == ("es.ingress", 2, 41)
    assert entry.first_failure == "2023-11-14T22:13:20.500000Z"
    assert (entry.attempts, entry.destination, entry.position) == (5, "orders", "0/7")


def test_original_headers_are_kept_and_old_dlq_headers_replaced() -> None:
    entry = letter()
    assert entry.headers == [("es-destination", b"orders")]
    assert entry.header("es-destination") == b"orders"


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="stage must be one of"):
        letter(stage="somewhere")


def test_long_messages_are_cut() -> None:
    assert len(letter(error="x" * 5000).error_message) == 2000


@pytest.mark.parametrize(("stage", "error", "expected"), [
    ("produce", None, True), ("decode", None, False), (None, "codecerror", True), (None, "BAD BYTES", True),
    (None, "other", False), ("produce", "bad", True),
], ids=["stage", "other-stage", "class-any-case", "message", "no-match", "both"])
def test_filter_matches_stage_and_error_text(stage: str | None, error: str | None, expected: bool) -> None:
    assert matches(letter(), stage, error) is expected
