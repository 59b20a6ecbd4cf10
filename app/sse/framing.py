"""Server-Sent Events framing and parsing: pure functions over exact bytes, no I/O.

The edge frames each event once and shares the bytes between every client with the same filter;
the Python subscriber and the tests parse streams with `SSEParser`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# The SSE grammar ends a line at CRLF, LF or CR; data lines are split on all three.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_STRIP = str.maketrans("", "", "\r\n\0")

PING = b": ping\n\n"


def _one_line(value: str) -> str:
    """Remove the characters that would end a field early (and NUL, which makes browsers drop an id)."""
    return value.translate(_STRIP)


def format_event(data: str, *, id: str | None = None, event: str | None = None) -> bytes:
    """Return one SSE event: `id`, `event` and one `data:` line per line of `data`."""
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {_one_line(id)}\n")
    if event is not None:
        parts.append(f"event: {_one_line(event)}\n")
    parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    parts.append("\n")
    return "".join(parts).encode()


def with_id(token: bytes, rest: bytes) -> bytes:
    """Prefix an event framed without an id (`format_event(data, event=...)`) with an `id:` line.

    The token must be a single line (resume tokens are base64url); this lets one framed body be
    shared by every filter while only the short id line differs.
    """
    return b"id: " + token + b"\n" + rest


def format_comment(text: str = "") -> bytes:
    """Return a comment block (ignored by clients; keeps proxies from cutting idle streams)."""
    lines = _LINE_BREAK.split(text)
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode() + b"\n"


def format_retry(ms: int) -> bytes:
    """Return the `retry:` field that sets the client's reconnection delay in milliseconds."""
    return f"retry: {int(ms)}\n\n".encode()


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event as a client sees it (`event` defaults to "message")."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Incremental parser following the HTML event-stream rules; feed bytes, get messages.

    `last_event_id` persists across messages as the spec says; `retry` holds the last valid
    `retry:` value; `comments` counts comment lines (heartbeats).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._has_data = False
        self.last_event_id: str | None = None
        self._id_seen = False
        self.retry: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> Iterator[SSEMessage]:
        """Consume bytes and yield every message they complete."""
        self._buffer += chunk
        while True:
            match = re.search(rb"\r\n|\r|\n", self._buffer)
            if match is None:
                return
            # A CR at the very end may be the first half of CRLF: wait for more bytes.
            if match.group() == b"\r" and match.end() == len(self._buffer):
                return
            line, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            message = self._line(line.decode("utf-8", errors="replace"))
            if message is not None:
                yield message

    def _line(self, line: str) -> SSEMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
            self._id_seen = True
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        data, event, has_data = self._data, self._event, self._has_data
        self._data, self._event, self._has_data = [], "", False
        if not has_data:
            return None
        return SSEMessage("\n".join(data), event or "message", self.last_event_id if self._id_seen else None)
