"""Durable connections over HTTP: create, list, status with lag (and the members of a shared one), delete,
and the stream (exclusive: one live stream that a new one takes over; shared: each stream a member)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.auth import CurrentPrincipal, Principal, check_topics
from app.durable.registry import ConnectionNotFound, Connections, ConnectionSpec
from app.durable.stream import HOST, DurableStreamResponse, SharedStreamResponse, start_positions
from app.fanout.filters import CompiledFilter, Viewer
from app.fanout.response import choose_encoding
from app.fanout.subscribers import new_stream_id
from app.fanout.tokens import STREAM, check_room
from app.limits import Limits
from app.routes.stream import check_time, open_group, over_capacity

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])


async def _connections(request: Request) -> Connections:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.connections


def _owned(connections: Connections, conn_id: str, principal: Principal) -> None:
    """Answer 404 for a connection the principal did not create (admins reach all): existence is not leaked."""
    if not principal.is_admin and connections.get(conn_id).get("owner") != principal.sub:
        raise ConnectionNotFound(f"connection {conn_id!r} does not exist (deleted, expired or never created)")


@router.post("", status_code=201, summary="Create a durable connection (a consumer group of its own)",
             responses={400: {"description": "Bad filter, options or start"}, 403: {"description": "Missing scope"},
                        404: {"description": "Unknown topic"}})
async def create_connection(spec: ConnectionSpec, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    """Fix the start position in Kafka and return the id, its stream URL and the options in force.

    `mode: "exclusive"` (default): one live stream, a second one (any edge) takes over. `mode: "shared"`: every
    concurrent stream, on any edge, is a member of the connection's consumer group and receives a disjoint
    share of its partitions, rebalanced as streams join and leave (at most ES_CONNECTION_MAX_MEMBERS)."""
    settings = request.app.state.services.settings
    if isinstance(spec.start, datetime):
        spec.start = check_time(spec.start, "start")
    check_topics(principal, "subscribe", CompiledFilter(spec.filter, [settings.default_topic]).topics, settings)
    definition = await (await _connections(request)).create(spec, owner=principal.sub)
    stream_url = str(request.url_for("stream_connection", conn_id=definition["id"]))
    body = {"id": definition["id"], "stream_url": stream_url, "filter": definition["filter"],
            "options": definition["options"], "start": definition["start"], "mode": definition["mode"],
            "created_at": definition["created_at"]}
    return JSONResponse(body, status_code=201, headers={"Location": stream_url})


@router.get("", summary="Active and idle connections with their status")
async def list_connections(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Return the principal's own durable connections (an admin's list has every one of the cluster)."""
    items = [item for item in (await _connections(request)).list()
             if principal.is_admin or item["owner"] == principal.sub]
    return {"connections": items, "count": len(items)}


@router.get("/{conn_id}/status", summary="Status, delivery counters and per-partition lag",
            responses={404: {"description": "Unknown connection (or someone else's)"}})
async def connection_status(conn_id: str, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Return the connection's status; lag is high watermark minus committed offset per partition.

    A shared connection also lists its `members` on every edge (`stream` id, `edge`, `host`, `partitions`, from
    Kafka's group description) and counts, from its commits, `eventsDelivered` and `redelivered`: events sent
    again to another stream because the stream that had them left within one commit interval of sending them."""
    connections = await _connections(request)
    _owned(connections, conn_id, principal)
    return await connections.status(conn_id)


@router.delete("/{conn_id}", status_code=204, summary="Close the stream, delete the group and the definition")
async def delete_connection(conn_id: str, request: Request, principal: CurrentPrincipal) -> Response:
    """Delete a durable connection (404 if unknown or someone else's)."""
    connections = await _connections(request)
    _owned(connections, conn_id, principal)
    await connections.delete(conn_id)
    return Response(status_code=204)


@router.get("/{conn_id}/stream", name="stream_connection", response_class=DurableStreamResponse, status_code=200,
            summary="Stream a durable connection from its committed position",
            responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "Unknown connection"},
                       409: {"description": "A shared connection has ES_CONNECTION_MAX_MEMBERS streams already"},
                       503: {"description": "Stream limit reached or edge restarting"}})
async def stream_connection(
    conn_id: str,
    request: Request,
    limits: Limits,
    principal: CurrentPrincipal,
    last_event_id: str | None = Query(None, alias="lastEventId", description="Resume token: the last event processed."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
    accept_encoding: str | None = Header(None, alias="Accept-Encoding"),
) -> Response:
    """Exclusive: resume from the client's Last-Event-ID, else the committed offsets; a second stream takes over.
    Shared: join the connection's consumer group and stream the partitions it assigns, each from the group's
    committed offset (Last-Event-ID is not used: the partitions may have moved to another stream meanwhile);
    the `es-stream-id` response header names the stream in the status' `members`."""
    connections = await _connections(request)
    settings = request.app.state.services.settings
    _owned(connections, conn_id, principal)
    flt = CompiledFilter(connections.filter_of(conn_id), [settings.default_topic])
    check_topics(principal, "subscribe", flt.topics, settings)  # the token's scope now, not the creator's then
    options = connections.options_of(conn_id)
    hub = request.app.state.hub
    if (refusal := over_capacity(hub)) is not None:
        return refusal
    if connections.mode_of(conn_id) == "shared":
        return await _shared_stream(request, limits, connections, conn_id, flt, options, accept_encoding, principal)
    token = last_event_id_header or last_event_id
    slot, group, start = await open_group(
        hub, limits, flt, lambda group: start_positions(hub, group, connections, conn_id, token))
    encoding = choose_encoding(options.compression, accept_encoding)
    response = DurableStreamResponse(hub, group, start, connections, conn_id, options, encoding)
    response.expires_at = principal.expires_at  # `token-expiring`, then the end at `exp`
    response.viewer = Viewer.of_stream(principal.sub, conn_id)  # targeted events naming it or this connection
    return slot.hold(response)


async def _shared_stream(request: Request, limits: Limits, connections: Connections, conn_id: str,
                         flt: CompiledFilter, options: Any, accept_encoding: str | None,
                         principal: Principal) -> Response:
    """Open a member stream of a shared connection, within ES_CONNECTION_MAX_MEMBERS streams cluster-wide."""
    settings = request.app.state.services.settings
    members = await connections.groups.members(connections.group_id(conn_id))
    stream_id = new_stream_id()
    connections.reserve_member(conn_id, stream_id, len(members))  # TooManyMembers: 409
    try:
        check_room(STREAM, {topic: len(await connections.topics.partitions(topic)) for topic in flt.topics})
        slot = await limits.open_stream()
    except BaseException:
        connections.in_group(conn_id, stream_id)  # refused: it never opens
        raise
    edge = f"{HOST}:{settings.http_port}"
    response = SharedStreamResponse(request.app.state.hub, flt, connections, conn_id, options,
                                    choose_encoding(options.compression, accept_encoding), stream_id, edge)
    response.expires_at = principal.expires_at
    response.viewer = Viewer.of_stream(principal.sub, conn_id)  # targeted events naming it or this connection
    return slot.hold(response)
