"""Open and close aiokafka clients the same way everywhere: settings applied, library errors
turned into BrokerUnavailable (retriable) with the broker list redacted, closing never raising."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import BrokerUnavailable, redact
from streams.settings import Settings

Client = AIOKafkaAdminClient | AIOKafkaConsumer | AIOKafkaProducer


def admin(settings: Settings, name: str) -> AIOKafkaAdminClient:
    """Return an (unstarted) admin client named `<client_id>-<name>`."""
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                               client_id=f"{settings.client_id}-{name}",
                               request_timeout_ms=settings.request_timeout_ms)


def reader(settings: Settings, name: str, **options: Any) -> AIOKafkaConsumer:
    """Return an (unstarted) consumer without a group: offsets lookups and manual assignment."""
    return AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                            enable_auto_commit=False, client_id=f"{settings.client_id}-{name}",
                            request_timeout_ms=settings.request_timeout_ms, **options)


async def start_all(settings: Settings, *clients: Client) -> None:
    """Start clients in order; if one fails, close them all and raise BrokerUnavailable."""
    try:
        for client in clients:
            await client.start()
    except (KafkaError, OSError) as exc:
        await close_all(*clients)
        raise BrokerUnavailable(
            f"Kafka at {redact(settings.kafka_bootstrap_servers)} did not answer: {exc}") from exc


async def close_all(*clients: Client | None) -> None:
    """Close clients, ignoring errors: a dead broker makes aiokafka raise on close, and closing must finish."""
    for client in clients:
        if client is None:
            continue
        with contextlib.suppress(KafkaError, OSError):
            if isinstance(client, AIOKafkaAdminClient):
                await client.close()
            else:
                await client.stop()


class AdminSession:
    """Base of the admin-side helpers: one admin client plus one group-less reader for offsets,
    opened and closed together (`start`/`stop` or `async with`)."""

    name = "admin"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect, raising BrokerUnavailable when Kafka does not answer."""
        if self._admin is not None:
            return
        adm, offsets = admin(self.settings, self.name), reader(self.settings, f"{self.name}-offsets")
        await start_all(self.settings, adm, offsets)
        self._admin, self._offsets = adm, offsets

    async def stop(self) -> None:
        """Disconnect; calling it twice is harmless."""
        adm, offsets, self._admin, self._offsets = self._admin, self._offsets, None, None
        await close_all(adm, offsets)

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise BrokerUnavailable(f"{type(self).__name__} is not connected to Kafka yet")
        return self._admin

    def _reader(self) -> AIOKafkaConsumer:
        if self._offsets is None:
            raise BrokerUnavailable(f"{type(self).__name__} is not connected to Kafka yet")
        return self._offsets
