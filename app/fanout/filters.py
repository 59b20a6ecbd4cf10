"""Event filters for streams and history: the JSON model clients send and a matcher compiled once.

A filter is compiled once per distinct filter (not per client): the hub groups clients by
`CompiledFilter.key` and runs `matches` once per record for each group. Matching itself is
`streams.matching`, the same matcher routing rules use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import StreamError
from streams.kafka.topics import TOPIC_NAME
from streams.matching import EventMatcher, Scalar, check_where, json_key

# Filter complexity, so that one filter cannot slow a whole edge: entries per field, characters per
# pattern, patterns in all, `where` paths and values, topics (whose partitions are bounded by the
# token size, app/fanout/tokens.py `check_room`), and the filter's JSON text.
MAX_ITEMS = 50
MAX_PATTERN_CHARS = 256
MAX_PATTERNS = 100
MAX_TOPICS = 20
MAX_WHERE = 20
MAX_WHERE_VALUES = 100
MAX_VALUE_CHARS = 1024
MAX_FILTER_CHARS = 16_384


class FilterError(StreamError, ValueError):
    """A filter is not valid JSON or breaks the filter rules; the message says what is wrong."""

    status = 400
    title = "Invalid filter"
    field = "filter"


def _no_empty(name: str, value: list[Any] | None) -> list[Any] | None:
    if value is not None and not value:
        raise ValueError(f"{name} must not be empty; leave it out to match every event")
    return value


class EventFilter(BaseModel):
    """What a client wants to see; every given field must match (an absent field matches all).

    `types`, `sources` and `subjects` are globs (`*` any run of characters, `?` one character, all
    else literal); `tags` matches when the event has any of them, `tags_all` when it has all of them;
    `where` compares fields of `data` (dotted paths for nested objects) with a value (equality) or a
    list of values (membership). The rules are those of `streams.matching`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[str] | None = Field(default=None, max_length=MAX_TOPICS)
    types: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    sources: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    subjects: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    tags: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    tags_all: list[str] | None = Field(default=None, max_length=MAX_ITEMS)
    where: dict[str, Scalar | list[Scalar]] | None = Field(default=None, max_length=MAX_WHERE)

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, value: list[str] | None) -> list[str] | None:
        for name in _no_empty("topics", value) or []:
            if not TOPIC_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid Kafka topic name")
        return value

    @field_validator("types", "sources", "subjects", "tags", "tags_all")
    @classmethod
    def _patterns(cls, value: list[str] | None, info: Any) -> list[str] | None:
        for item in _no_empty(info.field_name, value) or []:
            if not item or len(item) > MAX_PATTERN_CHARS:
                raise ValueError(f"each entry must be 1-{MAX_PATTERN_CHARS} characters")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not value:
            raise ValueError("where must not be empty; leave it out to match every event")
        check_where(value or {})
        for path, expected in (value or {}).items():
            values = expected if isinstance(expected, list) else [expected]
            if len(path) > MAX_PATTERN_CHARS:
                raise ValueError(f"where paths are at most {MAX_PATTERN_CHARS} characters")
            if len(values) > MAX_WHERE_VALUES:
                raise ValueError(f"where[{path!r}] lists {len(values)} values; the limit is {MAX_WHERE_VALUES}")
            if any(isinstance(v, str) and len(v) > MAX_VALUE_CHARS for v in values):
                raise ValueError(f"where[{path!r}] values are at most {MAX_VALUE_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _pattern_count(self) -> EventFilter:
        count = sum(len(getattr(self, name) or ()) for name in ("types", "sources", "subjects", "tags", "tags_all"))
        if count > MAX_PATTERNS:
            raise ValueError(f"the filter has {count} patterns and tags in all; the limit is {MAX_PATTERNS}")
        return self


def parse_filter(raw: str | None) -> EventFilter:
    """Parse the `filter` query parameter (JSON) into an EventFilter, raising FilterError."""
    if raw is None or not raw.strip():
        return EventFilter()
    if len(raw) > MAX_FILTER_CHARS:
        raise FilterError(f"filter is {len(raw)} characters; the limit is {MAX_FILTER_CHARS}")
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
            msg = "unknown filter field; use topics, types, sources, subjects, tags, tags_all or where"
        raise FilterError(f"filter.{loc}: {msg}" if loc else msg) from None


class CompiledFilter(EventMatcher):
    """A filter with its topics resolved, its matcher built, and a key shared by equal filters."""

    def __init__(self, spec: EventFilter, default_topics: list[str]) -> None:
        super().__init__(types=spec.types, sources=spec.sources, subjects=spec.subjects, tags=spec.tags,
                         tags_all=spec.tags_all, where=spec.where)
        self.spec = spec
        self.topics: list[str] = sorted(set(spec.topics or default_topics))
        canonical: dict[str, Any] = {
            "topics": self.topics,
            "types": sorted(set(spec.types or [])),
            "sources": sorted(set(spec.sources or [])),
            "subjects": sorted(set(spec.subjects or [])),
            "tags": sorted(set(spec.tags or [])),
            "where": {k: (sorted(set(map(json_key, v))) if isinstance(v, list) else [json_key(v)])
                      for k, v in sorted((spec.where or {}).items())},
        }
        if spec.tags_all:  # only when given, so that the keys (and token scopes) of older filters stay put
            canonical["tags_all"] = sorted(set(spec.tags_all))
        self.key: str = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS).decode()
        # 16 bytes of the filter's hash bind resume tokens and cursors to this very filter.
        self.scope: bytes = hashlib.sha256(self.key.encode()).digest()[:16]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who reads a stream or a history page, as far as targeted events (`recipients`) go.

    `names` are what the reader answers to in a `recipients` list: its principal's `sub`, and for a
    durable connection's stream that connection's id (for history, the ids of the connections the
    principal owns). `sees_all` is set only for an admin reading history: live and catch-up streams
    deliver a targeted event to addressed streams alone, an admin's included only when named.
    """

    names: frozenset[str] = frozenset()
    sees_all: bool = False

    @classmethod
    def of_stream(cls, sub: str, connection_id: str | None = None) -> Viewer:
        """Return the viewer of a stream of `sub` (of one of its durable connections, when given)."""
        return cls(frozenset((sub,) if connection_id is None else (sub, connection_id)))

    @classmethod
    def of_history(cls, sub: str, admin: bool, connection_ids: Iterable[str] = ()) -> Viewer:
        """Return the viewer of a history page: the principal, its connections, and everything for admin."""
        return cls(frozenset((sub, *connection_ids)), sees_all=admin)


NOBODY = Viewer()  # sees only untargeted events: what a stream opened without a viewer gets


def addressed_to(recipients: list[str] | None, viewer: Viewer) -> bool:
    """Tell whether an event with these `recipients` may reach this viewer: the one rule of targeted
    delivery, used by the live tail, replay, catch-up and history alike (None: every viewer)."""
    return recipients is None or viewer.sees_all or not viewer.names.isdisjoint(recipients)
