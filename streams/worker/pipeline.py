"""The per-record path of the worker: decode, validate, deduplicate, route, deliver; then ack.

At-least-once, and why it holds: Faust commits an ingress offset only once every record up to it
has been acked (faust/transport/consumer.py: `_new_offset` takes the longest run of consecutive
acked offsets). The agent reads a `noack` stream, so Faust acks nothing by itself; `process` queues
each record's writes (its destinations and its dedup changelog entry) and acks the record in the
callback that runs when the broker has acknowledged the last of them (acks=all), or at once for a
dropped duplicate, which cannot let the commit overtake the original: they share a subject, so a
partition, and the original's offset is lower. Rebalances and SIGTERM wait for in-flight records
(Faust's `stream_wait_empty`); a killed worker's uncommitted records are read again by the next owner.

No duplicates after a crash, and why: a record read again may already have reached its destinations.
It is checked against them (streams/worker/recovery.py reads them for the header es-origin, once per topic
and rebalance) when its dedup entry names its own origin, or when it has no entry but lies past the
partition's last entry: the one producer writes a partition's entries in offset order, so below that
point a record without entry was never forwarded as new. The check lasts until the high watermark
seen at the first record after the rebalance. Faust may also deliver a record twice within one
assignment (around a seek, streams/worker/fetch.py): a copy of a record still in flight is acked with
it, a copy of one this worker finished since it got the partition is acked at once.

Forwarded records keep the ingress key and the exact Avro bytes, and carry headers es-id, es-type,
es-source, es-origin (ingress topic/partition/offset), es-ingress-time (ms) and es-route (the rule,
"requested", "default" or "replay").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from streams.dlq.letters import DESTINATION, REPLAY_OF, REPLAY_TO, dead_letter_headers
from streams.errors import BrokerUnavailable, CodecError, SchemaNotFound, StreamError, UnknownSchema
from streams.schema.codec import AvroCodec
from streams.settings import Settings
from streams.worker.dedup import DedupIndex, Verdict, dedup_key
from streams.worker.recovery import ORIGIN, OriginScan, origin_of
from streams.worker.routing import RouteTable, requested_topic_problem
from streams.worker.validation import check_record
from streams.worker.writes import CHANGELOG, DEAD_LETTER, LEDGER, ROUTE, Delivery, Output, Work

log = logging.getLogger(__name__)
Ack = Callable[[], Any]
DLQ_LOGS_PER_INTERVAL = 20


class Stats:
    """Counters of one worker process, logged every `worker_stats_interval_s`."""

    def __init__(self) -> None:
        self.consumed = self.forwarded = self.writes = self.duplicates = 0
        self.checked = self.already_present = 0
        self.dead_letters: Counter[str] = Counter()

    def line(self, inflight: int) -> str:
        """Return the counters as one sentence."""
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) or "none"
        return (f"{self.consumed} records in, {self.forwarded} forwarded ({self.writes} writes), "
                f"{self.duplicates} duplicates dropped, {sum(self.dead_letters.values())} dead letters "
                f"({stages}), {self.checked} checked against destinations after a rebalance "
                f"({self.already_present} copies were already there); {inflight} in flight.")


class RecordWork(Work):
    """A Work that remembers its ingress record, to ack it and to dead-letter failed destinations."""

    __slots__ = ("msg", "acks", "key", "routed")

    def __init__(self, outputs: list[Output], pipeline: Pipeline, msg: Any, ack: Ack, key: bytes | None = None,
                 routed: int = 0) -> None:
        super().__init__(outputs, pipeline._finish, pipeline._give_up)
        self.msg, self.acks, self.key, self.routed = msg, [ack], key, routed  # routed: destination outputs


class Pipeline:
    """Takes ingress records to their destinations (or the DLQ) and acks them when that is durable."""

    def __init__(self, settings: Settings, routes: RouteTable, codec: AvroCodec, delivery: Delivery,
                 dedup: DedupIndex | None, changelog_topic: str, scan: OriginScan,
                 highwater: Callable[[Any], int | None] = lambda tp: None) -> None:
        self.settings, self.routes, self.codec, self.delivery = settings, routes, codec, delivery
        self.dedup, self.changelog_topic, self.scan, self.highwater = dedup, changelog_topic, scan, highwater
        self.stats = Stats()
        self.inflight = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._max_inflight = settings.worker_max_inflight
        self._max_bytes = settings.max_event_bytes
        self._dlq_logged = 0
        # partition -> [offset of its last dedup entry, that entry's processed ms, high watermark or None]
        self._recheck: dict[int, list[Any]] = {}
        self._assigned_ms: dict[int, int] = {}  # partition -> when this worker got it (ms)
        self._pending: dict[tuple[int, int], RecordWork] = {}  # (partition, offset) -> its work in flight
        self._busy: Counter[int] = Counter()  # partition -> records in flight
        self._seen: dict[int, float] = {}  # partition -> when a record last arrived (monotonic s)

    def expect_replays(self, partitions: Iterable[int]) -> None:
        """After a rebalance: note where each partition's records may have been forwarded already."""
        self._recheck = {}
        now, since = int(time.time() * 1000), time.monotonic()
        for partition in partitions:
            self._assigned_ms[partition] = now
            self._seen[partition] = since  # the refetch guard counts idle time from here
        if self.dedup is None:
            return
        for partition in partitions:
            last = self.dedup.last(partition)
            self._recheck[partition] = [last.offset if last else -1, last.processed_ms if last else 0, None]

    async def wait_capacity(self) -> None:
        """Wait while too many records are in flight (backpressure on the agent)."""
        if self.inflight >= self._max_inflight:
            self._capacity.clear()
            await self._capacity.wait()

    async def process(self, msg: Any, ack: Ack) -> None:
        """Take one ingress record through the pipeline; `ack` runs once its writes are durable."""
        self.stats.consumed += 1
        self._seen[msg.partition] = time.monotonic()
        twin = self._pending.get((msg.partition, msg.offset))
        if twin is not None:  # Faust delivered this record again (around a seek) while it is in flight
            twin.acks.append(ack)
            return None
        value = msg.value
        if value is None:
            return await self.dead_letter(msg, "decode", CodecError("record has no value"), ack)
        try:
            try:
                record = self.codec.decode(value)
            except UnknownSchema:
                record = await self._decode_fetching(value)
        except StreamError as exc:
            return await self.dead_letter(msg, "decode", exc, ack)
        try:
            check_record(record, len(value), self._max_bytes)
        except StreamError as exc:
            return await self.dead_letter(msg, "validate", exc, ack)

        requested = replay_of = replay_to = None
        passthrough = []
        for name, raw in msg.headers or ():
            if not name.startswith("es-"):
                passthrough.append((name, raw))
            elif name == DESTINATION:
                requested = raw.decode(errors="replace")
            elif name == REPLAY_OF:
                replay_of = raw
            elif name == REPLAY_TO:
                replay_to = raw.decode(errors="replace")
        route = [(replay_to, "replay")] if replay_to else self.routes.route(record, requested)
        for topic, why in route:
            problem = requested_topic_problem(topic, self.settings) if why in ("requested", "replay") else None
            if problem:
                return await self.dead_letter(msg, "route", problem, ack, error_class="InvalidDestination")
        if self.delivery.missing(t for t, _ in route):
            try:
                await self._ensure([t for t, _ in route])
            except StreamError as exc:
                return await self.dead_letter(msg, "route", exc, ack)

        ts_ms = int(msg.timestamp * 1000) if msg.timestamp is not None else int(time.time() * 1000)
        origin = origin_of(msg.topic, msg.partition, msg.offset)
        headers = [*passthrough, ("es-id", record["id"].encode()), ("es-type", record["type"].encode()),
                   ("es-source", record["source"].encode()), (ORIGIN, origin), ("es-ingress-time", str(ts_ms).encode())]
        outputs = [Output(topic, value, msg.key, [*headers, ("es-route", why.encode())]) for topic, why in route]
        if replay_of is not None:
            ledger = {"id": record["id"], "origin": origin.decode(), "at_ms": int(time.time() * 1000)}
            outputs.append(Output(self.settings.dlq_replays_topic, orjson.dumps(ledger), replay_of,
                                  [(ORIGIN, origin)], kind=LEDGER))

        key = None
        if self.dedup is not None:
            key = dedup_key(record["id"], replay_of)
            verdict, seen = self.dedup.check(key, ts_ms, msg.partition, msg.offset)
            if verdict is Verdict.DUPLICATE:
                self.stats.duplicates += 1
                ack()
                return None
            if verdict is Verdict.REPROCESSED and seen and seen.processed_ms >= self._assigned_ms.get(
                    msg.partition, seen.processed_ms + 1):
                ack()  # this worker forwarded it since it got the partition; Faust delivered it again
                return None
            since = seen.processed_ms if verdict is Verdict.REPROCESSED and seen else self._maybe_sent(msg, ts_ms)
            if since is not None:
                present = await self.scan.present([o.topic for o in outputs], origin, since)
                self.stats.checked += 1
                self.stats.already_present += len(present)
                outputs = [o for o in outputs if o.topic not in present]
            if verdict is not Verdict.REPROCESSED:
                entry = self.dedup.remember(key, ts_ms, msg.partition, msg.offset, int(time.time() * 1000))
                outputs.append(Output(self.changelog_topic, entry, key, None, msg.partition, kind=CHANGELOG))
            if not outputs:
                ack()
                return None
        routed = sum(1 for o in outputs if o.kind == ROUTE)
        await self._dispatch(RecordWork(outputs, self, msg, ack, key, routed))
        return None

    async def dead_letter(self, msg: Any, stage: str, error: BaseException | str, ack: Ack,
                          error_class: str | None = None) -> None:
        """Send a record to the DLQ with the reason in its headers; ack it once that is durable."""
        now = int(time.time() * 1000)
        ts = int(msg.timestamp * 1000) if msg.timestamp is not None else None
        headers = dead_letter_headers(list(msg.headers or ()), stage=stage, error=error, error_class=error_class,
                                      topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                      timestamp_ms=ts, first_failure_ms=now)
        self.stats.dead_letters[stage] += 1
        if self._dlq_logged < DLQ_LOGS_PER_INTERVAL:
            self._dlq_logged += 1
            log.warning("Record %s/%d/%d goes to the DLQ (stage %s): %s", msg.topic, msg.partition, msg.offset,
                        stage, error)
        out = Output(self.settings.dlq_topic, msg.value, msg.key, headers, kind=DEAD_LETTER)
        await self._dispatch(RecordWork([out], self, msg, ack))

    def idle(self, partition: int, seconds: float) -> bool:
        """Tell whether a partition has nothing in flight and no record arrived for `seconds`."""
        return not self._busy[partition] and time.monotonic() - self._seen.get(partition, 0.0) > seconds

    def touch(self, partition: int) -> None:
        """Count now as the last arrival for a partition (after asking for its records again)."""
        self._seen[partition] = time.monotonic()

    def log_stats(self) -> None:
        """Log the counters (and let DLQ warnings through again)."""
        log.info("Pipeline: %s", self.stats.line(self.inflight))
        self._dlq_logged = 0

    # ------------------------------------------------------------------ internals

    def _maybe_sent(self, msg: Any, ts_ms: int) -> int | None:
        """Return from when to look for copies of a record without own dedup entry, or None if none can exist."""
        state = self._recheck.get(msg.partition)
        if state is None:
            return None
        last_offset, last_ms, high = state
        if high is None:
            high = state[2] = self.highwater(msg.tp) or msg.offset + 1
        if msg.offset >= high:
            del self._recheck[msg.partition]  # records from here on were appended after the rebalance
            return None
        if msg.offset <= last_offset:
            return None  # entries are written in offset order: no entry here, never forwarded as new
        return max(last_ms, ts_ms)

    async def _dispatch(self, work: RecordWork) -> None:
        self.inflight += 1
        self._busy[work.msg.partition] += 1
        self._pending[(work.msg.partition, work.msg.offset)] = work
        await self.delivery.dispatch(work)

    def _finish(self, work: Work) -> None:
        assert isinstance(work, RecordWork)
        if work.routed:
            self.stats.forwarded += 1
            self.stats.writes += work.routed - len(work.failed)
            if len(work.failed) >= work.routed and work.key is not None:
                self._forget(work)
        for ack in work.acks:
            ack()
        self._pending.pop((work.msg.partition, work.msg.offset), None)
        self._busy[work.msg.partition] -= 1
        self.inflight -= 1
        if not self._capacity.is_set() and self.inflight <= self._max_inflight // 2:
            self._capacity.set()

    def _forget(self, work: RecordWork) -> None:
        """Every destination failed: drop the dedup entry, so that a replay or a retry is not a duplicate."""
        msg = work.msg
        if self.dedup is not None and work.key is not None and self.dedup.forget(work.key, msg.partition,
                                                                                 msg.offset):
            task = asyncio.ensure_future(self.delivery.send(self.changelog_topic, None, key=work.key,
                                                            partition=msg.partition))
            task.add_done_callback(_log_failure)

    def _give_up(self, out: Output, exc: BaseException) -> Output | None:
        work = out.work
        assert isinstance(work, RecordWork)
        if out.kind != ROUTE:
            log.error("Giving up writing %s to %s (%s); the record is forwarded without it.", out.kind, out.topic,
                      exc)
            return None
        msg = work.msg
        ts = int(msg.timestamp * 1000) if msg.timestamp is not None else None
        headers = dead_letter_headers(list(msg.headers or ()), stage="produce", error=exc, topic=msg.topic,
                                      partition=msg.partition, offset=msg.offset, timestamp_ms=ts,
                                      first_failure_ms=out.first_failure_ms, attempts=out.attempts,
                                      destination=out.topic)
        self.stats.dead_letters["produce"] += 1
        return Output(self.settings.dlq_topic, msg.value, msg.key, headers, kind=DEAD_LETTER)

    async def _decode_fetching(self, value: bytes) -> dict[str, Any]:
        """Decode with a writer schema not seen yet, asking the registry (retrying if Kafka is slow)."""
        attempts = self.settings.route_max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self.codec.decode_async(value)
            except SchemaNotFound as exc:
                sid = AvroCodec.schema_id_of(value)
                raise UnknownSchema(f"schema id {sid} is not registered") from exc
            except BrokerUnavailable:
                if attempt == attempts:
                    raise
                await asyncio.sleep(min(self.settings.route_backoff_ms / 1000 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    async def _ensure(self, topics: list[str]) -> None:
        attempts = self.settings.route_max_attempts
        for attempt in range(1, attempts + 1):
            try:
                await self.delivery.ensure(topics)
                return
            except BrokerUnavailable:
                if attempt == attempts:
                    raise
                await asyncio.sleep(min(self.settings.route_backoff_ms / 1000 * 2 ** attempt, 5.0))


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Could not write a dedup tombstone: %s", task.exception())
