"""The tail reader against an in-memory log: the replay window it fills at start, then every record in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from app.fanout.tail import TailReader
from streams.errors import BrokerUnavailable
from streams.kafka import clients
from streams.settings import Settings
from tests.unit.fakes import TOPIC, FakeDecoder, FakeLogConsumer, event, record

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
Delivered = list[tuple[int, int, Any]]


def log_of(p0: int, p1: int) -> dict[TopicPartition, list[Any]]:
    return {P0: [record(P0, o, event(o)) for o in range(p0)],
            P1: [record(P1, o, event(o, partition=1)) for o in range(p1)]}


def use(monkeypatch: pytest.MonkeyPatch, consumer: FakeLogConsumer) -> None:
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: consumer)


def tail_on(replay_records: int, delivered: Delivered) -> TailReader:
    settings = Settings(stream_replay_records=replay_records)
    return TailReader(settings, TOPIC, 2, FakeDecoder(), lambda tail, p, o, ev: delivered.append((p, o, ev)))  # type: ignore[arg-type]


async def wait_until(check: Any) -> None:
    async with asyncio.timeout(2):
        while not check():
            await asyncio.sleep(0.01)


async def test_start_fills_the_replay_window_with_the_last_records_before_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, FakeLogConsumer(log_of(10, 4)))
    delivered: Delivered = []
    tail = tail_on(4, delivered)  # two records per partition
    await tail.start()
    try:
        assert tail.pos == [10, 4] and delivered == []
        assert [(e.partition, e.offset) for e in tail.replay.entries] == [(0, 8), (0, 9), (1, 2), (1, 3)]
        assert tail.replay.low == [8, 2] and tail.replay.covers([8, 2], tail.pos)
        assert not tail.replay.covers([7, 2], tail.pos)
    finally:
        await tail.stop()


async def test_window_never_reaches_before_the_log_start(monkeypatch: pytest.MonkeyPatch) -> None:
    log = {P0: [record(P0, o, event(o)) for o in range(5, 7)], P1: []}
    use(monkeypatch, FakeLogConsumer(log, begins={P0: 5}))
    tail = tail_on(100, [])
    await tail.start()
    try:
        assert tail.pos == [7, 0] and tail.replay.low == [5, 0]
        assert [e.offset for e in tail.replay.entries] == [5, 6]
    finally:
        await tail.stop()


async def test_records_after_the_start_are_delivered_in_partition_order(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeLogConsumer(log_of(2, 0))
    use(monkeypatch, consumer)
    delivered: Delivered = []
    tail = tail_on(0, delivered)
    await tail.start()
    try:
        assert list(tail.replay.entries) == [] and tail.replay.low == [2, 0]  # replay turned off
        for rec in (record(P0, 2, event(2)), record(P1, 0, None), record(P0, 3, event(3))):
            consumer.append(rec)
        await wait_until(lambda: len(delivered) == 3)
        assert [(p, o) for p, o, _ in delivered if p == 0] == [(0, 2), (0, 3)]
        assert (1, 0, None) in delivered  # not an event: still delivered, so the position moves past it
    finally:
        await tail.stop()


async def test_records_written_while_the_window_is_read_are_delivered_not_replayed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class LateConsumer(FakeLogConsumer):
        async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
            ends = await super().end_offsets(tps)
            return {tp: max(0, end - 1) for tp, end in ends.items()}  # the last record lands just after

    use(monkeypatch, LateConsumer(log_of(3, 0)))
    delivered: Delivered = []
    tail = tail_on(10, delivered)
    await tail.start()
    try:
        assert [e.offset for e in tail.replay.entries] == [0, 1]
        assert [(p, o) for p, o, _ in delivered] == [(0, 2)]
    finally:
        await tail.stop()


async def test_stop_closes_the_consumer_and_twice_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeLogConsumer(log_of(1, 1))
    use(monkeypatch, consumer)
    tail = tail_on(0, [])
    await tail.start()
    await tail.stop()
    await tail.stop()
    assert consumer.stopped


async def test_broker_that_does_not_answer_at_start_raises_broker_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class DeadConsumer(FakeLogConsumer):
        async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
            raise KafkaConnectionError("no broker")

    consumer = DeadConsumer({})
    use(monkeypatch, consumer)
    with pytest.raises(BrokerUnavailable, match="cannot tail 't'"):
        await tail_on(0, []).start()
    assert consumer.stopped


async def test_a_failure_while_filling_the_window_closes_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenDecoder(FakeDecoder):
        async def decode(self, rec: Any) -> dict[str, Any] | None:
            raise RuntimeError("decoder bug")  # used to leave one consumer open per request

    consumer = FakeLogConsumer(log_of(3, 0))
    use(monkeypatch, consumer)
    tail = TailReader(Settings(stream_replay_records=10), TOPIC, 2, BrokenDecoder(),  # type: ignore[arg-type]
                      lambda *args: None)
    with pytest.raises(RuntimeError):
        await tail.start()
    assert consumer.stopped


async def test_the_loop_restarts_after_a_failure_and_goes_on_after_the_last_record_delivered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeLogConsumer(log_of(0, 0))
    use(monkeypatch, consumer)
    delivered: Delivered = []
    failed: list[int] = []

    def deliver(tail: Any, p: int, o: int, ev: Any) -> None:
        tail.pos[p] = o + 1  # as the hub does, first
        if o == 1 and not failed:
            failed.append(o)
            raise RuntimeError("one bad record")
        delivered.append((p, o, ev))

    tail = TailReader(Settings(stream_replay_records=0), TOPIC, 2, FakeDecoder(), deliver)  # type: ignore[arg-type]
    await tail.start()
    try:
        for o in range(4):
            consumer.append(record(P0, o, event(o)))
        await wait_until(lambda: len(delivered) == 3)
        assert [o for _, o, _ in delivered] == [0, 2, 3] and failed == [1]
    finally:
        await tail.stop()


async def test_partitions_added_to_the_topic_are_read_from_their_first_offset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p2 = TopicPartition(TOPIC, 2)
    consumer = FakeLogConsumer(log_of(2, 0), begins={p2: 0})
    use(monkeypatch, consumer)
    delivered: Delivered = []
    count = 2

    async def partition_count() -> int:
        return count

    tail = TailReader(Settings(stream_replay_records=4, stream_metadata_refresh_s=3600), TOPIC, 2, FakeDecoder(),
                      lambda t, p, o, ev: delivered.append((p, o, ev)), partition_count=partition_count)  # type: ignore[arg-type]
    await tail.start()
    try:
        count = 3  # the topic grew; records land in the new partition before the tail knows it
        consumer.append(record(p2, 0, event(0, partition=2)))
        consumer.append(record(p2, 1, event(1, partition=2)))
        await tail.refresh(timeout=3)  # what a token naming 3 partitions asks for
        assert tail.partitions == 3 and tail.replay.low == [0, 0, 0]
        consumer.append(record(P0, 2, event(2)))
        await wait_until(lambda: len(delivered) == 3)
        assert sorted((p, o) for p, o, _ in delivered) == [(0, 2), (2, 0), (2, 1)]
    finally:
        await tail.stop()


async def test_the_tail_looks_for_new_partitions_every_refresh_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    p2 = TopicPartition(TOPIC, 2)
    consumer = FakeLogConsumer(log_of(0, 0))
    use(monkeypatch, consumer)
    delivered: Delivered = []
    asked: list[int] = []

    async def partition_count() -> int:
        asked.append(1)
        return 3

    tail = TailReader(Settings(stream_replay_records=0, stream_metadata_refresh_s=0.05), TOPIC, 2, FakeDecoder(),
                      lambda t, p, o, ev: delivered.append((p, o, ev)), partition_count=partition_count)  # type: ignore[arg-type]
    await tail.start()
    try:
        consumer.append(record(p2, 0, event(0, partition=2)))
        await wait_until(lambda: delivered == [(2, 0, event(0, partition=2))])
        assert tail.partitions == 3 and asked
    finally:
        await tail.stop()
