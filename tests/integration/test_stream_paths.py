"""Both write paths of an SSE stream, end to end on real edges (uvicorn) and a real broker: frames
written straight to uvicorn's transport, and frames through plain ASGI `send`
(`stream_direct_writes=false`) deliver the same bytes, and the stream stats say which path is used.
The plain path also carries a slow client through catch-up and a durable connection's commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture(scope="module")
def path_settings(kafka_bootstrap: str) -> Settings:
    """Return settings shared by both edges and the producer (same topics, same token secret)."""
    return private_settings(kafka_bootstrap, connection_commit_interval_ms=100, stream_buffer_max_size=20,
                            stream_slow_client_timeout_s=60)


@pytest.fixture(scope="module")
def edges(path_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    """Return a default edge (direct writes) and one with `stream_direct_writes=false`."""
    logs = tmp_path_factory.mktemp("edges")
    direct = start_edge(path_settings, logs)
    try:
        plain = start_edge(path_settings.model_copy(update={"stream_direct_writes": False}), logs)
    except BaseException:
        direct.stop()
        raise
    yield {"direct": direct, "plain": plain}
    plain.stop()
    direct.stop()


@pytest.fixture(scope="module")
async def producer(path_settings: Settings) -> AsyncIterator[EventProducer]:
    """Return a producer on the module's settings."""
    async with EventProducer(path_settings, linger_ms=0) as producer:
        yield producer


async def stream_stats(edge: Proc, streams: int = 1) -> dict:
    """Return the edge's stream counts (hub stats) once it serves `streams` streams."""
    stats: dict = {}
    for _ in range(50):
        stats = httpx.get(f"{edge.url}{STREAM}/stats", timeout=5).json()
        if stats["streams"] == streams:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {streams} streams: {stats}")


@pytest.mark.parametrize("compression", [False, True], ids=["identity", "gzip"])
async def test_direct_and_plain_paths_deliver_the_same_bytes(edges: dict[str, Proc], producer: EventProducer,
                                                             new_topic, compression: bool) -> None:
    topic = await new_topic(1)  # one partition: both edges see the records in one order
    params = {"compression": "true"} if compression else {}
    clients = {name: await SSEClient(edge.url, filter={"topics": [topic]}, params=params,
                                     headers={"Accept-Encoding": "gzip"}).start() for name, edge in edges.items()}
    try:
        assert (await stream_stats(edges["direct"]))["direct_writes"] == 1
        assert (await stream_stats(edges["plain"]))["direct_writes"] == 0
        await publish_seq(producer, topic, 0, 40, data={"text": "two\nlines", "pad": "x" * 3000})
        for client in clients.values():
            await client.wait_for(40)
        direct, plain = clients["direct"], clients["plain"]
        assert_exact(plain.seqs(), range(40))
        # The same frames, ids included, byte for byte; only each stream's own id (`: stream <id>`) differs.
        named = [(client.response_headers or {})["es-stream-id"].encode() for client in (direct, plain)]
        assert bytes(direct.raw).replace(named[0], b"<id>") == bytes(plain.raw).replace(named[1], b"<id>")
        if compression:
            assert direct.response_headers["content-encoding"] == plain.response_headers["content-encoding"] == "gzip"
    finally:
        for client in clients.values():
            await client.close()


async def test_plain_edge_logs_once_why_it_does_not_write_directly(edges: dict[str, Proc], new_topic) -> None:
    topic = await new_topic(1)
    clients = [await SSEClient(edge.url, filter={"topics": [topic]}).start()
               for edge in (edges["direct"], edges["plain"], edges["plain"])]
    try:
        await stream_stats(edges["plain"], 2)
        reason = "write through ASGI send instead of the server's transport: direct writes are turned off"
        assert edges["plain"].log().count(reason) == 1
        assert "write through ASGI send" not in edges["direct"].log()
    finally:
        for client in clients:
            await client.close()


async def test_durable_connection_commits_what_the_plain_path_delivered(edges: dict[str, Proc],
                                                                       producer: EventProducer, new_topic) -> None:
    topic = await new_topic()
    edge = edges["plain"]
    resp = httpx.post(f"{edge.url}/api/v1/connections", json={"filter": {"topics": [topic]}})
    assert resp.status_code == 201, resp.text
    conn_id = resp.json()["id"]
    client = SSEClient(edge.url)
    client.url = f"{edge.url}/api/v1/connections/{conn_id}/stream"
    await client.start()
    try:
        assert (await stream_stats(edge))["direct_writes"] == 0
        await publish_seq(producer, topic, 0, 25)
        await client.wait_for(25)
        status: dict = {}
        for _ in range(100):
            status = httpx.get(f"{edge.url}/api/v1/connections/{conn_id}/status").json()
            if status["totalLag"] == 0:
                break
            await asyncio.sleep(0.1)
        assert status["totalLag"] == 0, status
    finally:
        await client.close()
    assert_exact(client.seqs(), range(25))


async def test_plain_path_sends_a_slow_client_to_catch_up_without_losing_anything(
        edges: dict[str, Proc], producer: EventProducer, new_topic) -> None:
    edge = edges["plain"]
    topic = await new_topic()
    slow = await RawSSE(edge.url, str(httpx.QueryParams({"filter": orjson.dumps({"topics": [topic]}).decode()}))).open()
    fast = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        assert (await stream_stats(edge, 2))["direct_writes"] == 0
        total = 0
        while (await stream_stats(edge, 2))["catching_up"] == 0:
            assert total < 6000, "the slow client never fell behind"
            await publish_seq(producer, topic, total, 100, data={"pad": "x" * 2000})
            total += 100
            await asyncio.sleep(0.05)
        await fast.wait_for(total, timeout=30)
        assert_exact(fast.seqs(), range(total))  # not held up by the slow one
        await slow.read_until(total, timeout=60)
        assert_exact(slow.seqs(), range(total))
        await publish_seq(producer, topic, total, 5)
        await slow.read_until(total + 5)
        assert_exact(slow.seqs(), range(total + 5))
        assert (await stream_stats(edge, 2))["catching_up"] == 0  # back on the live tail
    finally:
        slow.close()
        await fast.close()
