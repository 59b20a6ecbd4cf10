"""The edge's Kafka clients, connected in the background so the edge serves /healthz and /docs
while it waits for the broker (readiness stays 503 until they are up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.durable.registry import Connections
from streams.errors import BrokerUnavailable, StreamError, redact
from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings

log = logging.getLogger(__name__)


class Services:
    """Registry, producer and topic manager of one edge process, started in dependency order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry(settings)
        self.topics = TopicManager(settings)
        self.producer = EventProducer(settings, registry=self.registry)
        self.connections = Connections(settings, self.topics)
        self.ready = asyncio.Event()
        self.last_error: str | None = "connecting to Kafka"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin connecting in the background."""
        self._task = asyncio.create_task(self._connect(), name="kafka-connect")

    async def _connect(self) -> None:
        servers = redact(self.settings.kafka_bootstrap_servers)
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                await self.topics.start()
                for name in (self.settings.ingress_topic, self.settings.dlq_topic, self.settings.default_topic):
                    await self.topics.ensure(name)
                await self.registry.start()
                await self.producer.start()
                await self.connections.start()
                break
            except (StreamError, OSError) as exc:
                self.last_error = f"Kafka at {servers} is not reachable: {exc}"
                log.info("Waiting for Kafka at %s (%.0fs): %s", servers, time.monotonic() - started, exc)
                await self._stop_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.last_error = None
        self.ready.set()
        log.info("Connected to Kafka at %s.", servers)

    async def _stop_clients(self) -> None:
        for client in (self.connections, self.producer, self.registry, self.topics):
            with contextlib.suppress(Exception):
                await client.stop()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until connected, raising BrokerUnavailable with the last reason otherwise."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise BrokerUnavailable(self.last_error or "Kafka is not reachable") from None

    async def stop(self) -> None:
        """Cancel a pending connect and close every client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_clients()
