"""The health report of every component, and the stats stream the dashboard draws from (an SSE
endpoint of the edge itself: the product showing itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.observe.report import FAILED, health, snapshot
from app.sse.framing import format_event, format_retry

router = APIRouter(prefix="/api/v1", tags=["health"])


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
        figures.endpoint_streams += 1
        try:
            yield format_retry(2000)
            while True:
                data: Any = snapshot(state, figures)
                yield format_event(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode(), event="stats")
                await asyncio.sleep(interval)
        finally:
            figures.endpoint_streams -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
