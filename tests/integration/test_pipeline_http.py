"""The pipeline seen from HTTP: an event POSTed to the edge appears once, decoded, on its routed topic;
the routing rules are listed (and a broken file is reported with its line)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from streams.envelope import record_to_json
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings
from tests.integration.conftest import Proc, free_port, settings_env, start_process, wait_ready
from tests.integration.pipeline_helpers import (
    ensure_topics,
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
  - {name: workflows, match: {type: "workflow.*"}, to: "{p}.workflows"}
"""


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Settings, Proc]]:
    tmp = tmp_path_factory.mktemp("http")
    settings = pipeline_settings(kafka_bootstrap, tmp, RULES)
    await ensure_topics(settings)
    worker = start_worker(settings, tmp)
    port = free_port()
    edge = start_process(["-m", "app"], {**settings_env(settings), "ES_HTTP_PORT": str(port)}, tmp / "edge.log")
    edge.url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(edge)
        yield settings, edge
    finally:
        edge.stop()
        assert worker.stop() == 0, worker.log()[-3000:]


async def test_posted_event_appears_once_decoded_on_its_routed_topic(stack: tuple[Settings, Proc]) -> None:
    settings, edge = stack
    body = {"id": "wf-1", "source": "/ci/runner-7", "type": "workflow.step.finished", "subject": "run-4711",
            "data": {"status": "ok", "step": "tests"}, "tags": ["ci"]}
    for _ in range(2):  # the same event id twice
        resp = httpx.post(f"{edge.url}/api/v1/events", json=body)
        assert resp.status_code == 202, resp.text
    topic = f"{settings.topic_prefix}.workflows"
    await wait_records(settings, topic, 1)
    found = await settle(lambda: records_of(settings, topic))
    assert len(found) == 1 and found[0].key == b"run-4711" and header(found[0], "es-route") == b"workflows"
    async with SchemaRegistry(settings) as registry:
        event = record_to_json(await AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", registry)
                               .decode_async(found[0].value))
    assert {k: event[k] for k in body} == body


async def test_event_posted_with_a_topic_goes_there_too(stack: tuple[Settings, Proc]) -> None:
    settings, edge = stack
    mine = f"{settings.topic_prefix}.mine"
    resp = httpx.post(f"{edge.url}/api/v1/events", params={"topic": mine},
                      json={"id": "mine-1", "source": "/s", "type": "note"})
    assert resp.status_code == 202, resp.text
    [rec] = await wait_records(settings, mine, 1)
    assert header(rec, "es-id") == b"mine-1" and header(rec, "es-route") == b"requested"


def test_routes_endpoint_lists_the_rules_file(stack: tuple[Settings, Proc]) -> None:
    settings, edge = stack
    body = httpx.get(f"{edge.url}/api/v1/routes").json()
    assert body["version"] == 1 and body["default_topic"] == settings.default_topic
    assert body["rules"] == [{"name": "workflows", "match": {"type": ["workflow.*"]},
                              "to": [f"{settings.topic_prefix}.workflows"], "override": False, "final": False,
                              "line": 3}]


def test_routes_endpoint_reports_a_broken_file_with_its_line(stack: tuple[Settings, Proc]) -> None:
    settings, edge = stack
    original = settings.routes_file.read_text()
    try:
        settings.routes_file.write_text(original + "  - {to: x, match: {colour: red}}\n")
        resp = httpx.get(f"{edge.url}/api/v1/routes")
        assert resp.status_code == 500 and resp.headers["content-type"].startswith("application/problem+json")
        assert f"{settings.routes_file}:4:" in resp.json()["detail"] and "colour" in resp.json()["detail"]
    finally:
        settings.routes_file.write_text(original)
