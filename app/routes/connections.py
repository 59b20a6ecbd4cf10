"""Durable connections over HTTP: create, list, status with lag, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.durable.registry import Connections, ConnectionSpec
from app.durable.stream import DurableStreamResponse, start_positions
from app.fanout.filters import CompiledFilter
from app.routes.stream import choose_encoding, over_capacity

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])


async def _connections(request: Request) -> Connections:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.connections


@router.post("", status_code=201, summary="Create a durable connection (a consumer group of its own)")
async def create_connection(spec: ConnectionSpec, request: Request) -> JSONResponse:
    """Fix the start position in Kafka and return the id, its stream URL and the options in force."""
    definition = await (await _connections(request)).create(spec)
    stream_url = str(request.url_for("stream_connection", conn_id=definition["id"]))
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


@router.get("/{conn_id}/stream", name="stream_connection", response_class=DurableStreamResponse, status_code=200,
            summary="Stream a durable connection from its committed position",
            responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "Unknown connection"},
                       503: {"description": "Stream limit reached or edge restarting"}})
async def stream_connection(
    conn_id: str,
    request: Request,
    last_event_id: str | None = Query(None, alias="lastEventId", description="Resume token (if newer)."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
    accept_encoding: str | None = Header(None, alias="Accept-Encoding"),
) -> Response:
    """Resume from the committed offsets (or a newer Last-Event-ID); a second stream takes over."""
    connections = await _connections(request)
    settings = request.app.state.services.settings
    flt = CompiledFilter(connections.filter_of(conn_id), [settings.default_topic])
    options = connections.options_of(conn_id)
    hub = request.app.state.hub
    if (refusal := over_capacity(hub)) is not None:
        return refusal
    group = await hub.prepare(flt)
    try:
        start = await start_positions(hub, group, connections, conn_id, last_event_id_header or last_event_id)
    except BaseException:
        hub.release(group)
        raise
    encoding = choose_encoding(options.compression, accept_encoding)
    return DurableStreamResponse(hub, group, start, connections, conn_id, options, encoding)
