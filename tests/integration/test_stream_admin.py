"""Stream admin across edges, over a real broker: a stream opened on edge A is listed by edge B (to an admin
and to its owner, not to another principal) and ended from edge B; the client resumes without loss."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from streams.kafka.producer import EventProducer
from tests.auth_helpers import bearer, token
from tests.conftest import unique
from tests.integration.stream_helpers import SSEClient, assert_exact, publish_seq

pytestmark = pytest.mark.integration
STREAMS = "/api/v1/streams"


@pytest.fixture
def settings(settings_factory):
    return settings_factory(topic_prefix=unique("adm"), presence_interval_s=0.5, presence_stale_s=5,
                            connection_commit_interval_ms=100)


def edge_id(edge) -> str:
    return httpx.get(f"{edge.url}/api/v1/stats").json()["edge"]


async def listed(edge, stream_id: str, headers: dict[str, str] | None = None, *, until: Any = None,
                 timeout: float = 10) -> dict[str, Any]:
    """Poll edge's GET /api/v1/streams until the stream shows (and `until(stream)` holds); return it."""
    stream: dict[str, Any] | None = None
    async with httpx.AsyncClient(headers=headers) as client:
        for _ in range(int(timeout * 10)):
            body = (await client.get(edge.url + STREAMS)).json()
            stream = next((s for s in body["streams"] if s["id"] == stream_id), None)
            if stream is not None and (until is None or until(stream)):
                return stream
            await asyncio.sleep(0.1)
    raise AssertionError(f"stream {stream_id} not listed as wanted by {edge.url}: last saw {stream}")


async def test_a_stream_is_listed_and_disconnected_from_an_edge_other_than_the_one_holding_it(
        settings, edge_factory, new_topic) -> None:
    topic = await new_topic()
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    alice, bob = bearer(token("alice", f"subscribe:{topic}")), bearer(token("bob", f"subscribe:{topic}"))
    client = await SSEClient(edge_a.url, filter={"topics": [topic]}, headers=alice).start()
    assert client.status == 200
    stream_id = client.response_headers["es-stream-id"]
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 10)
        await client.wait_for(10)
        assert client.raw.startswith(b"retry: 2000\n\n" + f": stream {stream_id}\n\n".encode())

        seen = await listed(edge_b, stream_id, until=lambda s: s["events_delivered"] == 10)  # the admin's view
        assert seen["edge"] == edge_id(edge_a) != edge_id(edge_b)
        assert (seen["principal"], seen["kind"], seen["state"]) == ("alice", "plain", "live")
        assert topic in seen["filter"] and seen["buffered_bytes"] == 0 and seen["connected_at"].endswith("Z")
        assert (await listed(edge_b, stream_id, alice))["edge"] == seen["edge"]  # its owner sees it
        others = httpx.get(edge_b.url + STREAMS, headers=bob).json()
        assert others["count"] == 0 and "edges" not in others  # another principal does not
        mine_only = httpx.get(edge_b.url + STREAMS, params={"principal": "alice"}, headers=bob).json()
        assert mine_only["count"] == 0

        assert httpx.delete(f"{edge_b.url}{STREAMS}/{stream_id}", headers=bob).status_code == 403
        assert httpx.delete(f"{edge_b.url}{STREAMS}/nosuchstream").status_code == 404
        answer = httpx.delete(f"{edge_b.url}{STREAMS}/{stream_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": stream_id, "edge": seen["edge"], "outcome": "ended"}
        await asyncio.wait_for(client.ended.wait(), 10)
        assert client.raw.endswith(b": disconnected by test-admin; reconnect with Last-Event-ID to resume\n\n")
        last_id = client.last_id
        await client.close()

        await publish_seq(producer, topic, 10, 10)  # while nobody streams
        again = await SSEClient(edge_b.url, filter={"topics": [topic]}, headers={**alice, "Last-Event-ID": last_id}
                                ).start()
        await again.wait_for(10)
        await asyncio.sleep(0.3)
        here = httpx.delete(f"{edge_b.url}{STREAMS}/{again.response_headers['es-stream-id']}", headers=alice)
        assert here.json()["edge"] == edge_id(edge_b)  # a stream of the edge asked ends at once, by its owner
        await asyncio.wait_for(again.ended.wait(), 10)
        assert again.raw.endswith(b": disconnected by alice; reconnect with Last-Event-ID to resume\n\n")
        await again.close()
    assert_exact(client.seqs(), range(0, 10))
    assert_exact(again.seqs(), range(10, 20))
    for _ in range(50):  # the ended stream leaves the listing once edge A publishes again
        if not any(s["id"] == stream_id for s in httpx.get(edge_b.url + STREAMS).json()["streams"]):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the ended stream is still listed")


async def test_a_durable_stream_is_ended_from_another_edge_and_resumes_from_its_committed_position(
        settings, edge_factory, new_topic) -> None:
    topic = await new_topic()
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    alice = bearer(token("alice", f"subscribe:{topic}"))
    created = httpx.post(f"{edge_a.url}/api/v1/connections", json={"filter": {"topics": [topic]}}, headers=alice)
    conn_id = created.json()["id"]
    client = SSEClient(edge_a.url, headers=alice)
    client.url = f"{edge_a.url}/api/v1/connections/{conn_id}/stream"
    await client.start()
    stream_id = client.response_headers["es-stream-id"]
    async with EventProducer(settings) as producer:
        await publish_seq(producer, topic, 0, 8)
        await client.wait_for(8)
        seen = await listed(edge_b, stream_id, alice)
        assert (seen["kind"], seen["connection"], seen["edge"]) == ("durable", conn_id, edge_id(edge_a))
        answer = httpx.delete(f"{edge_b.url}{STREAMS}/{stream_id}", headers=alice)  # its owner ends it
        assert answer.status_code == 200 and answer.json()["outcome"] == "ended"
        await asyncio.wait_for(client.ended.wait(), 10)
        assert client.raw.endswith(b": disconnected by alice; reconnect with Last-Event-ID to resume\n\n")
        await client.close()
        await publish_seq(producer, topic, 8, 5)
        again = SSEClient(edge_b.url, headers=alice)  # no Last-Event-ID: the connection's committed position
        again.url = f"{edge_b.url}/api/v1/connections/{conn_id}/stream"
        await again.start()
        await again.wait_for(5)
        await asyncio.sleep(0.3)
        await again.close()
    assert_exact(client.seqs(), range(0, 8))
    assert_exact(again.seqs(), range(8, 13))


async def test_an_endpoint_stream_is_listed_by_its_name_and_ended_from_another_edge(settings, edge_factory,
                                                                                    new_topic) -> None:
    topic = await new_topic()
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    name = unique("ep").lower()
    created = httpx.post(f"{edge_a.url}/api/v1/endpoints", json={"name": name, "filter": {"topics": [topic]}})
    assert created.status_code == 201, created.text
    alice = bearer(token("alice", f"subscribe:{topic}"))
    client = SSEClient(edge_a.url, headers=alice)
    client.url = f"{edge_a.url}/api/v1/endpoints/{name}/stream"
    await client.start()
    stream_id = client.response_headers["es-stream-id"]
    seen = await listed(edge_b, stream_id)
    assert (seen["kind"], seen["endpoint"], seen["principal"]) == ("endpoint", name, "alice")
    kinds = httpx.get(edge_b.url + STREAMS, params={"kind": "plain"}).json()["streams"]
    assert stream_id not in [s["id"] for s in kinds]
    assert httpx.delete(f"{edge_b.url}{STREAMS}/{stream_id}").status_code == 200
    await asyncio.wait_for(client.ended.wait(), 10)
    assert client.raw.endswith(b": disconnected by test-admin; reconnect with Last-Event-ID to resume\n\n")
    await client.close()
