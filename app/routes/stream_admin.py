"""Stream admin (the seed's getActiveConnections and disconnectClient): list the open streams of every
edge, and end one on whichever edge holds it. The edges learn about each other through Kafka alone
(app/directory/presence.py lists, app/directory/control.py ends)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from app.auth import CurrentPrincipal, Forbidden, Principal
from app.directory.control import ENDED, FORBIDDEN, Control, StreamNotFound, end_here
from app.directory.presence import Presence

router = APIRouter(prefix="/api/v1/streams", tags=["stream admin"])
Kind = Literal["plain", "endpoint", "durable"]
STREAM_ID = Path(description="The stream's id: its `ES-Stream-Id` response header and first comment.")


async def _directory(request: Request) -> tuple[Presence, Control]:
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.presence, services.control


def _refuse(stream_id: str, principal: Principal) -> Forbidden:
    return Forbidden(f"stream {stream_id} belongs to another principal than {principal.sub!r}; only an admin or "
                     "the stream's own principal may end it", needed="admin")


@router.get("", summary="The open streams of every edge",
            responses={200: {"description": "`streams` (newest first, one page), `count` of all that match, "
                                            "`next_offset` (null on the last page); admins also get `edges`"}})
async def list_streams(
    request: Request,
    principal: CurrentPrincipal,
    edge: str | None = Query(None, max_length=512, description="Only the streams of this edge id."),
    owner: str | None = Query(None, alias="principal", max_length=512,
                              description="Only the streams opened by this principal (`sub`)."),
    kind: Kind | None = Query(None, description="Only plain, endpoint or durable streams."),
    limit: int = Query(100, ge=1, le=1000, description="Streams per page."),
    offset: int = Query(0, ge=0, le=1_000_000, description="Streams to skip (the previous `next_offset`)."),
) -> dict[str, Any]:
    """List each stream with its edge, principal, kind, filter or endpoint or connection, `connected_at`,
    `last_write` (bytes of any kind, pings too), `events_delivered`, `buffered_bytes` (queued for a slow
    client) and `state` (`live` or `catchup`), as each edge last published them (every
    ES_PRESENCE_INTERVAL_S; this edge's are current). Edges not heard from for ES_PRESENCE_STALE_S are
    left out. A non-admin sees only its own streams."""
    presence, _ = await _directory(request)
    if not principal.is_admin:
        owner = principal.sub
    entries = presence.entries()
    found = [{"edge": entry["edge"], **stream} for entry in entries if edge is None or entry["edge"] == edge
             for stream in entry.get("streams", ())
             if (owner is None or stream.get("principal") == owner) and (kind is None or stream.get("kind") == kind)]
    found.sort(key=lambda stream: str(stream.get("connected_at")), reverse=True)
    page = found[offset:offset + limit]
    body: dict[str, Any] = {"streams": page, "count": len(found),
                            "next_offset": offset + limit if offset + limit < len(found) else None}
    if principal.is_admin:
        body["edges"] = [{"edge": entry["edge"], "updated_at": entry.get("updated_at"), "streams": entry.get("count"),
                          "listed": len(entry.get("streams", ())), "truncated": bool(entry.get("truncated"))}
                         for entry in entries]
    return body


@router.delete("/{stream_id}", summary="End a stream on whichever edge holds it",
               responses={200: {"description": "The holding edge ended it: `{id, edge, outcome: \"ended\"}`"},
                          202: {"description": "Asked, not confirmed within ES_STREAM_DISCONNECT_WAIT_S: the "
                                             "holding edge ends it when it reads the command"},
                          403: {"description": "Neither admin nor the stream's own principal"},
                          404: {"description": "No live edge lists a stream of this id"},
                          503: {"description": "Kafka does not answer"}})
async def disconnect_stream(request: Request, principal: CurrentPrincipal, stream_id: str = STREAM_ID) -> JSONResponse:
    """End the stream with the final comment `: disconnected by <who>; reconnect with Last-Event-ID to
    resume`: the client may reconnect and resumes where it was (a durable connection from its committed
    position), since the stream, not its position or connection, is ended. A stream of this edge ends at
    once; another edge's gets a command on the control topic, and the answer waits for its confirmation."""
    presence, control = await _directory(request)
    edge = presence.edge
    record = request.app.state.hub.streams.get(stream_id)
    if record is not None:
        if end_here(record, principal.sub, principal.is_admin) == FORBIDDEN:
            raise _refuse(stream_id, principal)
        return JSONResponse({"id": stream_id, "edge": edge, "outcome": ENDED})
    found = presence.find(stream_id)
    if found is None and not any(entry.get("truncated") for entry in presence.entries()):
        raise StreamNotFound(f"no live edge lists a stream {stream_id!r} (it ended, or never existed)")
    if found is not None and not principal.is_admin and found[1].get("principal") != principal.sub:
        raise _refuse(stream_id, principal)
    answer = await control.disconnect(stream_id, by=principal.sub, admin=principal.is_admin)
    if answer is not None:
        if answer.get("outcome") == FORBIDDEN:
            raise _refuse(stream_id, principal)
        return JSONResponse({"id": stream_id, "edge": answer.get("edge"), "outcome": ENDED})
    if found is None:  # only an edge with more streams than it lists could have held it, and none answered
        raise StreamNotFound(f"no live edge lists or confirmed a stream {stream_id!r} (it ended, or never existed)")
    return JSONResponse({"id": stream_id, "edge": found[0]["edge"], "outcome": "requested"}, status_code=202)
