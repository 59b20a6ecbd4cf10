"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.problems import RETRY_HEADERS, problem_response
from streams.errors import StreamError
from streams.supervise import given_up

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
        return problem_response(503, "Not ready", "the edge is shutting down", headers=RETRY_HEADERS)
    if not services.ready.is_set():
        return problem_response(503, "Not ready", services.last_error or "connecting to Kafka",
                                headers=RETRY_HEADERS)
    if failed := given_up():  # a background task that could not recover (streams/supervise.py)
        return problem_response(503, "Not ready", "; ".join(f"{name}: {why}" for name, why in sorted(failed.items())),
                                headers=RETRY_HEADERS)
    try:
        topics = await asyncio.wait_for(services.topics.list(), timeout)
    except (TimeoutError, StreamError, OSError) as exc:
        reason = f"Kafka did not answer within {timeout}s" if isinstance(exc, TimeoutError) else str(exc)
        return problem_response(503, "Not ready", reason, headers=RETRY_HEADERS)
    return JSONResponse({"status": "ready", "topics": len(topics)})
