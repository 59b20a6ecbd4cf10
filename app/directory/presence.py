"""Presence: which streams are open on which edge, for every edge to list.

Each edge writes the list of its open streams to one compacted topic (`<prefix>.internal.stream-presence`),
keyed by its edge id, every ES_PRESENCE_INTERVAL_S, and a tombstone when it stops cleanly; every edge
reads the whole topic (streams/kafka/table.py), so any of them lists the streams of all. An edge that
died without its tombstone (kill -9, a lost host) leaves its last entry behind: entries not refreshed
for ES_PRESENCE_STALE_S are left out. Freshness is judged by when this edge read the entry (its own
clock, so no clock skew between hosts matters); entries loaded at start, whose arrival says nothing,
by the time their writer put in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from app.fanout.subscribers import StreamRegistry
from streams.envelope import iso
from streams.errors import StreamError
from streams.kafka.table import CompactedTable
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
MAX_ENTRY_BYTES = 900_000  # an entry stays under Kafka's default 1 MB message limit (topic and producer)


def edge_id(settings: Settings) -> str:
    """Return this process's edge id: `host:port:pid` (the port it serves, the pid that tells restarts apart)."""
    return f"{socket.gethostname()}:{settings.http_port}:{os.getpid()}"


def entry_of(edge: str, streams: StreamRegistry, max_streams: int) -> dict[str, Any]:
    """Return an edge's presence entry: its newest `max_streams` streams (fewer if the entry would pass
    MAX_ENTRY_BYTES), how many it holds in all, and when it was taken."""
    records = sorted(streams, key=lambda record: record.connected_at, reverse=True)
    listed = [record.view() for record in records[:max_streams]]
    entry = {"edge": edge, "updated_at": iso(datetime.now(UTC)), "count": len(records), "streams": listed}
    while len(listed) > 1 and len(orjson.dumps(entry)) > MAX_ENTRY_BYTES:  # long principals or filters
        del listed[len(listed) // 2:]
    entry["truncated"] = len(listed) < len(records)
    return entry


def written_at(entry: dict[str, Any]) -> float:
    """Return the Unix time an entry's writer took it (0 when it cannot be read)."""
    try:
        return datetime.fromisoformat(str(entry["updated_at"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


class Presence:
    """Publish this edge's streams and read every edge's: the stream admin's cluster-wide list."""

    def __init__(self, settings: Settings, streams: StreamRegistry, edge: str) -> None:
        self.settings, self.streams, self.edge = settings, streams, edge
        # Its own entry is built fresh when listed: never parsed back from the topic (1,000 streams: ~1 MB).
        self.table = CompactedTable(settings, settings.presence_topic, ignore=frozenset({edge}))
        self.table.subscribe(self._changed)  # before start: arrivals after the load are timed
        self._arrived: dict[str, float] = {}  # edge -> monotonic time its entry was read, after the load
        self._loaded = False
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read every edge's entry, list this edge at once, then keep publishing it."""
        await self.table.start()
        self._loaded = True
        await self.publish()
        self._writer = supervise("stream-presence", self._publish_loop, context="publishing this edge's streams")
        log.info("Stream presence started as edge %s (%d other edge(s) listed).", self.edge,
                 sum(1 for _ in self.others()))

    async def stop(self) -> None:
        """Stop publishing and write this edge's tombstone (so no listing shows it); calling it twice is harmless."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            try:
                await self.table.put(self.edge, None)
            except StreamError as exc:  # the entry goes stale instead
                log.warning("Could not remove edge %s from the stream presence: %s", self.edge, exc)
        await self.table.stop()

    async def __aenter__(self) -> Presence:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self) -> None:
        """Write this edge's entry now."""
        await self.table.put(self.edge, entry_of(self.edge, self.streams, self.settings.presence_max_streams))

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_interval_s)
            try:
                await self.publish()
            except StreamError as exc:  # Kafka away: other edges see this entry go stale, then come back
                log.warning("Publishing the streams of edge %s failed, will retry: %s", self.edge, exc)

    def _changed(self, edge: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self._arrived.pop(edge, None)
        elif self._loaded:
            self._arrived[edge] = time.monotonic()

    def fresh(self, edge: str, entry: dict[str, Any]) -> bool:
        """Tell whether an edge's entry is recent enough to believe (its edge is alive)."""
        stale_s = self.settings.presence_stale_s
        arrived = self._arrived.get(edge)
        if arrived is not None:
            return time.monotonic() - arrived < stale_s
        return time.time() - written_at(entry) < stale_s

    def others(self) -> Iterator[dict[str, Any]]:
        """Yield the fresh entries of the other edges."""
        for edge, entry in self.table.items():
            if edge != self.edge and self.fresh(edge, entry):
                yield entry

    def entries(self) -> list[dict[str, Any]]:
        """Return every live edge's entry, this edge's taken now (its own streams are never stale)."""
        return [entry_of(self.edge, self.streams, self.settings.presence_max_streams), *self.others()]

    def find(self, stream_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Return (edge entry, stream) of the stream with this id on a live edge, or None."""
        for entry in self.entries():
            for stream in entry.get("streams", ()):
                if stream.get("id") == stream_id:
                    return entry, stream
        return None
