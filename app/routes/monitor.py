"""The operator's view of one edge: the health report of every component, the stats (the seed's
getSubscriptionStats), the stats stream the dashboard draws from (an SSE endpoint of the edge itself:
the product showing itself) and the dashboard page (static HTML, CSS and JavaScript: no internet, no
build step; the page holds no data and reads the stats stream and the APIs with the `es_token` cookie)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.observe.report import FAILED, health, snapshot
from app.problems import Problem
from app.sse.framing import format_event, format_retry

router = APIRouter(prefix="/api/v1", tags=["health"])
stats_router = APIRouter(prefix="/api/v1", tags=["stats"])
dashboard_router = APIRouter(tags=["dashboard"])
STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}


@router.get("/health", summary="Each component as ok, degraded or failed, with why")
async def health_report(request: Request) -> JSONResponse:
    """Report Kafka, the registry, each tail, the catch-up pool, the worker group and DLQ growth; 503 when
    a component failed, so a probe can use it too."""
    report = health(request.app.state)
    return JSONResponse(report, status_code=503 if report["status"] == FAILED else 200)


@router.get("/stats/stream", summary="The dashboard's figures, one `stats` event per interval",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def stats_stream(request: Request,
                       interval: float = Query(1.0, ge=0.2, le=60, description="Seconds between events.")
                       ) -> StreamingResponse:
    """Send the dashboard's snapshot every `interval` seconds until the client leaves."""
    state = request.app.state
    figures = state.http_figures

    async def events() -> AsyncIterator[bytes]:
        figures.stats_streams += 1
        try:
            yield format_retry(2000)
            while True:
                data: Any = snapshot(state, figures)
                yield format_event(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode(), event="stats")
                await asyncio.sleep(interval)
        finally:
            figures.stats_streams -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def process_figures() -> dict[str, Any]:
    """Return RSS (MB), open file descriptors and asyncio tasks of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss_mb": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1),
            "open_fds": len(os.listdir("/proc/self/fd")), "asyncio_tasks": len(asyncio.all_tasks())}


@stats_router.get("/stats", summary="Streams per topic, deliveries, slow-client fallbacks, readers in use")
async def stats(request: Request) -> dict[str, Any]:
    """Return this edge's subscription figures and its process figures."""
    hub = request.app.state.hub
    per_topic: dict[str, int] = {}
    for group in hub.groups.values():
        for topic in group.topics:
            per_topic[topic] = per_topic.get(topic, 0) + len(group.live)
    services = request.app.state.services
    return {
        "streams": {"total": len(hub.subscribers), "live": sum(per_topic.values()) if per_topic else 0,
                    "live_per_topic": per_topic, "filter_groups": len(hub.groups)},
        "events_delivered": hub.deliveries,
        "deliveries_per_s": round(hub.deliveries_per_s(), 1),
        "slow_client_fallbacks": hub.fallbacks,
        "catchup_readers": {"in_use": hub.catchup.busy, "started": hub.catchup.started,
                            "max": hub.catchup.size, "clients_waiting": hub.catchup.waiting},
        "tail_readers": len(hub.tails),
        "durable_connections": {"defined": len(services.connections.table),
                                "streaming_here": len(services.connections.live)},
        "process": process_figures(),
        "edge": services.edge,  # this edge's id, as GET /api/v1/streams names it
    }


@dashboard_router.get("/dashboard", summary="Live dashboard of this edge", response_class=FileResponse)
async def dashboard() -> FileResponse:
    """Return the page; its data come over /api/v1/stats/stream."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@dashboard_router.get("/dashboard/{asset}", summary="The dashboard's script and style", response_class=FileResponse)
async def dashboard_asset(asset: str) -> FileResponse:
    """Return the script or the style sheet of app/static/dashboard/ (404 for anything else)."""
    media = ASSETS.get(asset)
    if media is None:
        raise Problem(404, "Not found", f"the dashboard has no asset {asset!r}")
    return FileResponse(STATIC / asset, media_type=media, headers={"Cache-Control": "no-cache"})
