"""Authentication and authorization against a real edge: the scope matrix of every resource, ownership
of durable connections between two principals, and a stream whose token expires (a `token-expiring`
event, the end at `exp`, then a reconnect with a fresh token and Last-Event-ID that misses nothing)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.subscriber_client import Subscription
from streams.kafka.producer import EventProducer
from tests.auth_helpers import anonymous, bearer, token
from tests.conftest import unique
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import SSEClient, assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration
EVENT = {"source": "/auth-test", "type": "auth.test", "data": {"n": 1}}


@pytest.fixture
def edge(kafka_bootstrap: str, tmp_path: Path) -> Any:
    settings = private_settings(kafka_bootstrap, auth_expiry_warning_s=2.0, stream_retry_ms=200)
    proc = start_edge(settings, tmp_path)
    yield proc, settings
    proc.stop()


def status(edge: Proc, method: str, path: str, scope: str, sub: str = "alice", **kwargs: Any) -> int:
    """Answer the status of one request made with a token of `scope`."""
    resp = httpx.request(method, edge.url + path, headers=bearer(token(sub, scope)), timeout=30, **kwargs)
    if resp.status_code in (401, 403):
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["www-authenticate"].startswith("Bearer ")
    return resp.status_code


def stream_status(edge: Proc, path: str, scope: str, **params: str) -> int:
    """Open a stream with a token of `scope` and return its status (closing it at once)."""
    with httpx.stream("GET", edge.url + path, params=params, headers=bearer(token("alice", scope)),
                      timeout=30) as resp:
        return resp.status_code


async def test_scope_matrix_of_streams_history_and_publishing(edge: Any, new_topic: Any) -> None:
    proc, settings = edge
    topic = await new_topic()
    flt = {"filter": orjson.dumps({"topics": [topic]}).decode()}
    default = settings.default_topic
    stream, history = "/api/v1/events/stream", "/api/v1/events/history"
    assert stream_status(proc, stream, f"subscribe:{topic}", **flt) == 200
    assert stream_status(proc, stream, "subscribe:t-*", **flt) == 200  # a glob of the shared matcher
    assert stream_status(proc, stream, "subscribe:other", **flt) == 403
    assert stream_status(proc, stream, f"publish:{topic}", **flt) == 403
    assert stream_status(proc, stream, f"subscribe:{default}") == 200  # no topics: the default topic
    assert stream_status(proc, stream, f"subscribe:{topic}") == 403
    assert stream_status(proc, stream, "subscribe:*", filter=orjson.dumps({"topics": [settings.ingress_topic]})
                         .decode()) == 403  # internal topics: admin only, whatever the glob
    two = {"filter": orjson.dumps({"topics": [topic, default]}).decode()}
    assert stream_status(proc, stream, f"subscribe:{topic}", **two) == 403  # every topic must be covered
    assert status(proc, "GET", history, f"subscribe:{topic}", params=flt) == 200
    assert status(proc, "GET", history, "subscribe:nope", params=flt) == 403
    # Publishing: the ?topic= asked for, else the default topic; a batch is refused whole.
    assert status(proc, "POST", "/api/v1/events", f"publish:{topic}", params={"topic": topic}, json=EVENT) == 202
    assert status(proc, "POST", "/api/v1/events", f"publish:{topic}", json=EVENT) == 403
    assert status(proc, "POST", "/api/v1/events", f"publish:{default}", json=EVENT) == 202
    assert status(proc, "POST", "/api/v1/events", f"subscribe:{topic}", params={"topic": topic}, json=EVENT) == 403
    batch = {"events": [EVENT, EVENT]}
    assert status(proc, "POST", "/api/v1/events/batch", "publish:t-*", params={"topic": topic}, json=batch) == 202
    assert status(proc, "POST", "/api/v1/events/batch", "publish:x", params={"topic": topic}, json=batch) == 403
    assert status(proc, "POST", "/api/v1/events", "publish:*", params={"topic": settings.dlq_topic}, json=EVENT) == 403


async def test_scope_matrix_of_topics_dlq_routes_and_registry(edge: Any) -> None:
    proc, settings = edge
    reader = "subscribe:*"
    name = unique("auth")
    assert status(proc, "GET", "/api/v1/topics", reader) == 200
    assert status(proc, "POST", "/api/v1/topics", reader, json={"name": name}) == 403
    assert status(proc, "POST", "/api/v1/topics", "admin", json={"name": name}) == 201
    assert status(proc, "GET", f"/api/v1/topics/{name}", reader) == 200
    assert status(proc, "DELETE", f"/api/v1/topics/{name}", reader) == 403
    assert status(proc, "DELETE", f"/api/v1/topics/{name}", "admin") == 204
    for method, path, body in [("GET", "/api/v1/dlq", None), ("GET", "/api/v1/dlq/0/0", None),
                               ("POST", "/api/v1/dlq/replay", {"all": True}), ("GET", "/api/v1/routes", None)]:
        assert status(proc, method, path, reader, json=body) == 403, path
    assert status(proc, "GET", "/api/v1/dlq", "admin") == 200
    assert status(proc, "GET", "/api/v1/routes", "admin") == 200
    schema = {"schema": orjson.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})
              .decode()}
    registry = "/api/v1/registry"
    assert status(proc, "POST", f"{registry}/subjects/s-{name}/versions", reader, json=schema) == 403
    assert status(proc, "POST", f"{registry}/subjects/s-{name}/versions", "admin", json=schema) == 200
    assert status(proc, "GET", f"{registry}/subjects", reader) == 200  # reads: any valid credential
    assert status(proc, "GET", f"{registry}/subjects/s-{name}/versions/latest", reader) == 200
    assert status(proc, "POST", f"{registry}/subjects/s-{name}", reader, json=schema) == 200  # a lookup reads
    assert status(proc, "PUT", f"{registry}/config", reader, json={"compatibility": "NONE"}) == 403
    assert status(proc, "PUT", f"{registry}/config/s-{name}", reader, json={"compatibility": "NONE"}) == 403
    assert status(proc, "DELETE", f"{registry}/subjects/s-{name}", reader) == 403
    assert status(proc, "DELETE", f"{registry}/subjects/s-{name}", "admin") == 200


async def test_bad_credentials_get_401_saying_why(edge: Any) -> None:
    proc, settings = edge
    cases = {"forged token": token(secret="s" * 40), "token expired": token(ttl_s=-60),
             "not accepted": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ."}
    for why, value in cases.items():
        resp = httpx.get(proc.url + "/api/v1/topics", headers=bearer(value))
        assert resp.status_code == 401 and why in resp.json()["detail"]
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    resp = httpx.get(proc.url + "/api/v1/events/stream", params={"access_token": token(scope="subscribe:*")},
                     headers={"Authorization": "Bearer " + token(ttl_s=-60)})
    assert resp.status_code == 401  # the header wins over the query parameter
    assert httpx.get(proc.url + "/healthz", headers={}).status_code == 200


async def test_credential_is_checked_before_the_body_is_parsed(edge: Any) -> None:
    proc, _ = edge
    body, json_type = b'{"source": "/x", ', {"content-type": "application/json"}
    with anonymous():
        for path in ("/api/v1/events", "/api/v1/events/batch", "/api/v1/topics", "/api/v1/connections"):
            resp = httpx.post(proc.url + path, content=body, headers=json_type)
            assert resp.status_code == 401, (path, resp.text)
            assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    admin = {**json_type, **bearer(token())}
    events = httpx.post(proc.url + "/api/v1/events", content=body, headers=admin)
    assert events.status_code == 400 and events.json()["title"] == "Malformed JSON"  # the route reads its body
    assert httpx.post(proc.url + "/api/v1/topics", content=body, headers=admin).status_code == 422


async def test_connections_belong_to_their_creator(edge: Any, new_topic: Any) -> None:
    proc, settings = edge
    topic = await new_topic()
    alice = bearer(token("alice", f"subscribe:{topic}"))
    bob = bearer(token("bob", f"subscribe:{topic}"))
    base = proc.url + "/api/v1/connections"
    spec = {"filter": {"topics": [topic]}, "owner": "alice's dashboard"}
    created = httpx.post(base, json=spec, headers=alice, timeout=30)
    assert created.status_code == 201, created.text
    conn_id = created.json()["id"]
    assert httpx.post(base, json={"filter": {"topics": [settings.default_topic]}}, headers=alice).status_code == 403
    assert httpx.get(f"{base}/{conn_id}/status", headers=alice).json()["owner"] == "alice"
    mine = httpx.get(base, headers=alice).json()["connections"]
    assert [c["id"] for c in mine] == [conn_id]
    assert httpx.get(base, headers=bob).json()["connections"] == []
    assert httpx.get(f"{base}/{conn_id}/status", headers=bob).status_code == 404  # existence is not leaked
    assert httpx.delete(f"{base}/{conn_id}", headers=bob).status_code == 404
    with httpx.stream("GET", f"{base}/{conn_id}/stream", headers=bob, timeout=30) as resp:
        assert resp.status_code == 404
    # The owner's token no longer covering the topic: 403 when streaming it.
    with httpx.stream("GET", f"{base}/{conn_id}/stream", headers=bearer(token("alice", "subscribe:other")),
                      timeout=30) as resp:
        assert resp.status_code == 403
    admin = bearer(token("root", "admin"))
    assert conn_id in [c["id"] for c in httpx.get(base, headers=admin).json()["connections"]]
    assert httpx.get(f"{base}/{conn_id}/status", headers=admin).status_code == 200
    assert httpx.delete(f"{base}/{conn_id}", headers=alice).status_code == 204


def seqs_of(client: SSEClient) -> list[int]:
    return [orjson.loads(m.data)["data"]["seq"] for m in client.messages if m.event == "test.seq"]


async def test_expiring_token_warns_ends_the_stream_and_a_fresh_token_resumes_without_gap(
        edge: Any, new_topic: Any) -> None:
    proc, settings = edge
    topic = await new_topic()
    scope = f"subscribe:{topic}"
    ttl_s = 5.0
    first = SSEClient(proc.url, filter={"topics": [topic]}, headers=bearer(token("alice", scope, ttl_s=ttl_s)))
    opened = time.monotonic()
    await first.start()
    assert first.status == 200
    async with EventProducer(settings, linger_ms=0) as producer:
        await publish_seq(producer, topic, 0, 20)
        await first.wait_for(20)
        async with asyncio.timeout(ttl_s + 10):
            await first.ended.wait()  # the edge ends the stream at `exp`
        ended_after = time.monotonic() - opened
        await publish_seq(producer, topic, 20, 20)  # published while the client is away
        warnings = [m for m in first.messages if m.event == "token-expiring"]
        assert len(warnings) == 1, first.raw.decode(errors="replace")[-500:]
        assert 0 <= orjson.loads(warnings[0].data)["expires_in"] <= 3
        assert b"credential expired" in first.raw  # the final comment says why
        assert ended_after < ttl_s + 3
        last_id = [m.id for m in first.messages if m.event == "test.seq"][-1]
        await first.close()
        # The old token cannot reopen it; a fresh one with the Last-Event-ID resumes exactly after.
        with httpx.stream("GET", proc.url + "/api/v1/events/stream", headers={
                **bearer(token("alice", scope, ttl_s=-30)), "Last-Event-ID": last_id}) as resp:
            assert resp.status_code == 401
        second = SSEClient(proc.url, filter={"topics": [topic]},
                           headers={**bearer(token("alice", scope)), "Last-Event-ID": last_id})
        await second.start()
        await second.wait_for(20)
        await second.close()
    assert_exact(seqs_of(first) + seqs_of(second), range(40))


async def test_python_subscriber_renews_its_token_and_misses_nothing(edge: Any, new_topic: Any) -> None:
    proc, settings = edge
    topic = await new_topic()
    issued: list[str] = []

    def fresh() -> str:
        issued.append(token("svc", f"subscribe:{topic}", ttl_s=4))
        return issued[-1]

    received: list[int] = []
    subscription = Subscription({"topics": [topic]}, base_url=proc.url, token=fresh, retry_delay=0.1)

    async def read() -> None:
        async for event in subscription:
            received.append(event.data["data"]["seq"])
            if len(received) >= 60:
                return

    reader = asyncio.create_task(read())
    async with EventProducer(settings, linger_ms=0) as producer:
        await asyncio.sleep(1.0)
        for start in range(0, 60, 10):  # spread over ~6 s: across at least one renewal
            await publish_seq(producer, topic, start, 10)
            await asyncio.sleep(1.0)
        try:
            await asyncio.wait_for(reader, 30)
        except TimeoutError:  # say how far it got, so a stall is told from a loss
            raise AssertionError(f"{len(received)} of 60 events in 30 s (last {received[-3:]}), "
                                 f"{subscription.reconnects} reconnects, {len(issued)} tokens") from None
    assert len(issued) >= 2 and subscription.reconnects >= 1
    assert_exact(received, range(60))
