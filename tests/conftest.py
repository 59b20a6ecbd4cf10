"""Shared fixtures: one real Kafka broker per test run, found as follows.

Order: KAFKA_BOOTSTRAP_SERVERS if set; testcontainers' Kafka when a Docker engine answers;
otherwise the local KRaft broker from infra/kafka (started once, stopped at the end if we started it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "infra" / "kafka" / "kafkactl.py"


def _docker_engine_answers() -> bool:
    """Tell whether a Docker engine (not just the client) answers, without waiting long."""
    try:
        import docker  # type: ignore[import-not-found]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


def _local_broker_running() -> bool:
    return subprocess.run([sys.executable, str(KAFKACTL), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    """Return bootstrap servers of a real broker, starting one if needed; abort the run if none comes up."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    started_here = not _local_broker_running()
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # Show the broker's start-up progress (and its log tail on failure) live, not after the run.
    with capture.global_and_fixture_disabled():
        print("\nNo KAFKA_BOOTSTRAP_SERVERS and no Docker engine: using the local KRaft broker (infra/kafka).")
        proc = subprocess.run([sys.executable, str(KAFKACTL), "up"])
    if proc.returncode != 0:
        pytest.exit("the local Kafka broker did not start; see its log tail above", returncode=3)
    try:
        yield f"127.0.0.1:{os.environ.get('ES_KAFKA_PORT', '9092')}"
    finally:
        if started_here and not os.environ.get("ES_KEEP_BROKER"):
            subprocess.run([sys.executable, str(KAFKACTL), "down"], capture_output=True)


def unique(prefix: str = "t") -> str:
    """Return a topic or id name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings_factory(kafka_bootstrap: str) -> Callable[..., object]:
    """Return a factory of Settings whose internal topics are private to the calling test."""
    from streams.settings import Settings
    from tests.auth_helpers import TEST_SECRET

    def make(**overrides: object) -> Settings:
        base = unique("t")
        values: dict[str, object] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "topic_prefix": base,
            "ingress_topic": f"{base}.ingress",
            "dlq_topic": f"{base}.dlq",
            "default_topic": f"{base}.events",
            "schemas_topic": f"{base}._schemas",
            "auth_jwt_secret": TEST_SECRET,  # the suite runs with authentication on (tests/auth_helpers.py)
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., object]) -> object:
    """Return Settings with private internal topics for one test."""
    return settings_factory()


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[object]:
    """Return a started aiokafka admin client on the test broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def new_topic(admin: object) -> Callable[..., object]:
    """Return an async factory that creates a fresh topic and returns its name."""
    from aiokafka.admin import NewTopic

    async def make(partitions: int = 3, prefix: str = "t") -> str:
        name = unique(prefix)
        await admin.create_topics([NewTopic(name, partitions, 1)])  # type: ignore[attr-defined]
        # CreateTopics answers before every broker's metadata cache has the topic (KRaft publishes it
        # a moment later): wait until metadata shows all its partitions, so a test's first publish finds it.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            [described] = await admin.describe_topics([name])  # type: ignore[attr-defined]
            if described["error_code"] == 0 and len(described["partitions"]) == partitions:
                break
            await asyncio.sleep(0.1)
        return name

    return make
