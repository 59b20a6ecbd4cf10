"""Named endpoints: a name for a filter (`ci-failures`), so a dashboard links to
/api/v1/endpoints/ci-failures/stream instead of carrying JSON.

Definitions live in a compacted topic every edge tails (streams/kafka/table.py), so every edge serves
them and they survive restarts. A delete writes a tombstone; each edge applies it and ends its own
streams of that endpoint with a final comment, wherever the delete was asked."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.fanout.filters import MAX_FILTER_CHARS, CompiledFilter, EventFilter
from app.fanout.hub import Hub
from app.fanout.records import Positions
from app.fanout.response import EventStreamResponse
from app.fanout.subscribers import CLOSED, FilterGroup, Subscriber
from app.fanout.tokens import STREAM, check_room
from app.sse.framing import format_comment
from app.sse.writer import Encoding
from streams.envelope import iso
from streams.errors import LimitExceeded, StreamError, TopicNotFound
from streams.kafka.table import CompactedTable
from streams.kafka.topics import TopicManager
from streams.settings import Settings

log = logging.getLogger(__name__)
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
NAME_RULE = "1-63 characters of lowercase letters, digits and '-', starting with a letter or digit"
MAX_DESCRIPTION_CHARS = 1024
DELETED = format_comment("closing: endpoint deleted")


class EndpointNotFound(StreamError):
    """No endpoint has this name."""

    status = 404
    title = "Endpoint not found"


class EndpointExists(StreamError):
    """An endpoint of this name exists already (delete it first to change it)."""

    status = 409
    title = "Endpoint exists"
    field = "name"


class InvalidEndpointFilter(StreamError):
    """The filter cannot be served: an unknown topic, or more partitions than a resume token holds."""

    status = 422
    title = "Invalid filter"
    field = "filter"


class EndpointSpec(BaseModel):
    """Body of POST /api/v1/endpoints."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "ci-failures", "description": "CI runs that failed",
        "filter": {"topics": ["ci"], "types": ["ci.run.*"], "where": {"status": ["failed", "error"]}}}]})

    name: str = Field(description=f"The endpoint's name in its URL: {NAME_RULE}.", examples=["ci-failures"],
                      json_schema_extra={"pattern": NAME.pattern})  # in the schema; the validator words the error
    filter: EventFilter = Field(description="What the endpoint streams: the EventFilter of /api/v1/events/stream.")
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS, description="What it is for, for people.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not an endpoint name: use {NAME_RULE}")
        return value

    @field_validator("filter")
    @classmethod
    def _filter_size(cls, value: EventFilter) -> EventFilter:
        size = len(orjson.dumps(value.model_dump(exclude_none=True)))
        if size > MAX_FILTER_CHARS:
            raise ValueError(f"the filter is {size} characters of JSON; the limit is {MAX_FILTER_CHARS}")
        return value


class Endpoints:
    """Create, list, find and delete named endpoints; end this edge's streams of one that is deleted."""

    def __init__(self, settings: Settings, topics: TopicManager) -> None:
        self.settings = settings
        self.topics = topics
        self.table = CompactedTable(settings, settings.endpoints_topic)
        self.table.subscribe(self._changed)  # before start: no change is missed
        self._streams: dict[str, dict[object, Callable[[], None]]] = {}  # name -> this edge's streams' closers
        self._compiled: dict[str, CompiledFilter] = {}

    async def start(self) -> None:
        """Read every definition, then keep tailing the topic."""
        await self.table.start()
        log.info("Endpoints loaded: %d.", len(self.table))

    async def stop(self) -> None:
        """Stop tailing; calling it twice is harmless."""
        await self.table.stop()

    async def __aenter__(self) -> Endpoints:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def create(self, spec: EndpointSpec, *, creator: str) -> dict[str, Any]:
        """Store a new endpoint (409 if the name is taken, 422 if its filter cannot be served)."""
        await self.table.catch_up()  # a name another edge took a moment ago is seen here too
        if self.table.get(spec.name) is not None:
            raise EndpointExists(f"endpoint {spec.name!r} exists; delete it first to define it again")
        flt = CompiledFilter(spec.filter, [self.settings.default_topic])
        try:
            check_room(STREAM, {topic: len(await self.topics.partitions(topic)) for topic in flt.topics})
        except (TopicNotFound, LimitExceeded) as exc:
            raise InvalidEndpointFilter(f"filter: {exc}") from None
        definition = {"name": spec.name, "filter": spec.filter.model_dump(exclude_none=True),
                      "description": spec.description, "created_at": iso(datetime.now(UTC)), "created_by": creator}
        await self.table.put(spec.name, definition)
        log.info("Created endpoint %s (filter %s).", spec.name, flt.key)
        return definition

    def get(self, name: str) -> dict[str, Any]:
        """Return a definition, raising EndpointNotFound."""
        definition = self.table.get(name)
        if definition is None:
            raise EndpointNotFound(f"endpoint {name!r} does not exist (never created, or deleted)")
        return definition

    def list(self) -> list[dict[str, Any]]:
        """Return every definition, by name."""
        return [definition for _, definition in sorted(self.table.items())]

    def compiled(self, name: str) -> CompiledFilter:
        """Return the endpoint's filter compiled once (EndpointNotFound when there is none)."""
        flt = self._compiled.get(name)
        if flt is None:
            spec = EventFilter.model_validate(self.get(name)["filter"])
            flt = self._compiled[name] = CompiledFilter(spec, [self.settings.default_topic])
        return flt

    async def delete(self, name: str) -> None:
        """Write the tombstone: every edge, this one first, ends its streams of the endpoint."""
        await self.table.catch_up()
        self.get(name)
        await self.table.put(name, None)
        log.info("Deleted endpoint %s.", name)

    # ------------------------------------------------------------------ this edge's streams

    def watch(self, name: str, key: object, close: Callable[[], None]) -> None:
        """Call `close()` once when the endpoint is deleted; at once if it is gone already."""
        if self.table.get(name) is None:
            close()
            return
        self._streams.setdefault(name, {})[key] = close

    def unwatch(self, name: str, key: object) -> None:
        """Forget a stream that ended; idempotent."""
        closers = self._streams.get(name)
        if closers is not None:
            closers.pop(key, None)
            if not closers:
                del self._streams[name]

    def streams_here(self, name: str | None = None) -> int:
        """Return how many streams of `name` (of every endpoint when None) this edge serves."""
        if name is not None:
            return len(self._streams.get(name, ()))
        return sum(len(closers) for closers in self._streams.values())

    def _changed(self, name: str, definition: dict[str, Any] | None) -> None:
        """Apply a change from any edge: a tombstone ends this edge's streams of the endpoint."""
        self._compiled.pop(name, None)
        if definition is not None:
            return
        closers = self._streams.pop(name, {})
        if closers:
            log.info("Endpoint %s was deleted; ending its %d stream(s) on this edge.", name, len(closers))
        for close in closers.values():
            close()


class EndpointStreamResponse(EventStreamResponse):
    """A plain stream of the endpoint's filter that also ends, with a final comment, when it is deleted."""

    def __init__(self, hub: Hub, group: FilterGroup, start: Positions | None, heartbeat_s: float,
                 encoding: Encoding | None, *, endpoints: Endpoints, name: str) -> None:
        super().__init__(hub, group, start, heartbeat_s, encoding)
        self.endpoints, self.name = endpoints, name

    def watch_expiry(self, sub: Subscriber) -> None:
        """Arm the credential's timers and the endpoint's deletion (both end the stream with a comment)."""
        super().watch_expiry(sub)
        self.endpoints.watch(self.name, self, lambda: self._deleted(sub))

    def unwatch_expiry(self) -> None:
        """Disarm both when the stream ended."""
        super().unwatch_expiry()
        self.endpoints.unwatch(self.name, self)

    def _deleted(self, sub: Subscriber) -> None:
        if sub.state != CLOSED:
            self.hub.close(sub, DELETED)
