"""History pages read from Kafka: matching events in a stable merged order, with a signed cursor.

The first page fixes, per partition, where reading starts (`since`, or the log start) and where it
ends (the end offsets at that moment). The cursor carries the next offset and that end bound of
every partition, so later pages continue the same merge whatever is published meanwhile. Records
are merged across partitions by (Kafka timestamp, topic, partition), each partition in offset order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.fanout.filters import CompiledFilter, Viewer, addressed_to
from app.fanout.ports import Decode
from app.fanout.positions import OffsetsReader
from app.fanout.records import RECIPIENTS, public
from app.fanout.tokens import HISTORY, TokenCodec, TokenError, check_room
from streams.errors import BrokerUnavailable
from streams.kafka import clients
from streams.kafka.topics import TopicManager
from streams.settings import Settings

MAX_LIMIT = 1000
MAX_SCAN = 50_000  # records examined per page; a rare filter may get a short page with a `next` cursor
READERS = 4
FETCH_TRIES = 50


class HistoryReader:
    """Serve history pages with a small pool of reusable consumers."""

    def __init__(self, settings: Settings, topics: TopicManager, offsets: OffsetsReader, tokens: TokenCodec,
                 decode: Decode) -> None:
        self.settings = settings
        self.topics = topics
        self.offsets = offsets
        self.tokens = tokens
        self.decode = decode
        self._slots = asyncio.Semaphore(READERS)
        self._idle: list[AIOKafkaConsumer] = []

    async def stop(self) -> None:
        """Close the pooled consumers."""
        idle, self._idle = self._idle, []
        for consumer in idle:
            await consumer.stop()

    @contextlib.asynccontextmanager
    async def _consumer(self) -> AsyncIterator[AIOKafkaConsumer]:
        async with self._slots:
            if self._idle:
                consumer = self._idle.pop()
            else:
                s = self.settings
                consumer = clients.reader(s, "history", auto_offset_reset="earliest",
                                          fetch_max_wait_ms=s.stream_fetch_max_wait_ms)
                await consumer.start()
            try:
                yield consumer
            except BaseException:
                await consumer.stop()
                raise
            consumer.unsubscribe()
            self._idle.append(consumer)

    async def page(self, flt: CompiledFilter, limit: int, cursor: str | None, since: datetime | None,
                   viewer: Viewer) -> tuple[list[dict[str, Any]], str | None]:
        """Return up to `limit` matching events `viewer` may see and the cursor of the next page (None at the
        end); targeted events show their `recipients` to an admin only."""
        layout = {t: len(await self.topics.partitions(t)) for t in flt.topics}
        check_room(HISTORY, layout)  # every cursor of this filter must fit the token size limit
        if cursor:
            pos, bound = self._from_cursor(flt, cursor, layout)
        else:
            ends = await self.offsets.end(layout)
            starts = (await self.offsets.at_time(layout, int(since.timestamp() * 1000)) if since
                      else await self.offsets.beginning(layout))
            pos = {TopicPartition(t, p): starts[t][p] for t in layout for p in range(layout[t])}
            bound = {TopicPartition(t, p): ends[t][p] for t in layout for p in range(layout[t])}
        events = await self._read(flt, limit, pos, bound, viewer)
        if all(pos[tp] >= bound[tp] for tp in pos):
            return events, None
        groups = [[v for p in range(layout[t]) for v in (pos[TopicPartition(t, p)], bound[TopicPartition(t, p)])]
                  for t in flt.topics]
        return events, self.tokens.encode(HISTORY, flt.scope, groups)

    def _from_cursor(self, flt: CompiledFilter, cursor: str, layout: dict[str, int]
                     ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        groups = self.tokens.decode(cursor, HISTORY, flt.scope)
        if len(groups) != len(flt.topics):
            raise TokenError("cursor does not cover this filter's topics")
        pos: dict[TopicPartition, int] = {}
        bound: dict[TopicPartition, int] = {}
        for topic, values in zip(flt.topics, groups, strict=True):
            if len(values) % 2 or len(values) // 2 > layout[topic]:
                raise TokenError(f"cursor does not match the partitions of {topic!r}")
            for p in range(len(values) // 2):
                pos[TopicPartition(topic, p)] = values[2 * p]
                bound[TopicPartition(topic, p)] = values[2 * p + 1]
        return pos, bound  # partitions added after the first page are not part of its snapshot

    async def _read(self, flt: CompiledFilter, limit: int, pos: dict[TopicPartition, int],
                    bound: dict[TopicPartition, int], viewer: Viewer) -> list[dict[str, Any]]:
        active = [tp for tp in pos if pos[tp] < bound[tp]]
        if not active:
            return []
        events: list[dict[str, Any]] = []
        buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in active}
        async with self._consumer() as consumer:
            consumer.assign(active)
            for tp in active:
                consumer.seek(tp, pos[tp])
            scanned = 0
            while len(events) < limit and scanned < MAX_SCAN:
                need = [tp for tp in active if not buffers[tp] and pos[tp] < bound[tp]]
                if need:
                    await self._fill(consumer, need, buffers, pos, bound)
                heads = [(buffers[tp][0].timestamp, tp.topic, tp.partition, tp) for tp in active if buffers[tp]]
                if not heads:
                    break
                tp = min(heads)[3]
                record = buffers[tp].popleft()
                pos[tp] = record.offset + 1
                scanned += 1
                event = await self.decode(record)
                if event is not None and flt.matches(event) and addressed_to(event.get(RECIPIENTS), viewer):
                    events.append(event if viewer.sees_all else public(event))
        return events

    async def _fill(self, consumer: AIOKafkaConsumer, need: list[TopicPartition],
                    buffers: dict[TopicPartition, deque[Any]], pos: dict[TopicPartition, int],
                    bound: dict[TopicPartition, int]) -> None:
        """Fetch until each partition in `need` has a record buffered or has reached its bound."""
        for _ in range(FETCH_TRIES):
            batch = await consumer.getmany(*need, timeout_ms=200, max_records=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= bound[tp]:
                        pos[tp] = max(pos[tp], bound[tp]) if not buffers[tp] else pos[tp]
                        break
                    buffers[tp].append(record)
            for tp in need:
                if not buffers[tp] and pos[tp] < bound[tp] and tp not in batch:
                    # Nothing came: skip offsets that hold no records (markers, compaction).
                    fetched = await consumer.position(tp)
                    if fetched > pos[tp]:
                        pos[tp] = min(fetched, bound[tp])
            need = [tp for tp in need if not buffers[tp] and pos[tp] < bound[tp]]
            if not need:
                return
        raise BrokerUnavailable(f"Kafka returned no records for {need} within {FETCH_TRIES} fetches")
