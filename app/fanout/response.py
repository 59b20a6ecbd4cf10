"""The SSE response of a stream: its headers, the write side it hands the hub, its content encoding, and
the timers that warn before and end at the expiry of the credential it was opened with."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from starlette.responses import Response

from app.fanout.hub import Hub
from app.fanout.records import Positions
from app.fanout.subscribers import CLOSED, FilterGroup, Subscriber
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
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        if encoding:
            headers += [(b"content-encoding", encoding.encode()), (b"vary", b"accept-encoding")]
        self.raw_headers = headers
        self.expires_at: float | None = None  # Unix time the stream's credential expires (None: never)
        self._expiry: ExpiryWatch | None = None

    def watch_expiry(self, sub: Subscriber) -> None:
        """Arm the `token-expiring` warning and the end of the stream at the credential's `exp`."""
        if self.expires_at is not None:
            self._expiry = ExpiryWatch(self.hub, sub, self.expires_at, self.hub.settings.auth_expiry_warning_s)

    def unwatch_expiry(self) -> None:
        """Disarm the expiry timers of a stream that ended."""
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
            conn.write(format_retry(settings.stream_retry_ms))
            sub = self.hub.open(self.group, conn, self.heartbeat_s, self.start)
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
