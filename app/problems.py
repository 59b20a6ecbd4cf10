"""Map every error to application/problem+json (RFC 9457) with a message a person can act on."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from streams.errors import StreamError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
RETRY_AFTER_S = 5


class Problem(Exception):
    """An HTTP error raised by route code: status, title and detail (plus optional members)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem_response(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    """Build a problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def stream_error_response(exc: StreamError) -> JSONResponse:
    """Translate the streams error tree; retriable errors carry Retry-After."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.retriable else None
    extra: dict[str, Any] = {}
    if getattr(exc, "field", None):
        extra["field"] = exc.field  # type: ignore[attr-defined]
    if exc.status >= 500:
        log.warning("%s: %s", exc.title, exc)
    return problem_response(exc.status, exc.title, str(exc), headers=headers, **extra)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(StreamError)
    async def _stream(_: Request, exc: StreamError) -> JSONResponse:
        return stream_error_response(exc)

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        where = {"query": "query parameter", "path": "path parameter"}.get(str(err["loc"][0]), "field")
        detail = f"{where} {field!r}: {err['msg']}" if field else err["msg"]
        return problem_response(422, "Invalid request", detail, field=field)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem_response(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail),
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error")
        return problem_response(500, "Internal error", f"{type(exc).__name__}: {exc}")
