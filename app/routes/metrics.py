"""Prometheus exposition of the edge: GET /metrics on the edge port, public unless ES_METRICS_TOKEN is set."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.problems import Problem

router = APIRouter(tags=["observability"])


def check_metrics_token(request: Request) -> None:
    """Ask for `Authorization: Bearer <ES_METRICS_TOKEN>` when that setting is given (401 otherwise)."""
    token = request.app.state.settings.metrics_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.get_secret_value().encode()):
        problem = Problem(401, "Unauthorized", "/metrics needs Authorization: Bearer with the ES_METRICS_TOKEN value")
        problem.headers = {"WWW-Authenticate": 'Bearer realm="metrics"'}
        raise problem


@router.get("/metrics", summary="Prometheus metrics of this edge", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Return every eventstream_ family (built from plain counters now) plus process metrics."""
    check_metrics_token(request)
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
