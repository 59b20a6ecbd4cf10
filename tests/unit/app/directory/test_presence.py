"""Presence of the streams of every edge, without Kafka: what an edge publishes, which entries are believed,
and the per-stream figures the hub keeps for the listing (counted once per group, not per client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.directory import presence as presence_module
from app.directory.control import Control
from app.directory.presence import MAX_ENTRY_BYTES, Presence, entry_of
from app.fanout.hub import Hub
from app.fanout.subscribers import CATCHUP, LIVE, StreamRecord, StreamRegistry
from app.sse.writer import Connection
from streams.envelope import iso
from streams.settings import Settings
from tests.unit.fakes import TOPIC, FakeServer, event, settle


def record(stream_id: str, *, principal: str = "alice", connected_at: float = 0.0, kind: str = "plain") -> StreamRecord:
    conn = Connection(FakeServer().send, 10)
    rec = StreamRecord(stream_id, kind, principal, conn, conn.close, filter='{"topics":["t"]}')
    rec.connected_at = connected_at
    return rec


def registry(*records: StreamRecord) -> StreamRegistry:
    streams = StreamRegistry()
    for rec in records:
        streams.add(rec)
    return streams


def put(presence: Presence, edge: str, entry: dict[str, Any] | None) -> None:
    """Apply a record of the presence topic as the table's reader would."""
    presence.table._apply(edge.encode(), orjson.dumps(entry) if entry is not None else None)


def other_edge(edge: str, *stream_ids: str, written: float = 0.0) -> dict[str, Any]:
    return {"edge": edge, "updated_at": iso(datetime.fromtimestamp(written, UTC)), "count": len(stream_ids),
            "truncated": False, "streams": [{"id": sid, "principal": "bob", "kind": "plain"} for sid in stream_ids]}


def test_entry_lists_the_newest_streams_first_and_counts_those_left_out() -> None:
    streams = registry(*(record(f"s{i}", connected_at=float(i)) for i in range(5)))
    entry = entry_of("edge-a", streams, max_streams=3)
    assert [s["id"] for s in entry["streams"]] == ["s4", "s3", "s2"]
    assert entry["count"] == 5 and entry["truncated"] is True and entry["edge"] == "edge-a"


def test_entry_stays_under_the_message_limit_when_principals_are_long() -> None:
    streams = registry(*(record(f"s{i}", principal="p" * 5000, connected_at=float(i)) for i in range(500)))
    entry = entry_of("edge-a", streams, max_streams=500)
    assert len(orjson.dumps(entry)) <= MAX_ENTRY_BYTES
    assert entry["truncated"] is True and entry["count"] == 500 and entry["streams"][0]["id"] == "s499"


def test_entry_reports_what_the_stream_is_and_how_it_does() -> None:
    [stream] = entry_of("edge-a", registry(record("s1", kind="durable")), max_streams=10)["streams"]
    assert stream["kind"] == "durable" and stream["principal"] == "alice" and stream["filter"] == '{"topics":["t"]}'
    assert stream["buffered_bytes"] == 0 and stream["state"] == LIVE
    assert stream["connected_at"].endswith("Z") and stream["last_write"].endswith("Z")


def test_entries_read_after_the_load_are_believed_for_the_stale_bound_after_they_arrive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(presence_module.time, "monotonic", lambda: clock[0])
    presence = Presence(Settings(presence_stale_s=10), registry(), "edge-a")
    presence._loaded = True
    put(presence, "edge-b", other_edge("edge-b", "s1", written=0.0))  # the writer's clock says nothing here
    assert [e["edge"] for e in presence.others()] == ["edge-b"]
    clock[0] += 10.5
    assert list(presence.others()) == []  # edge-b stopped writing: it died without its tombstone


def test_entries_loaded_at_start_are_judged_by_their_writers_time() -> None:
    presence = Presence(Settings(presence_stale_s=10), registry(), "edge-a")
    put(presence, "edge-old", other_edge("edge-old", "s1", written=time.time() - 60))
    put(presence, "edge-new", other_edge("edge-new", "s2", written=time.time() - 1))
    assert [e["edge"] for e in presence.others()] == ["edge-new"]


def test_a_tombstone_removes_an_edge_and_this_edge_is_listed_from_its_own_registry() -> None:
    presence = Presence(Settings(), registry(record("mine")), "edge-a")
    put(presence, "edge-a", other_edge("edge-a", "old-entry-of-mine", written=time.time()))
    put(presence, "edge-b", other_edge("edge-b", "theirs", written=time.time()))
    assert presence.find("theirs") is not None and presence.find("mine") is not None
    assert presence.find("old-entry-of-mine") is None  # this edge's own streams are current, not as published
    put(presence, "edge-b", None)
    assert presence.find("theirs") is None
    assert [e["edge"] for e in presence.entries()] == ["edge-a"]


def test_settings_refuse_a_stale_bound_not_above_the_interval() -> None:
    with pytest.raises(ValueError, match="presence_stale_s"):
        Settings(presence_interval_s=5, presence_stale_s=5)


def dispatch(hub: Hub, offset: int, **kw: Any) -> None:
    hub._dispatch(hub.tails[TOPIC], 0, offset, event(offset, **kw))


def test_live_streams_count_their_events_from_the_groups_count(hub: Hub, connect: Callable[..., Any]) -> None:
    early, _ = connect()
    for offset in range(3):
        dispatch(hub, offset)
    late, _ = connect()
    dispatch(hub, 3)
    other, _ = connect({"types": ["x.*"]})
    assert (early.events_delivered, late.events_delivered, other.events_delivered) == (4, 1, 0)


async def test_a_stream_that_falls_behind_keeps_the_count_of_what_it_got(hub: Hub,
                                                                        connect: Callable[..., Any]) -> None:
    slow, server = connect(max_buffer=1)
    dispatch(hub, 0)
    server.writable.clear()
    for offset in range(1, 4):  # 1 is written (its send waits), 2 is queued, 3 does not fit
        dispatch(hub, offset)
    assert slow.state == CATCHUP and slow.events_delivered == 3
    dispatch(hub, 4)
    assert slow.events_delivered == 3
    server.writable.set()
    await settle()


async def test_disconnect_command_ends_a_stream_of_this_edge_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    conn = Connection(server.send, 10)
    streams = registry(StreamRecord("s1", "plain", "alice", conn, conn.close))
    control = Control(Settings(), None, streams, "edge-a")  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    monkeypatch.setattr(control, "_send", send)
    await control._apply({"op": "disconnect", "command": "c0", "stream": "s1", "by": "mallory", "admin": False,
                          "from": "edge-b"})
    assert not conn.closed and sent[-1]["outcome"] == "forbidden"
    await control._apply({"op": "disconnect", "command": "c1", "stream": "s1", "by": "alice", "admin": False,
                          "from": "edge-a"})
    assert not conn.closed and len(sent) == 1  # the asking edge acts on its own streams at once, not here
    await control._apply({"op": "disconnect", "command": "c2", "stream": "s1", "by": "alice", "admin": False,
                          "from": "edge-b"})
    await settle()
    assert conn.closed and server.bodies[-1] == b": disconnected by alice; reconnect with Last-Event-ID to resume\n\n"
    assert sent[-1] == {"op": "done", "command": "c2", "stream": "s1", "edge": "edge-a", "outcome": "ended"}


async def test_an_answer_resolves_the_disconnect_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    control = Control(Settings(stream_disconnect_wait_s=5), None, registry(), "edge-a")  # type: ignore[arg-type]

    async def send(message: dict[str, Any]) -> None:  # edge-b holds the stream and answers through the topic
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, control._apply(
            {"op": "done", "command": message["command"], "stream": "s9", "edge": "edge-b", "outcome": "ended"}))

    monkeypatch.setattr(control, "_send", send)
    answer = await control.disconnect("s9", by="root", admin=True)
    assert answer is not None and answer["edge"] == "edge-b" and not control._waiting
