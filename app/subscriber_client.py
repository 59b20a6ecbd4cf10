"""A small Python client of the SSE API: `async for event in subscribe({...}, base_url=...)`.

It reconnects on its own with the last event's id as Last-Event-ID, so the edge resumes exactly
after it (no gap, no duplicate), waiting `retry_delay` (or the server's `retry:`) doubled per failed
attempt up to `max_delay`, and gives up after `max_retries` reconnects in a row that did not open a
stream, raising GaveUp (a ConnectionError naming the attempts and the last error).

`subscribe_connection(conn_id, ...)` streams a durable connection instead; unless `max_retries` is given it
uses the connection's own `maxRetries` (its ConnectionOptions, read from its status at the first connect),
and the edge's `retry:` (the connection's `retryDelay`) paces reconnects. A shared connection works the same
way: each subscriber is one member stream and gets its share of the partitions; after a reconnect it
resumes from the group's committed position (its Last-Event-ID is sent but not needed).

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
CONNECTION_PATH = "/api/v1/connections/{id}"
DEFAULT_MAX_RETRIES = 10
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


class GaveUp(ConnectionError):
    """The stream failed `attempts` reconnects in a row (max_retries, or the connection's maxRetries)."""

    def __init__(self, url: str, attempts: int, last_error: str) -> None:
        super().__init__(f"gave up after {attempts} reconnection attempts in a row to {url} (last: {last_error}); "
                         "raise max_retries (or the connection's maxRetries) to keep trying longer")
        self.url, self.attempts, self.last_error = url, attempts, last_error


class Subscription:
    """An async iterator of StreamEvent that survives disconnects; `last_event_id` is where it stands."""

    def __init__(self, filter: EventFilter | dict[str, Any] | None = None, *,
                 base_url: str = "http://127.0.0.1:8000", last_event_id: str | None = None,
                 since: datetime | str | None = None, heartbeat_s: float | None = None,
                 max_retries: int | None = None, retry_delay: float | None = None, max_delay: float = 30.0,
                 client: httpx.AsyncClient | None = None, token: Token | None = None,
                 connection: str | None = None) -> None:
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if connection is not None and (filter or since):
            raise ValueError("a durable connection has its own filter and start; pass neither filter nor since")
        if retry_delay is not None and retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0 seconds, got {retry_delay!r}")
        spec = filter.model_dump(exclude_none=True) if isinstance(filter, EventFilter) else filter
        self.params: dict[str, str] = {}
        if spec:
            self.params["filter"] = orjson.dumps(spec).decode()
        if heartbeat_s is not None:
            self.params["heartbeat"] = str(heartbeat_s)
        self.since = since.isoformat() if isinstance(since, datetime) else since
        self.connection = connection
        base = base_url.rstrip("/")
        self.status_url = base + CONNECTION_PATH.format(id=connection) + "/status" if connection else None
        self.url = base + CONNECTION_PATH.format(id=connection) + "/stream" if connection else base + STREAM_PATH
        self.last_event_id = last_event_id
        # None until known: a connection's own maxRetries is read at the first connect.
        self.max_retries: int | None = DEFAULT_MAX_RETRIES if max_retries is None and not connection else max_retries
        self.retry_delay, self.max_delay = retry_delay, max_delay
        self.reconnects = 0
        self.token = token
        self._refresh = False  # set by `token-expiring`: reconnect now, with a fresh token
        self._opened = False  # set when the edge answered 200: the attempt succeeded
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
                self._opened = False
                last = "the stream ended"
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
                    wait, last = exc.seconds, f"the edge asked to retry in {exc.seconds:g}s"
                except (httpx.TransportError, httpx.StreamError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    log.info("Stream broke (%s); reconnecting.", exc)
                if self._opened:  # a stream that opened ends a run of failed reconnects
                    failures = 0
                failures += 1
                limit = DEFAULT_MAX_RETRIES if self.max_retries is None else self.max_retries
                if failures > limit:
                    raise GaveUp(self.url, limit, last)
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
        if self.max_retries is None and self.status_url is not None:
            await self._read_options(client, headers)
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
            self._opened = True
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


    async def _read_options(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        """Take the connection's maxRetries from its status (a refusal there is a SubscriptionError)."""
        assert self.status_url is not None
        resp = await client.get(self.status_url, headers={k: v for k, v in headers.items() if k != "accept"})
        if resp.status_code != 200:
            body = resp.content
            raise SubscriptionError(resp.status_code, orjson.loads(body) if body.startswith(b"{") else
                                    {"detail": body.decode(errors="replace")})
        self.max_retries = int(resp.json()["options"]["maxRetries"])

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


def subscribe_connection(conn_id: str, **options: Any) -> Subscription:
    """Return an async iterator of a durable connection's events (exclusive or shared; see Subscription)."""
    return Subscription(None, connection=conn_id, **options)
