"""Catch-up jobs against a scripted consumer: never past the tail, hand-over with no gap or duplicate."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from app.fanout.catchup import CatchUpJob
from app.fanout.hub import Hub
from app.fanout.subscribers import CATCHUP, LIVE, Subscriber
from app.sse.framing import SSEParser
from tests.unit.fakes import TOPIC, FakePool, FakeServer, event, place_tail

P0 = TopicPartition(TOPIC, 0)


class FakeDecoder:
    async def decode(self, record: Any) -> dict[str, Any]:
        return record.value


class ScriptedConsumer:
    """Serves a partition log from wherever it was sought; `before_fetch` runs at each getmany."""

    def __init__(self, log: dict[TopicPartition, int], before_fetch: Callable[[int], None] | None = None) -> None:
        self.log = log  # partition -> number of records in it
        self.next: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.before_fetch = before_fetch
        self.fetches = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        self.next = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = offset

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


@pytest.fixture(autouse=True)
def fake_decoder(hub: Hub) -> None:
    hub.decoder = FakeDecoder()  # type: ignore[assignment]


def tail_publishes(hub: Hub, *offs: int) -> None:
    for o in offs:
        hub._dispatch(hub.tails[TOPIC], 0, o, event(o))


async def run_job(hub: Hub, subs: list[Subscriber], consumer: ScriptedConsumer) -> None:
    await CatchUpJob(hub, consumer, subs).run()  # type: ignore[arg-type]


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
