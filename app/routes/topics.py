"""Topic administration over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.auth import AdminOnly
from streams.kafka.topics import TopicSpec, check_request

router = APIRouter(prefix="/api/v1/topics", tags=["topics"])


async def _manager(request: Request) -> Any:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.topics


@router.get("", summary="List topics")
async def list_topics(request: Request) -> dict[str, Any]:
    """Return every topic with whether it is internal to the service."""
    topics = await _manager(request)
    settings = request.app.state.services.settings
    names = await topics.list()
    return {"topics": [{"name": n, "internal": settings.is_internal(n)} for n in names]}


@router.post("", status_code=201, summary="Create a topic (admin)", dependencies=[AdminOnly])
async def create_topic(spec: TopicSpec, request: Request) -> dict[str, Any]:
    """Create a topic (409 if it exists, 422 if Kafka refuses its config, 400 past the partition cap or for a
    config key outside the allowed list); return its description."""
    check_request(spec, request.app.state.services.settings)
    return await (await _manager(request)).create(spec)


@router.get("/{name}", summary="Describe a topic: partitions, high watermarks, config")
async def describe_topic(name: str, request: Request) -> dict[str, Any]:
    """Return partitions with leaders, replicas, watermarks, and the topic's config (404 if unknown)."""
    return await (await _manager(request)).describe(name)


@router.delete("/{name}", status_code=204, summary="Delete a topic (admin; internal topics: 403)",
               dependencies=[AdminOnly])
async def delete_topic(name: str, request: Request) -> Response:
    """Delete a topic; the registry, ingress, DLQ and changelog topics are refused."""
    await (await _manager(request)).delete(name)
    return Response(status_code=204)
