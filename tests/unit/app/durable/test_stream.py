"""Durable connection streams without Kafka: where a stream starts, which event counts as delivered,
and what is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from app.durable.registry import ConnectionOptions
from app.durable.stream import DurableStreamResponse, TrackedConnection, positions_to_offsets, start_positions
from app.fanout.filters import CompiledFilter, EventFilter
from app.fanout.hub import Hub
from app.fanout.subscribers import FilterGroup
from app.fanout.tokens import STREAM, pack
from app.sse.framing import PING, with_id
from tests.unit.fakes import TOPIC, FakeCycle, FakeServer, pass_through, place_tail, settle

P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeConnections:
    """The registry calls a durable stream makes, recorded."""

    def __init__(self, committed: dict[TopicPartition, int] | None = None) -> None:
        self.offsets = dict(committed or {})
        self.commits: list[dict[TopicPartition, int]] = []
        self.counts: list[int] = []
        self.events: list[str] = []
        self.refresh_s = 3600.0

    async def committed(self, conn_id: str) -> dict[TopicPartition, int]:
        return dict(self.offsets)

    async def commit(self, conn_id: str, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)
        self.offsets.update(offsets)

    def delivered(self, conn_id: str, count: int, last_time: str | None) -> None:
        self.counts.append(count)

    async def claim(self, conn_id: str, host: str, on_takeover: Callable[[str], None]) -> str:
        self.events.append("claim")
        return "claim-1"

    def connected(self, conn_id: str, claim: str) -> None:
        self.events.append(f"connected {claim}")

    async def release(self, conn_id: str, claim: str) -> None:
        self.events.append(f"release {claim}")

    def refresh_interval_s(self) -> float:
        return self.refresh_s

    async def touch(self, conn_id: str, claim: str) -> None:
        self.events.append(f"touch {claim}")


@pytest.fixture
def group(hub: Hub) -> FilterGroup:
    return hub.join(CompiledFilter(EventFilter.model_validate({"topics": [TOPIC]}), [TOPIC]))


def frame(hub: Hub, group: FilterGroup, *offsets: int) -> bytes:
    """Return an event frame whose id is the position `offsets` (one per partition)."""
    token = hub.tokens.sign(STREAM, group.scope, pack([list(offsets)]))
    return with_id(token, b"event: a.b\ndata: {}\n\n")


def token_of(data: bytes) -> bytes:
    return data[4:data.index(b"\n")]


# ------------------------------------------------------------------ where the stream starts

async def test_stream_starts_at_the_committed_offsets_and_zero_where_none_is(hub: Hub, group: FilterGroup) -> None:
    start = await start_positions(hub, group, FakeConnections({P0: 5}), "c", None)  # type: ignore[arg-type]
    assert start == {TOPIC: [5, 0]}


async def test_a_newer_last_event_id_wins_over_the_committed_offsets(hub: Hub, group: FilterGroup) -> None:
    token = token_of(frame(hub, group, 7, 1)).decode()
    start = await start_positions(hub, group, FakeConnections({P0: 5}), "c", token)  # type: ignore[arg-type]
    assert start == {TOPIC: [7, 1]}


async def test_an_older_last_event_id_wins_over_the_committed_offsets(hub: Hub, group: FilterGroup) -> None:
    # The committed position counts bytes the socket took; the client may have lost them in buffers
    # when its network died. What it sends is what it processed.
    token = token_of(frame(hub, group, 4, 9)).decode()  # behind the committed offset on partition 0
    start = await start_positions(hub, group, FakeConnections({P0: 5, P1: 2}), "c", token)  # type: ignore[arg-type]
    assert start == {TOPIC: [4, 9]}


@pytest.mark.parametrize("kind", ["forged", "other-filter"])
async def test_a_last_event_id_that_does_not_fit_is_ignored(hub: Hub, group: FilterGroup, kind: str) -> None:
    if kind == "forged":
        token = "not-a-token"
    else:
        other = hub.join(CompiledFilter(EventFilter.model_validate({"topics": [TOPIC], "types": ["x"]}), [TOPIC]))
        token = token_of(frame(hub, other, 9, 9)).decode()
    start = await start_positions(hub, group, FakeConnections({P0: 5, P1: 2}), "c", token)  # type: ignore[arg-type]
    assert start == {TOPIC: [5, 2]}


def test_positions_become_committable_offsets() -> None:
    assert positions_to_offsets({"a": [3, 0], "b": [7]}) == {
        TopicPartition("a", 0): 3, TopicPartition("a", 1): 0, TopicPartition("b", 0): 7}


# ------------------------------------------------------------------ what counts as delivered

async def test_event_the_socket_took_at_once_is_delivered_and_comments_do_not_count(hub: Hub,
                                                                                   group: FilterGroup) -> None:
    conn = TrackedConnection(FakeServer().send, max_buffer=4)
    conn.write(b"retry: 1000\n\n")
    conn.write(frame(hub, group, 1, 0))
    conn.write(PING)
    assert conn.delivered == token_of(frame(hub, group, 1, 0)) and conn.delivered_count == 1


async def test_queued_events_count_only_once_the_flush_handed_them_to_the_socket(hub: Hub,
                                                                                 group: FilterGroup) -> None:
    server = FakeServer()
    conn = TrackedConnection(server.send, max_buffer=4)
    conn.write(frame(hub, group, 1, 0))
    server.writable.clear()
    conn.write(frame(hub, group, 2, 0))  # suspended in the server: pending
    conn.write(frame(hub, group, 3, 0))  # queued
    assert conn.delivered == token_of(frame(hub, group, 1, 0)) and conn.delivered_count == 1
    await settle()
    server.writable.set()
    await settle()
    assert conn.delivered == token_of(frame(hub, group, 3, 0)) and conn.delivered_count == 3


async def test_queued_events_of_a_failed_flush_are_not_delivered(hub: Hub, group: FilterGroup) -> None:
    async def reset(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        raise OSError("connection reset by peer")

    conn = TrackedConnection(reset, max_buffer=4)
    conn.write(frame(hub, group, 1, 0))
    conn.write(frame(hub, group, 2, 0))
    await settle()
    assert conn.closed and conn.delivered is None and conn.delivered_count == 0


async def test_event_written_when_the_queue_drained_is_not_overwritten_by_an_older_one(hub: Hub,
                                                                                      group: FilterGroup) -> None:
    server = FakeServer()
    conn = TrackedConnection(server.send, max_buffer=4)
    server.writable.clear()
    conn.write(frame(hub, group, 1, 0))
    conn.on_drain = lambda: conn.write(frame(hub, group, 2, 0))  # as the hub's replay does after a drain
    await settle()
    server.writable.set()
    await settle()
    assert conn.delivered == token_of(frame(hub, group, 2, 0)) and conn.delivered_count == 2


async def test_event_written_by_the_drain_callback_into_a_full_socket_is_not_delivered_yet(
        hub: Hub, group: FilterGroup) -> None:
    # The drain callback (the hub's replay) writes again and the socket fills up again: the commit must
    # stay at what the first flush handed over, not run ahead to the frame now queued.
    server = FakeServer()
    conn = TrackedConnection(server.send, max_buffer=4)
    server.writable.clear()
    conn.write(frame(hub, group, 1, 0))

    def replay() -> None:
        server.writable.clear()
        conn.write(frame(hub, group, 2, 0))

    conn.on_drain = replay
    await settle()
    server.writable.set()
    await settle()
    assert conn.blocked and server.bodies == [frame(hub, group, 1, 0)]
    assert conn.delivered == token_of(frame(hub, group, 1, 0)) and conn.delivered_count == 1
    server.writable.set()
    await settle()
    assert conn.delivered == token_of(frame(hub, group, 2, 0)) and conn.delivered_count == 2


async def test_tracked_connection_takes_the_direct_path_with_the_send_it_was_given(hub: Hub,
                                                                                  group: FilterGroup) -> None:
    cycle = FakeCycle()
    conn = TrackedConnection(pass_through(cycle.send), max_buffer=4)
    conn.write(frame(hub, group, 1, 0))
    assert conn.direct and len(cycle.transport.writes) == 1
    assert conn.delivered == token_of(frame(hub, group, 1, 0))


def test_writes_after_close_do_not_count(hub: Hub, group: FilterGroup) -> None:
    conn = TrackedConnection(FakeServer().send, max_buffer=4)
    conn.close(b": bye\n\n")
    conn.write(frame(hub, group, 1, 0))
    assert conn.delivered is None and conn.delivered_count == 0


# ------------------------------------------------------------------ what is committed

def response(hub: Hub, group: FilterGroup, connections: FakeConnections) -> DurableStreamResponse:
    options = ConnectionOptions(retryDelay=700, bufferMaxSize=8)
    return DurableStreamResponse(hub, group, {TOPIC: [0, 0]}, connections, "c", options, None)  # type: ignore[arg-type]


async def test_commit_sends_the_position_after_the_last_delivered_event_once(hub: Hub, group: FilterGroup) -> None:
    connections = FakeConnections()
    resp = response(hub, group, connections)
    conn = TrackedConnection(FakeServer().send, max_buffer=4)
    await resp._commit(conn)
    assert connections.commits == []  # nothing delivered yet
    conn.write(frame(hub, group, 1, 0))
    conn.write(frame(hub, group, 3, 1))
    await resp._commit(conn)
    await resp._commit(conn)
    assert connections.commits == [{P0: 3, P1: 1}] and connections.counts == [2] and conn.delivered_count == 0


async def test_stream_claims_sends_retry_serves_from_its_start_and_commits_and_releases_at_the_end(
        hub: Hub, group: FilterGroup) -> None:
    connections = FakeConnections()
    resp = response(hub, group, connections)
    messages: list[dict[str, Any]] = []
    leave = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:
        await leave.wait()
        return {"type": "http.disconnect"}

    place_tail(hub, [5, 5])
    task = asyncio.create_task(resp({}, receive, send))
    await settle()
    [sub] = hub.subscribers
    assert messages[0]["type"] == "http.response.start" and messages[1]["body"] == b"retry: 700\n\n"
    assert hub.catchup.submitted == [sub] and sub.position == {TOPIC: [0, 0]}  # type: ignore[attr-defined]
    assert connections.events == ["claim", "connected claim-1"]
    sub.conn.write(frame(hub, group, 4, 2))
    leave.set()
    await task
    assert not hub.subscribers and not hub.groups  # the stream's lease is given back
    assert connections.commits == [{P0: 4, P1: 2}] and connections.events[-1] == "release claim-1"


async def test_a_long_stream_refreshes_its_definition_so_no_edge_expires_it(hub: Hub, group: FilterGroup) -> None:
    connections = FakeConnections()
    connections.refresh_s = 0.05
    hub.settings.connection_commit_interval_ms = 10
    resp = response(hub, group, connections)
    conn = TrackedConnection(FakeServer().send, max_buffer=4)
    loop = asyncio.create_task(resp._commit_loop(conn, "claim-1"))
    await asyncio.sleep(0.3)
    loop.cancel()
    assert connections.events.count("touch claim-1") >= 3


async def test_a_batch_written_as_one_chunk_delivers_its_last_event_and_counts_each(hub: Hub,
                                                                                   group: FilterGroup) -> None:
    server = FakeServer()
    conn = TrackedConnection(server.send, max_buffer=4)
    assert conn.write_batch([frame(hub, group, 1, 0), frame(hub, group, 2, 0), frame(hub, group, 3, 0)]) == 3
    assert len(server.bodies) == 1  # one socket write
    assert conn.delivered == token_of(frame(hub, group, 3, 0)) and conn.delivered_count == 3
