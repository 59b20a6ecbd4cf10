"""Map every error to application/problem+json (RFC 9457) with a message a person can act on.

One handler turns the whole `StreamError` tree into a response: its status and title, the `field` at
fault, Retry-After when the error is retriable, and Confluent's `error_code` and `message` on routes
of the schema registry API (their route class sets `confluent_errors`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.fanout.tokens import TokenError
from streams.errors import RETRY_AFTER_S, StreamError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
RETRY_HEADERS = {"Retry-After": str(RETRY_AFTER_S)}

# A token is a different parameter on each route: route path -> (title, field, detail prefix).
TOKEN_PARAMETERS = {
    "/api/v1/events/stream": ("Invalid Last-Event-ID", "Last-Event-ID", "cannot resume from this token: "),
    "/api/v1/events/history": ("Invalid cursor", "offset", "offset is not a cursor of this filter: "),
}


class Problem(StreamError):
    """An HTTP error raised by route code: status, title and detail (plus optional members such as field)."""

    def __init__(self, status: int, title: str, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.extra = status, title, detail, field, extra


def problem_response(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    """Build a problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _route(request: Request | None) -> Any:
    """Return the route that matched the request (None before routing, e.g. for an unknown path)."""
    return request.scope.get("route") if request is not None else None


def stream_error_response(exc: StreamError, request: Request | None = None) -> JSONResponse:
    """Translate any error of the tree; retriable ones carry Retry-After, registry routes the Confluent code."""
    route = _route(request)
    title, detail, field = exc.title, str(exc), exc.field
    if isinstance(exc, TokenError) and (where := TOKEN_PARAMETERS.get(getattr(route, "path", ""))):
        title, field, prefix = where
        detail = prefix + detail
    extra: dict[str, Any] = dict(getattr(exc, "extra", None) or {})
    if field:
        extra["field"] = field
    if getattr(route, "confluent_errors", False):
        extra.update(error_code=exc.error_code or exc.status, message=detail)
    if exc.status >= 500:
        log.warning("%s: %s", title, detail)
    headers = dict(RETRY_HEADERS) if exc.retriable else {}
    headers.update(exc.headers or {})  # an error's own headers (a 429's Retry-After and RateLimit) win
    return problem_response(exc.status, title, detail, headers=headers or None, **extra)


def validation_response(exc: RequestValidationError, request: Request | None = None) -> JSONResponse:
    """Translate a request that does not fit the route's parameters, naming the first field at fault."""
    err = exc.errors()[0]
    if getattr(_route(request), "confluent_errors", False):
        detail = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        return problem_response(422, "Invalid request", detail, error_code=422, message=detail)
    loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    where = {"query": "query parameter", "path": "path parameter"}.get(str(err["loc"][0]), "field")
    detail = f"{where} {field!r}: {err['msg']}" if field else err["msg"]
    return problem_response(422, "Invalid request", detail, field=field)


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(StreamError)
    async def _stream(request: Request, exc: StreamError) -> JSONResponse:
        return stream_error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc, request)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem_response(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail),
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error")
        return problem_response(500, "Internal error", f"{type(exc).__name__}: {exc}")
