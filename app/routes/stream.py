"""Live event streams over Server-Sent Events, and history pages, both filtered and read from Kafka."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from app.fanout.filters import CompiledFilter, FilterError, parse_filter
from app.fanout.history import MAX_LIMIT
from app.fanout.hub import FilterGroup, Hub
from app.fanout.records import Positions
from app.fanout.tokens import TokenError
from app.problems import Problem, problem_response
from app.sse.framing import format_retry
from app.sse.writer import Connection, Encoder, Encoding

router = APIRouter(prefix="/api/v1/events", tags=["stream"])
RETRY_AFTER_S = "5"

FILTER_DOC = ('JSON EventFilter: {"topics": [...], "types": ["workflow.*"], "sources": [...], "subjects": [...], '
              '"tags": [...], "where": {"status": ["failed", "error"]}}. Every given field must match; '
              '`topics` defaults to the service default topic.')


class EventStreamResponse(Response):
    """The SSE body as a bare ASGI callable: the hub writes frames; this coroutine only waits for
    the client to leave (no per-connection sender or heartbeat task, see PERFORMANCE.md)."""

    def __init__(self, hub: Hub, group: FilterGroup, start: Positions | None, heartbeat_s: float,
                 encoding: Encoding | None) -> None:
        self.hub, self.group, self.start, self.heartbeat_s, self.encoding = hub, group, start, heartbeat_s, encoding
        self.status_code = 200
        self.background = None
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        if encoding:
            headers += [(b"content-encoding", encoding.encode()), (b"vary", b"accept-encoding")]
        self.raw_headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.hub.settings
        sub = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            encoder = Encoder(self.encoding) if self.encoding else None
            conn = Connection(send, settings.stream_buffer_max_size, encoder)
            conn.write(format_retry(settings.stream_retry_ms))
            sub = self.hub.open(self.group, conn, self.heartbeat_s, self.start)
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            if sub is None:
                self.hub.release(self.group)
            else:
                self.hub.remove(sub)
                sub.conn.abort()


def over_capacity(hub: Hub) -> Response | None:
    """Return a 503 problem when the edge is shutting down or serves its stream limit, else None."""
    if not hub.closing and hub.has_room():
        return None
    reason = "the edge is restarting" if hub.closing else \
        f"this edge serves its limit of {hub.settings.stream_max_clients} streams"
    return problem_response(503, "Too many streams", f"{reason}; retry shortly or use another edge",
                            headers={"Retry-After": RETRY_AFTER_S})


def choose_encoding(compression: bool, accept: str | None) -> Encoding | None:
    """Pick br over gzip from Accept-Encoding when compression is asked for (gzip if none is sent)."""
    if not compression:
        return None
    if accept is None:
        return "gzip"
    offered: dict[str, float] = {}
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        offered[name.strip().lower()] = q
    for name in ("br", "gzip"):
        if offered.get(name, offered.get("*", 0.0)) > 0:
            return name  # type: ignore[return-value]
    if offered.get("x-gzip", 0.0) > 0:
        return "gzip"
    return None


def parse_since(value: str | None) -> datetime | None:
    """Parse an ISO-8601 time (UTC when no offset is given), raising a 400 problem."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Problem(400, "Invalid since", f"since must be an ISO-8601 time such as 2026-01-31T12:00:00Z, "
                                            f"got {value!r}", field="since") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


_compiled: dict[tuple[str, str], CompiledFilter] = {}


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
        if len(_compiled) >= 1024:
            _compiled.clear()
        flt = _compiled[key] = CompiledFilter(spec, [services.settings.default_topic])
    return request.app.state.hub, flt


@router.get("/stream", summary="Stream matching events live over Server-Sent Events",
            response_class=EventStreamResponse, status_code=200,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`retry:` first; then per event `id:` (resume token), `event:` "
                                            "(its type), `data:` (CloudEvents JSON with topic, partition, "
                                            "offset); `: ping` comments when idle."},
                       400: {"description": "Invalid filter, since or Last-Event-ID"},
                       404: {"description": "Unknown topic"}, 503: {"description": "Stream limit reached"}})
async def stream_events(
    request: Request,
    filter: str | None = Query(None, description=FILTER_DOC),
    heartbeat: float | None = Query(None, gt=0, le=3600, description="Seconds between `: ping` comments "
                                                                     "when idle (default 15)."),
    compression: bool = Query(False, description="Compress with br or gzip, chosen from Accept-Encoding."),
    since: str | None = Query(None, description="Start from this ISO-8601 time instead of live."),
    last_event_id: str | None = Query(None, alias="lastEventId",
                                      description="Resume token, for clients that cannot send the header."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
    accept_encoding: str | None = Header(None, alias="Accept-Encoding"),
) -> Response:
    """Open a stream: live by default, from `since`, or exactly after the event a token names."""
    hub, flt = await compile_filter(request, filter)
    if (refusal := over_capacity(hub)) is not None:
        return refusal
    when = parse_since(since)
    token = last_event_id_header or last_event_id
    group = await hub.prepare(flt)
    try:
        start: Positions | None = None
        if token:
            start = hub.decode_token(group, token)
        elif when is not None:
            start = await hub.offsets.at_time(hub.layout(group), int(when.timestamp() * 1000))
    except TokenError as exc:
        hub.release(group)
        raise Problem(400, "Invalid Last-Event-ID", f"cannot resume from this token: {exc}",
                      field="Last-Event-ID") from None
    except BaseException:
        hub.release(group)
        raise
    heartbeat_s = heartbeat or hub.settings.stream_heartbeat_s
    return EventStreamResponse(hub, group, start, heartbeat_s, choose_encoding(compression, accept_encoding))


@router.get("/history", summary="Read matching events from Kafka, page by page")
async def event_history(
    request: Request,
    filter: str | None = Query(None, description=FILTER_DOC),
    limit: int = Query(100, ge=1, le=MAX_LIMIT, description="Events per page (max 1,000)."),
    offset: str | None = Query(None, description="The `next` cursor of the previous page."),
    since: str | None = Query(None, description="First page starts at this ISO-8601 time (default: the "
                                                "start of retention)."),
) -> JSONResponse:
    """Return {events, next}: oldest first, in an order that stays the same across pages."""
    hub, flt = await compile_filter(request, filter)
    when = parse_since(since)
    await hub.start()
    try:
        events, cursor = await hub.history.page(flt, limit, offset, when)
    except TokenError as exc:
        raise Problem(400, "Invalid cursor", f"offset is not a cursor of this filter: {exc}",
                      field="offset") from None
    return JSONResponse({"events": events, "next": cursor})


@router.get("/stream/stats", summary="Counts of this edge's streams, filter groups and tail readers")
async def stream_stats(request: Request) -> dict[str, Any]:
    """Return how many streams are live or catching up, and where each tail reader stands."""
    return request.app.state.hub.stats()
