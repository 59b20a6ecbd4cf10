"""Check the credential before a route reads its body: a request without one gets 401, not a 422 of its body.

A pure ASGI middleware (app.main adds it inside the size limits and CORS): `send` and `receive` are passed
through untouched, so the SSE writer's direct path still applies (app/sse/writer.py `direct_path`) and a
stream costs nothing per event. The check is the guard's own (app/auth/guard.py `principal_of`), on every
route that `PUBLIC_PATHS` does not list; the principal goes to `scope["state"]`, read as
`request.state.principal`. A path no route serves passes unchecked, to the router's 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.guard import PUBLIC_PATHS, match_route, principal_of
from app.problems import stream_error_response
from streams.errors import StreamError


class Authentication:
    """Set the principal of every request to a non-public route, or answer its 401 problem."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        edge = scope["app"]  # the FastAPI app (Starlette sets it before its middleware runs)
        found = match_route(edge, scope)
        if found is not None and found[0] not in PUBLIC_PATHS:
            path, route = found
            try:
                principal = await principal_of(edge, scope, path)
            except StreamError as exc:
                # Answered as the one handler would on that route (registry routes add Confluent's error_code).
                response = stream_error_response(exc, Request({**scope, "route": route}))
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
