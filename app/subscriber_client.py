"""A small Python client of the SSE API: `async for event in subscribe({...}, base_url=...)`.

It reconnects on its own with the last event's id as Last-Event-ID, so the edge resumes exactly
after it (no gap, no duplicate), waiting `retry_delay` (or the server's `retry:`) doubled per failed
attempt up to `max_delay`, and gives up after `max_retries` attempts in a row without success.

`token` is a bearer token, or a callable (sync or async) returning a fresh one, asked at every connect.
When the edge announces `token-expiring`, a callable token makes the client reconnect at once with a
fresh one (and its Last-Event-ID, so nothing is missed); a fixed token is used until the edge ends the
stream at its `exp`, and the reconnect then fails with 401 (SubscriptionError).

When the position asked for is gone (retention or compaction deleted it, or a durable position was
lost), the edge sends a `reset` event per partition before the earliest records left; it is yielded
like any event (`event.is_reset`, data `{"reason", "topic", "partition", "requested", "from"}`) and logged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson

from app.fanout.filters import EventFilter
from app.sse.framing import SSEParser

log = logging.getLogger(__name__)
STREAM_PATH = "/api/v1/events/stream"
TOKEN_EXPIRING = "token-expiring"  # the edge's warning that the stream's credential ends soon
RESET = "reset"  # the edge's notice that events between `requested` and `from` are gone (a gap)
Token = str | Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One received event: its resume token, its type and the decoded JSON (CloudEvents + position)."""

    id: str | None
    type: str
    data: dict[str, Any]

    @property
    def is_reset(self) -> bool:
        """Tell whether this is a gap notice (events before `data["from"]` are gone), not an event."""
        return self.type == RESET


class SubscriptionError(Exception):
    """The edge refused the stream (a 4xx problem); retrying the same request would not help."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


class Subscription:
    """An async iterator of StreamEvent that survives disconnects; `last_event_id` is where it stands."""

    def __init__(self, filter: EventFilter | dict[str, Any] | None = None, *,
                 base_url: str = "http://127.0.0.1:8000", last_event_id: str | None = None,
                 since: datetime | str | None = None, heartbeat_s: float | None = None,
                 max_retries: int = 10, retry_delay: float | None = None, max_delay: float = 30.0,
                 client: httpx.AsyncClient | None = None, token: Token | None = None) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if retry_delay is not None and retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0 seconds, got {retry_delay!r}")
        spec = filter.model_dump(exclude_none=True) if isinstance(filter, EventFilter) else filter
        self.params: dict[str, str] = {}
        if spec:
            self.params["filter"] = orjson.dumps(spec).decode()
        if heartbeat_s is not None:
            self.params["heartbeat"] = str(heartbeat_s)
        self.since = since.isoformat() if isinstance(since, datetime) else since
        self.url = base_url.rstrip("/") + STREAM_PATH
        self.last_event_id = last_event_id
        self.max_retries, self.retry_delay, self.max_delay = max_retries, retry_delay, max_delay
        self.reconnects = 0
        self.token = token
        self._refresh = False  # set by `token-expiring`: reconnect now, with a fresh token
        self._server_retry_s: float | None = None
        self._client = client
        self._read_timeout = (heartbeat_s or 15.0) * 3

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        client = self._client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=self._read_timeout))
        failures = 0
        try:
            while True:
                wait: float | None = None
                try:
                    async for event in self._connect(client):
                        failures = 0
                        yield event
                    if self._refresh:  # the credential expires soon: resume at once with a fresh one
                        self._refresh = False
                        self.reconnects += 1
                        continue
                    log.info("Stream ended; reconnecting.")
                except _RetryLater as exc:
                    wait = exc.seconds
                except (httpx.TransportError, httpx.StreamError) as exc:
                    log.info("Stream broke (%s); reconnecting.", exc)
                failures += 1
                if failures > self.max_retries:
                    raise ConnectionError(f"gave up after {self.max_retries} reconnection attempts to {self.url}")
                await asyncio.sleep(wait if wait is not None else self._backoff(failures))
                self.reconnects += 1
        finally:
            if self._client is None:
                await client.aclose()

    def _backoff(self, failures: int) -> float:
        base = self.retry_delay if self.retry_delay is not None else (self._server_retry_s or 1.0)
        return min(self.max_delay, base * 2 ** (failures - 1)) * random.uniform(0.9, 1.1)

    async def _connect(self, client: httpx.AsyncClient) -> AsyncIterator[StreamEvent]:
        params = dict(self.params)
        headers = {"accept": "text/event-stream"}
        if self.token is not None:
            headers["authorization"] = f"Bearer {await self._fresh_token()}"
        if self.last_event_id:
            headers["last-event-id"] = self.last_event_id
        elif self.since:
            params["since"] = self.since
        async with client.stream("GET", self.url, params=params, headers=headers) as resp:
            if resp.status_code != 200:
                body = await resp.aread()
                problem = orjson.loads(body) if body.startswith(b"{") else {"detail": body.decode(errors="replace")}
                if resp.status_code in (429, 502, 503, 504):
                    raise _RetryLater(float(resp.headers.get("retry-after", "1") or 1))
                raise SubscriptionError(resp.status_code, problem)
            parser = SSEParser()
            async for chunk in resp.aiter_bytes():
                for message in parser.feed(chunk):
                    if parser.retry is not None:
                        self._server_retry_s = parser.retry / 1000
                    if message.event == TOKEN_EXPIRING:
                        if callable(self.token):
                            self._refresh = True
                            return
                        continue
                    if message.id:
                        self.last_event_id = message.id
                    data = orjson.loads(message.data)
                    if message.event == RESET:
                        log.warning("The edge reset %s-%s from %s to %s (%s): events in between are gone.",
                                    data.get("topic"), data.get("partition"), data.get("requested"),
                                    data.get("from"), data.get("reason"))
                    yield StreamEvent(message.id, message.event, data)
                if parser.retry is not None:
                    self._server_retry_s = parser.retry / 1000


    async def _fresh_token(self) -> str:
        """Return the token to send now: the fixed one, or what the callable returns."""
        if not callable(self.token):
            return str(self.token)
        value = self.token()
        return str(await value) if inspect.isawaitable(value) else str(value)


class _RetryLater(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def subscribe(filter: EventFilter | dict[str, Any] | None = None, **options: Any) -> Subscription:
    """Return an async iterator of the events matching `filter` (see Subscription for options)."""
    return Subscription(filter, **options)


def subscribe_to_topic(topic: str, **options: Any) -> Subscription:
    """Return an async iterator of every event of one topic."""
    return Subscription({"topics": [topic]}, **options)
