"""Named endpoints over real HTTP, two edge processes and a real broker: created on one edge, listed and
streamed on the other, deleted (ending the other edge's stream with a final comment), kept across a
restart; and the answers to bad names, bad filters and missing scopes."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka.producer import EventProducer
from tests.auth_helpers import bearer, token
from tests.conftest import unique
from tests.integration.stream_helpers import SSEClient, assert_exact

pytestmark = pytest.mark.integration
ENDPOINTS = "/api/v1/endpoints"


@pytest.fixture
def settings(settings_factory):
    return settings_factory(topic_prefix=unique("ept"))  # the endpoints topic is <prefix>.internal.endpoints


async def open_endpoint(edge, name: str, headers: dict[str, str] | None = None) -> SSEClient:
    client = SSEClient(edge.url, headers=headers)
    client.url = f"{edge.url}{ENDPOINTS}/{name}/stream"
    await client.start()
    assert client.status == 200, bytes(client.raw)
    return client


async def publish(producer: EventProducer, topic: str, start: int, count: int) -> None:
    """Publish seq start..start+count-1; even seqs have status failed, odd ones status ok."""
    events = [{"source": "/ci", "type": "ci.run.finished", "subject": f"run-{i % 5}",
               "data": {"seq": i, "status": "failed" if i % 2 == 0 else "ok"}} for i in range(start, start + count)]
    await producer.publish_batch(events, topic)


async def eventually_listed(edge, name: str, timeout: float = 10) -> dict:
    """Poll the edge's list until it shows `name` (another edge wrote it)."""
    for _ in range(int(timeout * 10)):
        listed = {item["name"]: item for item in httpx.get(f"{edge.url}{ENDPOINTS}").json()["endpoints"]}
        if name in listed:
            return listed[name]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name!r} was not listed on {edge.url} within {timeout}s")


def streams_active(edge) -> dict[str, float]:
    """Return the edge's `eventstream_streams_active` by kind."""
    [family] = [f for f in text_string_to_metric_families(httpx.get(f"{edge.url}/metrics").text)
                if f.name == "eventstream_streams_active"]
    return {s.labels["kind"]: s.value for s in family.samples}


def create(edge, name: str, topic: str) -> httpx.Response:
    return httpx.post(f"{edge.url}{ENDPOINTS}", json={
        "name": name, "filter": {"topics": [topic], "where": {"status": "failed"}},
        "description": "CI runs that failed"})


async def test_an_endpoint_is_created_streamed_listed_and_deleted_its_stream_ending(settings, edge_factory,
                                                                                    new_topic) -> None:
    topic = await new_topic(prefix="ept")
    edge_a, edge_b = edge_factory(settings), edge_factory(settings)
    made = create(edge_a, "ci-failures", topic)
    assert made.status_code == 201, made.text
    assert made.headers["Location"] == f"{edge_a.url}{ENDPOINTS}/ci-failures/stream"
    listed = await eventually_listed(edge_b, "ci-failures")
    assert listed["filter"] == {"topics": [topic], "where": {"status": "failed"}}
    assert listed["description"] == "CI runs that failed" and listed["created_by"] == "test-admin"
    client = await open_endpoint(edge_b, "ci-failures")
    async with EventProducer(settings) as producer:
        await publish(producer, topic, 0, 20)
        await client.wait_for(10)
    await asyncio.sleep(0.5)  # time for anything that should not come
    assert_exact(client.seqs(), range(0, 20, 2))  # the failed runs, and only those
    assert httpx.get(f"{edge_b.url}{ENDPOINTS}/ci-failures").json()["streams_here"] == 1
    assert streams_active(edge_b) == {"plain": 0, "durable": 0, "shared": 0, "endpoint": 1, "stats": 0}

    assert httpx.delete(f"{edge_a.url}{ENDPOINTS}/ci-failures").status_code == 204
    await asyncio.wait_for(client.ended.wait(), 10)  # edge B read the tombstone and ended its stream
    assert bytes(client.raw).endswith(b": closing: endpoint deleted\n\n")
    await client.close()
    assert streams_active(edge_b)["endpoint"] == 0
    for edge in (edge_a, edge_b):
        assert httpx.get(f"{edge.url}{ENDPOINTS}/ci-failures").status_code == 404
        assert httpx.get(f"{edge.url}{ENDPOINTS}/ci-failures/stream", timeout=5).status_code == 404
        assert httpx.get(f"{edge.url}{ENDPOINTS}").json()["count"] == 0
    assert httpx.delete(f"{edge_b.url}{ENDPOINTS}/ci-failures").status_code == 404


async def test_endpoints_survive_a_restart_and_resume_from_last_event_id(settings, edge_factory, new_topic) -> None:
    topic = await new_topic(prefix="ept")
    edge_a = edge_factory(settings)
    assert create(edge_a, "nightly", topic).status_code == 201
    first = await open_endpoint(edge_a, "nightly")
    async with EventProducer(settings) as producer:
        await publish(producer, topic, 0, 10)
        await first.wait_for(5)
        await first.close()
        edge_a.stop()
        await publish(producer, topic, 10, 10)
        edge_c = edge_factory(settings)  # a new process: it reads the definitions before it is ready
        assert [item["name"] for item in httpx.get(f"{edge_c.url}{ENDPOINTS}").json()["endpoints"]] == ["nightly"]
        resumed = await open_endpoint(edge_c, "nightly", headers={"Last-Event-ID": first.last_id or ""})
        await resumed.wait_for(5)
        await asyncio.sleep(0.5)
        await resumed.close()
    assert_exact(first.seqs() + resumed.seqs(), range(0, 20, 2))


async def test_bad_names_filters_duplicates_and_missing_scopes_are_refused(settings, edge_factory,
                                                                           new_topic) -> None:
    topic, other = await new_topic(prefix="ept"), await new_topic(prefix="ept")
    edge = edge_factory(settings)
    url = f"{edge.url}{ENDPOINTS}"
    bad = [({"name": "CI_Failures", "filter": {}}, "name"),
           ({"name": "ci", "filter": {"colour": ["red"]}}, "filter.colour"),
           ({"name": "ci", "filter": {"topics": [unique("ept")]}}, "filter"),
           ({"name": "ci"}, "filter")]
    for body, field in bad:
        resp = httpx.post(url, json=body)
        assert resp.status_code == 422 and resp.json()["field"] == field, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
    assert create(edge, "ci", topic).status_code == 201
    again = create(edge, "ci", other)
    assert again.status_code == 409 and "delete it first" in again.json()["detail"]

    subscriber = bearer(token("viewer", f"subscribe:{topic}"))
    stranger = bearer(token("stranger", f"subscribe:{other}"))
    refused = httpx.post(url, json={"name": "mine", "filter": {"topics": [topic]}}, headers=subscriber)
    assert refused.status_code == 403 and 'scope="admin"' in refused.headers["WWW-Authenticate"]
    assert httpx.delete(f"{url}/ci", headers=subscriber).status_code == 403
    assert httpx.get(url, headers=stranger).json()["count"] == 1  # listing needs any credential
    forbidden = httpx.get(f"{url}/ci/stream", headers=stranger, timeout=5)
    assert forbidden.status_code == 403 and f'scope="subscribe:{topic}"' in forbidden.headers["WWW-Authenticate"]
    assert httpx.get(f"{url}/ghost/stream", headers=subscriber, timeout=5).status_code == 404
    client = await open_endpoint(edge, "ci", headers=subscriber)
    async with EventProducer(settings) as producer:
        await publish(producer, topic, 0, 4)
        await client.wait_for(2)
    await client.close()
    assert [orjson.loads(m.data)["data"]["status"] for m in client.messages] == ["failed", "failed"]
