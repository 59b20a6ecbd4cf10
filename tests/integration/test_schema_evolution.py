"""The envelope gained `recipients` as a BACKWARD-compatible evolution: the project's registry accepts the new
version over the old one, and records written with the old schema id still decode through the edge's
readers (history and catch-up), beside records of the new version."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from streams.envelope import parse_event
from streams.kafka import clients
from streams.kafka.producer import EventProducer
from streams.schema.codec import AvroCodec, load_schema_text
from streams.schema.registry import SchemaRegistry
from streams.settings import ROOT, Settings
from tests.auth_helpers import ADMIN_HEADERS, bearer, token
from tests.integration.conftest import Proc
from tests.integration.stream_helpers import SSEClient, private_settings, start_edge

pytestmark = pytest.mark.integration
ENVELOPE_V1 = ROOT / "tests" / "fixtures" / "envelope-v1.avsc"  # schemas/envelope.avsc before `recipients`
ALICE = bearer(token("alice", "subscribe:rcp-*"))
BOB = bearer(token("bob", "subscribe:rcp-*"))


@pytest.fixture(scope="module")
def evo_settings(kafka_bootstrap: str) -> Settings:
    return private_settings(kafka_bootstrap, stream_replay_records=0)


@pytest.fixture
def edge_later(evo_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    """Hold the edge the test starts once its records are written (stopped at the end)."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.stop()


async def test_old_schema_records_decode_after_the_envelope_gained_recipients(
        evo_settings: Settings, edge_later: list[Proc], tmp_path_factory: pytest.TempPathFactory,
        new_topic) -> None:
    topic = await new_topic(prefix="rcp")
    subject = f"{topic}-value"
    old_text = load_schema_text(ENVELOPE_V1)
    new_text = load_schema_text(evo_settings.schemas_dir / "envelope.avsc")
    assert "recipients" not in old_text and "recipients" in new_text
    async with SchemaRegistry(evo_settings) as registry:
        await registry.set_config("BACKWARD", subject)
        old_id = await registry.register(subject, old_text)
        # A record as an edge of the previous release wrote it: the old schema, framed with the old id.
        old_codec = AvroCodec(old_text)
        old_codec.bind(old_id)
        record = parse_event({"id": "old-1", "source": "/rcp", "type": "rcp.old", "subject": "s1",
                              "data": {"written_by": "v1"}}).to_record()
        del record["recipients"]
        producer = clients.producer(evo_settings, "evolution-test", acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, old_codec.encode(record), key=b"s1")
        finally:
            await producer.stop()
        # The registry accepts the envelope with `recipients` as the subject's next version (BACKWARD).
        assert registry.check_compatibility(subject, new_text) == (True, [])
        new_id = await registry.register(subject, new_text)
        assert new_id != old_id and registry.versions(subject) == [1, 2]
        assert registry.get_version(subject, "latest")["id"] == new_id
    async with EventProducer(evo_settings, linger_ms=0) as current:  # today's publisher: the new version
        await current.publish_batch([
            {"id": "new-1", "source": "/rcp", "type": "rcp.new", "subject": "s2", "data": {"written_by": "v2"}},
            {"id": "new-2", "source": "/rcp", "type": "rcp.new", "subject": "s3", "data": {"written_by": "v2"},
             "recipients": ["alice"]},
        ], topic)
        assert current.codec.schema_id == new_id

    edge = start_edge(evo_settings, tmp_path_factory.mktemp("edge"))
    edge_later.append(edge)
    flt = orjson.dumps({"topics": [topic]}).decode()

    def history(headers: dict[str, str]) -> dict[str, dict]:
        resp = httpx.get(edge.url + "/api/v1/events/history", params={"filter": flt}, headers=headers, timeout=20)
        assert resp.status_code == 200, resp.text
        return {e["id"]: e for e in resp.json()["events"]}

    admin = history(ADMIN_HEADERS)
    assert set(admin) == {"old-1", "new-1", "new-2"}
    old = admin["old-1"]
    assert old["type"] == "rcp.old" and old["data"] == {"written_by": "v1"} and "recipients" not in old
    assert admin["new-2"]["recipients"] == ["alice"]
    assert set(history(ALICE)) == {"old-1", "new-1", "new-2"} and set(history(BOB)) == {"old-1", "new-1"}
    stats = httpx.get(edge.url + "/api/v1/events/stream/stats", timeout=10).json()
    assert stats["undecodable"].get(topic, 0) == 0

    client = await SSEClient(edge.url, filter={"topics": [topic]}, headers=BOB,
                             params={"since": datetime(2020, 1, 1, tzinfo=UTC).isoformat()}).start()
    try:
        await client.wait_for(2)  # catch-up reads both versions from Kafka
        await asyncio.sleep(1.0)  # long enough for a third (alice's) to show if it leaked
        assert sorted(orjson.loads(m.data)["id"] for m in client.messages) == ["new-1", "old-1"]
    finally:
        await client.close()
