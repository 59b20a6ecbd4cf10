"""The edge's one lifespan: every long-lived component, started in dependency order and closed in reverse.

Kafka is connected in the background, so the edge serves /healthz and /docs while it waits for the
broker; /readyz stays 503 naming the reason until every component is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.directory import Endpoints
from app.directory.control import Control
from app.directory.presence import Presence, edge_id
from app.durable.registry import Connections
from app.fanout.hub import Hub
from app.observe.watch import KafkaWatch
from app.shutdown import close_on_exit_signals
from streams.dlq.store import DeadLetterStore
from streams.errors import BrokerUnavailable, StreamError, redact
from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0


class Services:
    """Registry, topics, producer, durable connections, named endpoints, hub and DLQ store of one edge process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry(settings)
        self.topics = TopicManager(settings)
        self.producer = EventProducer(settings, registry=self.registry)
        self.connections = Connections(settings, self.topics)
        self.endpoints = Endpoints(settings, self.topics)  # named endpoints, read by every edge
        self.hub = Hub(settings, self.registry, self.topics)  # SSE fan-out
        self.edge = edge_id(settings)  # this process among the edges (stream admin, /api/v1/stats)
        self.presence = Presence(settings, self.hub.streams, self.edge)  # every edge's open streams
        self.control = Control(settings, self.topics, self.hub.streams, self.edge)  # disconnects across edges
        self.dead_letters = DeadLetterStore(settings, self.producer.codec)
        self.ready = asyncio.Event()
        self.last_error: str | None = "connecting to Kafka"
        self._opened = AsyncExitStack()  # the components _open started, closed by stop()
        self._task: asyncio.Task[None] | None = None

    def components(self) -> list[AbstractAsyncContextManager[Any]]:
        """Return the components in start order; stop() closes them in reverse."""
        return [self.registry, self.topics, self.producer, self.connections, self.endpoints, self.hub,
                self.presence, self.control, self.dead_letters]

    async def start(self) -> None:
        """Begin connecting in the background (readiness stays 503 until every component is up)."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name="kafka-connect")

    async def stop(self) -> None:
        """Cancel a pending connect and close the started components in reverse; calling it twice is harmless."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ready.clear()
        await self._opened.aclose()

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until connected, raising BrokerUnavailable with the last reason otherwise."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise BrokerUnavailable(self.last_error or "Kafka is not reachable") from None

    async def _connect(self) -> None:
        """Open every component, retrying with backoff while Kafka does not answer."""
        servers = redact(self.settings.kafka_bootstrap_servers)
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                self._opened = await self._open()
                break
            except (StreamError, OSError) as exc:
                self.last_error = f"Kafka at {servers} is not reachable: {exc}"
                log.info("Waiting for Kafka at %s (%.0fs): %s", servers, time.monotonic() - started, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        self.last_error = None
        self.ready.set()
        log.info("Connected to Kafka at %s.", servers)

    async def _open(self) -> AsyncExitStack:
        """Start the components in order; if one fails (or the connect is cancelled), close those started."""
        stack = AsyncExitStack()
        try:
            for component in self.components():
                await stack.enter_async_context(component)
                if component is self.topics:  # the producer and the hub need the service's topics
                    for name in (self.settings.ingress_topic, self.settings.dlq_topic, self.settings.default_topic):
                        await self.topics.ensure(name)
        except BaseException:
            await stack.aclose()
            raise
        return stack


def edge_lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Return the lifespan that runs the edge's services and ends open streams on SIGTERM/SIGINT."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Services(settings) as services, KafkaWatch(settings) as watch:
            app.state.services = services
            app.state.watch = watch  # the health report's and the dashboard's samples (app/observe/watch.py)
            app.state.registry = services.registry
            app.state.hub = services.hub
            app.state.dead_letters = services.dead_letters
            close_on_exit_signals(services.hub)
            yield

    return lifespan
