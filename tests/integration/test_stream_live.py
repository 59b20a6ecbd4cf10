"""Live SSE streams from a real edge process and a real broker: framing, filters, heartbeat,
compression, and the problems answered for bad requests."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterator

import brotli
import httpx
import orjson
import pytest

from app.sse.framing import SSEParser
from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import STREAM, SSEClient, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live_settings(kafka_bootstrap: str) -> Settings:
    """Return settings shared by this module's edge and producer."""
    return private_settings(kafka_bootstrap, stream_retry_ms=700)


@pytest.fixture(scope="module")
def edge(live_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Return one edge process for the whole module."""
    proc = start_edge(live_settings, tmp_path_factory.mktemp("edge"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def producer(live_settings: Settings) -> AsyncIterator[EventProducer]:
    """Return a producer on the module's settings (same registry topic as the edge)."""
    async with EventProducer(live_settings, linger_ms=0) as producer:
        yield producer


def problem(resp: httpx.Response, status: int) -> dict:
    """Assert a problem+json answer with `status` and return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return resp.json()


async def test_stream_begins_with_retry_and_delivers_events_with_position(edge: Proc, producer: EventProducer,
                                                                          new_topic) -> None:
    topic = await new_topic()
    client = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        assert client.status == 200
        assert client.response_headers["content-type"].startswith("text/event-stream")
        positions = await publish_seq(producer, topic, 0, 5)
        messages = await client.wait_for(5)
        assert bytes(client.raw).startswith(b"retry: 700\n\n")
        assert sorted(client.seqs()) == list(range(5))
        first = orjson.loads(messages[0].data)
        assert messages[0].event == "test.seq" and first["specversion"] == "1.0" and first["source"] == "/test"
        got = {(orjson.loads(m.data)["partition"], orjson.loads(m.data)["offset"]) for m in messages}
        assert got == {(p.partition, p.offset) for p in positions}
        assert len({m.id for m in messages}) == 5
    finally:
        await client.close()


async def test_awkward_payload_cannot_break_the_framing(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic = await new_topic(1)
    nasty = {"text": "line1\nline2\r\nline3\rend", "fake": "\n\nid: forged\nevent: admin\ndata: {}\n\n",
             "nul": "a\u0000b", "unicode": "ünï \u2028 \U0001f600", "colon": ": not a comment"}
    client = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    try:
        await producer.publish({"source": "/s", "type": "evil\nevent: x", "data": nasty}, topic)
        await producer.publish({"source": "/s", "type": "plain", "data": {"seq": 1}}, topic)
        first, second = await client.wait_for(2)
        assert orjson.loads(first.data)["data"] == nasty
        assert first.event == "evilevent: x"  # newlines stripped from the event field, nothing injected
        assert second.event == "plain" and orjson.loads(second.data)["data"] == {"seq": 1}
    finally:
        await client.close()


@pytest.mark.parametrize(("flt", "expected"), [
    ({"types": ["order.*"]}, {0, 1, 2}),
    ({"types": ["order.*"], "where": {"status": ["failed", "error"]}}, {1, 2}),
    ({"sources": ["/shop/*"], "tags": ["vip"]}, {2, 3}),
    ({"subjects": ["cust-1"], "where": {"status": "ok"}}, {0}),
], ids=["type-glob", "type-and-where", "source-and-tag", "subject-and-where"])
async def test_stream_delivers_only_matching_events(edge: Proc, producer: EventProducer, new_topic,
                                                    flt: dict, expected: set[int]) -> None:
    topic = await new_topic()
    client = await SSEClient(edge.url, filter={"topics": [topic], **flt}).start()
    events = [
        {"source": "/shop/web", "type": "order.created", "subject": "cust-1", "data": {"n": 0, "status": "ok"}},
        {"source": "/shop/web", "type": "order.paid", "subject": "cust-2", "data": {"n": 1, "status": "failed"}},
        {"source": "/shop/app", "type": "order.paid", "subject": "cust-1", "tags": ["vip"],
         "data": {"n": 2, "status": "error"}},
        {"source": "/shop/app", "type": "user.login", "subject": "cust-3", "tags": ["vip", "x"],
         "data": {"n": 3, "status": "ok"}},
        {"source": "/ops", "type": "deploy.done", "data": {"n": 4}},
    ]
    try:
        await producer.publish_batch(events, topic)
        await producer.publish({"source": "/end", "type": "end", "tags": ["vip"], "subject": "cust-1",
                                "data": {"n": 99, "status": "ok"}}, topic)
        await client.wait_for(len(expected), timeout=10)
        await asyncio.sleep(0.5)  # anything that should not come would have come by now
        assert {orjson.loads(m.data)["data"]["n"] for m in client.messages} - {99} == expected
    finally:
        await client.close()


async def test_one_stream_follows_several_topics(edge: Proc, producer: EventProducer, new_topic) -> None:
    one, two = await new_topic(2), await new_topic(1)
    client = await SSEClient(edge.url, filter={"topics": [one, two]}).start()
    try:
        await publish_seq(producer, one, 0, 3)
        await publish_seq(producer, two, 3, 3)
        await client.wait_for(6)
        assert sorted(client.seqs()) == list(range(6))
        assert {orjson.loads(m.data)["topic"] for m in client.messages} == {one, two}
    finally:
        await client.close()


async def test_idle_stream_gets_heartbeat_comments(edge: Proc, new_topic) -> None:
    topic = await new_topic(1)
    client = await SSEClient(edge.url, filter={"topics": [topic]}, params={"heartbeat": "0.5"}).start()
    try:
        await asyncio.sleep(2.2)
        pings = bytes(client.raw).count(b": ping\n\n")
        assert 2 <= pings <= 5, bytes(client.raw)
        assert client.messages == []
    finally:
        await client.close()


@pytest.mark.parametrize(("accept", "encoding"), [("gzip, deflate, br", "br"), ("gzip", "gzip")],
                         ids=["prefers-br", "gzip"])
async def test_compressed_stream_decodes_event_by_event(edge: Proc, producer: EventProducer, new_topic,
                                                        accept: str, encoding: str) -> None:
    topic = await new_topic(1)
    decoder = brotli.Decompressor() if encoding == "br" else zlib.decompressobj(16 + zlib.MAX_WBITS)
    decode = decoder.process if encoding == "br" else decoder.decompress
    params = {"filter": orjson.dumps({"topics": [topic]}).decode(), "compression": "true"}
    async with httpx.AsyncClient(timeout=10) as http, http.stream(
            "GET", edge.url + STREAM, params=params, headers={"accept-encoding": accept}) as resp:
        assert resp.headers["content-encoding"] == encoding
        parser = SSEParser()
        raw = resp.aiter_raw()
        assert decode(await anext(raw)) == b"retry: 700\n\n"  # flushed at once, not held back
        for seq in range(3):
            await publish_seq(producer, topic, seq, 1)
            message = None
            while message is None:
                messages = list(parser.feed(decode(await asyncio.wait_for(anext(raw), 10))))
                message = messages[0] if messages else None
            assert orjson.loads(message.data)["data"]["seq"] == seq


async def test_uncompressed_unless_asked(edge: Proc, new_topic) -> None:
    topic = await new_topic(1)
    client = await SSEClient(edge.url, filter={"topics": [topic]}, headers={"accept-encoding": "br"}).start()
    try:
        assert "content-encoding" not in client.response_headers
    finally:
        await client.close()


@pytest.mark.parametrize(("params", "status", "fragment"), [
    ({"filter": "{nope"}, 400, "not valid JSON"),
    ({"filter": '{"types": []}'}, 400, "must not be empty"),
    ({"filter": '{"colour": "red"}'}, 400, "unknown filter field"),
    ({"filter": '{"topics": ["no-such-topic-xyz"]}'}, 404, "does not exist"),
    ({"since": "last tuesday"}, 400, "ISO-8601"),
    ({"heartbeat": "0"}, 422, "heartbeat"),
], ids=["malformed", "empty-list", "unknown-field", "unknown-topic", "bad-since", "bad-heartbeat"])
def test_bad_stream_request_gets_problem_json(edge: Proc, params: dict, status: int, fragment: str) -> None:
    body = problem(httpx.get(edge.url + STREAM, params=params, timeout=10), status)
    assert fragment in body["detail"]


async def test_forged_or_foreign_tokens_are_refused(edge: Proc, producer: EventProducer, new_topic) -> None:
    topic, other = await new_topic(), await new_topic()
    client = await SSEClient(edge.url, filter={"topics": [topic]}).start()
    await publish_seq(producer, topic, 0, 2)
    message = (await client.wait_for(2))[0]
    await client.close()
    token = message.id or ""
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    history = httpx.get(edge.url + "/api/v1/events/history", timeout=10,
                        params={"filter": orjson.dumps({"topics": [topic]}).decode(), "limit": 1}).json()["next"]
    cases = {
        "malformed": ({"topics": [topic]}, "%%%"),
        "edited": ({"topics": [topic]}, flipped),
        "other-topic": ({"topics": [other]}, token),
        "wider-filter": ({"topics": [topic, other]}, token),
        "history-cursor": ({"topics": [topic]}, history),
    }
    assert history is not None
    for name, (flt, bad) in cases.items():
        resp = httpx.get(edge.url + STREAM, timeout=10, headers={"last-event-id": bad},
                         params={"filter": orjson.dumps(flt).decode()})
        assert problem(resp, 400)["title"] == "Invalid Last-Event-ID", name


def test_stream_is_documented_in_openapi(edge: Proc) -> None:
    paths = httpx.get(f"{edge.url}/openapi.json").json()["paths"]
    assert "/api/v1/events/stream" in paths and "/api/v1/events/history" in paths


def test_edge_log_has_no_errors(edge: Proc) -> None:
    assert "Traceback" not in edge.log() and "Exception in ASGI" not in edge.log()
