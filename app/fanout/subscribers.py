"""Who listens: one Subscriber per stream, grouped by filter so each record is matched once per group;
and the edge's registry of open streams (plain, endpoint, durable), the stream admin's view of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from app.fanout.filters import NOBODY, CompiledFilter, Viewer
from app.fanout.records import Positions
from app.sse.writer import Connection

LIVE, CATCHUP, CLOSED = "live", "catchup", "closed"
MAX_FILTER_TEXT = 512  # characters of a stream's filter the admin listing shows (presence records stay small)


class Subscriber:
    """One stream: its connection, its filter group, and where it stands while not live."""

    __slots__ = ("conn", "group", "heartbeat_s", "state", "position", "lagging_since", "viewer", "batch_size",
                 "delivered", "mark")

    def __init__(self, conn: Connection, group: FilterGroup, heartbeat_s: float) -> None:
        self.conn = conn
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.state = CATCHUP
        self.position: Positions | None = None  # next offsets while catching up
        self.lagging_since: float | None = None  # set when it overflowed out of the live tail
        self.viewer: Viewer = NOBODY  # whom targeted events (`recipients`) must name for this stream to get them
        self.batch_size = 1  # events per socket write while catching up or replaying (durable `batchSize`)
        # Events written to this stream: those of earlier live stints and replays, plus, while live, the
        # group's count since it joined (`group.sent - mark`), so the live tail counts once per group, not per client.
        self.delivered = 0
        self.mark = 0

    @property
    def events_delivered(self) -> int:
        """Return how many events were written to this stream (live, replayed; catch-up writes are not counted)."""
        return self.delivered + self.group.sent - self.mark if self.state == LIVE else self.delivered


class FilterGroup:
    """Clients sharing one filter: matched once per record, framed once."""

    __slots__ = ("filter", "topics", "scope", "live", "members", "sent")

    def __init__(self, flt: CompiledFilter) -> None:
        self.filter = flt
        self.topics = flt.topics
        self.scope = flt.scope
        self.live: dict[Subscriber, None] = {}  # insertion-ordered set
        self.members = 0  # streams holding the group (live, catching up, or about to start)
        self.sent = 0  # untargeted events written to the live members (Subscriber.events_delivered reads it)


def new_stream_id() -> str:
    """Return a fresh stream id (sent as `ES-Stream-Id` and in the stream's first comment)."""
    return uuid.uuid4().hex[:16]


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def filter_text(flt: CompiledFilter) -> str:
    """Return a filter as compact JSON for listings, cut at MAX_FILTER_TEXT characters (ending in "...")."""
    text = flt.spec.model_dump_json(exclude_none=True)
    return text if len(text) <= MAX_FILTER_TEXT else text[:MAX_FILTER_TEXT - 3] + "..."


class StreamRecord:
    """One open stream as the stream admin lists it, and how to end it from the server side.

    The figures are read when listed, from what the connection and the hub keep anyway: nothing is
    counted per event for the listing."""

    __slots__ = ("id", "kind", "principal", "filter", "endpoint", "connection", "connected_at", "conn", "sub", "end")

    def __init__(self, stream_id: str, kind: str, principal: str, conn: Connection, end: Callable[[bytes], None], *,
                 sub: Subscriber | None = None, filter: str | None = None, endpoint: str | None = None,
                 connection: str | None = None) -> None:
        self.id, self.kind, self.principal, self.conn, self.end, self.sub = stream_id, kind, principal, conn, end, sub
        self.filter, self.endpoint, self.connection = filter, endpoint, connection
        self.connected_at = time.time()

    def view(self) -> dict[str, Any]:
        """Return the listing's entry: who, what, since when, and how it is doing now."""
        conn, sub = self.conn, self.sub
        last_write = time.time() - (time.monotonic() - conn.last_write)
        if sub is not None:
            events, state = sub.events_delivered, sub.state
        else:  # a stream the hub does not feed (a shared durable member) counts its own events, if it does
            events, state = int(getattr(conn, "delivered_count", 0)), LIVE
        return {"id": self.id, "kind": self.kind, "principal": self.principal, "filter": self.filter,
                "endpoint": self.endpoint, "connection": self.connection, "connected_at": _iso(self.connected_at),
                "last_write": _iso(last_write), "events_delivered": events, "buffered_bytes": conn.buffered_bytes,
                "state": state}


class StreamRegistry:
    """The open streams of this edge by id: what presence publishes and what a disconnect command ends."""

    def __init__(self) -> None:
        self._records: dict[str, StreamRecord] = {}

    def add(self, record: StreamRecord) -> None:
        """List a stream that started."""
        self._records[record.id] = record

    def discard(self, stream_id: str) -> None:
        """Forget a stream that ended; idempotent."""
        self._records.pop(stream_id, None)

    def get(self, stream_id: str) -> StreamRecord | None:
        """Return the stream of this id open on this edge, or None."""
        return self._records.get(stream_id)

    def __iter__(self) -> Iterator[StreamRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)
