"""Publishing over HTTP: one event or a batch, written to the ingress topic for the routing agents."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from app.auth import CurrentPrincipal, check_topics
from app.limits import Limits
from app.problems import Problem
from streams.envelope import Event, parse_event
from streams.errors import PayloadTooLarge, ValidationFailed
from streams.kafka.topics import TOPIC_NAME

router = APIRouter(prefix="/api/v1/events", tags=["events"])
DESTINATION_HEADER = "es-destination"
EVENT_SCHEMA = Event.model_json_schema()


async def read_json(request: Request, limit: int) -> Any:
    """Read and parse the body, refusing it with 413 over `limit` bytes and 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    if not body:
        raise Problem(400, "Malformed JSON", "request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Malformed JSON", f"request body is not valid JSON: {exc}") from None


def destination_headers(topic: str | None) -> list[tuple[str, bytes]]:
    """Carry the publisher's requested topic to the router as a record header."""
    if topic is None:
        return []
    if not TOPIC_NAME.match(topic):
        raise ValidationFailed(f"topic {topic!r} is not a valid Kafka topic name", field="topic")
    return [(DESTINATION_HEADER, topic.encode())]


TOPIC_QUERY = Query(None, description="Destination topic requested by the publisher; routing rules may "
                                      "override it. The event is always written to the ingress topic first.")


ONE_EVENT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": EVENT_SCHEMA}}}}
RECIPIENTS_DOC = ("An event may name `recipients` (principals' JWT `sub` and/or durable connection ids, 1-100 "
                  "entries of 1-256 characters): only streams of those principals or connections receive it, and "
                  "history shows it only to them and to admin. It needs the same `publish:` scope as any event.")
PUBLISH_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "The credential has no `publish:` scope covering the topic"},
    413: {"description": "Event or batch over its size limit"},
    422: {"description": "An attribute is missing or invalid (bad `recipients` too); `field` names it"},
    503: {"description": "Kafka did not acknowledge within ES_PUBLISH_TIMEOUT_S; retry with the same id"}}


@router.post("", status_code=202, summary="Publish one event", openapi_extra=ONE_EVENT_BODY, description=RECIPIENTS_DOC,
             responses={202: {"description": "Stored in the ingress topic at this position"}, **PUBLISH_RESPONSES})
async def publish_event(request: Request, limits: Limits, principal: CurrentPrincipal,
                        topic: str | None = TOPIC_QUERY) -> JSONResponse:
    """Validate one CloudEvents-style event and append it to the ingress topic."""
    services = request.app.state.services
    headers = destination_headers(topic)
    # The requested topic (or the default one) needs a publish scope; routing rules are not checked.
    check_topics(principal, "publish", [topic or services.settings.default_topic], services.settings)
    raw = await read_json(request, services.settings.max_event_bytes)
    if not isinstance(raw, dict):
        raise ValidationFailed("body must be a JSON object (one event)")
    event = parse_event(raw)
    await limits.publish(1)  # before any write: a refused publish wrote nothing
    await services.wait_ready(services.settings.ready_timeout_s)
    position = await services.producer.publish(event, services.settings.ingress_topic, headers)
    return JSONResponse(position.as_dict(), status_code=202)


@router.post("/batch", status_code=202, summary="Publish many events, validated as a whole first",
             description=RECIPIENTS_DOC, responses={**PUBLISH_RESPONSES},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "object", "required": ["events"],
                 "properties": {"events": {"type": "array", "items": EVENT_SCHEMA}}}}}}})
async def publish_batch(request: Request, limits: Limits, principal: CurrentPrincipal,
                        topic: str | None = TOPIC_QUERY) -> JSONResponse:
    """Validate every event, then append them all to the ingress topic; list each event's position."""
    services = request.app.state.services
    settings = services.settings
    headers = destination_headers(topic)
    check_topics(principal, "publish", [topic or settings.default_topic], settings)  # the whole batch, or none
    raw = await read_json(request, settings.max_batch_bytes)
    events = raw.get("events") if isinstance(raw, dict) else raw
    if not isinstance(events, list):
        raise ValidationFailed("body must be {\"events\": [...]} or a JSON array of events", field="events")
    if not events:
        raise ValidationFailed("events must contain at least one event", field="events")
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(f"batch has {len(events)} events; the limit is {settings.max_batch_events}")
    await limits.publish(len(events))  # counted in events, before any write: a refused batch wrote nothing
    await services.wait_ready(settings.ready_timeout_s)
    positions = await services.producer.publish_batch(events, settings.ingress_topic, headers)
    return JSONResponse({"count": len(positions), "events": [p.as_dict() for p in positions]}, status_code=202)
