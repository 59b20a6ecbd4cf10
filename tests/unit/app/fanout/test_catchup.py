"""Catch-up jobs against a scripted consumer: never past the tail, hand-over with no gap or duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from app.fanout.catchup import CatchUpJob, CatchUpPool
from app.fanout.filters import Viewer
from app.fanout.hub import Hub
from app.fanout.records import LOST, NEW
from app.fanout.subscribers import CATCHUP, LIVE, Subscriber
from app.fanout.tokens import STREAM
from app.sse.framing import SSEParser
from streams.kafka import clients
from tests.unit.fakes import TOPIC, FakePool, FakeServer, event, place_tail

P0, P2 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 2)


class FakeDecoder:
    async def decode(self, record: Any) -> dict[str, Any]:
        return record.value


class ScriptedConsumer:
    """Serves a partition log from wherever it was sought; `before_fetch` runs at each getmany."""

    def __init__(self, log: dict[TopicPartition, int], before_fetch: Callable[[int], None] | None = None,
                 begins: dict[TopicPartition, int] | None = None) -> None:
        self.log = log  # partition -> number of records in it
        self.begins = begins or {}  # partition -> log start (records before it were deleted)
        self.next: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.before_fetch = before_fetch
        self.fetches = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        self.next = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.begins.get(tp, 0) for tp in tps}

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.next[tp]

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.before_fetch:
            self.before_fetch(self.fetches)
        self.fetches += 1
        out = {}
        for tp, start in self.next.items():
            end = min(self.log.get(tp, 0), start + max_records)
            if tp in self.paused or end <= start:
                continue
            out[tp] = [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o, value=event(o))
                       for o in range(start, end)]
            self.next[tp] = end
        return out


def offsets(server: FakeServer) -> list[int]:
    return [orjson.loads(m.data)["offset"] for m in SSEParser().feed(b"".join(server.bodies))]


def tail_publishes(hub: Hub, *offs: int) -> None:
    for o in offs:
        hub._dispatch(hub.tails[TOPIC], 0, o, event(o))


async def run_job(hub: Hub, subs: list[Subscriber], consumer: ScriptedConsumer) -> None:
    ports = replace(hub.catchup_ports, decode=FakeDecoder().decode)  # what the hub hands its pool
    await CatchUpJob(ports, consumer, subs).run()  # type: ignore[arg-type]


async def test_job_stops_at_the_tail_and_hands_over_without_gap_or_duplicate(hub: Hub, connect: Any) -> None:
    place_tail(hub, [5, 0])
    sub, server = connect(start={TOPIC: [0, 0]})
    await run_job(hub, [sub], ScriptedConsumer({P0: 8}))
    assert sub.state == LIVE and offsets(server) == [0, 1, 2, 3, 4]
    tail_publishes(hub, 5, 6, 7)
    assert offsets(server) == list(range(8))


async def test_job_follows_a_tail_that_moves_while_it_reads(hub: Hub, connect: Any) -> None:
    place_tail(hub, [3, 0])
    sub, server = connect(start={TOPIC: [0, 0]})
    consumer = ScriptedConsumer({P0: 6}, before_fetch=lambda n: tail_publishes(hub, 3, 4) if n == 0 else None)
    await run_job(hub, [sub], consumer)
    tail_publishes(hub, 5)
    assert offsets(server) == list(range(6))


async def test_job_that_starts_ahead_of_the_tail_waits_for_it(hub: Hub, connect: Any) -> None:
    place_tail(hub, [2, 0])
    sub, server = connect(start={TOPIC: [4, 0]})
    consumer = ScriptedConsumer({P0: 6}, before_fetch=lambda n: tail_publishes(hub, 2, 3, 4, 5) if n == 1 else None)
    await run_job(hub, [sub], consumer)
    assert sub.state == LIVE and offsets(server) == [4, 5]
    assert hub.tails[TOPIC].pos == [6, 0]


async def test_slow_client_is_shed_from_a_shared_job_while_the_other_goes_live(hub: Hub, connect: Any) -> None:
    place_tail(hub, [10, 0])
    fast, fast_server = connect(start={TOPIC: [0, 0]})
    slow, slow_server = connect(start={TOPIC: [0, 0]}, max_buffer=3)
    assert hub.catchup.submitted == [fast, slow]  # type: ignore[attr-defined]
    slow_server.writable.clear()
    await run_job(hub, [fast, slow], ScriptedConsumer({P0: 10}))
    assert fast.state == LIVE and offsets(fast_server) == list(range(10))
    assert slow.state == CATCHUP and slow.position == {TOPIC: [4, 0]}  # 0 in flight, 1-3 queued
    assert isinstance(hub.catchup, FakePool)


async def test_clients_with_the_same_filter_and_start_share_one_job_and_reader(
        hub: Hub, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = ScriptedConsumer({P0: 3})
    made: list[ScriptedConsumer] = []

    async def start() -> None:
        made.append(consumer)

    async def stop() -> None:
        made.remove(consumer)

    consumer.start, consumer.stop = start, stop  # type: ignore[attr-defined]
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: consumer)
    place_tail(hub, [3, 0])
    pool = CatchUpPool(replace(hub.catchup_ports, decode=FakeDecoder().decode), hub.settings)
    (one, one_server), (two, two_server) = connect(start={TOPIC: [0, 0]}), connect(start={TOPIC: [0, 0]})
    pool.submit(one)
    pool.submit(two)
    assert pool.waiting == 2
    async with asyncio.timeout(2):
        while one.state != LIVE or two.state != LIVE:
            await asyncio.sleep(0.01)
    assert pool.jobs_run == 1 and made == [consumer]  # one job, so one reader opened a consumer
    assert offsets(one_server) == offsets(two_server) == [0, 1, 2]
    assert one_server.bodies[0] is two_server.bodies[0]  # framed once for both
    await pool.stop()
    assert made == []


def messages(server: FakeServer) -> list[Any]:
    return list(SSEParser().feed(b"".join(server.bodies)))


async def test_a_position_the_log_no_longer_holds_gets_a_reset_event_then_the_earliest_records(
        hub: Hub, connect: Any) -> None:
    place_tail(hub, [10, 0])
    sub, server = connect(start={TOPIC: [2, 0]})  # retention (or delete-records) moved the log start to 5
    await run_job(hub, [sub], ScriptedConsumer({P0: 10}, begins={P0: 5}))
    reset, *rest = messages(server)
    assert reset.event == "reset" and orjson.loads(reset.data) == {
        "reason": "deleted", "topic": TOPIC, "partition": 0, "requested": 2, "from": 5}
    assert hub.tokens.decode(reset.id or "", STREAM, sub.group.scope) == [[5, 0]]  # resuming skips the notice
    assert [orjson.loads(m.data)["offset"] for m in rest] == [5, 6, 7, 8, 9] and sub.state == LIVE


async def test_a_lost_durable_position_gets_a_reset_event_then_the_log_start(hub: Hub, connect: Any) -> None:
    place_tail(hub, [4, 0])
    sub, server = connect(start={TOPIC: [LOST, 0]})
    await run_job(hub, [sub], ScriptedConsumer({P0: 4}, begins={P0: 1}))
    reset, *rest = messages(server)
    assert orjson.loads(reset.data) == {"reason": "position-lost", "topic": TOPIC, "partition": 0, "requested": None,
                                        "from": 1}
    assert [orjson.loads(m.data)["offset"] for m in rest] == [1, 2, 3]


async def test_a_position_inside_the_log_gets_no_reset(hub: Hub, connect: Any) -> None:
    place_tail(hub, [6, 0])
    sub, server = connect(start={TOPIC: [5, 0]})
    await run_job(hub, [sub], ScriptedConsumer({P0: 6}, begins={P0: 5}))
    assert [m.event for m in messages(server)] == ["a.b"]


async def test_partitions_the_topic_gains_during_a_job_are_read_after_the_others_and_handed_over(
        hub: Hub, connect: Any) -> None:
    place_tail(hub, [3, 0])
    tail = hub.tails[TOPIC]
    sub, server = connect(start={TOPIC: [0, 0]})

    def grow(fetch: int) -> None:
        if fetch == 0:  # the tail found a third partition holding two records
            tail.partitions = 3
            tail.pos.append(2)
            tail.replay.low.append(0)

    await run_job(hub, [sub], ScriptedConsumer({P0: 3, P2: 2}, before_fetch=grow))
    got = messages(server)
    positions = [hub.tokens.decode(m.id or "", STREAM, sub.group.scope)[0] for m in got]
    assert positions == [[1, 0], [2, 0], [3, 0], [3, 0, 1], [3, 0, 2]]  # the old partition first, then the new
    assert sub.state == LIVE


async def test_a_token_from_before_the_topic_grew_reads_the_new_partition_after_the_others(
        hub: Hub, connect: Any) -> None:
    tail = hub.tails[TOPIC]
    place_tail(hub, [3, 0, 2])
    tail.partitions = 3
    group = next(iter(hub.groups.values()), None) or connect()[0].group
    token = hub.tokens.encode(STREAM, group.scope, [[1, 0]])  # issued when the topic had two partitions
    start = hub.decode_token(group, token)
    assert start == {TOPIC: [1, 0, NEW]}
    sub, server = connect(start=start)
    await run_job(hub, [sub], ScriptedConsumer({P0: 3, P2: 2}))
    positions = [hub.tokens.decode(m.id or "", STREAM, sub.group.scope)[0] for m in messages(server)]
    assert positions == [[2, 0, 0], [3, 0, 0], [3, 0, 1], [3, 0, 2]] and sub.state == LIVE


async def test_a_reader_whose_consumer_fails_to_start_stays_and_serves_later(
        hub: Hub, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = ScriptedConsumer({P0: 3})
    starts: list[int] = []

    async def start() -> None:
        starts.append(1)
        if len(starts) == 1:
            raise KafkaConnectionError("no broker yet")

    async def stop() -> None:
        pass

    consumer.start, consumer.stop = start, stop  # type: ignore[attr-defined]
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: consumer)
    place_tail(hub, [3, 0])
    pool = CatchUpPool(replace(hub.catchup_ports, decode=FakeDecoder().decode),
                       hub.settings.model_copy(update={"stream_catchup_readers": 1}))
    hub.catchup = pool  # requeued clients come back to this pool
    sub, server = connect(start={TOPIC: [0, 0]})
    async with asyncio.timeout(5):
        while sub.state != LIVE:
            await asyncio.sleep(0.01)
    assert len(starts) == 2 and pool.started == 1 and offsets(server) == [0, 1, 2]
    await pool.stop()


# ------------------------------------------------------------------ batchSize and targeted delivery

def frames_per_write(server: FakeServer) -> list[int]:
    return [len(list(SSEParser().feed(body))) for body in server.bodies]


@pytest.mark.parametrize(("batch_size", "writes"), [(1, [1] * 10), (4, [4, 4, 2]), (100, [10])],
                         ids=["one-per-write", "four-per-write", "all-in-one"])
async def test_job_writes_up_to_batch_size_events_per_socket_write(hub: Hub, connect: Any, batch_size: int,
                                                                   writes: list[int]) -> None:
    place_tail(hub, [10, 0])
    sub, server = connect(start={TOPIC: [0, 0]})
    sub.batch_size = batch_size
    await run_job(hub, [sub], ScriptedConsumer({P0: 10}))
    assert sub.state == LIVE and offsets(server) == list(range(10))
    assert frames_per_write(server) == writes
    assert hub.deliveries == 10


async def test_client_whose_queue_fills_inside_a_batch_resumes_at_the_first_event_it_did_not_take(
        hub: Hub, connect: Any) -> None:
    place_tail(hub, [10, 0])
    sub, server = connect(start={TOPIC: [0, 0]}, max_buffer=2)
    sub.batch_size = 4
    server.writable.clear()  # 0-3 go out as one write that stalls; 4 and 5 queue; 6 is refused
    await run_job(hub, [sub], ScriptedConsumer({P0: 10}))
    assert sub.state == CATCHUP and sub.position == {TOPIC: [6, 0]}
    assert hub.deliveries == 6
    server.writable.set()
    await asyncio.sleep(0.01)
    assert offsets(server) == list(range(6))


async def test_job_gives_targeted_events_only_to_the_clients_they_name(hub: Hub, connect: Any) -> None:
    place_tail(hub, [9, 0])
    (alice, alice_server), (bob, bob_server) = connect(start={TOPIC: [0, 0]}), connect(start={TOPIC: [0, 0]})
    alice.viewer, bob.viewer = Viewer.of_stream("alice"), Viewer.of_stream("bob", "conn-b")
    alice.batch_size = 2
    to = {0: ["alice"], 1: ["conn-b"], 2: None, 3: ["alice", "bob"], 4: ["carol"]}

    async def decode(record: Any) -> dict[str, Any]:
        ev = dict(record.value)
        if to.get(record.offset % 5) is not None:
            ev["recipients"] = to[record.offset % 5]
        return ev

    ports = replace(hub.catchup_ports, decode=decode)
    await CatchUpJob(ports, ScriptedConsumer({P0: 9}), [alice, bob]).run()  # type: ignore[arg-type]
    assert alice.state == LIVE and bob.state == LIVE
    assert offsets(alice_server) == [0, 2, 3, 5, 7, 8]
    assert offsets(bob_server) == [1, 2, 3, 6, 7, 8]
    assert all("recipients" not in orjson.loads(m.data) for m in SSEParser().feed(b"".join(alice_server.bodies)))
