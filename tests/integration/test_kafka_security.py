"""The edge (and the worker) against brokers that need SCRAM-SHA-256 or TLS: publish over HTTP, read it back
over SSE; the SASL password appears in no log line and no stats answer.

Each secured broker is a single KRaft node of its own (infra/kafka/kafkactl.py `secure-up`), on its own
port and data dir, never the shared broker; the module is skipped, saying why, if one does not start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import KAFKACTL, unique
from tests.integration.pipeline_helpers import start_worker, wait_log
from tests.integration.stream_helpers import SSEClient

pytestmark = pytest.mark.integration

SCRAM_PORT = int(os.environ.get("ES_TEST_SCRAM_PORT", "9692"))
TLS_PORT = int(os.environ.get("ES_TEST_TLS_PORT", "9792"))
BROKER_USER, BROKER_PASSWORD = "admin", "broker-Secret-7f3a"
EDGE_USER, EDGE_PASSWORD = "edge", "edge-Secret-91c4d2"


def make_certificates(directory: Path) -> None:
    """Write a CA (ca.pem) and a server key + chain for 127.0.0.1/localhost (server.pem), as the broker reads."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventstream test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem) + ca.public_bytes(pem))


def broker(mode: str, port: int, data: Path, **env: str) -> Iterator[str]:
    """Start a secured node, yield its bootstrap servers, stop it after the module (skip if it cannot start)."""
    environ = {**os.environ, "ES_KAFKA_PORT": str(port), "ES_KAFKA_DATA": str(data), "ES_KAFKA_HEAP": "384M",
               "ES_KAFKA_START_TIMEOUT_S": "150", **env}
    started = subprocess.run([sys.executable, str(KAFKACTL), "secure-up", mode], env=environ,
                             capture_output=True, text=True, timeout=240)
    if started.returncode != 0:
        subprocess.run([sys.executable, str(KAFKACTL), "secure-down", mode], env=environ, capture_output=True)
        pytest.skip(f"the {mode} broker did not start on port {port}: {(started.stdout + started.stderr)[-1500:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([sys.executable, str(KAFKACTL), "secure-down", mode], env=environ, capture_output=True)


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return the bootstrap servers of a node whose only client listener is SASL_PLAINTEXT with SCRAM-SHA-256."""
    yield from broker("scram", SCRAM_PORT, tmp_path_factory.mktemp("kafka-scram"),
                      ES_KAFKA_SCRAM_USERS=f"{BROKER_USER}:{BROKER_PASSWORD},{EDGE_USER}:{EDGE_PASSWORD}")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Return the bootstrap servers of a node whose only client listener is TLS, and the CA file it trusts."""
    certs = tmp_path_factory.mktemp("kafka-tls-certs")
    make_certificates(certs)
    for servers in broker("tls", TLS_PORT, tmp_path_factory.mktemp("kafka-tls"), ES_KAFKA_TLS_DIR=str(certs)):
        yield servers, certs / "ca.pem"


def secured(settings_factory: Any, servers: str, **security: Any) -> Any:
    """Return private Settings pointing at a secured broker."""
    return settings_factory(kafka_bootstrap_servers=servers, **security)


async def publish_and_stream(edge_url: str, topic: str, marker: str) -> dict[str, Any]:
    """Open a live stream of `topic`, publish one event over HTTP, and return the event the stream delivers."""
    client = await SSEClient(edge_url, filter={"topics": [topic]}).start()
    try:
        assert client.status == 200
        async with httpx.AsyncClient(base_url=edge_url, timeout=20) as http:
            resp = await http.post("/api/v1/events", json={"id": marker, "type": "security.check",
                                                           "source": "/tests", "data": {"marker": marker}})
            assert resp.status_code == 202, resp.text
        [message] = await client.wait_for(1, timeout=30)
        return orjson.loads(message.data)
    finally:
        await client.close()


def assert_no_password(edge_url: str, log: str, *passwords: str) -> None:
    """Check that no password shows in the edge's log or its stats."""
    stats = httpx.get(edge_url + "/api/v1/stats", timeout=10).text + httpx.get(edge_url + "/readyz", timeout=10).text
    for password in passwords:
        assert password not in log, "a SASL password reached the edge log"
        assert password not in stats, "a SASL password reached /api/v1/stats or /readyz"


async def test_edge_publishes_and_streams_through_a_scram_broker(scram_broker: str, settings_factory: Any,
                                                                 edge_factory: Any) -> None:
    settings = secured(settings_factory, scram_broker, kafka_security_protocol="SASL_PLAINTEXT",
                       kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username=EDGE_USER,
                       kafka_sasl_password=EDGE_PASSWORD)
    edge = edge_factory(settings)
    marker = unique("scram")
    event = await publish_and_stream(edge.url, settings.ingress_topic, marker)
    assert event["data"] == {"marker": marker} and event["topic"] == settings.ingress_topic
    assert_no_password(edge.url, edge.log(), EDGE_PASSWORD, BROKER_PASSWORD)


async def test_edge_with_a_wrong_scram_password_stays_unready_without_echoing_it(
        scram_broker: str, settings_factory: Any, edge_factory: Any) -> None:
    wrong = "wrong-Password-5566"
    settings = secured(settings_factory, scram_broker, kafka_security_protocol="SASL_PLAINTEXT",
                       kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username=EDGE_USER, kafka_sasl_password=wrong,
                       ready_timeout_s=1.0)
    edge = edge_factory(settings, ready=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "Waiting for Kafka" not in edge.log():
        time.sleep(0.5)
    ready = httpx.get(edge.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert "Waiting for Kafka" in edge.log()
    assert wrong not in edge.log() and wrong not in ready.text


async def test_worker_routes_through_a_scram_broker(scram_broker: str, settings_factory: Any, edge_factory: Any,
                                                    tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("version: 1\nrules: []\n")
    settings = secured(settings_factory, scram_broker, kafka_security_protocol="SASL_PLAINTEXT",
                       kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username=EDGE_USER,
                       kafka_sasl_password=EDGE_PASSWORD, routes_file=routes, worker_data_dir=tmp_path / "worker",
                       worker_session_timeout_s=6.0)
    edge = edge_factory(settings)
    worker = start_worker(settings, tmp_path)
    try:
        await wait_log(worker, "Dedup table ready", timeout=90)
        marker = unique("routed")
        event = await publish_and_stream(edge.url, settings.default_topic, marker)
        assert event["data"] == {"marker": marker} and event["topic"] == settings.default_topic
        assert EDGE_PASSWORD not in worker.log()
    finally:
        worker.stop()


async def test_edge_publishes_and_streams_through_a_tls_broker(tls_broker: tuple[str, Path], settings_factory: Any,
                                                               edge_factory: Any) -> None:
    servers, ca = tls_broker
    settings = secured(settings_factory, servers, kafka_security_protocol="SSL", kafka_ssl_cafile=ca)
    edge = edge_factory(settings)
    marker = unique("tls")
    event = await publish_and_stream(edge.url, settings.ingress_topic, marker)
    assert event["data"] == {"marker": marker} and event["topic"] == settings.ingress_topic
