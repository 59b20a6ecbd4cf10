"""The registry's REST API driven by confluent-kafka's own SchemaRegistryClient (and httpx for the raw body).

The app is a bare FastAPI app holding only the registry router and the edge's error handlers, served by
uvicorn in a thread; the registry starts in the server's own event loop (lifespan), so tests talk to it
over HTTP only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastapi import Depends, FastAPI

from app import problems
from app.auth import Authenticator, authenticate
from app.auth.guard import index_routes
from app.routes.registry import router
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings
from tests.auth_helpers import registry_conf

pytestmark = pytest.mark.integration
PREFIX = "/api/v1/registry"


def avsc(*fields: dict[str, object], name: str = "Order") -> str:
    """Return the text of a record schema in namespace `shop`."""
    return json.dumps({"type": "record", "name": name, "namespace": "shop", "fields": list(fields)})


ID = {"name": "id", "type": "string"}
QTY = {"name": "qty", "type": "int"}
V1 = avsc(ID, QTY)
V2 = avsc(ID, QTY, {"name": "email", "type": ["null", "string"], "default": None})
BREAKING = avsc(ID, QTY, {"name": "email", "type": "string"})


def registry_app(settings: Settings) -> FastAPI:
    """Return a bare app with only the registry router and the error handlers, its registry run by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with SchemaRegistry(settings) as registry:
            app.state.registry = registry
            yield

    app = FastAPI(lifespan=lifespan, dependencies=[Depends(authenticate)])  # as the edge: credentials on
    app.state.authenticator = Authenticator.from_settings(settings)
    problems.install(app)
    app.include_router(router, prefix=PREFIX)
    index_routes(app)
    return app


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """Serve the registry app on a free 127.0.0.1 port; return the URL a Confluent client takes."""
    app = registry_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="registry-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("registry app did not start (see the log above)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def client(base_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient(registry_conf(base_url))


def test_register_then_read_back_by_id_latest_versions_and_lookup(
    client: SchemaRegistryClient, base_url: str
) -> None:
    schema_id = client.register_schema("orders-value", Schema(V1, "AVRO"))
    assert client.register_schema("orders-value", Schema(V2, "AVRO")) == schema_id + 1
    fresh = SchemaRegistryClient(registry_conf(base_url))  # nothing cached: every answer comes from the server
    assert json.loads(fresh.get_schema(schema_id).schema_str) == json.loads(V1)
    latest = fresh.get_latest_version("orders-value")
    assert (latest.version, latest.schema_id, json.loads(latest.schema.schema_str)) == (2, schema_id + 1,
                                                                                         json.loads(V2))
    assert fresh.get_versions("orders-value") == [1, 2]
    assert fresh.get_subjects() == ["orders-value"]
    found = fresh.lookup_schema("orders-value", Schema(V1, "AVRO"))
    assert (found.subject, found.version, found.schema_id) == ("orders-value", 1, schema_id)


def test_same_schema_under_two_subjects_gets_one_id(client: SchemaRegistryClient) -> None:
    assert client.register_schema("a-value", Schema(V1, "AVRO")) == client.register_schema(
        "b-value", Schema(V1, "AVRO"))


def test_incompatible_registration_answers_409_naming_the_field(client: SchemaRegistryClient) -> None:
    assert client.test_compatibility("orders-value", Schema(BREAKING, "AVRO")) is True  # nothing to break yet
    client.register_schema("orders-value", Schema(V1, "AVRO"))
    assert client.test_compatibility("orders-value", Schema(V2, "AVRO")) is True
    assert client.test_compatibility("orders-value", Schema(BREAKING, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as info:
        client.register_schema("orders-value", Schema(BREAKING, "AVRO"))
    assert (info.value.http_status_code, info.value.error_code) == (409, 409)
    assert "shop.Order.email" in info.value.error_message


def test_compatibility_level_set_per_subject_and_globally(client: SchemaRegistryClient) -> None:
    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility("orders-value", "NONE")
    assert client.get_compatibility("orders-value") == "NONE"
    client.register_schema("orders-value", Schema(V1, "AVRO"))
    client.register_schema("orders-value", Schema(BREAKING, "AVRO"))  # NONE lets it through
    client.set_compatibility(level="FULL")
    assert (client.get_compatibility(), client.get_compatibility("orders-value")) == ("FULL", "NONE")
    with pytest.raises(SchemaRegistryError) as info:
        client.get_compatibility("other-value")  # no level of its own (Confluent answers 40408 too)
    assert info.value.error_code == 40408


def test_unknown_id_and_subject_carry_confluent_error_codes(client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaRegistryError) as by_id:
        client.get_schema(424242)
    with pytest.raises(SchemaRegistryError) as by_subject:
        client.get_latest_version("nope-value")
    assert (by_id.value.http_status_code, by_id.value.error_code) == (404, 40403)
    assert (by_subject.value.http_status_code, by_subject.value.error_code) == (404, 40401)


def test_invalid_avro_answers_422_with_code_42201(client: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaRegistryError) as info:
        client.register_schema("orders-value", Schema('{"type": "record", "name": "X"}', "AVRO"))
    assert (info.value.http_status_code, info.value.error_code) == (422, 42201)


def test_error_body_is_problem_json_and_confluent_style(base_url: str) -> None:
    resp = httpx.get(f"{base_url}/subjects/nope-value/versions")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    detail = body["detail"]
    assert body == {"type": "about:blank", "title": "Subject not found", "status": 404, "detail": detail,
                    "error_code": 40401, "message": detail}
    assert "nope-value" in body["detail"]


def test_non_avro_schema_type_is_refused_with_a_clear_message(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/subjects/orders-value/versions",
                      json={"schema": 'syntax = "proto3";', "schemaType": "PROTOBUF"})
    assert (resp.status_code, resp.json()["error_code"]) == (422, 42201)
    assert "PROTOBUF" in resp.json()["message"] and "AVRO" in resp.json()["message"]


def test_verbose_compatibility_lists_the_reasons(base_url: str) -> None:
    httpx.post(f"{base_url}/subjects/orders-value/versions", json={"schema": V1}).raise_for_status()
    resp = httpx.post(f"{base_url}/compatibility/subjects/orders-value/versions/latest",
                      params={"verbose": "True"}, json={"schema": BREAKING})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")
    body = resp.json()
    assert body["is_compatible"] is False and "shop.Order.email" in body["messages"][0]


def test_percent_encoded_subject_with_slash_round_trips(client: SchemaRegistryClient) -> None:
    subject = "team/orders value?v"
    schema_id = client.register_schema(subject, Schema(V1, "AVRO"))
    assert client.get_subjects() == [subject]
    assert client.get_versions(subject) == [1]
    assert client.get_latest_version(subject).schema_id == schema_id


def test_delete_subject_returns_versions_and_hides_it(client: SchemaRegistryClient) -> None:
    client.register_schema("orders-value", Schema(V1, "AVRO"))
    assert client.delete_subject("orders-value") == [1]
    assert client.get_subjects() == []


def test_confluent_serializer_and_deserializer_round_trip_through_us(
    client: SchemaRegistryClient, base_url: str
) -> None:
    # Since 2.14 the serializer asks /associations first; our 404 sends it to <topic>-value.
    ctx = SerializationContext("orders", MessageField.VALUE)
    data = AvroSerializer(client, V1)({"id": "o-1", "qty": 3}, ctx)
    reader = SchemaRegistryClient(registry_conf(base_url))
    assert AvroDeserializer(reader)(data, ctx) == {"id": "o-1", "qty": 3}
    assert reader.get_latest_version("orders-value").schema_id == int.from_bytes(data[1:5], "big")
