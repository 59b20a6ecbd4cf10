"""The HTTP middleware: responses by route template, stream and publish outcomes, and a `send` the SSE
writer's direct path still sees through."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.observe.http import UNMATCHED, HttpFigures, HttpMetrics, publish_outcome, stream_outcome
from app.sse.writer import direct_path
from streams.logs import current_ids
from tests.unit.fakes import FakeCycle


@pytest.mark.parametrize(("status", "outcome"), [(200, "ok"), (401, "unauthorized"), (403, "forbidden"),
                                                 (429, "limited"), (503, "capacity"), (400, "invalid"),
                                                 (404, "invalid"), (422, "invalid")])
def test_stream_outcome_of_each_status(status: int, outcome: str) -> None:
    assert stream_outcome(status) == outcome


@pytest.mark.parametrize(("status", "outcome"), [(202, "accepted"), (400, "invalid"), (422, "invalid"),
                                                 (413, "too_large"), (401, "forbidden"), (403, "forbidden"),
                                                 (429, "limited"), (503, "unavailable")])
def test_publish_outcome_of_each_status(status: int, outcome: str) -> None:
    assert publish_outcome(status) == outcome


def app_answering(route: str | None, status: int, seen: list[Any]) -> Any:
    """Return an ASGI app that routes to `route` (sets scope['route']) and answers `status`."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if route is not None:
            scope["route"] = SimpleNamespace(path=route)
        seen.append((send, current_ids()))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    return app


async def call(middleware: HttpMetrics, path: str, method: str = "GET") -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    await middleware({"type": "http", "path": path, "method": method}, receive, send)


async def test_responses_are_counted_by_route_template_not_path() -> None:
    figures, seen = HttpFigures(), []
    middleware = HttpMetrics(app_answering("/api/v1/connections/{conn_id}/status", 200, seen), figures)
    await call(middleware, "/api/v1/connections/abc/status")
    await call(middleware, "/api/v1/connections/def/status")
    assert figures.requests == {("/api/v1/connections/{conn_id}/status", "GET", "200"): 2}
    assert seen[0][1] == {"connection": "abc"}  # the connection id is bound to the request's log lines


async def test_unknown_paths_and_methods_stay_bounded() -> None:
    figures = HttpFigures()
    middleware = HttpMetrics(app_answering(None, 404, []), figures)
    await call(middleware, "/no/such/path/12345", method="BREW")
    assert figures.requests == {(UNMATCHED, "OTHER", "404"): 1}


async def test_publishes_count_by_outcome_and_accepted_ones_time_the_request() -> None:
    figures = HttpFigures()
    for status in (202, 202, 413):
        await call(HttpMetrics(app_answering("/api/v1/events", status, []), figures), "/api/v1/events", "POST")
    assert figures.published["accepted"] == 2 and figures.published["too_large"] == 1
    assert figures.publish_latency.count == 2


async def test_stream_opens_count_by_outcome_and_bind_a_stream_id() -> None:
    figures, seen = HttpFigures(), []
    await call(HttpMetrics(app_answering("/api/v1/events/stream", 503, seen), figures), "/api/v1/events/stream")
    assert figures.stream_opens["capacity"] == 1 and figures.stream_opens["ok"] == 0
    assert len(seen[0][1]["stream"]) == 12


async def test_wrapped_send_keeps_the_direct_write_path() -> None:
    seen: list[Any] = []
    cycle = FakeCycle()
    middleware = HttpMetrics(app_answering("/api/v1/events/stream", 200, seen), HttpFigures())

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await middleware({"type": "http", "path": "/api/v1/events/stream", "method": "GET"}, receive, cycle.send)
    owner, reason = direct_path(seen[0][0])
    assert owner is cycle, reason
