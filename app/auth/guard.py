"""The edge's one credential check and its authorization helpers.

Every route asks for a credential unless its path is on `PUBLIC_PATHS`, the one public list; a test walks
the app's route table to prove it. The check (`principal_of`) runs in the `Authentication` middleware
(app/auth/middleware.py), before a route reads its body, so a request without a credential gets 401
whatever it sends. The principal is kept as `request.state.principal` (rate limits key on its `sub`);
`authenticate`, the app-level dependency, reads it back (and checks by itself in an app without the
middleware). Routes then ask for `admin` (`AdminOnly`) or check topics against `subscribe:`/`publish:`
scopes (`check_topics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.routing import iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from app.auth.authenticator import Authenticator
from app.auth.credentials import API_KEY_HEADER, find_credential
from app.auth.errors import Forbidden, Unauthenticated
from app.auth.principal import ANONYMOUS_ADMIN, Principal
from app.auth.scopes import is_internal
from streams.settings import Settings

# Served without a credential: probes, the API documentation, Prometheus (which ES_METRICS_TOKEN may
# guard on its own) and the dashboard's static files (the page holds no data: it reads the API with
# the es_token cookie).
PUBLIC_PATHS = frozenset({
    "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
    "/dashboard", "/dashboard/{asset}",
})
# SSE routes, where `?access_token=` is accepted too (a cross-origin EventSource sends no headers).
QUERY_TOKEN_PATHS = frozenset({
    "/api/v1/events/stream", "/api/v1/connections/{conn_id}/stream", "/api/v1/stats/stream",
    "/api/v1/endpoints/{name}/stream",
})

# Declared for the OpenAPI document, so /docs has an Authorize button; the values are read by
# find_credential (which also takes the es_token cookie and, on stream routes, the query parameter).
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="A JWT (HS256/RS256/ES256, per the edge's key) or an API key.")
api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="apiKey",
                              description="An API key from ES_AUTH_API_KEYS_FILE.")


def index_routes(app: FastAPI) -> None:
    """Note each route's full path template by its endpoint (call once every router is included).

    A route knows only its path within its router, not the prefix it was included under, so the full
    template (the key of the public list) is looked up by endpoint, from the app's own route table."""
    contexts = [route for route in iter_route_contexts(app.routes) if route.path is not None]
    app.state.route_paths = {route.endpoint: route.path for route in contexts if route.endpoint is not None}
    app.state.route_contexts = contexts  # in the router's order, for `match_route` (before routing)


def route_path(request: Request) -> str:
    """Return the full path template of the route that matched (the key of the public list)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    return str(request.app.state.route_paths.get(endpoint, request.url.path))


def match_route(app: FastAPI, scope: Scope) -> tuple[str, BaseRoute] | None:
    """Return the full path template and route a request will reach, before routing runs (None: no route, a 404).

    As the router does, a route matching path and method wins over one matching the path only (a 405)."""
    partial = None
    for route in getattr(app.state, "route_contexts", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(route.path), route.original_route
        if match is Match.PARTIAL and partial is None:
            partial = str(route.path), route.original_route
    return partial


async def principal_of(app: FastAPI, scope: Scope, path: str) -> Principal:
    """Return the principal of a request to the non-public route `path` (Unauthenticated when there is none)."""
    authenticator: Authenticator = app.state.authenticator
    if not authenticator.enabled:
        # ES_AUTH=off: everyone is admin; one principal per client address, so rate limits stay per client.
        client = scope.get("client")
        host = client[0] if client else "unknown"
        return Principal(f"anonymous@{host}", ANONYMOUS_ADMIN.scopes, None, "off")
    credential = find_credential(Request(scope), query_allowed=path in QUERY_TOKEN_PATHS)
    return await authenticator.authenticate(credential)


async def authenticate(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
    _api_key: Annotated[str | None, Security(api_key_scheme)] = None,
) -> Principal | None:
    """Return the principal the Authentication middleware found, checking here when it did not run."""
    path = route_path(request)
    if path in PUBLIC_PATHS:
        return None
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # an app without the middleware (or a route it did not foresee): fail closed
        principal = await principal_of(request.app, request.scope, path)
        request.state.principal = principal
    return principal


def principal_in(request: Request) -> Principal:
    """Return the principal authentication found (the middleware, or `authenticate`: the app's own dependency)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # an app without the dependency: fail closed
        raise Unauthenticated("missing credential: this route was reached without authentication")
    return principal


async def current_principal(request: Request) -> Principal:
    """The dependency behind CurrentPrincipal. Async, as every dependency here: FastAPI runs a plain `def`
    dependency in its thread pool, which cost a publish about a tenth of its time (profile: bench/publish_bench.py)."""
    return principal_in(request)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def require_admin(request: Request) -> None:
    """Refuse the request with 403 unless the principal holds the `admin` scope."""
    if not principal_in(request).is_admin:
        raise Forbidden(f"{request.method} {route_path(request)} is for admins: the credential's scope lacks "
                        "'admin'", needed="admin")


AdminOnly = Depends(require_admin)


def check_topics(principal: Principal, action: str, topics: Iterable[str], settings: Settings) -> None:
    """Refuse with 403 naming the first topic the principal may not `action` ("subscribe" or "publish")."""
    for topic in topics:
        if principal.scopes.allows(action, topic, settings):
            continue
        why = " (an internal topic: admin only)" if is_internal(topic, settings) else ""
        raise Forbidden(f"the credential's scope does not allow {action} on topic {topic!r}{why}",
                        needed=f"{action}:{topic}" if not why else "admin")


def mark_public_operations(app: FastAPI) -> None:
    """Make the OpenAPI document say that public routes need no credential (`security: []`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()  # cached on the app after the first call
        if fresh:
            for path, operations in schema.get("paths", {}).items():
                if path in PUBLIC_PATHS:
                    for operation in operations.values():
                        operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
