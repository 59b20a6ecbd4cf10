"""The end of a stream's credential: a `token-expiring` event shortly before `exp`, the stream's end at `exp`.

Credentials are checked when a stream opens, never per event; a stream whose token expires must not
outlive it, so two timers per stream (the event loop's own, armed at open and cancelled at the end)
warn the client and then close the stream with a final comment. The client reconnects with a fresh
token and its Last-Event-ID and misses nothing: the warning carries no `id:`, so it moves no position.
"""

from __future__ import annotations

import asyncio
import math
import time

import orjson

from app.fanout.hub import Hub
from app.fanout.subscribers import CLOSED, Subscriber
from app.sse.framing import format_comment, format_event

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
