"""Routing through a real worker: each kind of rule, several destinations, the publisher's topic, the
default topic, record bytes/key/headers, destination topics created on first use, per-subject order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from streams.kafka.producer import EventProducer
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from tests.integration.pipeline_helpers import (
    event,
    header,
    ids,
    pipeline_settings,
    records_of,
    settle,
    start_worker,
    wait_records,
)
from tests.kafka_utils import read_all

pytestmark = pytest.mark.integration
RULES = """\
version: 1
rules:
  - {name: by-type, match: {type: "order.*"}, to: "{p}.orders"}
  - {name: by-source, match: {source: "/billing/*"}, to: ["{p}.billing", "{p}.audit"]}
  - {name: by-subject, match: {subject: "vip-*"}, to: "{p}.vip"}
  - {name: by-tags, match: {tags_all: [eu, gold]}, to: "{p}.eu-gold"}
  - {name: by-data, match: {data: {state: failed}}, to: "{p}.failures", override: true}
"""


class Pipeline:
    """A worker with the rules above, and a producer publishing to its ingress topic."""

    def __init__(self, settings: Settings, producer: EventProducer) -> None:
        self.settings, self.producer = settings, producer

    def topic(self, suffix: str) -> str:
        return f"{self.settings.topic_prefix}.{suffix}"

    async def publish(self, *events: dict[str, Any], topic: str | None = None) -> None:
        headers = [("es-destination", topic.encode())] if topic else []
        await self.producer.publish_batch(list(events), self.settings.ingress_topic, headers)

    async def ids_in(self, suffix: str, prefix: str, count: int) -> list[str]:
        """Wait for `count` records whose id starts with `prefix` in topic `<p>.<suffix>`; return their ids."""
        found = await wait_records(self.settings, self.topic(suffix), count,
                                   keep=lambda r: (header(r, "es-id") or b"").startswith(prefix.encode()))
        return sorted(ids(found))


@pytest.fixture(scope="module")
async def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("routing")
    settings = pipeline_settings(kafka_bootstrap, tmp, RULES)
    async with TopicManager(settings) as topics:
        await topics.ensure(settings.ingress_topic)
    worker = start_worker(settings, tmp)
    try:
        async with EventProducer(settings) as producer:
            yield Pipeline(settings, producer)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


@pytest.mark.parametrize(("fields", "suffix"), [
    ({"type": "order.created"}, "orders"),
    ({"source": "/billing/eu"}, "billing"),
    ({"subject": "vip-42"}, "vip"),
    ({"tags": ["gold", "eu", "x"]}, "eu-gold"),
    ({"data": {"state": "failed"}}, "failures"),
], ids=["type", "source", "subject", "tags", "data"])
async def test_each_kind_of_rule_routes_its_events(pipeline: Pipeline, fields: dict[str, Any], suffix: str) -> None:
    await pipeline.publish(event(f"{suffix}-1", **fields))
    assert await pipeline.ids_in(suffix, f"e-{suffix}-", 1) == [f"e-{suffix}-1"]


async def test_event_matching_a_multi_topic_rule_lands_in_each_topic_once(pipeline: Pipeline) -> None:
    await pipeline.publish(event("multi-1", source="/billing/us"))
    assert await pipeline.ids_in("billing", "e-multi-", 1) == ["e-multi-1"]
    assert await pipeline.ids_in("audit", "e-multi-", 1) == ["e-multi-1"]


async def test_unrouted_event_goes_to_the_default_topic(pipeline: Pipeline) -> None:
    await pipeline.publish(event("plain-1"))
    [rec] = await wait_records(pipeline.settings, pipeline.settings.default_topic, 1,
                               keep=lambda r: header(r, "es-id") == b"e-plain-1")
    assert header(rec, "es-route") == b"default"


async def test_requested_topic_is_honoured_alongside_rules_unless_overridden(pipeline: Pipeline) -> None:
    mine = pipeline.topic("mine")
    await pipeline.publish(event("req-1", type="order.paid"), event("req-2", data={"state": "failed"}), topic=mine)
    assert await pipeline.ids_in("mine", "e-req-", 1) == ["e-req-1"]
    assert await pipeline.ids_in("orders", "e-req-", 1) == ["e-req-1"]
    assert await pipeline.ids_in("failures", "e-req-", 1) == ["e-req-2"]
    got = await settle(lambda: records_of(pipeline.settings, mine))
    assert sorted(ids(got)) == ["e-req-1"]


async def test_forwarded_record_keeps_key_and_exact_bytes_and_gets_headers(pipeline: Pipeline) -> None:
    s = pipeline.settings
    await pipeline.publish(event("bytes-1", type="order.x", subject="cust-9"))
    [out] = await wait_records(s, pipeline.topic("orders"), 1, keep=lambda r: header(r, "es-id") == b"e-bytes-1")
    [src] = [r for r in await read_all(s.kafka_bootstrap_servers, s.ingress_topic)
             if header(out, "es-origin") == f"{s.ingress_topic}/{r.partition}/{r.offset}".encode()]
    assert (out.key, out.value) == (b"cust-9", src.value)
    assert {k: v for k, v in out.headers if k != "es-origin"} == {
        "es-id": b"e-bytes-1", "es-type": b"order.x", "es-source": b"/test",
        "es-ingress-time": str(src.timestamp).encode(), "es-route": b"by-type"}


async def test_destination_topic_is_created_with_the_topic_manager_defaults(pipeline: Pipeline) -> None:
    s = pipeline.settings
    await pipeline.publish(event("new-topic-1", subject="vip-new"))
    await pipeline.ids_in("vip", "e-new-topic-", 1)
    async with TopicManager(s) as topics:
        described = await topics.describe(pipeline.topic("vip"))
    assert len(described["partitions"]) == s.default_partitions
    assert described["config"]["retention.ms"] == str(s.default_retention_ms)


async def test_per_subject_order_holds_from_ingress_to_destination(pipeline: Pipeline) -> None:
    events = [event(f"ord-{i}", type="order.step", subject=f"cust-{i % 4}", data={"seq": i}) for i in range(400)]
    for start in range(0, 400, 50):
        await pipeline.publish(*events[start:start + 50])
    found = await wait_records(pipeline.settings, pipeline.topic("orders"), 400,
                               keep=lambda r: (header(r, "es-id") or b"").startswith(b"e-ord-"))
    for subject in range(4):
        mine = [int(header(r, "es-id").decode().split("-")[-1]) for r in found if r.key == f"cust-{subject}".encode()]
        assert mine == sorted(mine) and len(mine) == 100
        assert len({r.partition for r in found if r.key == f"cust-{subject}".encode()}) == 1


def test_worker_refuses_to_start_with_a_malformed_rules_file_naming_the_line(
        kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("bad-rules")
    settings = pipeline_settings(kafka_bootstrap, tmp, "version: 1\nrules:\n  - to: a\n    match: {colour: red}\n")
    worker = start_worker(settings, tmp)
    assert worker.popen.wait(60) == 2
    assert f"Refusing to start: {settings.routes_file}:4: rule 'rule-1': match: unknown key 'colour'" in worker.log()
