"""The SSE response of a stream: its headers, the write side it hands the hub, its content encoding, its
entry in the edge's stream registry (its id goes out as `ES-Stream-Id` and in its first comment), and the
timers that warn before and end at the expiry of the credential it was opened with."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from starlette.responses import Response

from app.fanout.filters import NOBODY, Viewer
from app.fanout.hub import Hub
from app.fanout.records import Positions
from app.fanout.subscribers import CLOSED, FilterGroup, StreamRecord, Subscriber, filter_text, new_stream_id
from app.sse.framing import format_comment, format_event, format_retry
from app.sse.writer import Connection, Encoder, Encoding


class EventStreamResponse(Response):
    """The SSE body as a bare ASGI callable: the hub writes frames; this coroutine only waits for
    the client to leave (no per-connection sender or heartbeat task: the hub's sweep sends pings)."""

    def __init__(self, hub: Hub, group: FilterGroup, start: Positions | None, heartbeat_s: float,
                 encoding: Encoding | None) -> None:
        self.hub, self.group, self.start, self.heartbeat_s, self.encoding = hub, group, start, heartbeat_s, encoding
        self.status_code = 200
        self.background = None
        self.stream_id = new_stream_id()
        self.kind = "plain"  # how the stream admin lists it: plain, endpoint (set by the route) or durable
        self.endpoint: str | None = None  # the named endpoint streamed, for kind "endpoint"
        self.connection: str | None = None  # the durable connection streamed, for kind "durable"
        self.principal = "anonymous"  # the `sub` that opened it (read from the request when the body starts)
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), (b"es-stream-id", self.stream_id.encode())]
        if encoding:
            headers += [(b"content-encoding", encoding.encode()), (b"vary", b"accept-encoding")]
        self.raw_headers = headers
        self.expires_at: float | None = None  # Unix time the stream's credential expires (None: never)
        self.viewer: Viewer = NOBODY  # set by the route from the principal: which targeted events this stream gets
        self._expiry: ExpiryWatch | None = None

    def greet(self, conn: Connection, scope: Any, retry_ms: int) -> None:
        """Write the stream's first bytes, `retry:` then `: stream <id>`, and note who opened it.

        The principal is the one authentication put in the ASGI scope's state (app/auth/middleware.py)."""
        self.principal = opened_by(scope)
        conn.write(format_retry(retry_ms))
        conn.write(stream_comment(self.stream_id))

    def watch_expiry(self, sub: Subscriber) -> None:
        """List the started stream in the edge's registry (so an admin can end it), and arm the
        `token-expiring` warning and the end of the stream at the credential's `exp`."""
        self.hub.streams.add(StreamRecord(self.stream_id, self.kind, self.principal, sub.conn,
                                          lambda final: self.hub.close(sub, final), sub=sub,
                                          filter=filter_text(self.group.filter), endpoint=self.endpoint,
                                          connection=self.connection))
        if self.expires_at is not None:
            self._expiry = ExpiryWatch(self.hub, sub, self.expires_at, self.hub.settings.auth_expiry_warning_s)

    def unwatch_expiry(self) -> None:
        """Take an ended stream out of the registry and disarm its expiry timers."""
        self.hub.streams.discard(self.stream_id)
        if self._expiry is not None:
            self._expiry.cancel()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.hub.settings
        sub = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            encoder = Encoder(self.encoding) if self.encoding else None
            conn = Connection(send, settings.stream_buffer_max_size, encoder, direct=settings.stream_direct_writes,
                              max_bytes=settings.stream_buffer_max_bytes)
            self.greet(conn, scope, settings.stream_retry_ms)
            sub = self.hub.open(self.group, conn, self.heartbeat_s, self.start, viewer=self.viewer)
            self.watch_expiry(sub)
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.unwatch_expiry()
            if sub is None:
                self.hub.release(self.group)
            else:
                self.hub.remove(sub)
                sub.conn.abort()


def opened_by(scope: Any) -> str:
    """Return the `sub` of the principal authentication put in an ASGI scope's state ("anonymous" if none)."""
    principal = (scope.get("state") or {}).get("principal")
    return str(getattr(principal, "sub", None) or "anonymous")


def stream_comment(stream_id: str) -> bytes:
    """Return a stream's first comment, `: stream <id>`, which names it for the stream admin."""
    return format_comment(f"stream {stream_id}")


def choose_encoding(compression: bool, accept: str | None) -> Encoding | None:
    """Pick br over gzip from Accept-Encoding when compression is asked for (gzip if none is sent)."""
    if not compression:
        return None
    if accept is None:
        return "gzip"
    offered: dict[str, float] = {}
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        offered[name.strip().lower()] = q
    preferred: tuple[Encoding, ...] = ("br", "gzip")
    for name in preferred:
        if offered.get(name, offered.get("*", 0.0)) > 0:
            return name
    if offered.get("x-gzip", 0.0) > 0:
        return "gzip"
    return None


TOKEN_EXPIRING = "token-expiring"
EXPIRED = format_comment("closing: the credential expired; reconnect with a fresh token and Last-Event-ID "
                         "to resume")


def expiring_event(expires_in_s: float) -> bytes:
    """Return the `token-expiring` event: `{"expires_in": <whole seconds left>}`."""
    return format_event(orjson.dumps({"expires_in": max(0, math.ceil(expires_in_s))}).decode(), event=TOKEN_EXPIRING)


class ExpiryWatch:
    """Warn a stream `warning_s` before its credential's `expires_at` (Unix time), and close it then."""

    __slots__ = ("hub", "sub", "expires_at", "_handles")

    def __init__(self, hub: Hub, sub: Subscriber, expires_at: float, warning_s: float) -> None:
        self.hub, self.sub, self.expires_at = hub, sub, expires_at
        loop = asyncio.get_running_loop()
        left = expires_at - time.time()
        self._handles = [loop.call_later(max(0.0, left - warning_s), self._warn),
                         loop.call_later(max(0.0, left), self._expire)]

    def _warn(self) -> None:
        if self.sub.state != CLOSED:
            self.sub.conn.write(expiring_event(self.expires_at - time.time()))

    def _expire(self) -> None:
        if self.sub.state != CLOSED:
            self.hub.close(self.sub, EXPIRED)

    def cancel(self) -> None:
        """Disarm both timers (the stream ended first); idempotent."""
        for handle in self._handles:
            handle.cancel()
