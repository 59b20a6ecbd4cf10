"""The FastAPI edge: routes, problem+json errors, and the one lifespan of its components."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import problems
from app.auth import Authenticator, authenticate, mark_public_operations
from app.auth.credentials import install_log_redaction
from app.auth.guard import index_routes
from app.auth.middleware import Authentication
from app.lifespan import edge_lifespan
from app.limits import RateLimiter
from app.observe import HttpFigures, HttpMetrics, edge_registry
from app.request_size import RequestSizeLimit
from app.routes import connections, dlq, endpoints, events, health, metrics, monitor, routing, stream, topics
from app.routes.registry import router as registry_router
from app.routes.stream_admin import router as stream_admin_router
from streams.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the edge application for `settings` (the environment's by default)."""
    settings = settings or get_settings()
    authenticator = Authenticator.from_settings(settings)  # AuthConfigError: the edge refuses to start
    app = FastAPI(
        title="eventstream",
        version="0.1.0",
        summary="Publish events to Kafka as Avro; stream them back over Server-Sent Events.",
        lifespan=edge_lifespan(settings),
        # Every route asks for a credential unless app.auth.guard.PUBLIC_PATHS lists it: checked by the
        # Authentication middleware before any body is read; the dependency reads its principal back.
        dependencies=[Depends(authenticate)],
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.authenticator = authenticator
    install_log_redaction()
    mark_public_operations(app)
    problems.install(app)
    app.state.limiter = RateLimiter(settings)  # rate limits per principal (app/limits.py)
    app.add_middleware(Authentication)  # inside the size limits: 431/413 first, then the credential
    app.add_middleware(RequestSizeLimit, max_header_bytes=settings.http_max_header_bytes,
                       max_body_bytes=settings.http_max_body_bytes)
    # Observability (app/observe/): HTTP figures counted outermost, read with the hub's at scrape time.
    app.state.settings = settings
    app.state.http_figures = figures = HttpFigures()
    app.state.metrics_registry = edge_registry(app.state, figures)
    app.add_middleware(HttpMetrics, figures=figures)
    if settings.cors_origins:  # outermost: preflights are answered before any credential is asked for
        wildcard = "*" in settings.cors_origins  # credentials go only to origins named one by one
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=not wildcard,
                           allow_methods=["*"], allow_headers=["*"], max_age=600,
                           expose_headers=["Location", "Retry-After", "RateLimit", "RateLimit-Policy",
                                           "WWW-Authenticate", "ES-Stream-Id"])
    app.include_router(metrics.router)
    app.include_router(monitor.router)
    app.include_router(monitor.dashboard_router)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(topics.router)
    app.include_router(connections.router)
    app.include_router(endpoints.router)
    app.include_router(stream.router)
    app.include_router(stream_admin_router)
    app.include_router(monitor.stats_router)
    app.include_router(routing.router)
    app.include_router(dlq.router)
    app.include_router(registry_router, prefix="/api/v1/registry", tags=["schema registry"])
    index_routes(app)  # the public list is matched against full path templates (app/auth/guard.py)
    return app
