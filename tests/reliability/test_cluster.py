"""Fault tests on the real 3-node KRaft cluster (make reliability): slow, so not in make test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager, TopicSpec
from streams.settings import Settings
from tests.kafka_utils import read_all

ROOT = Path(__file__).resolve().parents[2]
KAFKACTL = [sys.executable, str(ROOT / "infra" / "kafka" / "kafkactl.py")]
SERVERS = "127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a fresh 3-node cluster in a temporary data dir; stop it afterwards."""
    env = {**os.environ, "ES_KAFKA_DATA": str(tmp_path_factory.mktemp("cluster")), "ES_KAFKA_HEAP": "512M"}
    up = subprocess.run([*KAFKACTL, "cluster-up"], env=env, capture_output=True, text=True)
    if up.returncode:
        pytest.fail(f"cluster did not start:\n{up.stdout}\n{up.stderr}")
    try:
        yield env["ES_KAFKA_DATA"]
    finally:
        subprocess.run([*KAFKACTL, "cluster-down"], env=env, capture_output=True)


async def test_rf3_topic_keeps_accepting_acks_all_after_one_node_is_killed(cluster: str) -> None:
    env = {**os.environ, "ES_KAFKA_DATA": cluster}
    settings = Settings(kafka_bootstrap_servers=SERVERS, default_replication_factor=3, topic_prefix="rel",
                        ingress_topic="rel.ingress", dlq_topic="rel.dlq", default_topic="rel.events",
                        schemas_topic="rel._schemas", request_timeout_ms=30_000)
    async with TopicManager(settings) as topics:
        desc = await topics.create(TopicSpec(name="rel.orders", partitions=3, replication_factor=3,
                                             config={"min.insync.replicas": "2"}))
        assert all(len(p["isr"]) == 3 for p in desc["partitions"])
    async with EventProducer(settings) as producer:
        before = await producer.publish_batch(
            [{"source": "/rel", "type": "t", "id": f"a{i}", "subject": f"s{i % 7}"} for i in range(300)], "rel.orders")
        killed = subprocess.run([*KAFKACTL, "kill", "2"], env=env, capture_output=True, text=True)
        assert killed.returncode == 0, killed.stderr
        after = await producer.publish_batch(
            [{"source": "/rel", "type": "t", "id": f"b{i}", "subject": f"s{i % 7}"} for i in range(300)], "rel.orders")
    assert len(before) == len(after) == 300
    records = await read_all(SERVERS, "rel.orders")
    assert len(records) == 600
    async with TopicManager(settings) as topics:
        desc = await topics.describe("rel.orders")
    assert all(2 not in p["isr"] for p in desc["partitions"])
