"""Live event streams over Server-Sent Events, and history pages, both filtered and read from Kafka."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from app.auth import check_topics
from app.auth.guard import principal_in
from app.fanout.filters import CompiledFilter, FilterError, Viewer, parse_filter
from app.fanout.history import MAX_LIMIT
from app.fanout.hub import Hub
from app.fanout.records import Positions
from app.fanout.response import EventStreamResponse, choose_encoding
from app.fanout.subscribers import FilterGroup
from app.fanout.tokens import STREAM, TokenError, check_room
from app.limits import Limits, RequestLimits, StreamSlot
from app.problems import Problem, problem_response
from app.sse.writer import Encoding

router = APIRouter(prefix="/api/v1/events", tags=["stream"])
RETRY_AFTER_S = "5"
P = TypeVar("P", bound="Positions | None")  # where a stream starts: live (None) or given positions
MakeResponse = Callable[[Hub, FilterGroup, Positions | None, float, Encoding | None], EventStreamResponse]

FILTER_DOC = ('JSON EventFilter: {"topics": [...], "types": ["workflow.*"], "sources": [...], "subjects": [...], '
              '"tags": [...], "where": {"status": ["failed", "error"]}}. Every given field must match; '
              '`topics` defaults to the service default topic.')


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """Where and how a plain stream starts: the query and headers the plain and the endpoint stream share."""

    heartbeat: float | None
    compression: bool
    since: str | None
    token: str | None  # the Last-Event-ID header, else `lastEventId`
    accept_encoding: str | None


async def stream_query(
    heartbeat: float | None = Query(None, gt=0, le=3600,
                                    description="Seconds between `: ping` comments when idle (default 15)."),
    compression: bool = Query(False, description="Compress with br or gzip, chosen from Accept-Encoding."),
    since: str | None = Query(None, description="Start from this ISO-8601 time instead of live."),
    last_event_id: str | None = Query(None, alias="lastEventId",
                                      description="Resume token, for clients that cannot send the header."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
    accept_encoding: str | None = Header(None, alias="Accept-Encoding"),
) -> StreamQuery:
    """The dependency behind StreamOptions (async: FastAPI would run a plain `def` in its thread pool)."""
    return StreamQuery(heartbeat, compression, since, last_event_id_header or last_event_id, accept_encoding)


StreamOptions = Annotated[StreamQuery, Depends(stream_query)]


def over_capacity(hub: Hub) -> Response | None:
    """Return a 503 problem when the edge is shutting down or serves its stream limit, else None."""
    if not hub.closing and hub.has_room():
        return None
    reason = "the edge is restarting" if hub.closing else \
        f"this edge serves its limit of {hub.settings.stream_max_clients} streams"
    return problem_response(503, "Too many streams", f"{reason}; retry shortly or use another edge",
                            headers={"Retry-After": RETRY_AFTER_S})


async def open_group(hub: Hub, limits: RequestLimits, flt: CompiledFilter,
                     positions: Callable[[FilterGroup], Awaitable[P]]) -> tuple[StreamSlot, FilterGroup, P]:
    """Take a stream slot and the filter's group, then find where the stream starts; any failure gives both back."""
    slot = await limits.open_stream()
    try:
        group = await hub.prepare(flt)
    except BaseException:
        slot.release()
        raise
    try:
        check_room(STREAM, hub.layout(group))  # else tokens (and durable commits) would stop past the limit
        start = await positions(group)
    except BaseException:
        hub.release(group)
        slot.release()
        raise
    return slot, group, start


def parse_since(value: str | None) -> datetime | None:
    """Parse an ISO-8601 time (UTC when no offset is given), raising a 400 problem."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Problem(400, "Invalid since", f"since must be an ISO-8601 time such as 2026-01-31T12:00:00Z, "
                                            f"got {value!r}", field="since") from None
    return check_time(when, "since")


def check_time(when: datetime, field: str) -> datetime:
    """Return `when` (UTC when naive) if Kafka can look it up, else raise a 400 problem naming `field`."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    try:
        ms = int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        ms = -1
    if ms < 0:
        raise Problem(400, f"Invalid {field}", f"{field} must be 1970-01-01T00:00:00Z or later (Kafka record times "
                                               f"start there), got {when.isoformat()}", field=field)
    return when


FILTER_CACHE_SIZE = 1024
_compiled: OrderedDict[tuple[str, str], CompiledFilter] = OrderedDict()  # an LRU, most recent last


async def compile_filter(request: Request, raw: str | None) -> tuple[Hub, CompiledFilter]:
    """Wait for Kafka, then parse and compile the filter (400 problem when it is invalid).

    Compiled filters are kept by their text: after an edge restart thousands of clients reconnect
    with the same few filters, and parsing each again is most of a request's cost."""
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    key = (raw or "", services.settings.default_topic)
    flt = _compiled.get(key)
    if flt is None:
        try:
            spec = parse_filter(raw)
        except FilterError as exc:
            raise Problem(400, "Invalid filter", str(exc), field="filter") from None
        flt = _compiled[key] = CompiledFilter(spec, [services.settings.default_topic])
        if len(_compiled) > FILTER_CACHE_SIZE:
            _compiled.popitem(last=False)
    else:
        _compiled.move_to_end(key)
    # Every topic of the filter needs a subscribe scope (403 naming it); internal topics need admin.
    check_topics(principal_in(request), "subscribe", flt.topics, services.settings)
    return request.app.state.hub, flt


@router.get("/stream", summary="Stream matching events live over Server-Sent Events",
            response_class=EventStreamResponse, status_code=200,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`retry:` first, then `: stream <id>` (the id also in the "
                                            "`ES-Stream-Id` header, for GET/DELETE /api/v1/streams); then per "
                                            "event `id:` (resume token), `event:` (its type), `data:` (CloudEvents "
                                            "JSON with topic, partition, offset); `: ping` comments when idle."},
                       400: {"description": "Invalid filter, since or Last-Event-ID"},
                       404: {"description": "Unknown topic"},
                       429: {"description": "Stream-open rate or open-stream cap of the principal reached"},
                       503: {"description": "Stream or filter-group limit reached"}})
async def stream_events(
    request: Request,
    limits: Limits,
    query: StreamOptions,
    filter: str | None = Query(None, description=FILTER_DOC),
) -> Response:
    """Open a stream: live by default, from `since`, or exactly after the event a token names. An event with
    `recipients` reaches it only when they name the principal's `sub` (an admin's stream too)."""
    hub, flt = await compile_filter(request, filter)
    return await open_stream(request, limits, hub, flt, query)


async def open_stream(request: Request, limits: RequestLimits, hub: Hub, flt: CompiledFilter, query: StreamQuery,
                      *, make_response: MakeResponse = EventStreamResponse, kind: str = "plain",
                      endpoint: str | None = None) -> Response:
    """Open a stream of a checked filter (the plain stream's, a named endpoint's): live, from `since`, or after
    the event the token names; `make_response` builds the SSE body (an endpoint's also ends when it is deleted);
    `kind` and `endpoint` are what the stream admin (GET /api/v1/streams) lists it as."""
    if (refusal := over_capacity(hub)) is not None:
        return refusal
    when, token = parse_since(query.since), query.token

    async def positions(group: FilterGroup) -> Positions | None:
        try:
            if token:
                return await hub.resume_positions(group, token)
            if when is not None:
                return await hub.offsets.at_time(hub.layout(group), int(when.timestamp() * 1000))
            return None
        except TokenError as exc:
            raise Problem(400, "Invalid Last-Event-ID", f"cannot resume from this token: {exc}",
                          field="Last-Event-ID") from None

    slot, group, start = await open_group(hub, limits, flt, positions)
    heartbeat_s = query.heartbeat or hub.settings.stream_heartbeat_s
    encoding = choose_encoding(query.compression, query.accept_encoding)
    response = make_response(hub, group, start, heartbeat_s, encoding)
    response.kind, response.endpoint = kind, endpoint
    principal = principal_in(request)
    response.expires_at = principal.expires_at  # `token-expiring`, then the end at `exp`
    response.viewer = Viewer.of_stream(principal.sub)  # targeted events naming it
    return slot.hold(response)


@router.get("/history", summary="Read matching events from Kafka, page by page")
async def event_history(
    request: Request,
    filter: str | None = Query(None, description=FILTER_DOC),
    limit: int = Query(100, ge=1, le=MAX_LIMIT, description="Events per page (max 1,000)."),
    offset: str | None = Query(None, description="The `next` cursor of the previous page."),
    since: str | None = Query(None, description="First page starts at this ISO-8601 time (default: the "
                                                "start of retention)."),
) -> JSONResponse:
    """Return {events, next}: oldest first, in an order that stays the same across pages. An event with
    `recipients` is shown only to the principals it names, to the owner of a durable connection it names, and
    to admin (the only reader who also sees the `recipients` list)."""
    hub, flt = await compile_filter(request, filter)
    when = parse_since(since)
    await hub.start()
    try:
        events, cursor = await hub.history.page(flt, limit, offset, when, history_viewer(request))
    except TokenError as exc:
        raise Problem(400, "Invalid cursor", f"offset is not a cursor of this filter: {exc}",
                      field="offset") from None
    return JSONResponse({"events": events, "next": cursor})


def history_viewer(request: Request) -> Viewer:
    """Return who reads history: the principal and the durable connections it owns (admin: everything)."""
    principal = principal_in(request)
    table = request.app.state.services.connections.table
    owned = [conn_id for conn_id, definition in table.items() if definition.get("owner") == principal.sub]
    return Viewer.of_history(principal.sub, principal.is_admin, owned)


@router.get("/stream/stats", summary="Counts of this edge's streams, filter groups and tail readers")
async def stream_stats(request: Request) -> dict[str, Any]:
    """Return how many streams are live or catching up, and where each tail reader stands."""
    return request.app.state.hub.stats()
