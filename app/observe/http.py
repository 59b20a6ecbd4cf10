"""HTTP figures of the edge, counted by one pure ASGI middleware: requests by route template, method and
status; stream opens and publishes by outcome; publish latency (request to Kafka's acknowledgment,
which comes before the response starts). Each request also binds its stream or connection id to the
log lines it causes (streams/logs.py).

The middleware wraps `send` as a closure over `send` that passes every message on, so the SSE writer's
direct path (app/sse/writer.py `direct_path`) still applies: event frames skip it, and cost nothing here.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from typing import Any

from streams.logs import bind, unbind
from streams.metrics import Histogram

PUBLISH_ROUTES = frozenset({"/api/v1/events", "/api/v1/events/batch"})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "(unmatched)"  # the route label of requests no route took (404s of unknown paths)
CONNECTION_PATH = re.compile(r"^/api/v1/connections/([A-Za-z0-9_-]{1,64})(?:/|$)")
STREAM_OUTCOMES = ("ok", "unauthorized", "forbidden", "limited", "capacity", "invalid")
PUBLISH_OUTCOMES = ("accepted", "invalid", "too_large", "forbidden", "limited", "unavailable")


def stream_outcome(status: int) -> str:
    """Name the outcome of a stream open from its response status (5xx: the edge could not take it)."""
    if status < 300:
        return "ok"
    return {401: "unauthorized", 403: "forbidden", 429: "limited"}.get(
        status, "capacity" if status >= 500 else "invalid")


def publish_outcome(status: int) -> str:
    """Name the outcome of a publish from its response status."""
    if status < 300:
        return "accepted"
    return {401: "forbidden", 403: "forbidden", 413: "too_large", 429: "limited"}.get(
        status, "unavailable" if status >= 500 else "invalid")


def is_event_stream(route: str) -> bool:
    """Tell whether a route template opens an event stream (plain, durable or shared)."""
    return route.startswith("/api/v1/") and route.endswith("/stream") and not route.startswith("/api/v1/stats")


class HttpFigures:
    """Plain counters the middleware adds to and the collector reads at scrape time."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (route, method, status) -> count
        self.stream_opens: Counter[str] = Counter({outcome: 0 for outcome in STREAM_OUTCOMES})
        self.published: Counter[str] = Counter({outcome: 0 for outcome in PUBLISH_OUTCOMES})
        self.publish_latency = Histogram()
        self.stats_streams = 0  # open SSE streams of the edge's own figures (/api/v1/stats/stream)

    def record(self, route: str, method: str, status: int, elapsed_s: float) -> None:
        """Count one response start."""
        self.requests[(route, method, str(status))] += 1
        if method == "POST" and route in PUBLISH_ROUTES:
            outcome = publish_outcome(status)
            self.published[outcome] += 1
            if outcome == "accepted":
                self.publish_latency.observe(elapsed_s)
        elif method == "GET" and is_event_stream(route):
            self.stream_opens[stream_outcome(status)] += 1


def route_of(scope: dict[str, Any]) -> str:
    """Return the template of the route that took the request (bounded: never the raw path)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return UNMATCHED


class HttpMetrics:
    """ASGI middleware: count each HTTP response as it starts, and bind log ids for the request."""

    def __init__(self, app: Any, figures: HttpFigures) -> None:
        self.app = app
        self.figures = figures

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope.get("path", "")
        ids: dict[str, str] = {}
        if (found := CONNECTION_PATH.match(path)) is not None:
            ids["connection"] = found.group(1)
        if path.endswith("/stream"):
            ids["stream"] = uuid.uuid4().hex[:12]
        token = bind(**ids) if ids else None
        figures = self.figures
        method = scope.get("method", "GET")
        method = method if method in METHODS else "OTHER"

        async def send_counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                figures.record(route_of(scope), method, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if token is not None:
                unbind(token)
