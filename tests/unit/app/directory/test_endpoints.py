"""Named endpoints without Kafka: names and filters checked before anything is written, one definition per
name, and a tombstone (from this edge or another) ending the edge's streams of that endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from app.directory.endpoints import (
    DELETED,
    EndpointExists,
    EndpointNotFound,
    Endpoints,
    EndpointSpec,
    EndpointStreamResponse,
    InvalidEndpointFilter,
)
from app.fanout.filters import MAX_FILTER_CHARS, CompiledFilter, EventFilter
from app.fanout.hub import Hub
from app.fanout.subscribers import LIVE
from app.fanout.tokens import max_partitions
from streams.errors import TopicNotFound
from streams.kafka.table import Listener
from streams.settings import Settings
from tests.unit.fakes import TOPIC, settle


class FakeTable:
    """The compacted table as every edge sees it, in memory: a put is applied and its listeners called."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.catch_ups = 0

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    async def catch_up(self) -> None:
        self.catch_ups += 1

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        self.apply(key, value)

    def apply(self, key: str, value: dict[str, Any] | None) -> None:
        """Apply a record as the table reader does (a write from any edge)."""
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        for listener in self.listeners:
            listener(key, value)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.data.items()))

    def __len__(self) -> int:
        return len(self.data)


class FakeTopics:
    """Topic metadata: partitions per topic, TopicNotFound for others."""

    def __init__(self, **partitions: int) -> None:
        self.counts = partitions

    async def partitions(self, name: str) -> list[int]:
        if name not in self.counts:
            raise TopicNotFound(f"topic {name!r} does not exist")
        return list(range(self.counts[name]))


@pytest.fixture
def store() -> tuple[Endpoints, FakeTable]:
    endpoints = Endpoints(Settings(default_topic="es.events"),
                          FakeTopics(**{TOPIC: 2, "es.events": 3, "huge": max_partitions(1) + 1}))  # type: ignore
    table = FakeTable()
    endpoints.table = table  # type: ignore[assignment]
    table.subscribe(endpoints._changed)
    return endpoints, table


def spec(name: str = "ci-failures", **flt: Any) -> EndpointSpec:
    return EndpointSpec.model_validate({"name": name, "filter": flt or {"topics": [TOPIC]}})


@pytest.mark.parametrize("name", ["a", "ci-failures", "0-day", "x" * 63, "a--b", "a-"],
                         ids=["one", "dashed", "digit-first", "63-chars", "double-dash", "trailing-dash"])
def test_names_of_lowercase_letters_digits_and_dashes_are_accepted(name: str) -> None:
    assert spec(name).name == name


@pytest.mark.parametrize("name", ["", "-a", "CI", "ci_failures", "ci.failures", "x" * 64, "ci failures", "é"],
                         ids=["empty", "dash-first", "upper", "underscore", "dot", "64-chars", "space", "accent"])
def test_other_names_are_refused_saying_the_rule(name: str) -> None:
    with pytest.raises(ValidationError, match="lowercase letters, digits and '-'"):
        spec(name)


def test_a_filter_over_the_stream_limits_is_refused() -> None:
    with pytest.raises(ValidationError, match="at most 50 items"):
        spec(types=[f"t{i}" for i in range(51)])
    with pytest.raises(ValidationError, match=f"limit is {MAX_FILTER_CHARS}"):
        spec(where={f"field{i}": ["v" * 1000] * 20 for i in range(2)})
    with pytest.raises(ValidationError, match="Extra inputs"):
        EndpointSpec.model_validate({"name": "a", "filter": {}, "owner": "me"})


async def test_create_stores_the_definition_and_get_and_list_return_it(store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, table = store
    made = await endpoints.create(spec(types=["ci.*"], topics=[TOPIC]), creator="alice")
    assert made == endpoints.get("ci-failures") == table.data["ci-failures"]
    assert made["filter"] == {"topics": [TOPIC], "types": ["ci.*"]} and made["created_by"] == "alice"
    assert made["created_at"].endswith("Z") and made["description"] == ""
    await endpoints.create(spec("alpha"), creator="bob")
    assert [d["name"] for d in endpoints.list()] == ["alpha", "ci-failures"]


async def test_creating_an_existing_name_is_a_conflict_after_reading_the_table_to_its_end(
        store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, table = store
    table.apply("ci-failures", {"name": "ci-failures", "filter": {}})  # written by another edge
    with pytest.raises(EndpointExists, match="delete it first"):
        await endpoints.create(spec(), creator="alice")
    assert table.catch_ups == 1 and table.data["ci-failures"] == {"name": "ci-failures", "filter": {}}


@pytest.mark.parametrize(("flt", "why"), [({"topics": ["nope"]}, "'nope' does not exist"),
                                          ({"topics": ["huge"]}, "partitions")], ids=["unknown-topic", "too-wide"])
async def test_a_filter_that_cannot_be_streamed_is_refused_before_anything_is_written(
        store: tuple[Endpoints, FakeTable], flt: dict[str, Any], why: str) -> None:
    endpoints, table = store
    with pytest.raises(InvalidEndpointFilter, match=why) as caught:
        await endpoints.create(spec(**flt), creator="alice")
    assert caught.value.status == 422 and caught.value.field == "filter" and not table.data


async def test_unknown_names_are_not_found(store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, _ = store
    with pytest.raises(EndpointNotFound):
        endpoints.get("ghost")
    with pytest.raises(EndpointNotFound):
        endpoints.compiled("ghost")
    with pytest.raises(EndpointNotFound):
        await endpoints.delete("ghost")


async def test_the_compiled_filter_follows_the_definition(store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, table = store
    table.apply("e", {"name": "e", "filter": {"types": ["a.*"]}})
    first = endpoints.compiled("e")
    assert first is endpoints.compiled("e") and first.topics == ["es.events"]  # the default topic
    table.apply("e", {"name": "e", "filter": {"types": ["b.*"]}})
    assert endpoints.compiled("e").spec.types == ["b.*"]


async def test_a_tombstone_from_any_edge_closes_this_edges_streams_of_that_endpoint_only(
        store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, table = store
    await endpoints.create(spec("one"), creator="a")
    await endpoints.create(spec("two"), creator="a")
    closed: list[str] = []
    endpoints.watch("one", "s1", lambda: closed.append("s1"))
    endpoints.watch("one", "s2", lambda: closed.append("s2"))
    endpoints.watch("two", "s3", lambda: closed.append("s3"))
    assert endpoints.streams_here() == 3 and endpoints.streams_here("one") == 2
    table.apply("one", None)  # the delete another edge wrote, as this edge's reader applies it
    assert sorted(closed) == ["s1", "s2"] and endpoints.streams_here() == 1
    endpoints.unwatch("one", "s1")  # the ended streams unwatch afterwards: harmless
    endpoints.unwatch("two", "s3")
    endpoints.unwatch("two", "s3")
    assert endpoints.streams_here() == 0


async def test_watching_an_endpoint_deleted_meanwhile_closes_at_once(store: tuple[Endpoints, FakeTable]) -> None:
    endpoints, _ = store
    closed: list[str] = []
    endpoints.watch("gone", "s", lambda: closed.append("s"))
    assert closed == ["s"] and endpoints.streams_here() == 0


class Client:
    """An ASGI client side: records what is sent; leaves when the response has ended (as uvicorn says)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.done = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done.set()

    async def receive(self) -> dict[str, Any]:
        await self.done.wait()
        return {"type": "http.disconnect"}


async def test_deleting_the_endpoint_ends_its_stream_with_a_final_comment(
        store: tuple[Endpoints, FakeTable], hub: Hub) -> None:
    endpoints, _ = store
    await endpoints.create(spec("ci"), creator="a")
    other_group = hub.join(CompiledFilter(EventFilter.model_validate({"topics": [TOPIC]}), [TOPIC]))
    client = Client()
    group = hub.join(endpoints.compiled("ci"))
    response = EndpointStreamResponse(hub, group, None, 15.0, None, endpoints=endpoints, name="ci")
    task = asyncio.create_task(response({}, client.receive, client.send))
    await settle()
    [sub] = hub.subscribers
    assert sub.state == LIVE and endpoints.streams_here("ci") == 1
    await endpoints.delete("ci")
    await asyncio.wait_for(task, 5)
    last = client.messages[-1]
    assert last["body"] == DELETED == b": closing: endpoint deleted\n\n" and last["more_body"] is False
    assert not hub.subscribers and endpoints.streams_here() == 0
    assert group is other_group and hub.leases == 1  # a plain stream of the same filter shares the group


async def test_a_stream_that_ends_first_stops_watching(store: tuple[Endpoints, FakeTable], hub: Hub) -> None:
    endpoints, _ = store
    await endpoints.create(spec("ci"), creator="a")
    client = Client()
    response = EndpointStreamResponse(hub, hub.join(endpoints.compiled("ci")), None, 15.0, None,
                                      endpoints=endpoints, name="ci")
    task = asyncio.create_task(response({}, client.receive, client.send))
    await settle()
    assert endpoints.streams_here("ci") == 1
    client.done.set()  # the client leaves
    await asyncio.wait_for(task, 5)
    assert endpoints.streams_here() == 0 and not hub.subscribers and hub.leases == 0
