"""Where a credential travels: `Authorization: Bearer`, `X-API-Key`, the `es_token` cookie, or the
`access_token` query parameter (stream routes only: cross-origin EventSource can send neither headers
nor, without credentials mode, cookies)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from app.auth.errors import Unauthenticated
from streams.logs import RedactingFilter

COOKIE = "es_token"
QUERY = "access_token"
API_KEY_HEADER = "X-API-Key"
Carrier = Literal["authorization", "x-api-key", "cookie", "query"]


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential as sent, and where it came from (so errors can name the carrier, never the value)."""

    value: str
    carrier: Carrier


def find_credential(request: Request, *, query_allowed: bool) -> Credential | None:
    """Return the request's credential (header first, then cookie, then query), None when there is none."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("malformed Authorization header: send 'Authorization: Bearer <token>'")
        return Credential(value.strip(), "authorization")
    if (key := request.headers.get(API_KEY_HEADER)) is not None:
        if not key.strip():
            raise Unauthenticated(f"empty {API_KEY_HEADER} header")
        return Credential(key.strip(), "x-api-key")
    if cookie := request.cookies.get(COOKIE):
        return Credential(cookie, "cookie")
    if query_allowed and (token := request.query_params.get(QUERY)):
        return Credential(token, "query")
    return None


def install_log_redaction() -> None:
    """Mask `access_token` values (and any other credential) in uvicorn's lines, whatever handler prints them."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
