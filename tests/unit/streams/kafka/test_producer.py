"""EventProducer's bounded publish: a send Kafka does not acknowledge within ES_PUBLISH_TIMEOUT_S becomes
BrokerUnavailable (503 with Retry-After, saying it may have been written), later sends fail fast while one is
overdue, and the producer takes sends again once Kafka answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from app.problems import stream_error_response
from streams.envelope import parse_event
from streams.errors import BrokerUnavailable
from streams.kafka.producer import EventProducer
from streams.settings import Settings

TOPIC = "producer-under-test"


@dataclass(frozen=True)
class Metadata:
    """What a send future resolves to."""

    topic: str
    partition: int
    offset: int


class FakeKafka:
    """An AIOKafkaProducer whose acknowledgements the test gives (or withholds)."""

    def __init__(self, block_enqueue: bool = False) -> None:
        self.block_enqueue = block_enqueue
        self.sent: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        if self.block_enqueue:
            await asyncio.Event().wait()  # the accumulator is full and never drains
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(fut)
        return fut

    def ack(self) -> None:
        for offset, fut in enumerate(self.sent):
            if not fut.done():
                fut.set_result(Metadata(TOPIC, 0, offset))


class NoRegistry:
    """A schema registry the bounded-send path never calls."""


def producer(kafka: FakeKafka, timeout: float = 0.2) -> EventProducer:
    p = EventProducer(Settings(publish_timeout_s=timeout), registry=NoRegistry())  # type: ignore[arg-type]
    p._producer = kafka
    return p


def prepared(n: int = 1) -> list[tuple[Any, bytes]]:
    return [(parse_event({"source": "/t", "type": "t.x", "subject": f"s{i}"}), b"avro") for i in range(n)]


async def test_an_unacknowledged_publish_answers_503_within_the_timeout_and_may_be_written() -> None:
    kafka = FakeKafka()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        await producer(kafka)._send_prepared(TOPIC, prepared(2), ())
    assert time.monotonic() - started < 1.0
    assert "may have been written" in str(caught.value) and "same id" in str(caught.value)
    assert len(kafka.sent) == 2 and not any(f.cancelled() for f in kafka.sent)  # still queued in the producer
    response = stream_error_response(caught.value)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.media_type == "application/problem+json"
    ids = (caught.value.extra or {}).get("ids")
    assert orjson.loads(response.body)["ids"] == ids and len(ids) == 2


async def test_a_blocked_enqueue_answers_503_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="may have been written"):
        await producer(FakeKafka(block_enqueue=True))._send_prepared(TOPIC, prepared(), ())
    assert time.monotonic() - started < 1.0


async def test_sends_fail_fast_while_one_is_overdue_and_resume_once_kafka_answers() -> None:
    kafka = FakeKafka()
    p = producer(kafka)
    with pytest.raises(BrokerUnavailable):
        await p._send_prepared(TOPIC, prepared(), ())
    await asyncio.sleep(0.05)  # the first send is now older than the timeout
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="nothing was written"):
        await p._send_prepared(TOPIC, prepared(), ())
    assert time.monotonic() - started < 0.05 and len(kafka.sent) == 1  # refused before any send
    kafka.ack()  # the broker is back: the stuck send is acknowledged
    await asyncio.sleep(0)
    sending = asyncio.create_task(p._send_prepared(TOPIC, prepared(), ()))
    await asyncio.sleep(0.01)
    kafka.ack()
    [position] = await sending
    assert position.offset == 1


async def test_acknowledged_publishes_return_their_positions_in_order() -> None:
    kafka = FakeKafka()
    p = producer(kafka, timeout=5)
    sending = asyncio.create_task(p._send_prepared(TOPIC, prepared(3), ()))
    await asyncio.sleep(0.01)
    kafka.ack()
    assert [pos.offset for pos in await sending] == [0, 1, 2]
    assert p._unacked[TOPIC] == {}
