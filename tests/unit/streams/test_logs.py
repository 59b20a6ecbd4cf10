"""Log lines: JSON objects with the ids that apply, and no credential in either format."""

from __future__ import annotations

import logging

import orjson
import pytest

from streams.logs import JsonFormatter, RedactingFilter, TextFormatter, bind, redact_text, unbind


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("app.test", logging.INFO, __file__, 1, message, args or None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_time_level_logger_and_message() -> None:
    line = orjson.loads(JsonFormatter().format(record("Tailing %s from %s.", "orders", [0, 1])))
    assert line["level"] == "INFO" and line["logger"] == "app.test"
    assert line["message"] == "Tailing orders from [0, 1]."
    assert line["time"].endswith("+00:00")


def test_json_line_carries_the_bound_stream_and_connection_ids() -> None:
    token = bind(stream="abc123", connection="c-1")
    try:
        line = orjson.loads(JsonFormatter().format(record("x")))
    finally:
        unbind(token)
    assert line["stream"] == "abc123" and line["connection"] == "c-1"
    assert "stream" not in orjson.loads(JsonFormatter().format(record("x")))


@pytest.mark.parametrize("text", [
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
    "GET /api/v1/events/stream?access_token=eyJabc.def.ghi&filter=x",
    "cookie es_token=topsecretvalue1",
    "X-API-Key: api_key=k-1234567890",
    "Kafka at SASL_SSL://user:hunter2@broker:9093",
    '{"password": "hunter2"}',
], ids=["bearer", "query-token", "cookie", "api-key", "url-credentials", "json-password"])
def test_credentials_are_masked(text: str) -> None:
    clean = redact_text(text)
    for secret in ("eyJhbGciOiJIUzI1NiJ9", "eyJabc", "topsecretvalue1", "k-1234567890", "hunter2"):
        assert secret not in clean
    assert "[redacted]" in clean


def test_filter_masks_arguments_before_any_formatter() -> None:
    rec = record("Request with %s", "Bearer abc.def.ghi")
    RedactingFilter().filter(rec)
    assert TextFormatter().format(rec).endswith("Request with Bearer [redacted]")
    assert "abc.def" not in JsonFormatter().format(rec)
