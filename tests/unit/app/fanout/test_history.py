"""History pages against an in-memory log: the merged order, cursors that continue it, and bad cursors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition

from app.fanout import history
from app.fanout.filters import NOBODY, CompiledFilter, EventFilter, Viewer
from app.fanout.history import HistoryReader
from app.fanout.tokens import HISTORY, STREAM, TokenCodec, TokenError
from streams.kafka import clients
from streams.settings import Settings
from tests.unit.fakes import FakeDecoder, FakeLogConsumer, record

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
LAYOUT = {"a": 2, "b": 1}


def ev(tp: TopicPartition, offset: int, type_: str = "x.y") -> dict[str, Any]:
    return {"type": type_, "source": "/s", "id": f"{tp.topic}{tp.partition}@{offset}", "data": {},
            "topic": tp.topic, "partition": tp.partition, "offset": offset}


def rec(tp: TopicPartition, offset: int, ts: int, type_: str = "x.y") -> Any:
    return record(tp, offset, ev(tp, offset, type_), timestamp=ts)


class FakeTopics:
    async def partitions(self, topic: str) -> list[int]:
        return list(range(LAYOUT[topic]))


class FakeOffsets:
    """Answers offset questions from the consumer's log, as OffsetsReader does from Kafka."""

    def __init__(self, consumer: FakeLogConsumer) -> None:
        self.consumer = consumer

    async def end(self, layout: dict[str, int]) -> dict[str, list[int]]:
        return {t: [self.consumer.end(TopicPartition(t, p)) for p in range(n)] for t, n in layout.items()}

    async def beginning(self, layout: dict[str, int]) -> dict[str, list[int]]:
        return {t: [self.consumer.begins.get(TopicPartition(t, p), 0) for p in range(n)] for t, n in layout.items()}

    async def at_time(self, layout: dict[str, int], ts_ms: int) -> dict[str, list[int]]:
        ends = await self.end(layout)
        return {t: [next((r.offset for r in self.consumer.log.get(TopicPartition(t, p), []) if r.timestamp >= ts_ms),
                         ends[t][p]) for p in range(n)] for t, n in layout.items()}


def merged_log() -> FakeLogConsumer:
    # Equal times break ties by topic, then partition; a partition stays in offset order even when
    # its times go back (a1@2 is older than a1@1 but comes after it).
    return FakeLogConsumer({
        A0: [rec(A0, 0, 10), rec(A0, 1, 30)],
        A1: [rec(A1, 0, 10), rec(A1, 1, 20), rec(A1, 2, 15)],
        B0: [rec(B0, 0, 5), rec(B0, 1, 10)],
    })


MERGED = ["b0@0", "a0@0", "a1@0", "b0@1", "a1@1", "a1@2", "a0@1"]


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> FakeLogConsumer:
    log = merged_log()
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: log)
    return log


@pytest.fixture
def tokens() -> TokenCodec:
    return TokenCodec(b"a history test secret")


@pytest.fixture
def reader(consumer: FakeLogConsumer, tokens: TokenCodec) -> HistoryReader:
    return HistoryReader(Settings(), FakeTopics(), FakeOffsets(consumer), tokens,  # type: ignore[arg-type]
                         FakeDecoder().decode)


def compiled(**spec: Any) -> CompiledFilter:
    return CompiledFilter(EventFilter.model_validate({"topics": ["a", "b"], **spec}), ["a"])


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


async def all_pages(reader: HistoryReader, flt: CompiledFilter, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    for _ in range(20):
        events, cursor = await reader.page(flt, limit, cursor, None, NOBODY)
        pages.append(ids(events))
        if cursor is None:
            return pages
    raise AssertionError(f"no last page after 20: {pages}")


async def test_events_merge_by_time_then_topic_then_partition_each_partition_in_offset_order(
        reader: HistoryReader) -> None:
    events, cursor = await reader.page(compiled(), 100, None, None, NOBODY)
    assert ids(events) == MERGED and cursor is None


async def test_cursor_continues_the_same_merge_and_leaves_out_what_came_after_the_first_page(
        reader: HistoryReader, consumer: FakeLogConsumer) -> None:
    flt = compiled()
    first, cursor = await reader.page(flt, 3, None, None, NOBODY)
    consumer.append(rec(B0, 2, 1))  # published after the first page: not part of its snapshot
    pages = [ids(first)]
    while cursor is not None:
        events, cursor = await reader.page(flt, 3, cursor, None, NOBODY)
        pages.append(ids(events))
    assert pages == [MERGED[:3], MERGED[3:6], MERGED[6:]]


async def test_since_starts_the_first_page_at_the_offsets_for_that_time(reader: HistoryReader) -> None:
    since = datetime.fromtimestamp(0.015, tz=UTC)  # 15 ms
    events, _ = await reader.page(compiled(), 100, None, since, NOBODY)
    assert ids(events) == ["a1@1", "a1@2", "a0@1"]  # a1@2 (15 ms) comes after a1@1 in its partition


async def test_only_matching_events_are_returned_and_records_that_are_not_events_are_skipped(
        monkeypatch: pytest.MonkeyPatch, tokens: TokenCodec) -> None:
    log = FakeLogConsumer({A0: [rec(A0, 0, 1, "keep.me"), record(A0, 1, None, 2), rec(A0, 2, 3, "other"),
                                rec(A0, 3, 4, "keep.too")], A1: [], B0: []})
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: log)
    reader = HistoryReader(Settings(), FakeTopics(), FakeOffsets(log), tokens,  # type: ignore[arg-type]
                           FakeDecoder().decode)
    events, cursor = await reader.page(compiled(types=["keep.*"]), 100, None, None, NOBODY)
    assert ids(events) == ["a0@0", "a0@3"] and cursor is None


async def test_offsets_that_hold_no_record_do_not_keep_the_page_open(monkeypatch: pytest.MonkeyPatch,
                                                                     tokens: TokenCodec) -> None:
    log = FakeLogConsumer({A0: [rec(A0, 0, 1), rec(A0, 2, 2)], A1: [], B0: []}, ends={A0: 4, A1: 2})  # markers
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: log)
    reader = HistoryReader(Settings(), FakeTopics(), FakeOffsets(log), tokens,  # type: ignore[arg-type]
                           FakeDecoder().decode)
    events, cursor = await reader.page(compiled(), 100, None, None, NOBODY)
    assert ids(events) == ["a0@0", "a0@2"] and cursor is None


async def test_a_page_that_scans_its_limit_is_short_and_the_cursor_goes_on(reader: HistoryReader,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_SCAN", 3)
    pages = await all_pages(reader, compiled(), 100)
    assert pages == [MERGED[:3], MERGED[3:6], MERGED[6:]]


async def test_cursor_of_another_filter_or_a_resume_token_is_refused(reader: HistoryReader,
                                                                    tokens: TokenCodec) -> None:
    _, cursor = await reader.page(compiled(), 2, None, None, NOBODY)
    assert cursor is not None
    with pytest.raises(TokenError, match="another filter"):
        await reader.page(compiled(types=["x.*"]), 2, cursor, None, NOBODY)
    flt = compiled()
    with pytest.raises(TokenError, match="another kind"):
        await reader.page(flt, 2, tokens.encode(STREAM, flt.scope, [[0, 0], [0]]), None, NOBODY)


@pytest.mark.parametrize(("groups", "message"), [
    ([[0, 2, 0, 3]], "does not cover this filter's topics"),
    ([[0, 2, 0, 3, 0, 1], [0, 2]], "does not match the partitions of 'a'"),  # three partitions of a
    ([[0, 2, 0], [0, 2]], "does not match the partitions of 'a'"),  # not (next, bound) pairs
], ids=["one-topic", "too-many-partitions", "odd"])
async def test_cursor_that_does_not_fit_the_topics_is_refused(reader: HistoryReader, tokens: TokenCodec,
                                                              groups: list[list[int]], message: str) -> None:
    flt = compiled()
    with pytest.raises(TokenError, match=message):
        await reader.page(flt, 2, tokens.encode(HISTORY, flt.scope, groups), None, NOBODY)


async def test_consumers_are_kept_for_the_next_page_and_closed_on_stop(reader: HistoryReader,
                                                                      consumer: FakeLogConsumer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeLogConsumer] = []
    monkeypatch.setattr(clients, "reader", lambda *args, **kw: made.append(consumer) or consumer)
    await reader.page(compiled(), 2, None, None, NOBODY)
    await reader.page(compiled(), 2, None, None, NOBODY)
    assert len(made) == 1 and consumer.started and not consumer.stopped
    assert reader._idle == [consumer]
    await reader.stop()
    assert consumer.stopped and reader._idle == []


async def test_history_shows_a_targeted_event_only_to_its_recipients_and_to_admin(
        consumer: FakeLogConsumer, tokens: TokenCodec) -> None:
    to = {"a0@0": ["alice"], "a1@0": ["bob"], "b0@0": ["alice", "bob"], "a1@1": ["conn-1"], "b0@1": ["carol"]}

    async def decode(record: Any) -> dict[str, Any]:
        ev = dict(record.value)
        if ev["id"] in to:
            ev["recipients"] = to[ev["id"]]
        return ev

    reader = HistoryReader(Settings(), FakeTopics(), FakeOffsets(consumer), tokens, decode)  # type: ignore[arg-type]

    async def seen(viewer: Viewer) -> list[dict[str, Any]]:
        return (await reader.page(compiled(), 100, None, None, viewer))[0]

    untargeted = [i for i in MERGED if i not in to]
    assert ids(await seen(Viewer.of_history("alice", False))) == [i for i in MERGED if i in untargeted
                                                                  or "alice" in to.get(i, [])]
    assert ids(await seen(Viewer.of_history("bob", False, ["conn-1"]))) == [
        i for i in MERGED if i in untargeted or {"bob", "conn-1"} & set(to.get(i, []))]
    assert ids(await seen(NOBODY)) == untargeted
    admin = await seen(Viewer.of_history("root", True))
    assert ids(admin) == MERGED and {e["id"]: e.get("recipients") for e in admin if e["id"] in to} == to
    assert all("recipients" not in e for e in await seen(Viewer.of_history("alice", False)))
