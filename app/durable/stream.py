"""Streams of durable connections: the shared fan-out of plain streams, plus a position committed to
the connection's consumer group once the bytes before it were handed to the client's socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from starlette.responses import Response

from app.durable.registry import Connections
from app.durable.shared import SharedMember
from app.fanout.filters import NOBODY, CompiledFilter, Viewer
from app.fanout.hub import SHUTDOWN, FilterGroup, Hub
from app.fanout.records import LOST, Positions
from app.fanout.response import EXPIRED, EventStreamResponse, expiring_event, opened_by, stream_comment
from app.fanout.subscribers import StreamRecord, filter_text
from app.fanout.tokens import TokenError
from app.sse.framing import format_comment, format_retry
from app.sse.writer import DEFAULT_MAX_BYTES, Connection, Encoder, Encoding, Send
from streams.envelope import iso
from streams.errors import StreamError

log = logging.getLogger(__name__)
HOST = socket.gethostname()


class TrackedConnection(Connection):
    """A Connection that knows the resume token of the last event the client's socket accepted.

    A frame the socket took at once (written to the transport, or a `send` that did not wait) counts
    as delivered at once; frames queued while the client is slow count only when the writer reports
    a flush in which no send failed (`on_flushed`).
    """

    __slots__ = ("delivered", "delivered_count", "_pending", "_pending_count")

    def __init__(self, send: Send, max_buffer: int, encoder: Encoder | None = None, *, direct: bool = True,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(send, max_buffer, encoder, direct=direct, max_bytes=max_bytes)
        self.delivered: bytes | None = None
        self.delivered_count = 0
        self._pending: bytes | None = None
        self._pending_count = 0
        self.on_flushed = self._flushed

    def write(self, data: bytes) -> bool:
        """Write like Connection and note the token of an event frame as delivered or pending."""
        was_closed = self.closed
        ok = super().write(data)
        if ok and not was_closed and not self.closed and data.startswith(b"id: "):
            self._note(data, 1)
        return ok

    def _write_joined(self, frames: list[bytes]) -> None:
        """Write a batch as one chunk (`write_batch`) and note its last event's token, counting each event."""
        was_closed = self.closed
        super()._write_joined(frames)
        events = [frame for frame in frames if frame.startswith(b"id: ")]
        if events and not was_closed and not self.closed:
            self._note(events[-1], len(events))

    def _note(self, frame: bytes, count: int) -> None:
        token = frame[4:frame.index(b"\n")]
        if self.blocked_since is None:
            self.delivered = token
            self.delivered_count += count
        else:
            self._pending = token
            self._pending_count += count

    def _flushed(self) -> None:
        """Count the frames queued while the client was slow as delivered: the socket took them all."""
        if self._pending is not None:
            self.delivered, self._pending = self._pending, None
            self.delivered_count += self._pending_count
            self._pending_count = 0


def positions_to_offsets(positions: Positions) -> dict[TopicPartition, int]:
    """Turn hub positions (next offset per partition) into committable offsets."""
    return {TopicPartition(t, p): off for t, offs in positions.items() for p, off in enumerate(offs)}


async def start_positions(hub: Hub, group: FilterGroup, connections: Connections, conn_id: str,
                          token: str | None) -> Positions:
    """Return where the stream starts: the Last-Event-ID the client sends, older or newer than the
    committed position (it is what the client processed: bytes the socket took may have been lost
    in buffers when its network died), else the committed position."""
    committed = await connections.committed(conn_id)
    layout = hub.layout(group)
    known = {tp.topic for tp in committed}  # a topic with no offset kept anywhere lost its position: catch-up
    start = {t: [committed.get(TopicPartition(t, p), 0 if t in known else LOST) for p in range(n)]  # sends a reset
             for t, n in layout.items()}
    if token:
        try:
            resumed = await hub.resume_positions(group, token)
        except TokenError:
            log.info("Ignoring a Last-Event-ID that does not fit connection %s.", conn_id)
            return start
        if any(a < b for t in start for a, b in zip(resumed[t], start[t], strict=True)):
            log.info("Connection %s resumes from a Last-Event-ID behind its committed position.", conn_id)
        return resumed
    return start


class DurableStreamResponse(EventStreamResponse):
    """The SSE body of a durable connection: one live stream per connection, committing as it goes."""

    def __init__(self, hub: Hub, group: FilterGroup, start: Positions, connections: Connections, conn_id: str,
                 options: Any, encoding: Any) -> None:
        super().__init__(hub, group, start, options.heartbeatInterval / 1000, encoding)
        self.connections, self.conn_id, self.options = connections, conn_id, options
        self.kind, self.connection = "durable", conn_id  # how the stream admin lists it
        self._committed: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sub = None
        conn: TrackedConnection | None = None
        committer: asyncio.Task[None] | None = None
        claim = ""
        taken: list[str] = []  # set when another stream takes over before ours is open

        def close(why: str) -> None:
            if sub is None:
                taken.append(why)
            else:
                self.hub.close(sub, format_comment(f"closing: {why}"))

        try:
            claim = await self.connections.claim(self.conn_id, HOST, close)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            encoder = Encoder(self.encoding) if self.encoding else None
            settings = self.hub.settings  # bufferMaxSize counts frames; their bytes are bounded by the edge's limit
            conn = TrackedConnection(send, self.options.bufferMaxSize, encoder, direct=settings.stream_direct_writes,
                                     max_bytes=settings.stream_buffer_max_bytes)
            self.greet(conn, scope, self.options.retryDelay)
            sub = self.hub.open(self.group, conn, self.heartbeat_s, self.start, viewer=self.viewer,
                                batch_size=self.options.batchSize)
            self.watch_expiry(sub)  # the credential's `exp` ends this stream too
            if taken:
                close(taken[0])
            self.connections.connected(self.conn_id, claim)
            committer = asyncio.create_task(self._commit_loop(conn, claim), name=f"commit-{self.conn_id}")
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.unwatch_expiry()
            if committer is not None:
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committer
            if sub is None:
                self.hub.release(self.group)
            else:
                self.hub.remove(sub)
                sub.conn.abort()
            if conn is not None:
                with contextlib.suppress(StreamError, TokenError):
                    await self._commit(conn)
            if claim:
                await self.connections.release(self.conn_id, claim)

    async def _commit_loop(self, conn: TrackedConnection, claim: str) -> None:
        """Commit the delivered position every connection_commit_interval_ms, so commits stay cheap, and
        refresh the definition (last seen, kept position) often enough that no edge expires it."""
        interval = self.hub.settings.connection_commit_interval_ms / 1000
        loop = asyncio.get_running_loop()
        touched = loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._commit(conn)
                if loop.time() - touched >= self.connections.refresh_interval_s():
                    await self.connections.touch(self.conn_id, claim)
                    touched = loop.time()
            except (StreamError, TokenError) as exc:
                log.warning("Committing connection %s failed, will retry: %s", self.conn_id, exc)

    async def _commit(self, conn: TrackedConnection) -> None:
        """Commit the position after the last delivered event, if it moved since the last commit."""
        token = conn.delivered
        if token is None or token == self._committed:
            return
        positions = self.hub.decode_token(self.group, token.decode())
        await self.connections.commit(self.conn_id, positions_to_offsets(positions))
        self._committed = token
        count, conn.delivered_count = conn.delivered_count, 0
        self.connections.delivered(self.conn_id, count, iso(datetime.now(UTC)))


class SharedStreamResponse(Response):
    """The SSE body of a shared connection: the stream is a member of the connection's consumer group and
    serves the partitions Kafka assigns it; its records go to this client alone, so no hub is involved."""

    def __init__(self, hub: Hub, flt: CompiledFilter, connections: Connections, conn_id: str, options: Any,
                 encoding: Encoding | None, stream_id: str, edge: str) -> None:
        self.hub, self.flt, self.connections, self.conn_id = hub, flt, connections, conn_id
        self.options, self.encoding, self.stream_id, self.edge = options, encoding, stream_id, edge
        self.viewer: Viewer = NOBODY  # set by the route: which targeted events this stream gets
        self.status_code = 200
        self.background = None
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), (b"es-stream-id", stream_id.encode())]
        if encoding:
            headers += [(b"content-encoding", encoding.encode()), (b"vary", b"accept-encoding")]
        self.raw_headers = headers
        self.expires_at: float | None = None  # Unix time the stream's credential expires (None: never)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._serve(scope, receive, send)
        finally:  # however it ended, even before joining: no longer counted as opening (the member limit)
            self.connections.in_group(self.conn_id, self.stream_id)

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.hub.settings
        layout = {topic: len(await self.connections.topics.partitions(topic)) for topic in self.flt.topics}
        kept = await self.connections.committed(self.conn_id)  # before the response starts: no broker is a 503
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        conn = TrackedConnection(send, self.options.bufferMaxSize, Encoder(self.encoding) if self.encoding else None,
                                 direct=settings.stream_direct_writes, max_bytes=settings.stream_buffer_max_bytes)
        conn.write(format_retry(self.options.retryDelay))
        conn.write(stream_comment(self.stream_id))
        self.hub.streams.add(StreamRecord(self.stream_id, "durable", opened_by(scope), conn, conn.close,
                                          filter=filter_text(self.flt), connection=self.conn_id))  # stream admin
        member = SharedMember(
            settings, group_id=self.connections.group_id(self.conn_id), stream_id=self.stream_id, edge=self.edge,
            flt=self.flt, layout=layout, conn=conn, tokens=self.hub.tokens, decode=self.hub.decoder.decode,
            groups=self.connections.groups, kept=kept, heartbeat_s=self.options.heartbeatInterval / 1000,
            batch=self.options.batchSize, viewer=self.viewer,
            in_group=lambda: self.connections.in_group(self.conn_id, self.stream_id))
        tasks: list[asyncio.Task[None]] = []
        self.connections.joined(self.conn_id, self.stream_id, lambda why: conn.close(format_comment(f"closing: {why}")))
        self.hub.hold_slot()  # counts against ES_STREAM_MAX_CLIENTS like the streams the hub serves
        try:
            try:
                await member.start()
            except StreamError as exc:
                log.warning("Shared stream %s of connection %s could not join its group: %s", self.stream_id,
                            self.conn_id, exc)
                conn.close(format_comment("closing: Kafka did not answer; reconnect"))
            tasks = [asyncio.create_task(member.run(self._closing), name=f"shared-{self.stream_id}"),
                     asyncio.create_task(self._keep_alive(member), name=f"shared-touch-{self.stream_id}")]
            if self.expires_at is not None:
                tasks.append(asyncio.create_task(self._expiry(conn, self.expires_at)))
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.hub.release_slot()
            self.connections.left(self.conn_id, self.stream_id)
            self.hub.streams.discard(self.stream_id)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, StreamError):
                    await task
            try:
                await member.stop()  # commit (what was accepted one interval ago) and leave the group
            finally:
                conn.abort()

    def _closing(self) -> bytes | None:
        """Return the final comment when the edge shuts down (SIGTERM ends shared streams like the others)."""
        return SHUTDOWN if self.hub.closing else None

    async def _keep_alive(self, member: SharedMember) -> None:
        """Refresh the definition (last seen, kept position) often enough that no edge expires it."""
        while True:
            await asyncio.sleep(self.connections.refresh_interval_s())
            try:
                await self.connections.touch_shared(self.conn_id, member.held())
            except StreamError as exc:
                log.warning("Refreshing shared connection %s failed, will retry: %s", self.conn_id, exc)

    async def _expiry(self, conn: TrackedConnection, expires_at: float) -> None:
        """Warn `auth_expiry_warning_s` before the credential's `exp`, and end the stream at it."""
        left = expires_at - time.time()
        await asyncio.sleep(max(0.0, left - self.hub.settings.auth_expiry_warning_s))
        conn.write(expiring_event(expires_at - time.time()))
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        conn.close(EXPIRED)
