"""Named endpoints over HTTP: create and delete (admin), list and describe, and stream one by name."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app.auth import AdminOnly, CurrentPrincipal, check_topics
from app.directory import Endpoints, EndpointSpec, EndpointStreamResponse
from app.fanout.response import EventStreamResponse
from app.limits import Limits
from app.routes.stream import StreamOptions, open_stream

router = APIRouter(prefix="/api/v1/endpoints", tags=["endpoints"])
NAME = Path(description="The endpoint's name, e.g. `ci-failures`.")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No endpoint has this name"}}


async def _endpoints(request: Request) -> Endpoints:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.endpoints


def _view(request: Request, endpoints: Endpoints, definition: dict[str, Any]) -> dict[str, Any]:
    """Return a definition with its stream URL and how many streams of it this edge serves."""
    name = definition["name"]
    return {**definition, "stream_url": str(request.url_for("stream_endpoint", name=name)),
            "streams_here": endpoints.streams_here(name)}


@router.post("", status_code=201, summary="Create a named endpoint (admin)", dependencies=[AdminOnly],
             responses={201: {"description": "Created; `Location` is its stream URL"},
                        403: {"description": "The credential is not admin"},
                        409: {"description": "An endpoint of this name exists (delete it first to redefine it)"},
                        422: {"description": "Invalid name or filter, an unknown topic, or too many partitions"}})
async def create_endpoint(spec: EndpointSpec, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    """Give a filter a name: every edge serves `/api/v1/endpoints/{name}/stream` once it has read it (at
    once on this one). Names are unique: creating an existing name is a 409, never an overwrite."""
    endpoints = await _endpoints(request)
    body = _view(request, endpoints, await endpoints.create(spec, creator=principal.sub))
    return JSONResponse(body, status_code=201, headers={"Location": body["stream_url"]})


@router.get("", summary="Every named endpoint")
async def list_endpoints(request: Request) -> dict[str, Any]:
    """Return every endpoint of the cluster, by name (any credential)."""
    endpoints = await _endpoints(request)
    items = [_view(request, endpoints, definition) for definition in endpoints.list()]
    return {"endpoints": items, "count": len(items)}


@router.get("/{name}", summary="One named endpoint", responses=NOT_FOUND)
async def get_endpoint(request: Request, name: str = NAME) -> dict[str, Any]:
    """Return the endpoint's filter, description, creator and stream URL (any credential)."""
    endpoints = await _endpoints(request)
    return _view(request, endpoints, endpoints.get(name))


@router.delete("/{name}", status_code=204, summary="Delete a named endpoint (admin); its live streams end",
               dependencies=[AdminOnly], responses={**NOT_FOUND, 403: {"description": "The credential is not admin"}})
async def delete_endpoint(request: Request, name: str = NAME) -> Response:
    """Delete the endpoint: its streams on every edge end with `: closing: endpoint deleted`, and a
    reconnect gets 404."""
    await (await _endpoints(request)).delete(name)
    return Response(status_code=204)


@router.get("/{name}/stream", name="stream_endpoint", summary="Stream a named endpoint over Server-Sent Events",
            response_class=EventStreamResponse, status_code=200,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "As /api/v1/events/stream with the endpoint's filter; ends with "
                                            "`: closing: endpoint deleted` when the endpoint is deleted."},
                       400: {"description": "Invalid since or Last-Event-ID"},
                       403: {"description": "The scope lacks subscribe on a topic of the endpoint's filter"},
                       404: {"description": "No endpoint has this name, or its topic is gone"},
                       429: {"description": "Stream-open rate or open-stream cap of the principal reached"},
                       503: {"description": "Stream or filter-group limit reached"}})
async def stream_endpoint(
    request: Request,
    limits: Limits,
    principal: CurrentPrincipal,
    query: StreamOptions,
    name: str = NAME,
) -> Response:
    """Open the endpoint's stream with the plain stream's semantics (live, `since`, Last-Event-ID resume,
    compression, heartbeat); the credential needs subscribe on every topic of the endpoint's filter."""
    endpoints = await _endpoints(request)
    flt = endpoints.compiled(name)
    check_topics(principal, "subscribe", flt.topics, endpoints.settings)
    return await open_stream(request, limits, request.app.state.hub, flt, query, kind="endpoint", endpoint=name,
                             make_response=partial(EndpointStreamResponse, endpoints=endpoints, name=name))
