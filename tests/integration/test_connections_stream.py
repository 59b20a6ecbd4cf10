"""Durable connection streams over real HTTP and a real broker: resume from committed offsets without
Last-Event-ID (same edge, after a restart, on another edge), lag, takeover, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from streams.kafka.producer import EventProducer
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import SSEClient, assert_exact, publish_seq

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings_factory):
    return settings_factory(connection_commit_interval_ms=100)


def create(edge, topic: str) -> str:
    resp = httpx.post(f"{edge.url}/api/v1/connections", json={"filter": {"topics": [topic]}})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


async def open_stream(edge, conn_id: str, headers: dict[str, str] | None = None) -> SSEClient:
    client = SSEClient(edge.url, headers=headers)
    client.url = f"{edge.url}/api/v1/connections/{conn_id}/stream"
    await client.start()
    assert client.status == 200
    return client


async def new_connection(settings, edge_factory, new_topic) -> tuple[Proc, str, str]:
    """Start an edge and create a durable connection to a fresh topic: (edge, topic, connection id)."""
    topic = await new_topic()
    edge = edge_factory(settings)
    return edge, topic, create(edge, topic)


async def stream_events(producer: EventProducer, edge, conn_id: str, topic: str, start: int, count: int) -> SSEClient:
    """Open the connection's stream, publish `count` events from seq `start`, and wait until all arrived."""
    client = await open_stream(edge, conn_id)
    await publish_seq(producer, topic, start, count)
    await client.wait_for(count)
    return client


async def wait_committed(edge, conn_id: str, lag: int = 0, timeout: float = 10) -> dict:
    """Wait until the connection's total lag (from Kafka's committed offsets) is `lag`."""
    status: dict = {}
    for _ in range(int(timeout * 10)):
        status = httpx.get(f"{edge.url}/api/v1/connections/{conn_id}/status").json()
        if status["totalLag"] == lag:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"lag stayed {status.get('totalLag')}, expected {lag}: {status}")


async def test_stream_again_without_last_event_id_gets_exactly_the_missed_events(settings, edge_factory,
                                                                                new_topic) -> None:
    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    async with EventProducer(settings) as producer:
        first = await stream_events(producer, edge, conn_id, topic, 0, 20)
        await first.close()
        await wait_committed(edge, conn_id, 0)
        await publish_seq(producer, topic, 20, 30)
        assert (await wait_committed(edge, conn_id, 30))["status"] == "disconnected"
        second = await open_stream(edge, conn_id)
        await second.wait_for(30)
        await asyncio.sleep(0.3)
        await second.close()
    assert_exact(first.seqs(), range(0, 20))
    assert_exact(second.seqs(), range(20, 50))


async def test_connection_resumes_after_edge_restart_and_on_a_second_edge(settings, edge_factory, new_topic) -> None:
    edge_a, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    async with EventProducer(settings) as producer:
        client = await stream_events(producer, edge_a, conn_id, topic, 0, 10)
        await client.close()
        await wait_committed(edge_a, conn_id, 0)
        edge_a.stop()
        await publish_seq(producer, topic, 10, 15)
        edge_b = edge_factory(settings)
        client_b = await open_stream(edge_b, conn_id)
        await client_b.wait_for(15)
        await client_b.close()
        await wait_committed(edge_b, conn_id, 0)
        await publish_seq(producer, topic, 25, 5)
        edge_a2 = edge_factory(settings)
        client_a2 = await open_stream(edge_a2, conn_id)
        await client_a2.wait_for(5)
        await asyncio.sleep(0.3)
        await client_a2.close()
    assert_exact(client.seqs(), range(0, 10))
    assert_exact(client_b.seqs(), range(10, 25))
    assert_exact(client_a2.seqs(), range(25, 30))


async def test_status_reports_connected_and_lag_falls_to_zero_as_events_are_delivered(settings, edge_factory,
                                                                                     new_topic) -> None:
    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 12)
        before = await wait_committed(edge, conn_id, 12)
        assert before["status"] == "disconnected" and before["eventsDelivered"] == 0
        client = await open_stream(edge, conn_id)
        await publish_seq(producer, topic, 12, 8)
        await client.wait_for(20)
        status = await wait_committed(edge, conn_id, 0)
        assert status["status"] == "connected" and status["eventsDelivered"] == 20
        await client.close()
    assert_exact(client.seqs(), range(0, 20))


async def test_second_stream_takes_over_and_the_first_is_closed_with_a_comment(settings, edge_factory,
                                                                              new_topic) -> None:
    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    first = await open_stream(edge, conn_id)
    second = await open_stream(edge, conn_id)
    await asyncio.wait_for(first.ended.wait(), 10)
    assert b": closing: another stream took over this connection" in first.raw
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 5)
    await second.wait_for(5)
    assert not second.ended.is_set()
    await second.close()
    await first.close()


async def test_deleting_a_connection_closes_its_live_stream(settings, edge_factory, new_topic) -> None:
    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    client = await open_stream(edge, conn_id)
    assert httpx.delete(f"{edge.url}/api/v1/connections/{conn_id}").status_code == 204
    await asyncio.wait_for(client.ended.wait(), 10)
    assert b": closing: connection deleted" in client.raw
    assert httpx.get(f"{edge.url}/api/v1/connections/{conn_id}/stream", timeout=5).status_code == 404
    await client.close()


async def test_sigterm_drain_sends_final_comment_and_the_client_misses_nothing_on_another_edge(
        settings, edge_factory, new_topic) -> None:
    topic = await new_topic()
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    ids = [create(edge_a, topic) for _ in range(5)]
    clients = [await open_stream(edge_a, i) for i in ids]
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 40)
        for c in clients:
            await c.wait_for(40)
        edge_a.popen.send_signal(signal.SIGTERM)
        for c in clients:
            await asyncio.wait_for(c.ended.wait(), 15)
            assert b": closing: the edge is restarting" in c.raw
        # uvicorn re-raises SIGTERM after a graceful shutdown, so the exit status is -15 either way.
        assert edge_a.popen.wait(20) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in edge_a.log()
        await publish_seq(producer, topic, 40, 25)
        resumed = [await open_stream(edge_b, i) for i in ids]
        for c in resumed:
            await c.wait_for(25)
        await asyncio.sleep(0.3)
    for before, after in zip(clients, resumed, strict=True):
        assert_exact(before.seqs() + after.seqs(), range(0, 65))
        await before.close()
        await after.close()


# ------------------------------------------------------------------ at-least-once for real (issue 11)

async def test_an_older_last_event_id_resumes_from_it_not_from_the_committed_position(settings, edge_factory,
                                                                                     new_topic) -> None:
    # The committed position counts what the socket took; a client whose network died may have lost
    # those bytes in buffers. The id it sends is what it processed.
    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    async with EventProducer(settings) as producer:
        first = await stream_events(producer, edge, conn_id, topic, 0, 20)
        await wait_committed(edge, conn_id, 0)
        await first.close()
        processed = first.messages[11].id  # the client only got this far before its network died
        assert processed
        second = await open_stream(edge, conn_id, headers={"Last-Event-ID": processed})
        await asyncio.sleep(1.0)
        await second.close()
    assert_exact(first.seqs()[:12] + second.seqs(), range(0, 20))


async def test_a_stream_longer_than_twice_the_ttl_is_not_expired_by_another_edge(settings_factory, edge_factory,
                                                                                 new_topic) -> None:
    settings = settings_factory(connection_commit_interval_ms=100, connection_ttl_s=1.0,
                                connection_sweep_interval_s=0.2)
    topic = await new_topic()
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    conn_id = create(edge_a, topic)
    client = await open_stream(edge_a, conn_id)
    await asyncio.sleep(4.0)  # four TTLs while edge B sweeps every 0.2 s
    assert not client.ended.is_set(), bytes(client.raw)
    assert httpx.get(f"{edge_b.url}/api/v1/connections/{conn_id}/status").status_code == 200
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 5)
    await client.wait_for(5)
    await client.close()
    assert_exact(client.seqs(), range(0, 5))


async def test_position_survives_the_broker_purging_the_group_offsets(settings, edge_factory, new_topic) -> None:
    # Offsets retention (offsets.retention.minutes, 7 days by default, like the TTL) deletes a group's
    # offsets; deleting the group by hand does the same to a running broker without changing its config.
    from streams.kafka.group_offsets import GroupOffsets

    edge, topic, conn_id = await new_connection(settings, edge_factory, new_topic)
    async with EventProducer(settings) as producer:
        first = await stream_events(producer, edge, conn_id, topic, 0, 10)
        await wait_committed(edge, conn_id, 0)
        await first.close()
        for _ in range(50):  # the stream's release stores the position with the definition
            listing = httpx.get(f"{edge.url}/api/v1/connections").json()["connections"]
            if all(c["status"] == "disconnected" for c in listing if c["id"] == conn_id):
                break
            await asyncio.sleep(0.1)
        async with GroupOffsets(settings) as groups:
            assert await groups.delete(f"{settings.connection_group_prefix}{conn_id}")
        await publish_seq(producer, topic, 10, 5)
        second = await open_stream(edge, conn_id)
        await second.wait_for(5)
        await asyncio.sleep(0.5)
        await second.close()
    assert_exact(first.seqs(), range(0, 10))
    assert_exact(second.seqs(), range(10, 15))
