"""Who listens: one Subscriber per stream, grouped by filter so each record is matched once per group."""

from __future__ import annotations

from app.fanout.filters import CompiledFilter
from app.fanout.records import Positions
from app.sse.writer import Connection

LIVE, CATCHUP, CLOSED = "live", "catchup", "closed"


class Subscriber:
    """One stream: its connection, its filter group, and where it stands while not live."""

    __slots__ = ("conn", "group", "heartbeat_s", "state", "position", "lagging_since")

    def __init__(self, conn: Connection, group: FilterGroup, heartbeat_s: float) -> None:
        self.conn = conn
        self.group = group
        self.heartbeat_s = heartbeat_s
        self.state = CATCHUP
        self.position: Positions | None = None  # next offsets while catching up
        self.lagging_since: float | None = None  # set when it overflowed out of the live tail


class FilterGroup:
    """Clients sharing one filter: matched once per record, framed once."""

    __slots__ = ("filter", "topics", "scope", "live", "members")

    def __init__(self, flt: CompiledFilter) -> None:
        self.filter = flt
        self.topics = flt.topics
        self.scope = flt.scope
        self.live: dict[Subscriber, None] = {}  # insertion-ordered set
        self.members = 0  # streams holding the group (live, catching up, or about to start)
