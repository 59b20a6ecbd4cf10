"""Logging of both processes: sentences as text (the default) or one JSON object per line
(`ES_LOG_FORMAT=json`), and no credential in any line, whichever the format.

A stream or connection id applies to every line logged while a request is handled: the edge binds it
(`bind`) in a context variable, which the tasks a request starts inherit, and JSON lines carry it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ids a log line may carry: the stream of a request, the durable connection it streams.
IDS = ("stream", "connection")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("eventstream_log_ids",
                                                                                 default=None)
# Credentials as they appear in headers, URLs, query strings and settings dumps.
_SECRETS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)((?:es_)?token|api[_-]?key|password|passwd|secret|sasl_plain_password)"
                r"(\s*[=:]\s*|\"\s*:\s*\")[^\s&,;\"']+"), r"\1\2[redacted]"),
    (re.compile(r"(?i)(://)[^/@\s:]+:[^/@\s]+@"), r"\1[redacted]@"),
]


def redact_text(text: str) -> str:
    """Return `text` with bearer tokens, API keys, passwords and URL credentials masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def bind(**ids: str) -> contextvars.Token[dict[str, str] | None]:
    """Attach ids (stream, connection) to the lines logged from here on in this context; reset with `unbind`."""
    merged = dict(_context.get() or {})
    merged.update(ids)
    return _context.set(merged)


def unbind(token: contextvars.Token[dict[str, str] | None]) -> None:
    """Restore the ids that applied before `bind`."""
    _context.reset(token)


def current_ids() -> dict[str, str]:
    """Return the ids bound in this context."""
    return dict(_context.get() or {})


class RedactingFilter(logging.Filter):
    """Mask credentials in the final message of every record before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted text (args merged in first)."""
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class TextFormatter(logging.Formatter):
    """Format a record as a sentence line, with credentials masked in tracebacks too."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - the logging API's name
        """Return the traceback text with credentials masked."""
        return redact_text(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, ids that apply, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        ids = current_ids()
        for name in IDS:
            value = getattr(record, name, None) or ids.get(name)
            if value:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `log_format` ("text" or "json"), credentials masked."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # one format for the server's lines too
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
