"""The dead-letter queue over HTTP: list entries with why they failed, and replay them into ingress."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from app.auth import AdminOnly
from app.problems import Problem
from streams.dlq.letters import DeadLetter
from streams.dlq.store import DeadLetterStore
from streams.envelope import record_to_json
from streams.errors import StreamError

Stage = Literal["decode", "validate", "route", "produce", "process"]
PositionText = Annotated[str, StringConstraints(pattern=r"^\d{1,9}/\d{1,19}$")]


router = APIRouter(prefix="/api/v1/dlq", tags=["dead letters"], dependencies=[AdminOnly])  # admin only


class ReplayRequest(BaseModel):
    """Which entries to write back to the ingress topic, and optionally a corrected event."""

    positions: list[PositionText] | None = Field(
        None, description='DLQ positions "<partition>/<offset>"; with a filter too, only those that match it.')
    stage: Stage | None = Field(None, description="Replay entries of this stage.")
    error: str | None = Field(None, min_length=1, description='Replay entries whose "ErrorClass: message" '
                                                               "contains this text (any case).")
    all: bool = Field(False, description="Replay every entry (when no positions and no filter are given).")
    event: dict[str, Any] | None = Field(None, description="A corrected event to write instead of the original "
                                                           "bytes (exactly one position).")
    force: bool = Field(False, description="Replay entries already replayed successfully too.")


async def _store(request: Request) -> DeadLetterStore:
    """Return the edge's DLQ store once Kafka is connected (the lifespan owns it)."""
    services = request.app.state.services
    await services.wait_ready(services.settings.ready_timeout_s)
    return services.dead_letters


async def _describe(request: Request, entry: DeadLetter, ledger: dict[str, Any]) -> dict[str, Any]:
    """Return an entry as JSON with its event decoded when possible, and its replay if any."""
    body = entry.as_dict()
    body["event"] = None
    if entry.value is not None and entry.stage not in ("decode", "unknown"):
        try:
            body["event"] = record_to_json(await request.app.state.services.producer.codec.decode_async(entry.value))
        except (StreamError, ValueError):
            pass
    body["replayed"] = ledger.get(entry.position)
    return body


@router.get("", summary="List DLQ entries, newest last, with why each failed")
async def list_dead_letters(
    request: Request,
    stage: Stage | None = Query(None, description="Only entries of this stage."),
    error: str | None = Query(None, min_length=1, description='Only entries whose "ErrorClass: message" '
                                                               "contains this text (any case)."),
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Return matching entries (position, stage, error, original position, attempts, decoded event)."""
    store = await _store(request)
    total, page = await store.list(stage=stage, error=error, limit=limit, offset=offset)
    ledger = await store.replayed() if page else {}
    return {"total": total, "limit": limit, "offset": offset,
            "entries": [await _describe(request, e, ledger) for e in page]}


@router.get("/{partition}/{offset}", summary="One DLQ entry")
async def get_dead_letter(partition: int, offset: int, request: Request) -> dict[str, Any]:
    """Return the entry at this DLQ position (404 if there is none)."""
    store = await _store(request)
    entry = await store.get(f"{partition}/{offset}")
    return await _describe(request, entry, await store.replayed())


@router.post("/replay", summary="Write DLQ entries back to the ingress topic")
async def replay_dead_letters(body: ReplayRequest, request: Request) -> dict[str, Any]:
    """Replay chosen entries (by position or filter); entries already replayed successfully are skipped."""
    if body.positions is None and body.stage is None and body.error is None and not body.all:
        raise Problem(422, "Invalid request", "name the entries: positions, a filter (stage, error), "
                                              "or all: true", field="positions")
    value = key = None
    if body.event is not None:
        if body.positions is None or len(body.positions) != 1:
            raise Problem(422, "Invalid request", "a corrected event replaces exactly one entry; give one "
                                                  "position", field="event")
        services = request.app.state.services
        await services.wait_ready(services.settings.ready_timeout_s)
        _, [(event, value)] = await services.producer.prepare([body.event], services.settings.ingress_topic)
        key = event.subject.encode() if event.subject is not None else None
    store = await _store(request)
    results = await store.replay(positions=body.positions, stage=body.stage, error=body.error, value=value,
                                 key=key, force=body.force)
    replayed = sum(1 for r in results if r["status"] == "replayed")
    return {"replayed": replayed, "skipped": len(results) - replayed, "results": results}
