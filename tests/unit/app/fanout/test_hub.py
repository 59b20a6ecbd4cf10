"""The hub's fan-out without Kafka: groups, shared frames, overflow back to catch-up, heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from app.fanout.hub import Hub
from app.fanout.subscribers import CATCHUP, LIVE
from app.fanout.tokens import STREAM
from app.sse.framing import PING, SSEParser
from tests.unit.fakes import TOPIC, event, place_tail, settle


def dispatch(hub: Hub, offset: int, partition: int = 0, **kw: Any) -> None:
    """Make the fake tail hand one record to the hub."""
    hub._dispatch(hub.tails[TOPIC], partition, offset, event(offset, partition=partition, **kw))


def test_hub_matches_each_record_once_per_filter_group(hub: Hub, connect: Callable[..., Any]) -> None:
    subs = [connect({"types": ["a.*"]})[0] for _ in range(3)] + [connect({"types": ["x.*"]})[0]]
    calls: list[str] = []
    for group in hub.groups.values():
        original = group.filter.matches
        group.filter.matches = lambda ev, o=original, k=group.filter.key: calls.append(k) or o(ev)  # type: ignore
    dispatch(hub, 0)
    assert len(hub.groups) == 2 and len(calls) == 2
    assert all(s.state == LIVE for s in subs)


def test_hub_shares_one_frame_between_clients_of_a_group(hub: Hub, connect: Callable[..., Any]) -> None:
    (_, one), (_, two) = connect(), connect()
    dispatch(hub, 0)
    assert one.bodies[-1] is two.bodies[-1]


def test_frames_go_only_to_matching_groups(hub: Hub, connect: Callable[..., Any]) -> None:
    _, wanted = connect({"types": ["a.*"]})
    _, other = connect({"types": ["x.*"]})
    dispatch(hub, 0)
    assert len(wanted.bodies) == 1 and other.bodies == []


def test_frame_id_is_the_position_after_the_record(hub: Hub, connect: Callable[..., Any]) -> None:
    sub, server = connect()
    place_tail(hub, [0, 7])
    dispatch(hub, 3, partition=0)
    [message] = list(SSEParser().feed(server.bodies[-1]))
    assert hub.tokens.decode(message.id or "", STREAM, sub.group.scope) == [[4, 7]]
    assert message.event == "a.b"


async def test_hub_sends_full_subscriber_back_to_catch_up(hub: Hub, connect: Callable[..., Any]) -> None:
    slow, slow_server = connect(max_buffer=2)
    fast, fast_server = connect()
    slow_server.writable.clear()
    for offset in range(4):
        dispatch(hub, offset)
    assert slow.state == CATCHUP and fast.state == LIVE
    assert slow.position == {TOPIC: [3, 0]}  # resumes at the record it could not take
    assert len(fast_server.bodies) == 4  # the fast client was not held back
    assert hub.catchup.submitted == []  # type: ignore[attr-defined] - waits for the socket to drain
    await settle()
    slow_server.writable.set()
    await settle()
    assert hub.catchup.submitted == [slow]  # type: ignore[attr-defined]
    received = list(SSEParser().feed(b"".join(slow_server.bodies)))
    assert [orjson.loads(m.data)["offset"] for m in received] == [0, 1, 2]


def test_client_starting_at_the_tail_joins_live_without_catch_up(hub: Hub, connect: Callable[..., Any]) -> None:
    place_tail(hub, [5, 9])
    sub, _ = connect(start={TOPIC: [5, 9]})
    behind, _ = connect(start={TOPIC: [4, 9]})
    assert sub.state == LIVE and behind.state == CATCHUP
    assert hub.catchup.submitted == [behind]  # type: ignore[attr-defined]


def test_sweep_pings_only_idle_clients(hub: Hub, connect: Callable[..., Any]) -> None:
    idle, idle_server = connect(heartbeat_s=1.0)
    busy, busy_server = connect(heartbeat_s=1.0)
    idle.conn.last_write -= 1.5
    hub.sweep(busy.conn.last_write + 0.5)
    assert idle_server.bodies[-1] == PING and PING not in busy_server.bodies


async def test_sweep_closes_a_client_blocked_too_long(hub: Hub, connect: Callable[..., Any]) -> None:
    sub, server = connect()
    server.writable.clear()
    dispatch(hub, 0)
    assert sub.conn.blocked_since is not None
    hub.sweep(sub.conn.blocked_since + 6)
    assert sub.state == "closed" and sub not in hub.subscribers and not hub.groups


async def test_closing_the_hub_ends_every_stream_with_a_comment(hub: Hub, connect: Callable[..., Any]) -> None:
    _, server = connect()
    hub.close_all()
    assert server.ended and server.bodies[-1].startswith(b": closing")
    await asyncio.sleep(0)
