"""Targeted delivery (`recipients`) against a real edge and broker: an event reaches only the streams of
the principals and durable connections it names, live, on catch-up (since, Last-Event-ID) and in
history (admin sees all there); publishing it needs the usual publish scope; the routing worker
carries it to the routed topic unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.auth_helpers import ADMIN_HEADERS, bearer, token
from tests.integration.conftest import Proc, free_port, settings_env, start_process, wait_ready
from tests.integration.pipeline_helpers import ensure_topics, pipeline_settings, start_worker
from tests.integration.stream_helpers import SSEClient, private_settings, start_edge

pytestmark = pytest.mark.integration
HISTORY = "/api/v1/events/history"
ALICE = bearer(token("alice", "subscribe:rcp-* publish:rcp-*"))
BOB = bearer(token("bob", "subscribe:rcp-*"))
DAVE = bearer(token("dave", "subscribe:rcp-*"))  # named by no event
TO = {"a": ["alice"], "b": ["bob"], "ab": ["alice", "bob"], "none": ["carol"], "all": None}
ROUNDS = 3  # events of each kind


@pytest.fixture(scope="module")
def rcp_settings(kafka_bootstrap: str) -> Settings:
    """No replay window: a stream behind the tail reads Kafka (catch-up), the path under test."""
    return private_settings(kafka_bootstrap, stream_replay_records=0, connection_commit_interval_ms=100)


@pytest.fixture(scope="module")
def edge(rcp_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_edge(rcp_settings, tmp_path_factory.mktemp("edge"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def producer(rcp_settings: Settings) -> AsyncIterator[EventProducer]:
    async with EventProducer(rcp_settings, linger_ms=0) as producer:
        yield producer


def events_to(to: dict[str, list[str] | None]) -> list[dict[str, Any]]:
    """Return ROUNDS events of each kind, `data.to` naming the kind (subjects spread over partitions)."""
    out = []
    for i in range(ROUNDS):
        for kind, recipients in to.items():
            event: dict[str, Any] = {"source": "/rcp", "type": "rcp.note", "subject": f"s{i}-{kind}",
                                     "data": {"to": kind, "i": i}}
            if recipients is not None:
                event["recipients"] = recipients
            out.append(event)
    return out


def kinds(messages: list[Any]) -> list[str]:
    """Return the sorted kinds of the events received (asserting no frame shows its recipients)."""
    data = [orjson.loads(m.data) for m in messages]
    assert all("recipients" not in d for d in data), data
    return sorted(d["data"]["to"] for d in data)


def expect(*names: str) -> list[str]:
    return sorted(kind for kind in names for _ in range(ROUNDS))


async def stream(edge: Proc, topic: str, headers: dict[str, str], **params: str) -> SSEClient:
    client = await SSEClient(edge.url, filter={"topics": [topic]}, headers=headers, params=params).start()
    assert client.status == 200
    return client


async def settled(client: SSEClient, count: int) -> list[str]:
    """Wait for `count` events, then a little longer so that one too many would show."""
    await client.wait_for(count)
    await asyncio.sleep(1.0)
    return kinds(client.messages)


def history(edge: Proc, topic: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = httpx.get(edge.url + HISTORY, params={"filter": orjson.dumps({"topics": [topic]}).decode(),
                                                 "limit": 1000}, headers=headers, timeout=20)
    assert resp.status_code == 200, resp.text
    assert resp.json()["next"] is None
    return resp.json()["events"]


async def test_recipients_never_reach_other_principals_streams_or_history(
        edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic(prefix="rcp")
    created = httpx.post(f"{edge.url}/api/v1/connections", headers=BOB,
                         json={"filter": {"topics": [topic]}, "options": {"batchSize": 2}})
    assert created.status_code == 201, created.text
    conn_id = created.json()["id"]
    to = {**TO, "conn": [conn_id]}
    before = datetime.now(UTC).isoformat()
    live = {name: await stream(edge, topic, headers) for name, headers in
            (("alice", ALICE), ("bob", BOB), ("admin", ADMIN_HEADERS))}
    durable = SSEClient(edge.url, headers=BOB)
    durable.url = f"{edge.url}/api/v1/connections/{conn_id}/stream"
    await durable.start()
    await asyncio.sleep(0.5)  # every stream registered with the hub
    try:
        await producer.publish_batch(events_to(to), topic)
        # Live: each stream sees exactly its set; an admin's stream is no recipient unless named.
        assert await settled(live["alice"], 3 * ROUNDS) == expect("a", "ab", "all")
        assert await settled(live["bob"], 3 * ROUNDS) == expect("b", "ab", "all")
        assert await settled(live["admin"], ROUNDS) == expect("all")
        # The durable connection's stream: its owner's events and those naming the connection itself.
        assert await settled(durable, 4 * ROUNDS) == expect("b", "ab", "all", "conn")
        first_of_alice = live["alice"].messages[0]
    finally:
        for client in (*live.values(), durable):
            await client.close()

    # Catch-up from Kafka: `since` a time before the events, and Last-Event-ID after alice's first event.
    for headers, wanted in ((ALICE, expect("a", "ab", "all")), (BOB, expect("b", "ab", "all")),
                            (DAVE, expect("all"))):
        client = await stream(edge, topic, headers, since=before)
        try:
            assert await settled(client, len(wanted)) == wanted
        finally:
            await client.close()
    resumed = await stream(edge, topic, {**ALICE, "Last-Event-ID": first_of_alice.id or ""})
    try:
        rest = expect("a", "ab", "all")
        rest.remove(orjson.loads(first_of_alice.data)["data"]["to"])
        assert await settled(resumed, len(rest)) == rest
    finally:
        await resumed.close()

    # History: recipients and the owner of a named connection; admin sees every event, with its recipients.
    assert kinds_of(history(edge, topic, ALICE)) == expect("a", "ab", "all")
    assert kinds_of(history(edge, topic, BOB)) == expect("b", "ab", "all", "conn")
    assert kinds_of(history(edge, topic, DAVE)) == expect("all")
    admin = history(edge, topic, ADMIN_HEADERS)
    assert sorted(e["data"]["to"] for e in admin) == expect(*to)
    assert all(e.get("recipients") == to[e["data"]["to"]] for e in admin)


def kinds_of(events: list[dict[str, Any]]) -> list[str]:
    assert all("recipients" not in e for e in events), events
    return sorted(e["data"]["to"] for e in events)


def test_publishing_with_recipients_needs_the_publish_scope_and_valid_names(edge: Proc, rcp_settings: Settings
                                                                            ) -> None:
    url = f"{edge.url}/api/v1/events"
    body = {"source": "/rcp", "type": "rcp.note", "recipients": ["bob"]}
    assert httpx.post(url, params={"topic": "rcp-x"}, json=body, headers=ALICE).status_code == 202
    refused = httpx.post(url, params={"topic": "rcp-x"}, json=body, headers=BOB)  # subscribe only
    assert refused.status_code == 403, refused.text
    for bad in ([], [""], ["x" * 257], [f"p{i}" for i in range(101)], "bob"):
        resp = httpx.post(url, params={"topic": "rcp-x"}, json={**body, "recipients": bad}, headers=ALICE)
        assert resp.status_code == 422 and resp.json()["field"] == "recipients", resp.text


async def test_the_routing_worker_carries_recipients_to_the_routed_topic(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, new_topic) -> None:
    tmp = tmp_path_factory.mktemp("routed")
    settings = pipeline_settings(kafka_bootstrap, tmp)
    await ensure_topics(settings)
    topic = await new_topic(prefix="rcp")
    worker = start_worker(settings, tmp)
    port = free_port()
    edge = start_process(["-m", "app"], {**settings_env(settings), "ES_HTTP_PORT": str(port)}, tmp / "edge.log")
    edge.url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(edge)
        alice, bob = await stream(edge, topic, ALICE), await stream(edge, topic, BOB)
        await asyncio.sleep(0.5)
        try:
            for recipients in (["alice"], None):
                body: dict[str, Any] = {"source": "/rcp", "type": "rcp.note", "data": {"to": "a" if recipients
                                                                                       else "all", "i": 0}}
                if recipients:
                    body["recipients"] = recipients
                resp = httpx.post(f"{edge.url}/api/v1/events", params={"topic": topic}, json=body, headers=ALICE)
                assert resp.status_code == 202, resp.text
            assert await settled(alice, 2) == ["a", "all"]
            assert await settled(bob, 1) == ["all"]
        finally:
            await alice.close()
            await bob.close()
        admin = history(edge, topic, ADMIN_HEADERS)
        assert {e["data"]["to"]: e.get("recipients") for e in admin} == {"a": ["alice"], "all": None}
    finally:
        edge.stop()
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_recipients_hold_when_a_resume_is_served_from_the_replay_window(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, new_topic) -> None:
    settings = private_settings(kafka_bootstrap)  # the default replay window (ES_STREAM_REPLAY_RECORDS)
    edge = start_edge(settings, tmp_path_factory.mktemp("replay"))
    try:
        topic = await new_topic(prefix="rcp")
        live = {name: await stream(edge, topic, headers) for name, headers in (("alice", ALICE), ("bob", BOB))}
        await asyncio.sleep(0.5)
        try:
            async with EventProducer(settings, linger_ms=0) as producer:
                await producer.publish_batch(events_to(TO), topic)
            firsts = {name: (await client.wait_for(1))[0] for name, client in live.items()}
            await settled(live["alice"], 3 * ROUNDS)
        finally:
            for client in live.values():
                await client.close()
        cases = (("alice", ALICE, expect("a", "ab", "all")), ("bob", BOB, expect("b", "ab", "all")))
        for name, headers, wanted in cases:
            wanted.remove(orjson.loads(firsts[name].data)["data"]["to"])
            client = await stream(edge, topic, {**headers, "Last-Event-ID": firsts[name].id or ""})
            try:
                assert await settled(client, len(wanted)) == wanted
            finally:
                await client.close()
        stats = httpx.get(edge.url + "/api/v1/events/stream/stats", timeout=10).json()
        assert stats["replays"] == 2 and stats["catchup_jobs"] == 0  # both resumes came from memory
    finally:
        edge.stop()
