"""Durable connections: a client's filter and options kept in a compacted topic, and its position kept
as the committed offsets of a consumer group of its own, so it can resume from any edge process
after minutes or days, with or without Last-Event-ID. An exclusive connection has one live stream (a new one
takes over); the streams of a shared one split its partitions as members of that group (app/durable/shared.py).

The position is also copied into the definition (at create, while streaming and at release): the
broker purges a group's offsets `offsets.retention.minutes` after its last commit, which can come
before the connection's TTL, and the copy is what the stream then resumes from."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from app.durable.shared import GroupMembers, TooManyMembers
from app.fanout.filters import EventFilter
from app.fanout.tokens import STREAM, check_room
from streams.envelope import iso
from streams.errors import StreamError
from streams.kafka.table import CompactedTable
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
Status = Literal["connecting", "connected", "disconnected", "error"]
Mode = Literal["exclusive", "shared"]
Offsets = dict[TopicPartition, int]


def offsets_to_json(offsets: Offsets) -> dict[str, dict[str, int]]:
    """Return offsets as the definition stores them: {topic: {partition: next offset}}."""
    out: dict[str, dict[str, int]] = {}
    for tp, offset in offsets.items():
        out.setdefault(tp.topic, {})[str(tp.partition)] = offset
    return out


def offsets_from_json(stored: dict[str, dict[str, int]] | None) -> Offsets:
    """Return the offsets a definition stores (empty for a definition written before positions were kept)."""
    return {TopicPartition(t, int(p)): off for t, parts in (stored or {}).items() for p, off in parts.items()}


class ConnectionNotFound(StreamError):
    """No durable connection has this id."""

    status = 404
    title = "Connection not found"


class ConnectionOptions(BaseModel):
    """How a durable connection streams (names as in the seed's ConnectionOptions)."""

    model_config = ConfigDict(extra="forbid")

    heartbeatInterval: int = Field(15_000, ge=1_000, le=300_000, description="ms between idle heartbeats")
    maxRetries: int = Field(10, ge=0, le=1_000, description="client reconnect attempts (advice to clients)")
    retryDelay: int = Field(1_000, ge=0, le=600_000, description="ms; sent to the client as SSE retry:")
    compression: bool = Field(False, description="gzip or brotli, as the client accepts")
    batchSize: int = Field(100, ge=1, le=10_000, description="events per socket write while catching up or "
                           "replaying (live events go out as they come)")
    bufferMaxSize: int = Field(1_000, ge=1, le=100_000, description="events buffered before catch-up")


class ConnectionSpec(BaseModel):
    """Body of POST /api/v1/connections."""

    model_config = ConfigDict(extra="forbid")

    filter: EventFilter = Field(default_factory=EventFilter)
    options: ConnectionOptions = Field(default_factory=ConnectionOptions)
    start: Literal["latest", "earliest"] | datetime = "latest"
    mode: Mode = Field("exclusive", description="exclusive: one live stream, a new one takes over; shared: every "
                                                "stream, on any edge, gets a disjoint share of the partitions")
    owner: str | None = Field(None, max_length=256, description="free text about who created it, kept as `label`; "
                                                                 "the connection belongs to the creator's `sub`")


class Connections:
    """Create, find, delete and expire durable connections; track which of them stream here."""

    def __init__(self, settings: Settings, topics: TopicManager) -> None:
        self.settings = settings
        self.topics = topics
        self.table = CompactedTable(settings, settings.connections_topic)
        self.groups = GroupMembers(settings)
        self.live: dict[str, dict[str, Any]] = {}  # id -> runtime state of a stream on this process
        self.shared: dict[str, dict[str, Callable[[str], None]]] = {}  # id -> shared streams here -> their close
        self.joining: dict[str, set[str]] = {}  # id -> shared streams opened here, not yet members of the group
        self._takeover: dict[str, Callable[[str], None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the definitions, then expire idle ones periodically."""
        await self.groups.start()
        await self.table.start()
        self.table.subscribe(self._changed)
        self._sweeper = supervise("connections-sweeper", self._sweep_loop, context="expiring idle connections")

    async def stop(self) -> None:
        """Stop the sweeper and disconnect."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.table.stop()
        await self.groups.stop()

    async def __aenter__(self) -> Connections:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # a start that failed half-way (groups up, table not) leaves nothing open
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def group_id(self, conn_id: str) -> str:
        """Return the consumer group that holds the connection's position."""
        return f"{self.settings.connection_group_prefix}{conn_id}"

    async def layout(self, flt: EventFilter) -> list[TopicPartition]:
        """Return every partition the filter reads (404 for an unknown topic)."""
        names = flt.topics or [self.settings.default_topic]
        tps = []
        for name in names:
            tps += [TopicPartition(name, p) for p in await self.topics.partitions(name)]
        return tps

    async def create(self, spec: ConnectionSpec, *, owner: str) -> dict[str, Any]:
        """Fix the start position as committed offsets, then store the definition, owned by `owner` (a sub)."""
        tps = await self.layout(spec.filter)
        check_room(STREAM, Counter(tp.topic for tp in tps))  # every position it commits must fit a token
        conn_id = uuid.uuid4().hex[:16]
        start: str | int = spec.start if isinstance(spec.start, str) else int(spec.start.timestamp() * 1000)
        offsets = await self.groups.start_offsets(tps, start)
        await self.groups.commit(self.group_id(conn_id), offsets)
        now = iso(datetime.now(UTC))
        definition = {
            "id": conn_id, "filter": spec.filter.model_dump(exclude_none=True), "options": spec.options.model_dump(),
            "start": spec.start if isinstance(spec.start, str) else iso(spec.start), "owner": owner,
            "label": spec.owner, "mode": spec.mode, "created_at": now, "last_seen_at": now, "events_delivered": 0,
            "last_event_time": None, "stream": None,
            "position": offsets_to_json(offsets),
        }
        await self.table.put(conn_id, definition)
        log.info("Created %s connection %s (group %s).", spec.mode, conn_id, self.group_id(conn_id))
        return definition

    def get(self, conn_id: str) -> dict[str, Any]:
        """Return a definition, raising ConnectionNotFound."""
        definition = self.table.get(conn_id)
        if definition is None:
            raise ConnectionNotFound(f"connection {conn_id!r} does not exist (deleted, expired or never created)")
        return definition

    def filter_of(self, conn_id: str) -> EventFilter:
        """Return the connection's filter."""
        return EventFilter.model_validate(self.get(conn_id)["filter"])

    def mode_of(self, conn_id: str) -> Mode:
        """Return the connection's mode (connections made before modes existed are exclusive)."""
        mode: Mode = self.get(conn_id).get("mode", "exclusive")
        return mode

    def options_of(self, conn_id: str) -> ConnectionOptions:
        """Return the connection's options."""
        return ConnectionOptions.model_validate(self.get(conn_id)["options"])

    async def committed(self, conn_id: str) -> Offsets:
        """Return the connection's position: the group's committed offsets, and where the broker purged
        them (offsets retention), the copy kept with the definition; empty partitions were never known."""
        committed = await self.groups.committed(self.group_id(conn_id))
        kept = offsets_from_json(self.get(conn_id).get("position"))
        lost = [tp for tp in kept if tp not in committed]
        if lost:
            log.warning("Connection %s: the broker no longer holds the committed offsets of %s (offsets retention); "
                        "resuming from the position kept with the definition.", conn_id,
                        ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(lost)))
        return {**kept, **committed}

    async def commit(self, conn_id: str, offsets: Offsets) -> None:
        """Commit the next offsets to deliver (after the bytes before them were flushed)."""
        await self.groups.commit(self.group_id(conn_id), offsets)
        live = self.live.get(conn_id)
        if live is not None:
            live["position"] = {**live.get("position", {}), **offsets}

    def refresh_interval_s(self) -> float:
        """Return how often a live stream refreshes its definition: well inside the TTL other edges apply."""
        return max(self.settings.connection_ttl_s / 4, self.settings.connection_commit_interval_ms / 1000)

    async def touch(self, conn_id: str, token: str) -> None:
        """Refresh last-seen time, counters and kept position of the stream that holds `token`, so no edge
        expires a connection that is streaming; nothing when another stream took over."""
        live = self.live.get(conn_id)
        definition = self.table.get(conn_id)
        if live is None or live["token"] != token or definition is None:
            return
        if (definition.get("stream") or {}).get("token") != token:
            return
        await self.table.put(conn_id, self._updated(definition, live, stream=definition.get("stream")))

    def _updated(self, definition: dict[str, Any], live: dict[str, Any], stream: Any) -> dict[str, Any]:
        """Return the definition with the live stream's counters, position and a fresh last-seen time."""
        updated = dict(definition)
        updated.update(last_seen_at=iso(datetime.now(UTC)), events_delivered=live["events_delivered"],
                       last_event_time=live["last_event_time"], stream=stream)
        if live.get("position"):
            kept = offsets_from_json(definition.get("position"))
            updated["position"] = offsets_to_json({**kept, **live["position"]})
        return updated

    async def status(self, conn_id: str) -> dict[str, Any]:
        """Return the definition with live status, delivery counters and per-partition lag."""
        definition = self.get(conn_id)
        tps = await self.layout(EventFilter.model_validate(definition["filter"]))
        lag = await self.groups.lag(self.group_id(conn_id), tps)
        if definition.get("mode") == "shared":
            return await self._shared_status(conn_id, definition, lag)
        live = self.live.get(conn_id)
        status: Status = live["status"] if live else "disconnected"
        return {
            "id": conn_id, "mode": "exclusive", "filter": definition["filter"], "options": definition["options"],
            "status": status,
            "owner": definition.get("owner"), "created_at": definition["created_at"],
            "last_seen_at": definition["last_seen_at"],
            "lastEventTime": (live or definition).get("last_event_time"),  # when the last delivery was committed
            "eventsDelivered": (live or definition).get("events_delivered", 0),
            "lag": [{"topic": tp.topic, "partition": tp.partition, "lag": n} for tp, n in sorted(lag.items())],
            "totalLag": sum(n for n in lag.values() if n is not None),
        }

    async def _shared_status(self, conn_id: str, definition: dict[str, Any],
                             lag: dict[TopicPartition, int | None]) -> dict[str, Any]:
        """Return a shared connection's status: its members (any edge) and the counters its commits carry."""
        group = self.group_id(conn_id)
        members = await self.groups.members(group)
        counted = await self.groups.counted(group)
        times = [c.time for c in counted.values() if c.time]
        return {
            "id": conn_id, "mode": "shared", "filter": definition["filter"], "options": definition["options"],
            "status": "connected" if members else "disconnected", "owner": definition.get("owner"),
            "created_at": definition["created_at"], "last_seen_at": definition["last_seen_at"],
            "members": members, "memberCount": len(members),
            "lastEventTime": max(times) if times else None,  # when the last delivery was committed
            "eventsDelivered": sum(c.delivered for c in counted.values()),
            "redelivered": sum(c.redelivered for c in counted.values()),  # sent again after a stream left
            "lag": [{"topic": tp.topic, "partition": tp.partition, "lag": n} for tp, n in sorted(lag.items())],
            "totalLag": sum(n for n in lag.values() if n is not None),
        }

    def list(self) -> list[dict[str, Any]]:
        """Return every connection with its status on this process (disconnected if not streaming here)."""
        out = []
        for conn_id, definition in self.table.items():
            live = self.live.get(conn_id)
            status = live["status"] if live else "connected" if self.shared.get(conn_id) else "disconnected"
            out.append({"id": conn_id, "mode": definition.get("mode", "exclusive"), "filter": definition["filter"],
                        "owner": definition.get("owner"), "status": status,
                        "streaming_on": (definition.get("stream") or {}).get("host"),
                        "last_seen_at": definition["last_seen_at"],
                        "eventsDelivered": (live or definition).get("events_delivered", 0)})
        return out

    async def delete(self, conn_id: str) -> None:
        """Close any live stream, delete the group and the definition."""
        if self.get(conn_id).get("mode") == "shared":
            await self._delete_shared(conn_id)
            return
        self._close_local(conn_id, "connection deleted")
        await self.groups.delete(self.group_id(conn_id))
        await self.table.put(conn_id, None)
        log.info("Deleted connection %s.", conn_id)

    async def _delete_shared(self, conn_id: str) -> None:
        """Delete the definition first (every edge then closes its streams), then the group once they left."""
        self._close_shared(conn_id, "connection deleted")
        await self.table.put(conn_id, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connection_member_session_timeout_ms / 1000 + 5
        while True:
            try:
                await self.groups.delete(self.group_id(conn_id))
                break
            except StreamError as exc:
                if loop.time() > deadline:
                    log.warning("Deleted connection %s, but not its group: %s", conn_id, exc)
                    return
                await asyncio.sleep(0.2)
        log.info("Deleted connection %s.", conn_id)

    # ------------------------------------------------------------------ shared streams

    def joined(self, conn_id: str, stream_id: str, close: Callable[[str], None]) -> None:
        """Track a shared stream served here: deletion closes it, expiry spares its connection."""
        self.shared.setdefault(conn_id, {})[stream_id] = close

    def left(self, conn_id: str, stream_id: str) -> None:
        """Forget a shared stream that ended."""
        streams = self.shared.get(conn_id, {})
        streams.pop(stream_id, None)
        if not streams:
            self.shared.pop(conn_id, None)

    def reserve_member(self, conn_id: str, stream_id: str, members: int) -> None:
        """Count a shared stream opening here until Kafka lists it in the group (in_group), raising
        TooManyMembers when `members` (the group's) plus those already opening here reach the limit.

        No await comes between the check and the count, so streams opening on one edge at once cannot
        pass the limit together, which they did while the group had not yet listed any of them."""
        streams = members + len(self.joining.get(conn_id, ()))
        if streams >= self.settings.connection_max_members:
            raise TooManyMembers(f"connection {conn_id!r} has {streams} streams, its limit "
                                 "(ES_CONNECTION_MAX_MEMBERS); close one, or create another connection")
        self.joining.setdefault(conn_id, set()).add(stream_id)

    def in_group(self, conn_id: str, stream_id: str) -> None:
        """Stop counting a stream as opening: it has its partitions, or it ended, or it never started."""
        joining = self.joining.get(conn_id)
        if joining is not None:
            joining.discard(stream_id)
            if not joining:
                del self.joining[conn_id]

    async def touch_shared(self, conn_id: str, offsets: Offsets) -> None:
        """Refresh last-seen time and the kept copy of the partitions a shared stream commits."""
        definition = self.table.get(conn_id)
        if definition is None:
            return
        updated = dict(definition)
        kept = offsets_from_json(definition.get("position"))
        updated.update(last_seen_at=iso(datetime.now(UTC)), position=offsets_to_json({**kept, **offsets}))
        await self.table.put(conn_id, updated)

    def _close_shared(self, conn_id: str, reason: str) -> None:
        streams = self.shared.pop(conn_id, {})
        if streams:
            log.info("Closing %d shared streams of connection %s: %s.", len(streams), conn_id, reason)
        for close in streams.values():
            close(reason)

    # ------------------------------------------------------------------ live streams

    async def claim(self, conn_id: str, host: str, on_takeover: Callable[[str], None]) -> str:
        """Mark a new stream as the connection's only live one; an older stream anywhere is closed."""
        definition = dict(self.get(conn_id))
        self._close_local(conn_id, "another stream took over this connection")
        token = uuid.uuid4().hex
        self._takeover[conn_id] = on_takeover
        self.live[conn_id] = {"status": "connecting", "token": token,
                              "events_delivered": definition.get("events_delivered", 0),
                              "last_event_time": definition.get("last_event_time")}
        definition.update(stream={"token": token, "host": host}, last_seen_at=iso(datetime.now(UTC)))
        await self.table.put(conn_id, definition)
        return token

    async def release(self, conn_id: str, token: str) -> None:
        """Record the end of a stream: counters and last-seen time go to the definition."""
        live = self.live.get(conn_id)
        if live is None or live["token"] != token:
            return
        self.live.pop(conn_id, None)
        self._takeover.pop(conn_id, None)
        definition = self.table.get(conn_id)
        if definition is None:
            return
        stream = definition.get("stream") or {}
        updated = self._updated(definition, live, stream=None if stream.get("token") == token else stream)
        with contextlib.suppress(StreamError):
            await self.table.put(conn_id, updated)

    def connected(self, conn_id: str, token: str) -> None:
        """Mark the stream that holds `token` as connected."""
        live = self.live.get(conn_id)
        if live is not None and live["token"] == token:
            live["status"] = "connected"

    def delivered(self, conn_id: str, count: int, last_time: str | None) -> None:
        """Count events written to a live stream."""
        live = self.live.get(conn_id)
        if live is not None:
            live["status"] = "connected"
            live["events_delivered"] += count
            if last_time:
                live["last_event_time"] = last_time

    def _close_local(self, conn_id: str, reason: str) -> None:
        close = self._takeover.pop(conn_id, None)
        if close is not None:
            log.info("Closing the stream of connection %s: %s.", conn_id, reason)
            self.live.pop(conn_id, None)
            close(reason)

    def _changed(self, conn_id: str, definition: dict[str, Any] | None) -> None:
        """React to table changes from any process: deletion or a newer stream closes ours."""
        if definition is None:
            self._close_shared(conn_id, "connection deleted")
        live = self.live.get(conn_id)
        if live is None:
            return
        if definition is None:
            self._close_local(conn_id, "connection deleted")
        elif (definition.get("stream") or {}).get("token") not in (None, live["token"]):
            self._close_local(conn_id, "another stream took over this connection")

    # ------------------------------------------------------------------ expiry

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.connection_sweep_interval_s)
            try:
                await self.expire()
            except StreamError as exc:
                log.warning("Expiring idle connections failed, will retry: %s", exc)

    async def expire(self, now: float | None = None) -> builtins.list[str]:
        """Delete connections idle (not streaming anywhere) for longer than connection_ttl_s."""
        now = time.time() if now is None else now
        gone = []
        for conn_id, definition in self.table.items():
            if conn_id in self.live or conn_id in self.shared:
                continue
            seen = datetime.fromisoformat(definition["last_seen_at"].replace("Z", "+00:00")).timestamp()
            # A stream another process still marks as live gets twice the time (its process may have died).
            ttl = self.settings.connection_ttl_s * (2 if definition.get("stream") else 1)
            if now - seen > ttl:
                await self.groups.delete(self.group_id(conn_id))
                await self.table.put(conn_id, None)
                gone.append(conn_id)
                log.info("Expired connection %s (idle since %s).", conn_id, definition["last_seen_at"])
        return gone
