"""Catch-up: clients that start behind (resume, since, or fell out of the live tail) read the log here.

A bounded pool of readers (`stream_catchup_readers`, each one Kafka consumer kept for reuse) serves
jobs; clients waiting with the same filter and the same start position share one job, which
frames each record once for all of them. A job never delivers a record at or beyond the tail's
position, so when its position equals the tail's on every partition it can hand its clients to the
live tail in the same step: no gap and no duplicate at the hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.records import Positions, frame_body
from app.fanout.tokens import STREAM, pack
from app.sse.framing import with_id
from streams.settings import Settings

if TYPE_CHECKING:
    from app.fanout.hub import Hub
    from app.fanout.subscribers import Subscriber

log = logging.getLogger(__name__)
# aiokafka logs every assign() at INFO; catch-up readers reassign for every job.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
MAX_RECORDS = 500  # per fetch; a client's buffer holds at least this many frames before it is shed
POLL_MS = 100


class CatchUpPool:
    """Queue of clients behind the tail, served by at most `stream_catchup_readers` readers."""

    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
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
        return len(self._workers)

    @property
    def waiting(self) -> int:
        """Return how many clients wait for a reader."""
        return sum(len(subs) for subs in self._pending.values())

    def submit(self, sub: Subscriber) -> None:
        """Queue a client to read from `sub.position`; equal filters and positions share a job."""
        assert sub.position is not None
        key = (sub.group.filter.key, tuple(tuple(sub.position[t]) for t in sub.group.topics))
        self._pending.setdefault(key, []).append(sub)
        if len(self._workers) < self.size:
            self._workers.append(asyncio.create_task(self._worker(), name=f"catchup-{len(self._workers)}"))
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
        return AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.client_id}-catchup", group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.stream_fetch_max_wait_ms,
            max_partition_fetch_bytes=512 * 1024, request_timeout_ms=s.request_timeout_ms)

    async def _worker(self) -> None:
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                while not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                _, subs = self._pending.popitem(last=False)
                subs = [s for s in subs if s.state == "catchup"]
                if not subs:
                    continue
                if consumer is None:
                    consumer = self._consumer()
                    await consumer.start()
                job = CatchUpJob(self.hub, consumer, subs)
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

    def __init__(self, hub: Hub, consumer: AIOKafkaConsumer, subs: list[Subscriber]) -> None:
        self.hub = hub
        self.consumer = consumer
        self.subs = subs
        self.group = subs[0].group
        start = subs[0].position
        assert start is not None
        self.pos: dict[TopicPartition, int] = {
            TopicPartition(t, p): offset for t in self.group.topics for p, offset in enumerate(start[t])}
        self.held: dict[TopicPartition, list[Any]] = {}

    def positions(self) -> Positions:
        """Return the job's position as topic -> next offsets."""
        return {t: [self.pos[TopicPartition(t, p)] for p in range(self.hub.tails[t].partitions)]
                for t in self.group.topics}

    def _limit(self, tp: TopicPartition) -> int:
        return self.hub.tails[tp.topic].pos[tp.partition]

    async def run(self) -> None:
        """Deliver records below the tail's position until every partition is level with it."""
        consumer = self.consumer
        consumer.assign(list(self.pos))
        for tp, offset in self.pos.items():
            consumer.seek(tp, offset)
        empty_polls = 0
        while True:
            self.subs = [s for s in self.subs if s.state == "catchup"]
            if not self.subs:
                return
            await self._release_held()
            if all(offset == self._limit(tp) for tp, offset in self.pos.items()):
                self.hub.attach(self.subs)  # same step as the check: the tail delivers what follows
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
            empty_polls = 0 if batch else empty_polls + 1
            if empty_polls >= 3:
                await self._skip_gaps()

    async def _release_held(self) -> None:
        for tp in list(self.held):
            records = self.held[tp]
            limit = self._limit(tp)
            while records and records[0].offset < limit:
                await self._deliver(tp, records.pop(0))
            if not records:
                del self.held[tp]
                self.consumer.resume(tp)

    async def _skip_gaps(self) -> None:
        """Advance over offsets that hold no records (transaction markers, compaction)."""
        for tp, offset in self.pos.items():
            limit = self._limit(tp)
            if offset < limit and tp not in self.held:
                fetched = await self.consumer.position(tp)
                if fetched > offset:
                    self.pos[tp] = min(fetched, limit)

    async def _deliver(self, tp: TopicPartition, record: Any) -> None:
        hub = self.hub
        event = await hub.decoder.decode(record)
        self.pos[tp] = record.offset + 1
        if event is None or not self.group.filter.matches(event):
            return
        positions = self.positions()
        token = hub.tokens.sign(STREAM, self.group.scope, pack([positions[t] for t in self.group.topics]))
        frame = with_id(token, frame_body(event))
        behind = [s for s in self.subs if not s.conn.write(frame)]
        hub.deliveries += len(self.subs) - len(behind)
        if behind:
            positions[tp.topic][tp.partition] = record.offset  # the record this client missed
            for sub in behind:
                self._drop(sub, {t: list(offsets) for t, offsets in positions.items()})

    def _shed_blocked(self) -> None:
        """Send clients that cannot take a full fetch now back to the queue instead of waiting on them."""
        for sub in list(self.subs):
            conn = sub.conn
            if conn.blocked and conn.max_buffer - len(conn.buffer) < MAX_RECORDS:
                self._drop(sub, self.positions())

    def _drop(self, sub: Subscriber, position: Positions) -> None:
        self.subs.remove(sub)
        self.hub.requeue(sub, position)

    def give_back(self) -> None:
        """Requeue the job's clients at its current position (after a failed read)."""
        for sub in list(self.subs):
            if sub.state == "catchup":
                self._drop(sub, self.positions())
