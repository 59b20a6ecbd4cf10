"""Catch-up: clients that start behind (resume, since, or fell out of the live tail) read the log here.

A bounded pool of readers (`stream_catchup_readers`, each one Kafka consumer kept for reuse) serves
jobs; clients waiting with the same filter and the same start position share one job, which
frames each record once for all of them. A job never delivers a record at or beyond the tail's
position, so when its position equals the tail's on every partition it can hand its clients to the
live tail in the same step: no gap and no duplicate at the hand-over.

A position the log no longer holds (retention, compaction or delete-records moved the log start past
it, or a durable connection lost it) is never a silent jump: the clients first get an SSE `reset`
event per partition, `{"reason", "topic", "partition", "requested", "from"}`, then the records from
`from`, the earliest still held. Partitions the topic gained after the position was taken are read
from their first offset once the others are level with the tail, so a subject whose events moved to
a new partition keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.filters import addressed_to
from app.fanout.ports import CatchUpPorts
from app.fanout.records import LOST, NEW, RECIPIENTS, Positions, frame_body
from app.fanout.subscribers import CATCHUP, Subscriber
from app.fanout.tokens import STREAM, pack
from app.sse.framing import format_event, with_id
from streams.errors import StreamError
from streams.kafka import clients
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
# aiokafka logs every assign() at INFO; catch-up readers reassign for every job.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
MAX_RECORDS = 500  # per fetch; a client's buffer holds at least this many frames before it is shed
POLL_MS = 100
MAX_BACKOFF_S = 30.0
RESET = "reset"  # the SSE event type of a gap notice
# A frame built by a job and not written yet: its bytes, the position after its record, the record's
# partition and offset (where a client that cannot take it resumes), and its `recipients` (None: untargeted).
Pending = tuple[bytes, Positions, TopicPartition, int, list[str] | None]


class CatchUpPool:
    """Queue of clients behind the tail, served by at most `stream_catchup_readers` readers."""

    def __init__(self, ports: CatchUpPorts, settings: Settings) -> None:
        self.ports = ports
        self.settings = settings
        self.size = settings.stream_catchup_readers
        self._pending: OrderedDict[tuple[Any, ...], list[Subscriber]] = OrderedDict()
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.jobs_run = 0
        self.busy = 0  # readers running a job right now

    @property
    def started(self) -> int:
        """Return how many readers (each one Kafka consumer) exist."""
        return sum(1 for task in self._workers if not task.done())

    @property
    def waiting(self) -> int:
        """Return how many clients wait for a reader."""
        return sum(len(subs) for subs in self._pending.values())

    def submit(self, sub: Subscriber) -> None:
        """Queue a client to read from `sub.position`; equal filters and positions share a job."""
        assert sub.position is not None
        key = (sub.group.filter.key, tuple(tuple(sub.position[t]) for t in sub.group.topics))
        self._pending.setdefault(key, []).append(sub)
        if len(self._workers) < self.size or any(task.done() for task in self._workers):
            self._workers = [task for task in self._workers if not task.done()]  # a reader that gave up is replaced
            if len(self._workers) < self.size:
                name = f"catchup-{len(self._workers)}"
                self._workers.append(supervise(name, self._worker, context="reading for clients behind the tail"))
        self._wake.set()

    async def stop(self) -> None:
        """Stop every reader; queued clients are dropped (their streams are closed by the hub)."""
        workers, self._workers = self._workers, []
        self._pending.clear()
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return clients.reader(s, "catchup", auto_offset_reset="earliest", fetch_max_wait_ms=s.stream_fetch_max_wait_ms,
                              max_partition_fetch_bytes=512 * 1024)

    async def _worker(self) -> None:
        consumer: AIOKafkaConsumer | None = None
        delay = 0.5
        try:
            while True:
                while not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                _, subs = self._pending.popitem(last=False)
                subs = [s for s in subs if s.state == CATCHUP]
                if not subs:
                    continue
                if consumer is None:
                    consumer = self._consumer()
                    try:
                        await consumer.start()
                        delay = 0.5
                    except (KafkaError, OSError, StreamError) as exc:  # the reader stays; it tries again later
                        await consumer.stop()
                        consumer = None
                        log.warning("A catch-up reader could not connect, retrying in %.1fs: %s", delay, exc)
                        for sub in subs:
                            if sub.state == CATCHUP and sub.position is not None:
                                self.ports.requeue(sub, sub.position)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, MAX_BACKOFF_S)
                        continue
                job = CatchUpJob(self.ports, consumer, subs)
                self.jobs_run += 1
                self.busy += 1
                try:
                    await job.run()
                except (KafkaError, OSError) as exc:
                    log.warning("Catch-up read failed, retrying in 1s: %s", exc)
                    await asyncio.sleep(1.0)
                    job.give_back()
                except Exception:
                    log.exception("Catch-up job failed; its clients go back to the queue.")
                    await asyncio.sleep(1.0)
                    job.give_back()
                finally:
                    self.busy -= 1
        finally:
            if consumer is not None:
                await consumer.stop()


class CatchUpJob:
    """Read one filter's topics from one position for a set of clients until they reach the tail."""

    def __init__(self, ports: CatchUpPorts, consumer: AIOKafkaConsumer, subs: list[Subscriber]) -> None:
        self.ports = ports
        self.tails = ports.tails
        self.consumer = consumer
        self.subs = subs
        self.group = subs[0].group
        start = subs[0].position
        assert start is not None
        self.pos: dict[TopicPartition, int] = {}
        self.later: set[TopicPartition] = set()  # partitions new to the position: read once the others are level
        self.lost: set[TopicPartition] = set()  # partitions whose position a durable connection lost
        for t in self.group.topics:
            for p, offset in enumerate(start[t]):
                tp = TopicPartition(t, p)
                self.pos[tp] = max(offset, 0)
                if offset == NEW:
                    self.later.add(tp)
                elif offset == LOST:
                    self.lost.add(tp)
        self.counts = {t: len(start[t]) for t in self.group.topics}
        self.held: dict[TopicPartition, list[Any]] = {}
        self.pending: list[Pending] = []  # frames of the records delivered since the last `_flush`

    def positions(self) -> Positions:
        """Return the job's position as topic -> next offsets."""
        return {t: [self.pos[TopicPartition(t, p)] for p in range(self.counts[t])] for t in self.group.topics}

    def _limit(self, tp: TopicPartition) -> int:
        return self.tails[tp.topic].pos[tp.partition]

    async def run(self) -> None:
        """Deliver records below the tail's position until every partition is level with it."""
        consumer = self.consumer
        self._grow()
        self._assign()
        await self._reset_deleted()
        empty_polls = 0
        while True:
            self.subs = [s for s in self.subs if s.state == CATCHUP]
            if not self.subs:
                return
            await self._release_held()
            if self._grow():  # no await from here to the hand-over: the tails cannot move or grow in between
                self._assign()
            if self.later and all(offset == self._limit(tp) for tp, offset in self.pos.items()
                                  if tp not in self.later):
                for tp in self.later:
                    if tp not in self.held:
                        consumer.resume(tp)
                self.later.clear()
            if not self.later and all(offset == self._limit(tp) for tp, offset in self.pos.items()):
                self.ports.attach(self.subs)  # same step as the check: the tail delivers what follows
                return
            self._shed_blocked()
            if not self.subs:
                return
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
            for tp, records in batch.items():
                for i, record in enumerate(records):
                    if record.offset >= self._limit(tp):
                        # Ahead of the tail: hold (and stop fetching) until the tail passes it.
                        self.held[tp] = records[i:]
                        consumer.pause(tp)
                        break
                    await self._deliver(tp, record)
            self._flush()
            empty_polls = 0 if batch else empty_polls + 1
            if empty_polls >= 3:
                await self._skip_gaps()

    def _grow(self) -> bool:
        """Add the partitions the tails gained since the job's position was taken (read after the others)."""
        grown = False
        for t in self.group.topics:
            count = self.tails[t].partitions
            for p in range(self.counts[t], count):
                tp = TopicPartition(t, p)
                self.pos[tp] = 0
                self.later.add(tp)
                grown = True
            self.counts[t] = max(self.counts[t], count)
        return grown

    def _assign(self) -> None:
        """Assign every partition of the job and seek each to where the job reads next (held ones stay paused)."""
        consumer = self.consumer
        consumer.assign(list(self.pos))
        for tp, offset in self.pos.items():
            held = self.held.get(tp)
            consumer.seek(tp, held[-1].offset + 1 if held else offset)
            if held or tp in self.later:
                consumer.pause(tp)

    async def _reset_deleted(self) -> None:
        """Tell the clients about each position the log no longer holds, then go on from the log start."""
        try:
            begins = await self.consumer.beginning_offsets(list(self.pos))
        except KafkaError as exc:
            log.warning("Could not read the log starts of %s; going on from the positions asked: %s",
                        sorted({tp.topic for tp in self.pos}), exc)
            return
        for tp, first in sorted(begins.items()):
            requested = self.pos[tp]
            if tp in self.lost:
                self._reset(tp, None, first, "position-lost")
            elif requested < first and tp not in self.later:
                self._reset(tp, requested, first, "deleted")
            elif requested < first:
                self.pos[tp] = first
        self.lost.clear()

    def _reset(self, tp: TopicPartition, requested: int | None, first: int, reason: str) -> None:
        """Send one `reset` event (its id the position after the gap) and move the partition to `first`."""
        before = {t: list(offsets) for t, offsets in self.positions().items()}
        if requested is None:
            before[tp.topic][tp.partition] = LOST
        self.pos[tp] = first
        self.consumer.seek(tp, first)
        log.info("Position %s-%d@%s is gone (%s); the clients go on from %d after a reset event.", tp.topic,
                 tp.partition, requested, reason, first)
        notice = {"reason": reason, "topic": tp.topic, "partition": tp.partition, "requested": requested,
                  "from": first}
        positions = self.positions()
        token = self.ports.tokens.sign(STREAM, self.group.scope, pack([positions[t] for t in self.group.topics]))
        frame = with_id(token, format_event(orjson.dumps(notice).decode(), event=RESET))
        for sub in [s for s in self.subs if not s.conn.write(frame)]:
            self._drop(sub, {t: list(offsets) for t, offsets in before.items()})  # it gets the notice next time

    async def _release_held(self) -> None:
        for tp in list(self.held):
            records = self.held[tp]
            limit = self._limit(tp)
            while records and records[0].offset < limit:
                await self._deliver(tp, records.pop(0))
            if not records:
                del self.held[tp]
                self.consumer.resume(tp)
        self._flush()

    async def _skip_gaps(self) -> None:
        """Advance over offsets that hold no records (transaction markers, compaction)."""
        for tp, offset in self.pos.items():
            limit = self._limit(tp)
            if offset < limit and tp not in self.held and tp not in self.later:
                fetched = await self.consumer.position(tp)
                if fetched > offset:
                    self.pos[tp] = min(fetched, limit)

    async def _deliver(self, tp: TopicPartition, record: Any) -> None:
        """Frame one record for the job's clients; `_flush` writes it (after the rest of the fetch)."""
        ports = self.ports
        event = await ports.decode(record)
        self.pos[tp] = record.offset + 1
        if event is None or not self.group.filter.matches(event):
            return
        positions = self.positions()
        token = ports.tokens.sign(STREAM, self.group.scope, pack([positions[t] for t in self.group.topics]))
        self.pending.append((with_id(token, frame_body(event)), positions, tp, record.offset, event.get(RECIPIENTS)))

    def _flush(self) -> None:
        """Write the pending frames: to each client those addressed to it, up to its `batch_size` per socket
        write; a client whose queue fills goes back to the queue from the first frame it did not take."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        targeted = any(entry[4] is not None for entry in pending)
        for sub in list(self.subs):
            mine = [entry for entry in pending if addressed_to(entry[4], sub.viewer)] if targeted else pending
            taken = sub.conn.write_frames([entry[0] for entry in mine], sub.batch_size)
            if taken < len(mine):
                self._drop(sub, self._missed(mine[taken]))
            sub.delivered += taken  # the stream's own count (GET /api/v1/streams)
            self.ports.delivered(taken)

    @staticmethod
    def _missed(entry: Pending) -> Positions:
        """Return the position just before a pending frame's record (where a client that missed it resumes)."""
        _, positions, tp, offset, _ = entry
        missed = {t: list(offsets) for t, offsets in positions.items()}
        missed[tp.topic][tp.partition] = offset
        return missed

    def _shed_blocked(self) -> None:
        """Send clients that cannot take a full fetch now back to the queue instead of waiting on them."""
        for sub in list(self.subs):
            conn = sub.conn
            if conn.blocked and conn.max_buffer - len(conn.buffer) < MAX_RECORDS:
                self._drop(sub, self.positions())

    def _drop(self, sub: Subscriber, position: Positions) -> None:
        self.subs.remove(sub)
        self.ports.requeue(sub, position)

    def give_back(self) -> None:
        """Requeue the job's clients at its current position, or before its first frame not written yet
        (after a failed read)."""
        position = self._missed(self.pending[0]) if self.pending else self.positions()
        self.pending = []
        for sub in list(self.subs):
            if sub.state == CATCHUP:
                self._drop(sub, {t: list(offsets) for t, offsets in position.items()})
