"""Build, open and close every Kafka client the same way: the one place that calls the aiokafka
constructors, so connection settings (bootstrap, client id, request timeout, SASL and TLS)
are applied everywhere; library errors on start become BrokerUnavailable (retriable) with the
broker list redacted; closing never raises."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from streams.errors import BrokerUnavailable, redact
from streams.settings import Settings

Client: TypeAlias = AIOKafkaAdminClient | AIOKafkaConsumer | AIOKafkaProducer


def client_id(settings: Settings, purpose: str) -> str:
    """Return `<client_id>-<purpose>`, so broker logs and quotas tell the clients of one process apart."""
    return f"{settings.client_id}-{purpose}"


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Return the TLS context of every client: the CA file (or the system trust store) and, for mutual TLS,
    the client certificate and key; an unreadable file raises ValueError naming the setting, not its content."""
    try:
        context = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
        if settings.kafka_ssl_cafile is None:
            context.load_default_certs()  # managed clusters present publicly trusted certificates
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"KAFKA_SSL_CAFILE/CERTFILE/KEYFILE cannot be loaded: {exc}") from None
    return context


def security(settings: Settings) -> dict[str, Any]:
    """Return the aiokafka security options (protocol, SASL, TLS) from Settings; the password stays a
    SecretStr until this call and is never logged."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=password.get_secret_value() if password is not None else None)
    return options


def _connection(settings: Settings, purpose: str) -> dict[str, Any]:
    """Return the keyword arguments every aiokafka client takes from Settings: bootstrap, id, timeout, security."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": client_id(settings, purpose),
        "request_timeout_ms": settings.request_timeout_ms,
        **security(settings),
    }


def consumer(settings: Settings, purpose: str, *, group_id: str | None = None, **options: Any) -> AIOKafkaConsumer:
    """Return an (unstarted) consumer; `options` are the caller's fetch and offset choices."""
    return AIOKafkaConsumer(**_connection(settings, purpose), group_id=group_id, **options)


def reader(settings: Settings, purpose: str, **options: Any) -> AIOKafkaConsumer:
    """Return an (unstarted) consumer without a group or commits: offsets lookups and manual assignment."""
    return consumer(settings, purpose, enable_auto_commit=False, **options)


def group_member(settings: Settings, purpose: str, *, group_id: str) -> AIOKafkaConsumer:
    """Return an (unstarted) consumer that joins `group_id` to get a share of its partitions; it never commits
    by itself (its owner commits what it delivered) and reads a partition with no committed offset from its start."""
    session_ms = settings.connection_member_session_timeout_ms
    return consumer(settings, purpose, group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                    session_timeout_ms=session_ms, heartbeat_interval_ms=min(1_000, session_ms // 3))


def producer(settings: Settings, purpose: str, **options: Any) -> AIOKafkaProducer:
    """Return an (unstarted) producer; `options` are the caller's acks, batching and size choices."""
    return AIOKafkaProducer(**_connection(settings, purpose), **options)


def admin(settings: Settings, purpose: str) -> AIOKafkaAdminClient:
    """Return an (unstarted) admin client."""
    return AIOKafkaAdminClient(**_connection(settings, purpose))


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
