"""Tests for streams/kafka/clients.py: every client gets its connection settings from Settings, and no
other module of streams/ or app/ calls the aiokafka constructors (so security settings land everywhere)."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import clients
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[4]
FACTORY = ROOT / "streams" / "kafka" / "clients.py"
CONSTRUCTORS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
SETTINGS = Settings(kafka_bootstrap_servers="broker-a:9092,broker-b:9093", client_id="svc", request_timeout_ms=4321)


@pytest.fixture
async def built() -> AsyncIterator[Callable[[Any], Any]]:
    """Return a function that remembers an unstarted client and closes it after the test."""
    made: list[Any] = []

    def keep(client: Any) -> Any:
        made.append(client)
        return client

    yield keep
    await clients.close_all(*made)


def _connection(client: Any) -> tuple[Any, str, int]:
    """Return the bootstrap servers, client id and request timeout aiokafka's network client was given."""
    kafka = client.client if hasattr(client, "client") else client._client
    return kafka._bootstrap_servers, kafka._client_id, kafka._request_timeout_ms


async def test_consumer_gets_bootstrap_client_id_and_timeout(built: Callable[[Any], Any]) -> None:
    consumer = built(clients.consumer(SETTINGS, "tail", group_id="g", fetch_max_wait_ms=25))
    assert _connection(consumer) == ("broker-a:9092,broker-b:9093", "svc-tail", 4321)
    assert (consumer._group_id, consumer._fetch_max_wait_ms) == ("g", 25)


async def test_reader_has_no_group_and_no_commits(built: Callable[[Any], Any]) -> None:
    reader = built(clients.reader(SETTINGS, "catchup", auto_offset_reset="earliest", max_partition_fetch_bytes=1024))
    assert _connection(reader) == ("broker-a:9092,broker-b:9093", "svc-catchup", 4321)
    assert (reader._group_id, reader._enable_auto_commit) == (None, False)
    assert (reader._auto_offset_reset, reader._max_partition_fetch_bytes) == ("earliest", 1024)


async def test_producer_gets_connection_settings_and_keeps_its_options(built: Callable[[Any], Any]) -> None:
    producer = built(clients.producer(SETTINGS, "producer", acks="all", enable_idempotence=True,
                                      max_request_size=2_000_000))
    assert _connection(producer) == ("broker-a:9092,broker-b:9093", "svc-producer", 4321)
    assert (producer._request_timeout_ms, producer._max_request_size) == (4321, 2_000_000)


async def test_admin_gets_connection_settings(built: Callable[[Any], Any]) -> None:
    admin = built(clients.admin(SETTINGS, "registry-admin"))
    assert _connection(admin) == ("broker-a:9092,broker-b:9093", "svc-registry-admin", 4321)


async def test_callers_cannot_override_connection_settings() -> None:
    with pytest.raises(TypeError):
        clients.reader(SETTINGS, "tail", bootstrap_servers="elsewhere:9092")


def _constructor_calls(path: Path) -> list[str]:
    """Return `line: name` for every call of an aiokafka client constructor in one module, aliases included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set(CONSTRUCTORS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokafka"):
            names |= {alias.asname for alias in node.names if alias.name in CONSTRUCTORS and alias.asname}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in names or name in CONSTRUCTORS:
            found.append(f"{node.lineno}: {name}")
    return found


def test_scan_sees_direct_and_attribute_calls(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import aiokafka\nfrom aiokafka.admin import AIOKafkaAdminClient as Admin\n"
                      "aiokafka.AIOKafkaConsumer()\nAdmin()\nAIOKafkaProducer()\n")
    assert _constructor_calls(module) == ["3: AIOKafkaConsumer", "4: Admin", "5: AIOKafkaProducer"]


def test_only_the_factory_calls_aiokafka_constructors() -> None:
    modules = sorted(p for pkg in ("streams", "app") for p in (ROOT / pkg).rglob("*.py"))
    assert FACTORY in modules
    offenders = {str(p.relative_to(ROOT)): calls for p in modules if p != FACTORY and (calls := _constructor_calls(p))}
    assert offenders == {}, "build Kafka clients with streams.kafka.clients, not aiokafka's constructors"


SECURE = Settings(kafka_bootstrap_servers="broker:9096", kafka_security_protocol="SASL_SSL",
                  kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc",
                  kafka_sasl_password="s3cret-pw")  # type: ignore[arg-type]


async def test_every_kind_of_client_gets_the_sasl_and_tls_settings(built: Callable[[Any], Any]) -> None:
    for client in (built(clients.consumer(SECURE, "c", group_id="g")), built(clients.reader(SECURE, "r")),
                   built(clients.producer(SECURE, "p")), built(clients.admin(SECURE, "a"))):
        kafka = client.client if hasattr(client, "client") else client._client
        assert (kafka._security_protocol, kafka._sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert (kafka._sasl_plain_username, kafka._sasl_plain_password) == ("svc", "s3cret-pw")
        assert kafka._ssl_context is not None and kafka._ssl_context.check_hostname


def test_plaintext_settings_add_no_credentials_or_tls() -> None:
    assert clients.security(SETTINGS) == {"security_protocol": "PLAINTEXT"}


def test_the_password_never_shows_in_settings_or_their_errors() -> None:
    assert "s3cret-pw" not in repr(SECURE) and "s3cret-pw" not in str(SECURE.model_dump())
    with pytest.raises(ValueError) as failed:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="s3cret-pw")  # type: ignore[arg-type]
    assert "KAFKA_SASL_USERNAME" in str(failed.value) and "s3cret-pw" not in str(failed.value)


def test_an_unreadable_ca_file_names_the_setting(tmp_path: Path) -> None:
    broken = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="KAFKA_SSL_CAFILE"):
        clients.security(broken)
