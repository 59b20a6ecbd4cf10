"""Event filters for streams and history: the JSON model clients send and a matcher compiled once.

A filter is compiled once per distinct filter (not per client): the hub groups clients by
`CompiledFilter.key` and runs `matches` once per record for each group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.kafka.topics import TOPIC_NAME

Scalar = str | int | float | bool | None
MAX_ITEMS = 50


class FilterError(ValueError):
    """A filter is not valid JSON or breaks the filter rules; the message says what is wrong."""


def _no_empty(name: str, value: list[Any] | None) -> list[Any] | None:
    if value is not None and not value:
        raise ValueError(f"{name} must not be empty; leave it out to match every event")
    return value


class EventFilter(BaseModel):
    """What a client wants to see; every given field must match (an absent field matches all).

    `types`, `sources` and `subjects` are globs (`*` any run of characters, `?` one character);
    `tags` matches when the event has any of them; `where` compares fields of `data` (dotted paths
    for nested objects) with a value (equality) or a list of values (membership).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[str] | None = Field(default=None, max_length=20)
    types: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    sources: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    subjects: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    tags: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    where: dict[str, Scalar | list[Scalar]] | None = Field(default=None, max_length=20)

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, value: list[str] | None) -> list[str] | None:
        for name in _no_empty("topics", value) or []:
            if not TOPIC_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid Kafka topic name")
        return value

    @field_validator("types", "sources", "subjects", "tags")
    @classmethod
    def _patterns(cls, value: list[str] | None, info: Any) -> list[str] | None:
        for item in _no_empty(info.field_name, value) or []:
            if not item or len(item) > 256:
                raise ValueError("each entry must be 1-256 characters")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not value:
            raise ValueError("where must not be empty; leave it out to match every event")
        for path, expected in (value or {}).items():
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f"field path {path!r} must be dotted names such as 'status' or 'run.status'")
            if isinstance(expected, list) and not expected:
                raise ValueError(f"where[{path!r}] must list at least one value")
        return value


def parse_filter(raw: str | None) -> EventFilter:
    """Parse the `filter` query parameter (JSON) into an EventFilter, raising FilterError."""
    if raw is None or not raw.strip():
        return EventFilter()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FilterError(f"filter is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FilterError(f"filter must be a JSON object, got {type(value).__name__}")
    try:
        return EventFilter.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown filter field; use topics, types, sources, subjects, tags or where"
        raise FilterError(f"filter.{loc}: {msg}" if loc else msg) from None


def glob_regex(patterns: list[str]) -> re.Pattern[str]:
    """Compile globs (`*` and `?` only; everything else literal) into one anchored regex."""
    parts = []
    for pattern in patterns:
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def _kind(value: Any) -> tuple[str, Any]:
    """Key a JSON scalar so that true != 1 and 1 == 1.0, as JSON equality expects."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if value is None:
        return ("z", None)
    if isinstance(value, str):
        return ("s", value)
    return ("x", id(value))  # objects and arrays never equal a scalar


class CompiledFilter:
    """A filter with its topics resolved, its matcher built, and a key shared by equal filters."""

    def __init__(self, spec: EventFilter, default_topics: list[str]) -> None:
        self.spec = spec
        self.topics: list[str] = sorted(set(spec.topics or default_topics))
        canonical = {
            "topics": self.topics,
            "types": sorted(set(spec.types or [])),
            "sources": sorted(set(spec.sources or [])),
            "subjects": sorted(set(spec.subjects or [])),
            "tags": sorted(set(spec.tags or [])),
            "where": {k: (sorted(set(map(_kind, v))) if isinstance(v, list) else [_kind(v)])
                      for k, v in sorted((spec.where or {}).items())},
        }
        self.key: str = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS).decode()
        # 16 bytes of the filter's hash bind resume tokens and cursors to this very filter.
        self.scope: bytes = hashlib.sha256(self.key.encode()).digest()[:16]
        self._checks = self._build()

    def _build(self) -> list[Callable[[dict[str, Any]], bool]]:
        spec, checks = self.spec, []
        for field, attr in (("types", "type"), ("sources", "source"), ("subjects", "subject")):
            patterns = getattr(spec, field)
            if patterns:
                regex = glob_regex(patterns)
                checks.append(lambda ev, a=attr, r=regex: (v := ev.get(a)) is not None and r.match(v) is not None)
        if spec.tags:
            wanted = frozenset(spec.tags)
            checks.append(lambda ev: not wanted.isdisjoint(ev.get("tags") or ()))
        for path, expected in (spec.where or {}).items():
            allowed = frozenset(map(_kind, expected if isinstance(expected, list) else [expected]))
            checks.append(lambda ev, p=path.split("."), a=allowed: _lookup(ev.get("data"), p, a))
        return checks

    def matches(self, event: dict[str, Any]) -> bool:
        """Tell whether a CloudEvents JSON dict (as `record_to_json` returns) passes every check."""
        for check in self._checks:
            if not check(event):
                return False
        return True


_MISSING = object()


def _lookup(data: Any, path: list[str], allowed: frozenset[tuple[str, Any]]) -> bool:
    for part in path:
        if not isinstance(data, dict):
            return False
        data = data.get(part, _MISSING)
        if data is _MISSING:
            return False
    if isinstance(data, dict | list):
        return False
    return _kind(data) in allowed
