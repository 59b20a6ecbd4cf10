"""The hub's fan-out without Kafka: groups, shared frames, overflow back to catch-up, heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import orjson

from app.fanout.filters import Viewer
from app.fanout.hub import Hub
from app.fanout.subscribers import CATCHUP, LIVE
from app.fanout.tokens import STREAM
from app.sse.framing import PING, SSEParser
from app.sse.writer import Connection
from tests.unit.fakes import TOPIC, FakeCycle, FakeServer, event, pass_through, place_tail, settle


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


def test_catch_up_gets_the_hubs_tails_and_callbacks_not_the_hub(hub: Hub, connect: Callable[..., Any]) -> None:
    ports = hub.catchup_ports
    assert all(getattr(ports, f.name) is not hub for f in fields(ports))
    assert ports.tails is hub.tails and ports.tokens is hub.tokens
    place_tail(hub, [5, 0])
    sub, _ = connect(start={TOPIC: [0, 0]})
    assert hub.catchup.submitted == [sub]  # type: ignore[attr-defined]
    ports.requeue(sub, {TOPIC: [2, 0]})
    assert hub.catchup.submitted == [sub, sub] and sub.position == {TOPIC: [2, 0]}  # type: ignore[attr-defined]
    ports.delivered(3)
    ports.attach([sub])
    assert hub.deliveries == 3 and sub.state == LIVE and sub in sub.group.live


async def test_stop_empties_the_tails_in_place_so_catch_up_sees_it(hub: Hub) -> None:
    tails = hub.tails
    await hub.stop()
    await hub.stop()
    assert hub.tails is tails and hub.catchup_ports.tails is tails and not tails


def test_stats_count_the_streams_on_the_direct_path(hub: Hub, connect: Callable[..., Any]) -> None:
    connect()
    cycle = FakeCycle()
    group = hub.join(next(iter(hub.groups.values())).filter)
    hub.open(group, Connection(pass_through(cycle.send), 10), 15.0, None)
    stats = hub.stats()
    assert stats["streams"] == 2 and stats["live"] == 2 and stats["direct_writes"] == 1


async def test_a_token_naming_more_partitions_looks_for_them_at_once_and_is_accepted(
        hub: Hub, connect: Callable[..., Any]) -> None:
    sub, _ = connect()
    tail = hub.tails[TOPIC]
    token = hub.tokens.encode(STREAM, sub.group.scope, [[4, 5, 6]])  # from an edge that saw a third partition

    async def refresh(timeout: float = 10) -> None:  # the tail's metadata refresh finds it
        tail.partitions = 3
        tail.pos.append(0)

    tail.refresh = refresh  # type: ignore[method-assign]
    assert await hub.resume_positions(sub.group, token) == {TOPIC: [4, 5, 6]}


async def test_a_token_naming_partitions_this_edge_cannot_see_yet_is_accepted_not_refused(
        hub: Hub, connect: Callable[..., Any]) -> None:
    sub, _ = connect()
    token = hub.tokens.encode(STREAM, sub.group.scope, [[4, 5, 6]])
    assert await hub.resume_positions(sub.group, token) == {TOPIC: [4, 5]}  # used to be a 400


def test_undecodable_records_are_counted_per_topic_where_the_metrics_read_them(hub: Hub) -> None:
    hub.decoder.undecodable["orders"] = 2
    assert hub.undecodable == {"orders": 2} and hub.stats()["undecodable"] == {"orders": 2}
    assert hub.stats()["skipped_records"] == 2


async def test_a_tail_that_cannot_recover_closes_its_clients_with_a_reconnect_comment(
        hub: Hub, connect: Callable[..., Any]) -> None:
    sub, server = connect()
    hub._tail_failed(TOPIC)
    await settle()
    assert sub.state == "closed" and TOPIC not in hub.tails
    assert b"reconnect with Last-Event-ID" in b"".join(server.bodies)


# ------------------------------------------------------------------ targeted delivery (`recipients`)

def targeted(hub: Hub, offset: int, recipients: list[str] | None) -> None:
    """Make the fake tail hand the hub one event addressed to `recipients` (None: to everyone)."""
    ev = event(offset)
    if recipients is not None:
        ev["recipients"] = recipients
    hub._dispatch(hub.tails[TOPIC], 0, offset, ev)


def viewers(connect: Callable[..., Any], *names: str) -> dict[str, Any]:
    """Open one live stream per name in one filter group, each seeing targeted events as that principal."""
    out = {}
    for name in names:
        sub, server = connect()
        sub.viewer = Viewer.of_stream(name)
        out[name] = server
    return out


def offsets_of(server: Any) -> list[int]:
    return [orjson.loads(m.data)["offset"] for m in SSEParser().feed(b"".join(server.bodies))]


def test_targeted_event_reaches_only_the_live_streams_it_names(hub: Hub, connect: Callable[..., Any]) -> None:
    servers = viewers(connect, "alice", "bob", "test-admin")
    _, anonymous = connect()  # a stream opened without a viewer
    targeted(hub, 0, ["alice"])
    targeted(hub, 1, ["bob", "carol"])
    targeted(hub, 2, ["alice", "bob"])
    targeted(hub, 3, ["nobody-here"])
    targeted(hub, 4, None)
    assert offsets_of(servers["alice"]) == [0, 2, 4]
    assert offsets_of(servers["bob"]) == [1, 2, 4]
    assert offsets_of(servers["test-admin"]) == [4]  # an admin's stream gets a targeted event only when named
    assert offsets_of(anonymous) == [4]
    assert hub.deliveries == 1 + 1 + 2 + 0 + 4


def test_targeted_frame_is_shared_and_does_not_show_the_recipients(hub: Hub, connect: Callable[..., Any]) -> None:
    servers = viewers(connect, "alice", "bob")
    targeted(hub, 0, ["alice", "bob"])
    assert servers["alice"].bodies[-1] is servers["bob"].bodies[-1]
    [message] = list(SSEParser().feed(servers["alice"].bodies[-1]))
    assert "recipients" not in orjson.loads(message.data)


def test_a_durable_connection_id_in_recipients_reaches_that_connections_stream(
        hub: Hub, connect: Callable[..., Any]) -> None:
    durable, durable_server = connect()
    durable.viewer = Viewer.of_stream("alice", "c0ffee")
    plain = viewers(connect, "alice")["alice"]
    targeted(hub, 0, ["c0ffee"])
    assert offsets_of(durable_server) == [0] and offsets_of(plain) == []


def test_replay_gives_each_client_only_its_targeted_events_in_batches(hub: Hub, connect: Callable[..., Any]) -> None:
    place_tail(hub, [0, 0], replay_size=100)
    for offset in range(10):
        targeted(hub, offset, ["alice"] if offset % 2 else ["bob"] if offset % 3 == 0 else None)
    live, _ = connect()
    servers = {}
    for name in ("alice", "bob"):
        hub.join(live.group.filter)
        servers[name] = FakeServer()
        sub = hub.open(live.group, Connection(servers[name].send, 100), 15.0, {TOPIC: [0, 0]},
                       viewer=Viewer.of_stream(name), batch_size=3)
        assert sub.state == LIVE
    assert offsets_of(servers["alice"]) == [1, 2, 3, 4, 5, 7, 8, 9]
    assert offsets_of(servers["bob"]) == [0, 2, 4, 6, 8]
    assert [len(list(SSEParser().feed(body))) for body in servers["alice"].bodies] == [3, 3, 2]  # 3 per write
