"""SchemaRegistry over a real broker: ids, versions, compatibility, config, restarts and racing writers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer

from streams.errors import (
    InvalidSchema,
    SchemaIdNotFound,
    SchemaIncompatible,
    SubjectConfigNotFound,
    SubjectNotFound,
    VersionNotFound,
)
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings

pytestmark = pytest.mark.integration

Open = Callable[..., Awaitable[SchemaRegistry]]


def avsc(*fields: dict[str, object], name: str = "Order") -> str:
    """Return the text of a record schema in namespace `shop`."""
    return json.dumps({"type": "record", "name": name, "namespace": "shop", "fields": list(fields)})


ID = {"name": "id", "type": "string"}
QTY = {"name": "qty", "type": "int"}
V1 = avsc(ID, QTY)
EMAIL_NO_DEFAULT = avsc(ID, QTY, {"name": "email", "type": "string"})
EMAIL_WITH_DEFAULT = avsc(ID, QTY, {"name": "email", "type": ["null", "string"], "default": None})


@pytest.fixture
async def open_registry(settings: Settings) -> AsyncIterator[Open]:
    """Return a factory of started registries on the test's private topic, stopped afterwards."""
    opened: list[SchemaRegistry] = []

    async def make(s: Settings | None = None) -> SchemaRegistry:
        registry = SchemaRegistry(s or settings)
        await registry.start()
        opened.append(registry)
        return registry

    yield make
    for registry in reversed(opened):
        await registry.stop()


async def test_registered_schema_is_found_by_id_version_latest_and_lookup(open_registry: Open) -> None:
    registry = await open_registry()
    schema_id = await registry.register("orders-value", V1)
    assert json.loads(registry.schema_by_id(schema_id) or "null") == json.loads(V1)
    assert json.loads(await registry.fetch_schema(schema_id)) == json.loads(V1)
    assert registry.subjects() == ["orders-value"]
    assert registry.versions("orders-value") == [1]
    text = registry.schema_by_id(schema_id)
    expected = {"subject": "orders-value", "version": 1, "id": schema_id, "schema": text}
    assert registry.get_version("orders-value", 1) == expected
    assert registry.get_version("orders-value", "latest") == expected
    assert registry.lookup("orders-value", V1) == expected


async def test_same_schema_twice_keeps_its_id_and_adds_no_version(open_registry: Open) -> None:
    registry = await open_registry()
    first = await registry.register("orders-value", V1)
    # Same schema, other spelling: whitespace, key order and a full name instead of a namespace.
    respelled = json.dumps({"fields": [ID, QTY], "name": "shop.Order", "type": "record"}, indent=2)
    assert await registry.register("orders-value", V1) == first
    assert await registry.register("orders-value", respelled) == first
    assert registry.versions("orders-value") == [1]


async def test_same_schema_under_two_subjects_shares_one_id(open_registry: Open) -> None:
    registry = await open_registry()
    a = await registry.register("a-value", V1)
    b = await registry.register("b-value", V1)
    other = await registry.register("c-value", avsc(ID, name="Other"))
    assert a == b
    assert other == a + 1
    assert registry.get_version("b-value", 1)["id"] == a


async def test_backward_refuses_a_field_added_without_default(open_registry: Open) -> None:
    registry = await open_registry()
    await registry.register("orders-value", V1)
    with pytest.raises(SchemaIncompatible) as info:
        await registry.register("orders-value", EMAIL_NO_DEFAULT)
    assert info.value.status == 409
    assert "shop.Order.email" in str(info.value) and "default" in str(info.value)
    assert registry.versions("orders-value") == [1]


async def test_backward_accepts_a_field_added_with_default(open_registry: Open) -> None:
    registry = await open_registry()
    first = await registry.register("orders-value", V1)
    second = await registry.register("orders-value", EMAIL_WITH_DEFAULT)
    assert second != first
    assert registry.versions("orders-value") == [1, 2]
    assert registry.get_version("orders-value", "latest")["id"] == second


async def test_none_accepts_any_change(open_registry: Open) -> None:
    registry = await open_registry()
    await registry.set_config("NONE", "orders-value")
    await registry.register("orders-value", V1)
    await registry.register("orders-value", avsc({"name": "qty", "type": "string"}))
    assert registry.versions("orders-value") == [1, 2]


async def test_check_compatibility_reports_the_field_without_registering(open_registry: Open) -> None:
    registry = await open_registry()
    await registry.register("orders-value", V1)
    ok, messages = registry.check_compatibility("orders-value", EMAIL_NO_DEFAULT)
    assert not ok and len(messages) == 1 and "shop.Order.email" in messages[0]
    assert registry.check_compatibility("orders-value", EMAIL_WITH_DEFAULT, None) == (True, [])
    assert registry.versions("orders-value") == [1]


async def test_transitive_level_checks_every_version_not_just_the_latest(open_registry: Open) -> None:
    registry = await open_registry()
    await registry.register("orders-value", V1)
    await registry.register("orders-value", avsc(ID, {"name": "qty", "type": "int", "default": 0}))
    without_qty = avsc(ID)
    await registry.set_config("FORWARD_TRANSITIVE", "orders-value")
    # Version 2 gave qty a default, so only version 1 (qty without default) objects to dropping it.
    ok, messages = registry.check_compatibility("orders-value", without_qty, None)
    assert not ok and all("version 1" in m for m in messages)
    await registry.set_config("FORWARD", "orders-value")
    assert registry.check_compatibility("orders-value", without_qty, None) == (True, [])


async def test_subject_config_overrides_the_global_level_for_that_subject_only(open_registry: Open) -> None:
    registry = await open_registry()
    assert registry.get_config() == "BACKWARD"
    await registry.set_config("full", "a-value")
    assert registry.get_config("a-value") == "FULL"
    assert registry.get_config("b-value") == "BACKWARD"
    with pytest.raises(SubjectConfigNotFound):
        registry.get_config("b-value", fallback=False)
    await registry.set_config("NONE")
    assert (registry.get_config(), registry.get_config("a-value"), registry.get_config("b-value")) == (
        "NONE", "FULL", "NONE")


async def test_delete_subject_hides_versions_but_keeps_ids_and_numbering(open_registry: Open) -> None:
    registry = await open_registry()
    schema_id = await registry.register("orders-value", V1)
    assert await registry.delete_subject("orders-value") == [1]
    assert registry.subjects() == []
    with pytest.raises(SubjectNotFound):
        registry.versions("orders-value")
    assert registry.schema_by_id(schema_id) is not None
    assert await registry.register("orders-value", V1) == schema_id
    assert registry.versions("orders-value") == [2]


async def test_unknown_subject_version_and_id_raise_their_error_codes(open_registry: Open) -> None:
    registry = await open_registry()
    await registry.register("orders-value", V1)
    with pytest.raises(SubjectNotFound) as subject:
        registry.get_version("nope-value", "latest")
    with pytest.raises(VersionNotFound) as version:
        registry.get_version("orders-value", 7)
    with pytest.raises(SchemaIdNotFound) as schema:
        await registry.fetch_schema(999)
    with pytest.raises(SchemaIdNotFound):
        registry.lookup("orders-value", avsc(ID, name="Unknown"))
    codes = (subject.value.error_code, version.value.error_code, schema.value.error_code)
    assert codes == (40401, 40402, 40403)


@pytest.mark.parametrize(
    "text",
    ["not json", '{"type": "record", "name": "X"}', avsc({"name": "n", "type": "int", "default": "x"})],
    ids=["not-json", "record-without-fields", "default-of-wrong-type"],
)
async def test_invalid_avro_raises_invalid_schema(open_registry: Open, text: str) -> None:
    registry = await open_registry()
    with pytest.raises(InvalidSchema) as info:
        await registry.register("orders-value", text)
    assert (info.value.status, info.value.error_code) == (422, 42201)


async def test_a_second_instance_on_the_same_topic_sees_everything(open_registry: Open) -> None:
    first = await open_registry()
    one = await first.register("a-value", V1)
    two = await first.register("a-value", EMAIL_WITH_DEFAULT)
    await first.register("gone-value", avsc(ID, name="Gone"))
    await first.delete_subject("gone-value")
    await first.set_config("FULL", "a-value")
    await first.set_config("FORWARD")
    await first.stop()

    second = await open_registry()
    assert second.subjects() == ["a-value"]
    assert [second.get_version("a-value", v)["id"] for v in second.versions("a-value")] == [one, two]
    assert second.schema_by_id(two) == first.schema_by_id(two)
    assert (second.get_config(), second.get_config("a-value")) == ("FORWARD", "FULL")
    assert await second.register("b-value", avsc(ID, name="New")) == two + 2  # "Gone" kept its id


async def test_fetch_schema_finds_an_id_another_instance_just_registered(open_registry: Open) -> None:
    reader, writer = await open_registry(), await open_registry()
    schema_id = await writer.register("orders-value", V1)
    assert json.loads(await reader.fetch_schema(schema_id)) == json.loads(V1)


async def test_racing_instances_never_bind_one_id_to_two_schemas(open_registry: Open) -> None:
    a, b = await open_registry(), await open_registry()
    for registry in (a, b):
        await registry.set_config("NONE")

    async def register_many(registry: SchemaRegistry, tag: str) -> dict[str, tuple[str, int]]:
        """Register six schemas, half of them under one subject both instances write to."""
        done = {}
        for i in range(6):
            text, subject = avsc(ID, name=f"{tag}{i}"), "shared-value" if i % 2 else f"{tag}{i}-value"
            done[text] = (subject, await registry.register(subject, text))
        return done

    done_a, done_b = await asyncio.gather(register_many(a, "A"), register_many(b, "B"))
    done = {**done_a, **done_b}
    assert len({schema_id for _, schema_id in done.values()}) == len(done) == 12
    replay = await open_registry()  # a fresh reader rebuilds the same state from the log
    for registry in (a, b, replay):
        for text, (subject, schema_id) in done.items():
            assert json.loads(registry.schema_by_id(schema_id) or "null") == json.loads(text)
            assert registry.lookup(subject, text)["id"] == schema_id
        assert registry.versions("shared-value") == [1, 2, 3, 4, 5, 6]


async def test_conflicting_records_in_the_log_resolve_to_the_first(
    settings: Settings, open_registry: Open
) -> None:
    def key(subject: str, version: int) -> bytes:
        return json.dumps({"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1}).encode()

    def value(subject: str, version: int, schema_id: int, text: str) -> bytes:
        return json.dumps({"subject": subject, "version": version, "id": schema_id, "schema": text,
                           "deleted": False}).encode()

    registry = await open_registry()  # creates the topic
    x, y = avsc(ID, name="X"), avsc(ID, name="Y")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for k, v in [
            (key("s", 1), value("s", 1, 1, x)),
            (key("s", 1), value("s", 1, 2, y)),  # version 1 is taken: ignored
            (key("t", 1), value("t", 1, 1, y)),  # id 1 is bound to X: ignored
            (key("t", 1), value("t", 1, 3, x)),  # X already has id 1: ignored
            (key("t", 1), value("t", 1, 2, y)),  # consistent: accepted
        ]:
            await producer.send_and_wait(settings.schemas_topic, v, key=k, partition=0)
    finally:
        await producer.stop()
    await registry.catch_up()
    assert registry.get_version("s", 1)["id"] == 1
    assert registry.get_version("t", 1)["id"] == 2
    assert json.loads(registry.schema_by_id(1) or "null")["name"] == "X"
    assert json.loads(registry.schema_by_id(2) or "null")["name"] == "Y"
    assert registry.schema_by_id(3) is None
