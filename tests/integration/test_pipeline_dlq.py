"""Dead letters through a real worker: every cause lands in the DLQ with the original bytes and why,
good records keep flowing, and the edge lists and replays entries."""

from __future__ import annotations

import secrets
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.dlq.letters import DeadLetter
from streams.settings import Settings
from tests.integration.conftest import Proc, free_port, settings_env, start_process, wait_ready
from tests.integration.pipeline_helpers import (
    RawWriter,
    ensure_topics,
    event,
    header,
    pipeline_settings,
    records_of,
    settle,
    start_worker,
    wait_records,
)

pytestmark = pytest.mark.integration
RULES = """\
version: 1
rules:
  - {name: big, match: {type: "big.*"}, to: "{p}.small", override: true}
"""


def incompressible(size: int) -> str:
    """Return text that the worker's snappy compression cannot shrink below the small topic's 2,000 bytes."""
    return secrets.token_hex(size // 2)


class Setup:
    """A worker and an edge, sharing private topics."""

    def __init__(self, settings: Settings, worker: Proc, edge: Proc) -> None:
        self.settings, self.worker, self.edge = settings, worker, edge
        self.small = f"{settings.topic_prefix}.small"

    async def dead_letters(self, *metas: Any) -> list[DeadLetter]:
        """Wait until the records written at these ingress positions are in the DLQ; return their entries."""
        wanted = {f"{m.partition}/{m.offset}".encode() for m in metas}

        def keep(r: Any) -> bool:
            return header(r, "es-dlq-partition") + b"/" + header(r, "es-dlq-offset") in wanted

        found = await wait_records(self.settings, self.settings.dlq_topic, len(wanted), keep=keep)
        return [DeadLetter.from_record(r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers))
                for r in found]

    async def good(self, *event_ids: str) -> None:
        wanted = {i.encode() for i in event_ids}
        await wait_records(self.settings, self.settings.default_topic, len(wanted),
                           keep=lambda r: header(r, "es-id") in wanted)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.edge.url}/api/v1/dlq{path}", timeout=30, **kwargs)


@pytest.fixture(scope="module")
async def setup(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    tmp = tmp_path_factory.mktemp("dlq")
    settings = pipeline_settings(kafka_bootstrap, tmp, RULES, route_max_attempts=2, route_backoff_ms=50)
    small = f"{settings.topic_prefix}.small"
    await ensure_topics(settings)
    await ensure_topics(settings, small, config={"max.message.bytes": "2000"})
    worker = start_worker(settings, tmp)
    port = free_port()
    edge = start_process(["-m", "app"], {**settings_env(settings), "ES_HTTP_PORT": str(port)}, tmp / "edge.log")
    edge.url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(edge)
        yield Setup(settings, worker, edge)
    finally:
        edge.stop()
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_every_cause_lands_in_the_dlq_with_why_while_good_records_flow(setup: Setup) -> None:
    s = setup.settings
    async with RawWriter(s) as raw:
        good = raw.encode(event("ok-1"))
        sent = {
            "garbage": await raw.send(b"not our wire format at all"),
            "unknown-schema": await raw.send(b"\x00" + struct.pack(">I", 987654) + good[5:]),
            "corrupt": await raw.send(good[:5] + b"\xff\xff\xff\xff\xff\x01"),
            "invalid": await raw.send(raw.encode(event("bad-1", source=""))),
            "bad-destination": await raw.send(raw.encode(event("dest-1")), headers=[("es-destination", b"no way!")]),
            "internal-destination": await raw.send(raw.encode(event("dest-2")),
                                                   headers=[("es-destination", s.ingress_topic.encode())]),
            "too-big": await raw.send(raw.encode(event("big-1", type="big.one", data=incompressible(6000)))),
        }
        await raw.send(good)
        await raw.send(raw.encode(event("ok-2")))
    expected = {
        "garbage": ("decode", "CodecError", "unknown magic byte"),
        "unknown-schema": ("decode", "UnknownSchema", "schema id 987654 is not registered"),
        "corrupt": ("decode", "CodecError", "cannot decode"),
        "invalid": ("validate", "ValidationFailed", "source: required attribute"),
        "bad-destination": ("route", "InvalidDestination", "not a valid Kafka topic name"),
        "internal-destination": ("route", "InvalidDestination", "internal to the service"),
        "too-big": ("produce", "MessageSizeTooLargeError", ""),
    }
    letters = {(d.original_partition, d.original_offset): d for d in await setup.dead_letters(*sent.values())}
    originals = {(r.partition, r.offset): r for r in await records_of(s, s.ingress_topic)}
    for cause, meta in sent.items():
        letter = letters[(meta.partition, meta.offset)]
        stage, error_class, words = expected[cause]
        assert (letter.stage, letter.error_class) == (stage, error_class), cause
        assert words in letter.error_message, (cause, letter.error_message)
        assert letter.original_topic == s.ingress_topic and letter.first_failure.endswith("Z")
        assert letter.value == originals[(meta.partition, meta.offset)].value and letter.key == b"s"
        assert letter.attempts == 1  # a permanent error (MessageSizeTooLarge too) is not tried again
        assert letter.destination == (setup.small if stage == "produce" else None)
    await setup.good("e-ok-1", "e-ok-2")


async def test_dlq_api_lists_entries_with_filters_and_pages(setup: Setup) -> None:
    async with RawWriter(setup.settings) as raw:
        metas = [await raw.send(raw.encode(event(f"list-{i}", type="", source="/list"))) for i in range(3)]
    await setup.dead_letters(*metas)
    body = setup.api("GET", "", params={"stage": "validate", "error": "type:"}).json()
    listed = [e for e in body["entries"] if e["event"] and e["event"]["source"] == "/list"]
    assert len(listed) == 3 and {e["error_class"] for e in listed} == {"ValidationFailed"}
    assert listed[0]["original"]["topic"] == setup.settings.ingress_topic and listed[0]["replayed"] is None
    first = setup.api("GET", "", params={"limit": 1}).json()
    second = setup.api("GET", "", params={"limit": 1, "offset": 1}).json()
    assert first["total"] == second["total"] >= 3 and first["entries"][0] != second["entries"][0]
    one = setup.api("GET", f"/{listed[0]['position']}").json()
    assert one["offset"] == listed[0]["offset"]
    assert setup.api("GET", "/0/999999").status_code == 404
    bad = setup.api("GET", "", params={"stage": "nowhere"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


async def test_replay_with_a_corrected_event_is_forwarded_and_not_replayed_twice(setup: Setup) -> None:
    s = setup.settings
    async with RawWriter(s) as raw:
        meta = await raw.send(raw.encode(event("fixme-1", source="")))
    [letter] = await setup.dead_letters(meta)
    fixed = event("fixme-1", source="/fixed")
    resp = setup.api("POST", "/replay", json={"positions": [letter.position], "event": fixed})
    assert resp.status_code == 200, resp.text
    assert resp.json()["replayed"] == 1
    await setup.good("e-fixme-1")
    ledger = await wait_records(s, s.dlq_replays_topic, 1, keep=lambda r: r.key == letter.position.encode())
    assert ledger
    again = setup.api("POST", "/replay", json={"positions": [letter.position], "event": fixed}).json()
    assert again["replayed"] == 0 and again["results"][0]["status"] == "skipped"
    listed = setup.api("GET", f"/{letter.position}").json()
    assert listed["replayed"]["id"] == "e-fixme-1"
    forwarded = await settle(lambda: records_of(s, s.default_topic))
    assert sum(1 for r in forwarded if header(r, "es-id") == b"e-fixme-1") == 1


async def test_replay_of_a_produce_failure_goes_to_the_failed_destination_once_fixed(setup: Setup) -> None:
    s = setup.settings
    async with RawWriter(s) as raw:
        meta = await raw.send(raw.encode(event("retry-big-1", type="big.two", data=incompressible(6000))))
    [letter] = await setup.dead_letters(meta)
    assert letter.stage == "produce"
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, setup.small,
                                                  {"max.message.bytes": "1048588"})])
    finally:
        await admin.close()
    resp = setup.api("POST", "/replay", json={"stage": "produce", "error": "MessageSizeTooLarge"})
    assert resp.status_code == 200 and resp.json()["replayed"] >= 1, resp.text
    found = await wait_records(s, setup.small, 1, keep=lambda r: header(r, "es-id") == b"e-retry-big-1")
    assert header(found[0], "es-route") == b"replay"


def test_replay_needs_a_selection_and_known_positions(setup: Setup) -> None:
    assert setup.api("POST", "/replay", json={}).status_code == 422
    assert setup.api("POST", "/replay", json={"positions": ["0/x"]}).status_code == 422
    assert setup.api("POST", "/replay", json={"positions": ["0/999999"]}).status_code == 404
    two = setup.api("POST", "/replay", json={"positions": ["0/1", "0/2"], "event": event("x")})
    assert two.status_code == 422 and "exactly one" in two.json()["detail"]
