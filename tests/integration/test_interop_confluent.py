"""Interoperability with a client nobody here wrote: confluent-kafka's SchemaRegistryClient,
AvroSerializer and AvroDeserializer pointed at our registry, over a real broker."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.envelope import record_to_json
from streams.schema.codec import AvroCodec, load_schema_text
from streams.schema.registry import SchemaRegistry
from tests.auth_helpers import anonymous, registry_conf, token
from tests.kafka_utils import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(settings, edge_factory):
    return edge_factory(settings)


def consume_one(servers: str, topic: str) -> bytes:
    """Read the first record of `topic` with confluent-kafka's own consumer."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                return msg.value()
        raise AssertionError(f"no record on {topic}")
    finally:
        consumer.close()


async def test_confluent_serializer_output_decodes_with_our_codec(settings, edge, new_topic) -> None:
    topic = await new_topic(partitions=1)
    with anonymous():  # the bearer token comes from confluent-kafka's own config, not the suite's default
        client = SchemaRegistryClient(registry_conf(f"{edge.url}/api/v1/registry"))  # registers: admin
    serializer = AvroSerializer(client, load_schema_text(settings.schemas_dir / "envelope.avsc"))
    when = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    record = {"id": "cf-1", "source": "/confluent", "type": "interop.test", "subject": "k", "time": when,
              "datacontenttype": "application/json", "data": '{"from": "confluent"}', "tags": ["a"],
              "extensions": {}}
    value = serializer(record, SerializationContext(topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(topic, value=value, key=b"k")
    assert producer.flush(15) == 0
    [rec] = await read_all(settings.kafka_bootstrap_servers, topic, partitions=1)
    async with SchemaRegistry(settings) as registry:
        decoded = await AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", registry).decode_async(rec.value)
    assert decoded["time"] == when
    assert record_to_json(decoded)["data"] == {"from": "confluent"}


async def test_confluent_deserializer_reads_what_our_edge_published(settings, edge) -> None:
    resp = httpx.post(f"{edge.url}/api/v1/events",
                      json={"id": "ours-1", "source": "/edge", "type": "interop.test", "data": {"n": 42}})
    assert resp.status_code == 202, resp.text
    value = consume_one(settings.kafka_bootstrap_servers, settings.ingress_topic)
    with anonymous():  # registry reads need any valid credential: a subscribe-only token will do
        client = SchemaRegistryClient(registry_conf(f"{edge.url}/api/v1/registry", token("cf-reader", "subscribe:*")))
    event = AvroDeserializer(client)(value, SerializationContext(settings.ingress_topic, MessageField.VALUE))
    assert event["id"] == "ours-1" and event["data"] == '{"n":42}'
    assert event["time"].tzinfo is not None
    latest = client.get_latest_version(f"{settings.ingress_topic}-value")
    assert latest.schema_id == int.from_bytes(value[1:5], "big")
