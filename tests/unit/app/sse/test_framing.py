"""SSE framing and parsing, checked against exact bytes."""

from __future__ import annotations

import pytest

from app.sse.framing import SSEMessage, SSEParser, format_comment, format_event, format_retry, with_id


@pytest.mark.parametrize(("data", "kwargs", "expected"), [
    ("hello", {}, b"data: hello\n\n"),
    ("hello", {"id": "t1", "event": "workflow.started"}, b"id: t1\nevent: workflow.started\ndata: hello\n\n"),
    ("a\nb", {}, b"data: a\ndata: b\n\n"),
    ("a\r\nb\rc", {}, b"data: a\ndata: b\ndata: c\n\n"),
    ("a\n\nb", {}, b"data: a\ndata: \ndata: b\n\n"),
    ("", {}, b"data: \n\n"),
    ("trailing\n", {}, b"data: trailing\ndata: \n\n"),
    (" leading space", {}, b"data:  leading space\n\n"),
], ids=["plain", "id-and-event", "lf", "crlf-and-cr", "blank-line", "empty", "trailing-newline",
        "leading-space"])
def test_format_event_gives_exact_bytes(data: str, kwargs: dict, expected: bytes) -> None:
    assert format_event(data, **kwargs) == expected


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("id", "a\nb\rc\0d", b"id: abcd\n"),
    ("event", "evil\n\ndata: injected", b"event: evildata: injected\n"),
], ids=["id", "event"])
def test_format_event_strips_line_breaks_from_id_and_event(field: str, value: str, expected: bytes) -> None:
    assert format_event("x", **{field: value}).startswith(expected)


def test_payload_that_looks_like_fields_stays_inside_data() -> None:
    framed = format_event('{"a": 1}\n\nid: forged\nevent: admin\ndata: {"evil": true}', id="real", event="t")
    [message] = list(SSEParser().feed(framed))
    assert message.id == "real" and message.event == "t"
    assert message.data == '{"a": 1}\n\nid: forged\nevent: admin\ndata: {"evil": true}'


def test_with_id_prefixes_a_shared_body() -> None:
    body = format_event("{}", event="t")
    assert with_id(b"tok", body) == b"id: tok\nevent: t\ndata: {}\n\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("ping", b": ping\n\n"),
    ("", b":\n\n"),
    ("two\nlines", b": two\n: lines\n\n"),
], ids=["ping", "empty", "multiline"])
def test_format_comment_gives_exact_bytes(text: str, expected: bytes) -> None:
    assert format_comment(text) == expected


def test_format_retry_gives_exact_bytes() -> None:
    assert format_retry(2000) == b"retry: 2000\n\n"


def test_parser_reads_events_split_at_every_byte() -> None:
    stream = (format_retry(500) + format_comment("ping") + format_event("a\nb", id="1", event="e")
              + b"data: crlf\r\n\r\n" + format_event("c", id="2"))
    parser = SSEParser()
    got = [m for i in range(len(stream)) for m in parser.feed(stream[i:i + 1])]
    assert got == [SSEMessage("a\nb", "e", "1"), SSEMessage("crlf", "message", "1"), SSEMessage("c", "message", "2")]
    assert parser.retry == 500 and parser.comments == 1


def test_parser_keeps_last_event_id_and_skips_events_without_data() -> None:
    parser = SSEParser()
    assert list(parser.feed(b"id: 7\n\n")) == []
    assert list(parser.feed(b"data: x\n\n")) == [SSEMessage("x", "message", "7")]


def test_parser_waits_for_the_lf_after_a_trailing_cr() -> None:
    parser = SSEParser()
    assert list(parser.feed(b"data: x\r")) == []
    assert list(parser.feed(b"\n\r\n")) == [SSEMessage("x", "message", None)]
