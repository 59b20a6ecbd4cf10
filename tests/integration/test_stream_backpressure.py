"""Backpressure on a real edge: a client that stops reading goes back to catch-up without losing
anything or holding up others; one that stays too slow is closed and resumes; the stream cap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import (
    STREAM,
    RawSSE,
    SSEClient,
    assert_exact,
    private_settings,
    publish_seq,
    start_edge,
)

pytestmark = pytest.mark.integration
PADDING = {"pad": "x" * 2000}  # big events fill the slow client's socket sooner


def stats(edge: Proc) -> dict:
    """Return the edge's stream counts."""
    return httpx.get(edge.url + STREAM + "/stats", timeout=10).json()


async def publish_until_behind(edge: Proc, producer: EventProducer, topic: str, start: int,
                               limit: int = 6000) -> int:
    """Publish padded events in batches until the edge reports a client out of the live tail."""
    seq = start
    while seq < limit:
        await publish_seq(producer, topic, seq, 100, data=PADDING)
        seq += 100
        await asyncio.sleep(0.05)
        if stats(edge)["catching_up"] >= 1:
            return seq
    raise AssertionError(f"no client fell behind after {seq - start} events")


async def test_slow_client_loses_nothing_and_does_not_delay_a_fast_one(
        kafka_bootstrap: str, tmp_path: Path, new_topic) -> None:
    settings: Settings = private_settings(kafka_bootstrap, stream_buffer_max_size=20,
                                          stream_slow_client_timeout_s=60)
    edge = start_edge(settings, tmp_path)
    topic = await new_topic()
    flt = orjson.dumps({"topics": [topic]}).decode()
    async with EventProducer(settings, linger_ms=0) as producer:
        slow = await RawSSE(edge.url, str(httpx.QueryParams({"filter": flt}))).open()
        fast = await SSEClient(edge.url, filter={"topics": [topic]}).start()
        try:
            total = await publish_until_behind(edge, producer, topic, 0)
            await fast.wait_for(total, timeout=30)
            assert not slow.ended and len(slow.messages) == 0  # the slow client still has not read
            assert_exact(fast.seqs(), range(total))  # ... and the fast one has everything already
            await slow.read_until(total, timeout=60)
            assert_exact(slow.seqs(), range(total))
            await publish_seq(producer, topic, total, 5)
            await slow.read_until(total + 5)
            assert_exact(slow.seqs(), range(total + 5))
            assert stats(edge)["catching_up"] == 0  # back on the live tail
            assert "fell behind" in edge.log()
        finally:
            slow.close()
            await fast.close()
            edge.stop()


async def test_client_slow_past_the_timeout_is_closed_and_resumes_exactly(
        kafka_bootstrap: str, tmp_path: Path, new_topic) -> None:
    settings = private_settings(kafka_bootstrap, stream_buffer_max_size=20, stream_slow_client_timeout_s=1.0)
    edge = start_edge(settings, tmp_path)
    topic = await new_topic()
    flt = orjson.dumps({"topics": [topic]}).decode()
    async with EventProducer(settings, linger_ms=0) as producer:
        slow = await RawSSE(edge.url, str(httpx.QueryParams({"filter": flt}))).open()
        try:
            total = await publish_until_behind(edge, producer, topic, 0)
            await asyncio.sleep(2.0)  # stays blocked past the timeout
            await slow.read_until(10**9, timeout=60)  # read what was queued, up to the end
            assert slow.ended and b": closing: this client read too slowly" in slow.raw
            await publish_seq(producer, topic, total, 10)
            again = await SSEClient(edge.url, params={"filter": flt},
                                    headers={"last-event-id": slow.last_id or ""}).start()
            try:
                await again.wait_for(total + 10 - len(slow.messages), timeout=30)
                assert_exact(slow.seqs() + again.seqs(), range(total + 10))
            finally:
                await again.close()
        finally:
            slow.close()
            edge.stop()


async def test_streams_over_the_cap_get_503_with_retry_after(kafka_bootstrap: str, tmp_path: Path,
                                                             new_topic) -> None:
    edge = start_edge(private_settings(kafka_bootstrap, stream_max_clients=2), tmp_path)
    topic = await new_topic(1)
    clients = [await SSEClient(edge.url, filter={"topics": [topic]}).start() for _ in range(2)]
    try:
        resp = httpx.get(edge.url + STREAM, params={"filter": orjson.dumps({"topics": [topic]}).decode()},
                         timeout=10)
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert "limit of 2 streams" in resp.json()["detail"]
        await clients.pop().close()
        for _ in range(50):  # the edge notices the disconnect on its next loop turns
            if stats(edge)["streams"] < 2:
                break
            await asyncio.sleep(0.1)
        clients.append(await SSEClient(edge.url, filter={"topics": [topic]}).start())
        assert clients[-1].status == 200
    finally:
        for client in clients:
            await client.close()
        edge.stop()
