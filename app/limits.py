"""Rate limits per principal, with the `limits` library: events published, streams opened, streams held.

The key is the principal's `sub` (set on `request.state.principal` by authentication), or the client
address when authentication is off. Counts live in `ES_RATE_LIMIT_STORAGE`: memory (one edge) or Redis
(every edge shares one count). Past a limit the route raises `RateLimited`: 429 problem+json with
Retry-After (seconds) and the `RateLimit-Policy` / `RateLimit` fields of the IETF httpapi-ratelimit-headers
draft, syntax of draft-ietf-httpapi-ratelimit-headers-10 (structured fields: `"name";q=100;w=60` and
`"name";r=0;t=12`). Routes get a `RequestLimits` through the `Limits` dependency; the key is read when a
limit is checked, so it is the principal's whatever order the dependencies ran in.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.responses import Response

from streams.errors import LimitExceeded, StreamError
from streams.settings import Settings

log = logging.getLogger(__name__)
STREAMS_RETRY_AFTER_S = 5  # a held stream frees its slot when a client leaves: no reset time to tell
STORAGE_WARNING_S = 30.0


class RateLimited(StreamError):
    """A principal went past one of its rate limits or its open-stream cap; the headers say when to retry."""

    status = 429
    title = "Too many requests"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


def storage_uri(uri: str) -> str:
    """Return the `limits` async storage URI for ES_RATE_LIMIT_STORAGE (memory:// or redis://host:port)."""
    return uri if uri.startswith("async+") else f"async+{uri}"


def principal_key(request: Request) -> str:
    """Return whom a request counts against: the principal's `sub`, else the client address."""
    principal = getattr(request.state, "principal", None)
    sub = getattr(principal, "sub", None)
    if sub:
        return f"sub:{sub}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


def _policy(name: str, item: RateLimitItem) -> str:
    return f'"{name}";q={item.amount};w={item.get_expiry()}'


class StreamSlot:
    """One stream held open by a principal; `release` (idempotent) gives the slot back."""

    __slots__ = ("_counts", "_key", "_held")

    def __init__(self, counts: dict[str, int], key: str) -> None:
        self._counts, self._key, self._held = counts, key, True
        counts[key] = counts.get(key, 0) + 1

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if not self._held:
            return
        self._held = False
        left = self._counts[self._key] - 1
        if left:
            self._counts[self._key] = left
        else:
            del self._counts[self._key]

    def hold(self, response: Response) -> Response:
        """Return `response` wrapped so that the slot is released when its body ends, however it ends."""
        return HeldResponse(response, self.release)


class HeldResponse(Response):
    """A response that runs another one and then calls `on_close` (the ASGI `send` is passed through)."""

    def __init__(self, inner: Response, on_close: Callable[[], None]) -> None:
        self.inner, self.on_close = inner, on_close
        self.status_code, self.background, self.raw_headers = inner.status_code, None, inner.raw_headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.on_close()


class RateLimiter:
    """The edge's limits: publish and stream-open rates (shared storage), open streams per principal (here)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # An async+ URI always gives one of the async storages that `limits.aio` strategies take.
        self.storage = cast(Storage, storage_from_string(storage_uri(settings.rate_limit_storage),
                                                         wrap_exceptions=True))
        self.window = SlidingWindowCounterRateLimiter(self.storage)
        self.publish_limits = parse_many(settings.rate_limit_publish)
        self.open_limits = parse_many(settings.rate_limit_stream_opens)
        self.open_streams: dict[str, int] = {}  # principal key -> streams it holds open on this edge
        self.refused = 0
        self._warned = 0.0

    async def hit(self, name: str, items: list[RateLimitItem], key: str, cost: int = 1) -> None:
        """Count `cost` against every limit of `items` for `key`, or raise RateLimited and count nothing."""
        try:
            if len(items) == 1:
                allowed = await self.window.hit(items[0], name, key, cost=cost)
            else:  # test all first, so that a refusal by the second limit does not spend the first
                allowed = all([await self.window.test(i, name, key, cost=cost) for i in items])
                allowed = allowed and all([await self.window.hit(i, name, key, cost=cost) for i in items])
        except StorageError as exc:  # fail open: a lost Redis must not stop publishing and streaming
            now = time.monotonic()
            if now - self._warned > STORAGE_WARNING_S:
                self._warned = now
                log.warning("Rate limit storage failed, requests pass unlimited meanwhile: %s", exc.storage_error)
            return
        if not allowed:
            self.refused += 1
            raise await self._refusal(name, items, key, cost)

    async def _refusal(self, name: str, items: list[RateLimitItem], key: str, cost: int) -> RateLimited:
        """Build the 429 naming the first limit that is spent, with when it has room again."""
        now = time.time()
        for item in items:
            stats = await self.window.get_window_stats(item, name, key)
            if stats.remaining < cost:
                break
        retry = max(1, math.ceil(stats.reset_time - now))
        headers = {"Retry-After": str(retry), "RateLimit-Policy": _policy(name, item),
                   "RateLimit": f'"{name}";r={stats.remaining};t={retry}'}
        setting = "ES_RATE_LIMIT_PUBLISH" if name == "publish" else "ES_RATE_LIMIT_STREAM_OPENS"
        what = f"{cost} events" if name == "publish" else "a stream"
        return RateLimited(f"{what} would exceed the {name} limit of {item} ({setting}); {stats.remaining} "
                           f"left, retry in {retry}s", headers)

    async def publish(self, key: str, events: int) -> None:
        """Count `events` published by `key` (413 for a batch no window could ever take)."""
        largest = min(item.amount for item in self.publish_limits)
        if events > largest:
            raise LimitExceeded(f"a batch of {events} events exceeds the publish limit of {largest} events per "
                                "window (ES_RATE_LIMIT_PUBLISH); split it", field="events", status=413)
        await self.hit("publish", self.publish_limits, key, events)

    async def open_stream(self, key: str) -> StreamSlot:
        """Count a stream opened by `key` and take one of its open-stream slots on this edge."""
        cap = self.settings.max_streams_per_principal
        held = self.open_streams.get(key, 0)
        if held >= cap:
            self.refused += 1
            raise RateLimited(
                f"this principal holds {held} streams on this edge, its limit (ES_MAX_STREAMS_PER_PRINCIPAL); "
                "close one first",
                {"Retry-After": str(STREAMS_RETRY_AFTER_S),
                 "RateLimit-Policy": f'"streams";q={cap};qu="concurrent-requests"',
                 "RateLimit": f'"streams";r=0;t={STREAMS_RETRY_AFTER_S}'})
        await self.hit("stream-opens", self.open_limits, key)
        return StreamSlot(self.open_streams, key)

    def stats(self) -> dict[str, Any]:
        """Return the figures an operator watches: principals holding streams, refusals so far."""
        return {"principals_streaming": len(self.open_streams), "refused": self.refused,
                "storage": self.settings.rate_limit_storage.split("://", 1)[0]}


class RequestLimits:
    """The limits of one request, keyed on its principal when a limit is checked."""

    def __init__(self, limiter: RateLimiter, request: Request) -> None:
        self.limiter, self.request = limiter, request

    async def publish(self, events: int) -> None:
        """Count published events against the principal, raising RateLimited (429) past the limit."""
        await self.limiter.publish(principal_key(self.request), events)

    async def open_stream(self) -> StreamSlot:
        """Count a stream open and take a slot (release it, or `hold` the response, when the stream ends)."""
        return await self.limiter.open_stream(principal_key(self.request))


async def request_limits(request: Request) -> RequestLimits:
    """Return the rate limits of this request (the FastAPI dependency behind `Limits`; async, so FastAPI does
    not hand it to its thread pool)."""
    return RequestLimits(request.app.state.limiter, request)


Limits = Annotated[RequestLimits, Depends(request_limits)]
