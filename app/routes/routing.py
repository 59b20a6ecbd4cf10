"""The routing rules in force, as the worker reads them (config/routes.yaml or ES_ROUTES_FILE)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.auth import AdminOnly
from streams.worker.routing import load_rules

router = APIRouter(prefix="/api/v1/routes", tags=["routing"], dependencies=[AdminOnly])  # admin only


@router.get("", summary="List the routing rules")
async def list_routes(request: Request) -> dict[str, Any]:
    """Return the rules file as the worker reads it (500 naming the line if it is malformed).

    The file is read on every request, so this shows what a worker started now would use; running
    workers read it at their start.
    """
    settings = request.app.state.services.settings
    return load_rules(settings.routes_file, settings).as_dict()
