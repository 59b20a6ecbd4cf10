"""Resuming from the replay buffer: exact hand-over without Kafka, shared frames, fallbacks."""

from __future__ import annotations

from typing import Any

import orjson

from app.fanout.hub import Hub
from app.fanout.replay import ReplayBuffer, ReplayEntry
from app.fanout.subscribers import CATCHUP, LIVE
from app.fanout.tail import TailReader
from app.sse.framing import SSEParser
from app.sse.writer import Connection
from tests.unit.fakes import TOPIC, FakeServer, event, place_tail, settle


def publish(hub: Hub, partition: int, *offsets: int) -> None:
    for offset in offsets:
        hub._dispatch(hub.tails[TOPIC], partition, offset, event(offset, partition=partition))


def received(server: FakeServer) -> list[tuple[int, int]]:
    return [(orjson.loads(m.data)["partition"], orjson.loads(m.data)["offset"])
            for m in SSEParser().feed(b"".join(server.bodies))]


def test_since_returns_newer_records_of_every_partition_in_order() -> None:
    buffer = ReplayBuffer(2, 10, [0, 0])
    for partition, offset in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]:
        buffer.append(ReplayEntry(partition, offset, {}))
    assert [(e.partition, e.offset) for e in buffer.since([1, 1])] == [(0, 1), (1, 1), (0, 2)]


def test_buffer_forgets_the_oldest_and_no_longer_covers_it() -> None:
    buffer = ReplayBuffer(1, 2, [0])
    for offset in range(4):
        buffer.append(ReplayEntry(0, offset, {}))
    assert buffer.low == [2] and buffer.covers([2], [4]) and not buffer.covers([1], [4])


def test_client_a_little_behind_resumes_from_memory_and_joins_live(hub: Hub, connect: Any) -> None:
    place_tail(hub, [0, 0], replay_size=100)
    publish(hub, 0, 0, 1, 2)
    publish(hub, 1, 0)
    sub, server = connect(start={TOPIC: [1, 0]})
    assert sub.state == LIVE and hub.catchup.submitted == [] and hub.replays == 1  # type: ignore[attr-defined]
    publish(hub, 1, 1)
    assert received(server) == [(0, 1), (0, 2), (1, 0), (1, 1)]


def test_client_behind_the_window_goes_to_catch_up(hub: Hub, connect: Any) -> None:
    place_tail(hub, [0, 0], replay_size=2)
    publish(hub, 0, 0, 1, 2, 3)
    sub, server = connect(start={TOPIC: [1, 0]})
    assert sub.state == CATCHUP and hub.catchup.submitted == [sub]  # type: ignore[attr-defined]
    assert server.bodies == []


def test_clients_resuming_from_one_token_share_the_frames(hub: Hub, connect: Any) -> None:
    place_tail(hub, [0, 0], replay_size=100)
    publish(hub, 0, 0, 1)
    (_, one), (_, two) = connect(start={TOPIC: [0, 0]}), connect(start={TOPIC: [0, 0]})
    assert len(one.bodies) == 2 and all(a is b for a, b in zip(one.bodies, two.bodies, strict=True))


async def test_replay_into_a_full_buffer_requeues_from_the_frame_not_taken(hub: Hub, connect: Any) -> None:
    place_tail(hub, [0, 0], replay_size=100)
    publish(hub, 0, 0, 1, 2, 3, 4)
    live, live_server = connect()  # a live client keeps the group alive while the other blocks
    server = FakeServer()
    server.writable.clear()
    group = live.group
    hub.join(group.filter)
    sub = hub.open(group, Connection(server.send, 2), 15.0, {TOPIC: [0, 0]})
    assert sub.state == CATCHUP and sub.position == {TOPIC: [3, 0]}  # 0 in flight, 1-2 queued
    await settle()
    server.writable.set()
    await settle()
    assert sub.state == LIVE and received(server) == [(0, o) for o in range(5)]


def test_a_tail_recreated_after_idling_is_not_served_the_old_tails_frames(hub: Hub, connect: Any) -> None:
    place_tail(hub, [0, 0], replay_size=100)
    publish(hub, 0, 0, 1)
    _, first = connect(start={TOPIC: [0, 0]})
    assert received(first) == [(0, 0), (0, 1)]
    # The tail idled out and a new one started: its `dispatched` counts from 0 again and reaches the same number
    # over other records, so a cache keyed by it alone served the first tail's frames.
    hub.tails[TOPIC] = TailReader(hub.settings, TOPIC, 2, hub.decoder, hub._dispatch)
    place_tail(hub, [0, 0], replay_size=100)
    publish(hub, 1, 0, 1)
    _, second = connect(start={TOPIC: [0, 0]})
    assert received(second) == [(1, 0), (1, 1)]
