"""The durable-connection registry without Kafka: a live stream keeps its connection from expiring on
any edge, and the position survives the broker purging the group's offsets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from aiokafka import TopicPartition

from app.durable.registry import Connections, ConnectionSpec
from app.durable.shared import TooManyMembers
from streams.settings import Settings

TOPIC = "t"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeTable:
    """The compacted table every edge shares, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = dict(value)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.data.items()))


class FakeGroups:
    """Consumer-group offsets as the broker keeps them; `purge` is what offsets retention does."""

    def __init__(self) -> None:
        self.offsets: dict[str, dict[TopicPartition, int]] = {}

    async def start_offsets(self, tps: list[TopicPartition], start: str | int) -> dict[TopicPartition, int]:
        return {tp: 10 for tp in tps}

    async def commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        self.offsets.setdefault(group, {}).update(offsets)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        return dict(self.offsets.get(group, {}))

    async def delete(self, group: str) -> bool:
        return self.offsets.pop(group, None) is not None

    def purge(self) -> None:
        self.offsets.clear()


class FakeTopics:
    async def partitions(self, name: str) -> list[int]:
        return [0, 1]


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def edge(table: FakeTable, groups: FakeGroups, **settings: Any) -> Connections:
    """Return the registry of one edge process over the shared table and groups."""
    conns = Connections(Settings(default_topic=TOPIC, **settings), FakeTopics())  # type: ignore[arg-type]
    conns.table, conns.groups = table, groups  # type: ignore[assignment]
    return conns


@pytest.fixture
def shared() -> tuple[FakeTable, FakeGroups]:
    return FakeTable(), FakeGroups()


async def test_a_stream_longer_than_twice_the_ttl_is_not_expired_by_another_edge(shared: Any) -> None:
    a, b = edge(*shared, connection_ttl_s=100), edge(*shared, connection_ttl_s=100)
    conn_id = (await a.create(ConnectionSpec(), owner="tester"))["id"]
    claim = await a.claim(conn_id, "edge-a", lambda why: None)
    started = shared[0].get(conn_id)["last_seen_at"]
    assert a.refresh_interval_s() == 25  # a quarter of the TTL
    await a.touch(conn_id, claim)  # what the stream's commit loop does every refresh interval
    assert shared[0].get(conn_id)["last_seen_at"] >= started
    seen = _epoch(shared[0].get(conn_id)["last_seen_at"])
    assert await b.expire(now=seen + 150) == []  # within 2 x TTL of the last refresh
    assert await b.expire(now=seen + 250) == [conn_id]  # a stream whose edge died and stopped refreshing


async def test_a_touch_after_another_stream_took_over_changes_nothing(shared: Any) -> None:
    a, b = edge(*shared), edge(*shared)
    conn_id = (await a.create(ConnectionSpec(), owner="tester"))["id"]
    old = await a.claim(conn_id, "edge-a", lambda why: None)
    await b.claim(conn_id, "edge-b", lambda why: None)
    before = dict(shared[0].get(conn_id))
    await a.touch(conn_id, old)
    assert shared[0].get(conn_id) == before


async def test_position_kept_with_the_definition_survives_offsets_retention(shared: Any) -> None:
    table, groups = shared
    a = edge(table, groups)
    conn_id = (await a.create(ConnectionSpec(), owner="tester"))["id"]
    assert await a.committed(conn_id) == {P0: 10, P1: 10}
    claim = await a.claim(conn_id, "edge-a", lambda why: None)
    await a.commit(conn_id, {P0: 17, P1: 12})
    await a.touch(conn_id, claim)
    await a.commit(conn_id, {P0: 19})
    await a.release(conn_id, claim)
    assert table.get(conn_id)["position"] == {TOPIC: {"0": 19, "1": 12}}
    groups.purge()  # the broker deletes offsets offsets.retention.minutes after the last commit
    assert await edge(table, groups).committed(conn_id) == {P0: 19, P1: 12}


async def test_committed_group_offsets_win_over_the_kept_copy(shared: Any) -> None:
    table, groups = shared
    a = edge(table, groups)
    conn_id = (await a.create(ConnectionSpec(), owner="tester"))["id"]
    await groups.commit(a.group_id(conn_id), {P0: 30})  # committed after the copy was last refreshed
    assert await a.committed(conn_id) == {P0: 30, P1: 10}


async def test_a_shared_connection_streaming_on_this_edge_is_not_expired_and_its_touch_keeps_it(shared: Any) -> None:
    a, b = edge(*shared, connection_ttl_s=100), edge(*shared, connection_ttl_s=100)
    conn_id = (await a.create(ConnectionSpec(mode="shared"), owner="tester"))["id"]
    assert shared[0].get(conn_id)["mode"] == "shared"
    a.joined(conn_id, "s1", lambda why: None)
    seen = _epoch(shared[0].get(conn_id)["last_seen_at"])
    assert await a.expire(now=seen + 150) == []  # streaming here
    await a.touch_shared(conn_id, {P0: 42})  # what each shared stream does every refresh interval
    assert shared[0].get(conn_id)["position"][TOPIC]["0"] == 42
    assert await b.expire(now=_epoch(shared[0].get(conn_id)["last_seen_at"]) + 50) == []  # fresh on every edge


async def test_deleting_a_shared_connection_anywhere_closes_its_streams_on_every_edge(shared: Any) -> None:
    a, b = edge(*shared), edge(*shared)
    conn_id = (await a.create(ConnectionSpec(mode="shared"), owner="tester"))["id"]
    closed: list[str] = []
    b.joined(conn_id, "s1", closed.append)
    b.joined(conn_id, "s2", closed.append)
    await a.delete(conn_id)
    assert closed == []  # b hears of it through the table
    b._changed(conn_id, None)
    assert closed == ["connection deleted", "connection deleted"]
    assert b.list() == [] and conn_id not in b.shared


async def test_streams_leaving_a_shared_connection_are_forgotten(shared: Any) -> None:
    a = edge(*shared)
    conn_id = (await a.create(ConnectionSpec(mode="shared"), owner="tester"))["id"]
    a.joined(conn_id, "s1", lambda why: None)
    assert a.list()[0]["status"] == "connected" and a.list()[0]["mode"] == "shared"
    a.left(conn_id, "s1")
    assert a.list()[0]["status"] == "disconnected" and conn_id not in a.shared


def test_streams_opening_here_count_against_the_member_limit_until_kafka_lists_them(
        shared: tuple[FakeTable, FakeGroups]) -> None:
    conns = edge(*shared, connection_max_members=3)
    conns.reserve_member("c1", "s1", members=1)  # one member elsewhere, s1 opening here
    conns.reserve_member("c1", "s2", members=1)
    with pytest.raises(TooManyMembers, match="has 3 streams"):
        conns.reserve_member("c1", "s3", members=1)
    conns.reserve_member("c2", "s9", members=0)  # another connection has its own count
    conns.in_group("c1", "s1")  # s1 ended before joining (or joined: then `members` counts it)
    conns.in_group("c1", "s1")  # idempotent
    conns.reserve_member("c1", "s3", members=1)
    with pytest.raises(TooManyMembers):
        conns.reserve_member("c1", "s4", members=1)
    for stream in ("s2", "s3"):
        conns.in_group("c1", stream)
    assert conns.joining == {"c2": {"s9"}}  # nothing left behind for c1
