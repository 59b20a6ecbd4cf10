"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.problems import problem_response
from streams.errors import StreamError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    """Answer 200 while the process runs, whatever Kafka does."""
    return {"status": "ok"}


@router.get("/readyz", summary="Kafka answers within the readiness timeout")
async def readyz(request: Request) -> JSONResponse:
    """Answer 200 when Kafka answers a metadata request in time; 503 naming the reason otherwise."""
    services = request.app.state.services
    timeout = services.settings.ready_timeout_s
    hub = getattr(request.app.state, "hub", None)
    if hub is not None and hub.closing:  # draining: load balancers stop sending new streams first
        return problem_response(503, "Not ready", "the edge is shutting down", headers={"Retry-After": "5"})
    if not services.ready.is_set():
        return problem_response(503, "Not ready", services.last_error or "connecting to Kafka",
                                headers={"Retry-After": "5"})
    try:
        topics = await asyncio.wait_for(services.topics.list(), timeout)
    except (TimeoutError, StreamError, OSError) as exc:
        reason = f"Kafka did not answer within {timeout}s" if isinstance(exc, TimeoutError) else str(exc)
        return problem_response(503, "Not ready", reason, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "topics": len(topics)})
