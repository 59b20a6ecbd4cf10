"""Unit tests of a shared connection's member (app/durable/shared.py): where partitions start, what is
committed when (the accepted position, one interval old on leave), and what counts as redelivered.
Kafka itself is covered by tests/integration/test_connections_shared.py; here the consumer is a stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.structs import ConsumerRecord

from app.durable.shared import Counted, SharedMember, member_of, parse_meta
from app.durable.stream import TrackedConnection
from app.fanout.filters import NOBODY, CompiledFilter, EventFilter
from app.fanout.tokens import TokenCodec
from streams.settings import Settings
from tests.unit.fakes import TOPIC, FakeServer, event, settle

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, Any]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets)

    async def stop(self) -> None:
        pass

    def last(self) -> dict[TopicPartition, tuple[int, dict[str, Any]]]:
        return {tp: (m.offset, orjson.loads(m.metadata)) for tp, m in self.commits[-1].items()}


class FakeGroups:
    def __init__(self, counted: dict[TopicPartition, Counted]) -> None:
        self._counted = counted

    async def counted(self, group: str) -> dict[TopicPartition, Counted]:
        return self._counted

    async def start_offsets(self, parts: list[TopicPartition], start: str) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in parts}


def record(offset: int, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, b"x", None, 1, 1, [])


async def decode(rec: ConsumerRecord) -> dict[str, Any]:
    return event(rec.offset, "a.b" if rec.offset % 10 < 5 else "other.x", partition=rec.partition)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def member(server: FakeServer) -> SharedMember:
    settings = Settings(connection_commit_interval_ms=100, connection_member_session_timeout_ms=6_000)
    conn = TrackedConnection(server.send, max_buffer=100)
    flt = CompiledFilter(EventFilter(topics=[TOPIC], types=["a.*"]), [TOPIC])
    m = SharedMember(settings, group_id="g", stream_id="s1", edge="host:1", flt=flt, layout={TOPIC: 2}, conn=conn,
                     tokens=TokenCodec(b"unit-test-secret"), decode=decode,
                     groups=FakeGroups({P0: Counted(3, 7, 1, None)}),  # type: ignore[arg-type]
                     kept={}, heartbeat_s=15, batch=10, viewer=NOBODY)
    m.consumer = FakeConsumer()  # type: ignore[assignment]
    m._started = True
    await m.on_partitions_assigned({P0, P1})
    return m


async def deliver(m: SharedMember, tp: TopicPartition, *offsets: int) -> None:
    for offset in offsets:
        await m._deliver(tp, record(offset, tp.partition))


async def test_assigned_partitions_start_at_the_groups_commit_and_keep_its_counters(member: SharedMember) -> None:
    assert member.consumer.seeks == {P0: 3, P1: 0}  # P1 had no commit: its first offset
    assert member.counts == {P0: [7, 1], P1: [0, 0]}


async def test_the_accepted_position_skips_unmatched_records_once_nothing_is_pending(member: SharedMember) -> None:
    await deliver(member, P0, 3, 4, 5, 6)  # 5 and 6 are not of type a.*
    assert member.flushed() == {P0: 7, P1: 0}


async def test_a_periodic_commit_takes_the_position_accepted_one_interval_ago(member: SharedMember) -> None:
    now = asyncio.get_running_loop().time()
    await deliver(member, P0, 3, 4)
    member.samples.extend([(now - 0.3, {P0: 4, P1: 0}), (now - 0.15, {P0: 5, P1: 0}), (now - 0.01, {P0: 99})])
    await member._commit(member._aged())
    offset, meta = member.consumer.last()[P0]
    assert offset == 5  # the newest sample at least one interval (0.1 s) old
    assert (meta["delivered"], meta["redelivered"]) == (9, 1)  # 7 before, plus offsets 3 and 4


async def test_leaving_commits_one_interval_back_and_counts_the_rest_as_redelivered(member: SharedMember) -> None:
    await deliver(member, P0, 3, 4, 10, 11, 12)  # all accepted by the socket
    member.samples.append((asyncio.get_running_loop().time() - 1.0, {P0: 5, P1: 0}))
    await member.stop()
    offset, meta = member.consumer.last()[P0]
    assert offset == 5
    assert (meta["delivered"], meta["redelivered"]) == (9, 1 + 3)  # 10, 11, 12 go to the next owner too


async def test_a_revoke_commits_exactly_what_the_socket_accepted(member: SharedMember, server: FakeServer) -> None:
    await deliver(member, P0, 3)
    server.writable.clear()  # the client stops reading: the next frames queue
    await deliver(member, P0, 4, 10)
    asyncio.get_running_loop().call_later(0.05, server.writable.set)
    await member.on_partitions_revoked({P0, P1})
    offset, meta = member.consumer.last()[P0]
    assert offset == 11
    assert (meta["delivered"], meta["redelivered"]) == (10, 1)  # nothing handed over twice
    assert member.assigned == set()


async def test_frames_still_queued_at_a_revoke_count_as_redelivered(member: SharedMember, server: FakeServer) -> None:
    await deliver(member, P0, 3)
    server.writable.clear()
    await deliver(member, P0, 4)
    await settle()
    await member.on_partitions_revoked({P0, P1})  # waits session/3 = 2 s for a flush that never comes
    offset, meta = member.consumer.last()[P0]
    assert offset == 4
    assert (meta["delivered"], meta["redelivered"]) == (8, 2)


async def test_a_commit_never_moves_a_partition_back(member: SharedMember) -> None:
    await member._commit({P0: 1, P1: 0})
    assert member.consumer.commits == []  # behind the group's 3: nothing to commit


def test_a_member_names_its_stream_edge_and_partitions() -> None:
    assignment = ConsumerProtocolMemberAssignment(0, [(TOPIC, [2, 0])], b"").encode()
    assert member_of("m-1", "eventstream-shared.abc@edge-1:8000", "/127.0.0.1", assignment) == {
        "member": "m-1", "stream": "abc", "edge": "edge-1:8000", "host": "127.0.0.1",
        "partitions": [{"topic": TOPIC, "partition": 0}, {"topic": TOPIC, "partition": 2}]}


@pytest.mark.parametrize(("metadata", "expected"), [
    ('{"delivered": 4, "redelivered": 2, "time": "T"}', Counted(9, 4, 2, "T")),
    ("", Counted(9, 0, 0, None)),
    ("not json", Counted(9, 0, 0, None)),
], ids=["counters", "commit-made-at-create", "foreign-metadata"])
def test_commit_metadata_gives_the_counters(metadata: str, expected: Counted) -> None:
    assert parse_meta(9, metadata) == expected
