"""A publish Kafka does not acknowledge within ES_PUBLISH_TIMEOUT_S answers 503 (with Retry-After, saying it may
have been written), later publishes fail fast while one is overdue, and publishing resumes once Kafka answers.

The broker is real: a private single KRaft node (infra/kafka/kafkactl.py) that the test freezes with SIGSTOP,
so requests reach a live socket that never answers, as with a broker that hangs mid-outage."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.problems import stream_error_response
from streams.errors import BrokerUnavailable
from streams.kafka.producer import EventProducer
from tests.conftest import KAFKACTL, unique
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
TIMEOUT_S = 1.0


def event(i: int) -> dict[str, object]:
    return {"source": "/t", "type": "t.x", "subject": f"s{i}", "data": {"i": i}}


@pytest.fixture(scope="module")
def frozen_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Start a private node; yield its bootstrap servers and the broker's pid (skip if it cannot start)."""
    port, data = free_port(), tmp_path_factory.mktemp("kafka-frozen")
    env = {**os.environ, "ES_KAFKA_PORT": str(port), "ES_KAFKA_DATA": str(data), "ES_KAFKA_HEAP": "384M"}
    started = subprocess.run([sys.executable, str(KAFKACTL), "up"], env=env, capture_output=True, text=True,
                             timeout=240)
    if started.returncode != 0:
        subprocess.run([sys.executable, str(KAFKACTL), "down"], env=env, capture_output=True)
        pytest.skip(f"a private broker did not start on port {port}: {(started.stdout + started.stderr)[-1500:]}")
    pid = int((data / "single" / "broker.pid").read_text())
    try:
        yield f"127.0.0.1:{port}", pid
    finally:
        os.kill(pid, signal.SIGCONT)
        subprocess.run([sys.executable, str(KAFKACTL), "down"], env=env, capture_output=True)


async def test_an_unanswered_publish_is_503_then_fails_fast_then_resumes(
        frozen_broker: tuple[str, int], settings_factory: Callable[..., object], tmp_path: Path) -> None:
    servers, pid = frozen_broker
    settings = settings_factory(kafka_bootstrap_servers=servers, publish_timeout_s=TIMEOUT_S)
    topic = unique("frozen")
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    async with EventProducer(settings) as producer:  # type: ignore[arg-type]
        first = await producer.publish_batch([event(0), event(1), event(2)], topic)
        assert [p.offset for p in first] == [0, 1, 2]  # acknowledged publishes return their positions in order

        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as caught:
                await producer.publish_batch([event(3), event(4)], topic)
            assert time.monotonic() - started < TIMEOUT_S + 1.0
            assert "may have been written" in str(caught.value) and "same id" in str(caught.value)
            response = stream_error_response(caught.value)
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert response.media_type == "application/problem+json"
            ids = (caught.value.extra or {}).get("ids")
            assert orjson.loads(response.body)["ids"] == ids and len(ids) == 2

            await asyncio.sleep(0.1)  # the first send is now older than the timeout
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="nothing was written"):
                await producer.publish(event(5), topic)
            assert time.monotonic() - started < 0.5  # refused before any send
        finally:
            os.kill(pid, signal.SIGCONT)  # the broker answers again: the overdue sends are acknowledged

        deadline = time.monotonic() + 30
        while True:
            try:
                position = await producer.publish(event(6), topic)
                break
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert position.offset == 5  # after 0-2 and the two overdue sends, written once Kafka answered
