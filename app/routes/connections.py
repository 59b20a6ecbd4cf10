"""Durable connections over HTTP: create, list, status with lag, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.connections import ConnectionSpec, Connections

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])


async def _connections(request: Request) -> Connections:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.connections


@router.post("", status_code=201, summary="Create a durable connection (a consumer group of its own)")
async def create_connection(spec: ConnectionSpec, request: Request) -> JSONResponse:
    """Fix the start position in Kafka and return the id, its stream URL and the options in force."""
    definition = await (await _connections(request)).create(spec)
    stream_url = f"{str(request.base_url).rstrip('/')}{router.prefix}/{definition['id']}/stream"
    body = {"id": definition["id"], "stream_url": stream_url, "filter": definition["filter"],
            "options": definition["options"], "start": definition["start"], "created_at": definition["created_at"]}
    return JSONResponse(body, status_code=201, headers={"Location": stream_url})


@router.get("", summary="Active and idle connections with their status")
async def list_connections(request: Request) -> dict[str, Any]:
    """Return every durable connection known to the cluster."""
    items = (await _connections(request)).list()
    return {"connections": items, "count": len(items)}


@router.get("/{conn_id}/status", summary="Status, delivery counters and per-partition lag")
async def connection_status(conn_id: str, request: Request) -> dict[str, Any]:
    """Return the connection's status; lag is high watermark minus committed offset per partition."""
    return await (await _connections(request)).status(conn_id)


@router.delete("/{conn_id}", status_code=204, summary="Close the stream, delete the group and the definition")
async def delete_connection(conn_id: str, request: Request) -> Response:
    """Delete a durable connection (404 if unknown)."""
    await (await _connections(request)).delete(conn_id)
    return Response(status_code=204)
