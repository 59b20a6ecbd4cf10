"""The local broker from infra/kafka keeps acknowledged events across a stop and restart.

Runs its own single node on a spare port and data dir, so the shared test broker is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager, TopicSpec
from tests.integration.conftest import free_port
from tests.kafka_utils import read_all

pytestmark = pytest.mark.integration
KAFKACTL = [sys.executable, str(Path(__file__).resolve().parents[2] / "infra" / "kafka" / "kafkactl.py")]


def kafkactl(cmd: str, env: dict[str, str]) -> None:
    proc = subprocess.run([*KAFKACTL, cmd], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"kafkactl {cmd} failed:\n{proc.stdout}\n{proc.stderr}"


async def test_acknowledged_events_survive_broker_restart(settings_factory, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ES_KAFKA_PORT": str(port), "ES_KAFKA_DATA": str(tmp_path), "ES_KAFKA_HEAP": "512M"}
    servers = f"127.0.0.1:{port}"
    kafkactl("up", env)
    try:
        settings = settings_factory(kafka_bootstrap_servers=servers)
        async with TopicManager(settings) as topics:
            await topics.create(TopicSpec(name="orders", partitions=2))
        async with EventProducer(settings) as producer:
            acked = await producer.publish_batch(
                [{"source": "/t", "type": "t", "id": f"e{i}", "subject": f"s{i % 5}"} for i in range(200)], "orders")
        kafkactl("down", env)
        kafkactl("up", env)
        records = await read_all(servers, "orders", partitions=2)
        assert sorted((r.partition, r.offset) for r in records) == sorted((p.partition, p.offset) for p in acked)
    finally:
        subprocess.run([*KAFKACTL, "down"], env=env, capture_output=True)
