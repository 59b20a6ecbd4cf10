"""The operator's page: static HTML, CSS and JavaScript served by the edge (no internet, no build step).
The page holds no data; it reads the stats stream and the APIs with the `es_token` cookie."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.problems import Problem

router = APIRouter(tags=["dashboard"])
STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}


@router.get("/dashboard", summary="Live dashboard of this edge", response_class=FileResponse)
async def dashboard() -> FileResponse:
    """Return the page; its data come over /api/v1/stats/stream."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/{asset}", summary="The dashboard's script and style", response_class=FileResponse)
async def dashboard_asset(asset: str) -> FileResponse:
    """Return the script or the style sheet of app/static/dashboard/ (404 for anything else)."""
    media = ASSETS.get(asset)
    if media is None:
        raise Problem(404, "Not found", f"the dashboard has no asset {asset!r}")
    return FileResponse(STATIC / asset, media_type=media, headers={"Cache-Control": "no-cache"})
