"""The FastAPI edge: routes, problem+json errors, and the Kafka clients' lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import problems
from app.fanout.hub import Hub
from app.routes import connections, dlq, events, health, routing, stats, stream, topics
from app.routes.registry import router as registry_router
from app.services import Services
from app.shutdown import close_on_exit_signals
from streams.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the edge application for `settings` (the environment's by default)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(settings)
        app.state.services = services
        app.state.registry = services.registry
        app.state.hub = hub = Hub(settings, services.registry, services.topics)  # SSE fan-out
        services.start()
        close_on_exit_signals(hub)
        try:
            yield
        finally:
            await hub.stop()
            await services.stop()

    app = FastAPI(
        title="eventstream",
        version="0.1.0",
        summary="Publish events to Kafka as Avro; stream them back over Server-Sent Events.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(topics.router)
    app.include_router(connections.router)
    app.include_router(stream.router)
    app.include_router(stats.router)
    app.include_router(routing.router)
    app.include_router(dlq.router)
    app.include_router(registry_router, prefix="/api/v1/registry", tags=["schema registry"])
    return app
