"""The edge over real HTTP (its own process) and a real broker: publish, topics, errors, readiness."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import unique
from tests.kafka_utils import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(settings, edge_factory):
    """Return a ready edge process for this test's settings."""
    return edge_factory(settings)


def problem(resp: httpx.Response, status: int) -> dict:
    """Assert a problem+json answer with `status` and return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_post_event_answers_202_with_its_position_in_the_ingress_topic(settings, edge) -> None:
    resp = httpx.post(f"{edge.url}/api/v1/events", json={"source": "/ci", "type": "workflow.started",
                                                          "subject": "run-1", "data": {"ok": True}})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["topic"] == settings.ingress_topic and body["offset"] >= 0
    [rec] = await read_all(settings.kafka_bootstrap_servers, settings.ingress_topic)
    assert (rec.partition, rec.offset, rec.key) == (body["partition"], body["offset"], b"run-1")


async def test_batch_lists_each_position_in_order(settings, edge) -> None:
    events = [{"source": "/ci", "type": "t", "id": f"b{i}"} for i in range(25)]
    resp = httpx.post(f"{edge.url}/api/v1/events/batch", json={"events": events})
    assert resp.status_code == 202, resp.text
    assert [e["id"] for e in resp.json()["events"]] == [f"b{i}" for i in range(25)]
    assert len(await read_all(settings.kafka_bootstrap_servers, settings.ingress_topic)) == 25


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b'{"type": "t"}', 422, "source"),
    (b'{"source": "/s", "type": "t", "time": "soon"}', 422, "time"),
    (b"[1, 2]", 422, None),
], ids=["malformed", "empty", "missing-source", "bad-time", "not-object"])
async def test_bad_event_gets_problem_json_and_writes_nothing(settings, edge, body, status, field) -> None:
    resp = httpx.post(f"{edge.url}/api/v1/events", content=body, headers={"content-type": "application/json"})
    got = problem(resp, status)
    if field:
        assert got["field"] == field and field in got["detail"]
    assert await read_all(settings.kafka_bootstrap_servers, settings.ingress_topic) == []


async def test_batch_with_one_bad_event_names_it_and_writes_nothing(settings, edge) -> None:
    events = [{"source": "/s", "type": "t"}] * 3 + [{"source": "/s"}]
    got = problem(httpx.post(f"{edge.url}/api/v1/events/batch", json={"events": events}), 422)
    assert got["field"] == "events[3].type"
    assert await read_all(settings.kafka_bootstrap_servers, settings.ingress_topic) == []


async def test_oversized_event_gets_413_and_writes_nothing(settings_factory, edge_factory) -> None:
    settings = settings_factory(max_event_bytes=2048)
    edge = edge_factory(settings)
    big = {"source": "/s", "type": "t", "data": "x" * 5000}
    problem(httpx.post(f"{edge.url}/api/v1/events", json=big), 413)
    problem(httpx.post(f"{edge.url}/api/v1/events/batch", json={"events": [{"source": "/s", "type": "t"}, big]}),
            413)
    assert await read_all(settings.kafka_bootstrap_servers, settings.ingress_topic) == []


def test_broker_unavailable_gives_503_with_retry_after(settings_factory, edge_factory) -> None:
    settings = settings_factory(kafka_bootstrap_servers="127.0.0.1:1", ready_timeout_s=0.5)
    edge = edge_factory(settings, ready=False)
    from tests.integration.conftest import wait_ready

    wait_ready(edge, "/healthz")
    got = problem(httpx.get(f"{edge.url}/readyz"), 503)
    assert "127.0.0.1:1" in got["detail"]
    resp = httpx.post(f"{edge.url}/api/v1/events", json={"source": "/s", "type": "t"})
    problem(resp, 503)
    assert resp.headers["retry-after"] == "5"


def test_topics_api_create_describe_list_delete(edge) -> None:
    name = unique("api")
    resp = httpx.post(f"{edge.url}/api/v1/topics", json={"name": name, "partitions": 2, "retention_ms": 60000})
    assert resp.status_code == 201, resp.text
    assert len(resp.json()["partitions"]) == 2
    problem(httpx.post(f"{edge.url}/api/v1/topics", json={"name": name}), 409)
    desc = httpx.get(f"{edge.url}/api/v1/topics/{name}").json()
    assert desc["config"]["retention.ms"] == "60000"
    assert [p["high_watermark"] for p in desc["partitions"]] == [0, 0]
    assert name in [t["name"] for t in httpx.get(f"{edge.url}/api/v1/topics").json()["topics"]]
    assert httpx.delete(f"{edge.url}/api/v1/topics/{name}").status_code == 204
    problem(httpx.get(f"{edge.url}/api/v1/topics/{name}"), 404)
    problem(httpx.delete(f"{edge.url}/api/v1/topics/{name}"), 404)


def test_topics_api_refuses_invalid_config_and_internal_deletes(settings, edge) -> None:
    got = problem(httpx.post(f"{edge.url}/api/v1/topics", json={"name": unique("api"), "partitions": 0}), 422)
    assert got["field"] == "partitions"
    problem(httpx.post(f"{edge.url}/api/v1/topics", json={"name": unique("api"), "replication_factor": 9}), 422)
    problem(httpx.post(f"{edge.url}/api/v1/topics", json={"name": "bad name!"}), 422)
    for internal in (settings.ingress_topic, settings.dlq_topic, settings.schemas_topic):
        problem(httpx.delete(f"{edge.url}/api/v1/topics/{internal}"), 403)


def test_docs_and_openapi_are_served(edge) -> None:
    assert httpx.get(f"{edge.url}/docs").status_code == 200
    paths = httpx.get(f"{edge.url}/openapi.json").json()["paths"]
    assert "/api/v1/events" in paths and "/api/v1/topics/{name}" in paths
