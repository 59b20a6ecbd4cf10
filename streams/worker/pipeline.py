"""The batch path of the worker: decode, validate, deduplicate and route a whole fetched batch, and say
what each record must write.

`prepare` turns the records of one fetch (every assigned partition, each in offset order) into Works:
the outputs of one record (its destinations, its dedup changelog entry, a replay ledger entry) or its
dead letter; a record that needs no write (a duplicate, or a copy already present everywhere) is
complete at once. streams/worker/app.py sends all of them with one call (streams/worker/outputs.py) and
awaits the acknowledgments per batch; a Work is complete when the last of its writes is acknowledged,
and only then does the commit point of its partition pass it (streams/worker/offsets.py).

Errors: undecodable records, records that break the envelope rules and invalid requested destinations
go to the DLQ at once (stage decode, validate or route); a destination write refused for good goes
there too (stage produce, `give_up`), and when every destination of a record failed that way, its
dedup entry is dropped again (a tombstone, written as part of the record's work) so that a replay is
not taken for a duplicate. Registry reads and topic creation that fail because Kafka is unavailable
are retried for as long as it takes (they hold the batch, and so every later record).

No duplicates after a crash, and why: a record read again may already have reached its destinations.
It is checked against them (streams/worker/recovery.py reads them for the header es-origin, once per topic
and rebalance) when its dedup entry names its own origin, or when it has no entry but lies past the
partition's last entry: the one producer writes a partition's entries in offset order, so below that
point a record without entry was never forwarded as new. The check lasts until the partition's end
offset at the assignment.

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
from streams.metrics import Histogram, seconds_since
from streams.schema.codec import AvroCodec
from streams.settings import Settings
from streams.worker.dedup import DedupIndex, Verdict, dedup_key
from streams.worker.outputs import CHANGELOG, DEAD_LETTER, LEDGER, MAX_BACKOFF_S, ROUTE, Delivery, Output, Work
from streams.worker.recovery import ORIGIN, OriginScan, origin_of
from streams.worker.routing import RouteTable, requested_topic_problem
from streams.worker.validation import check_record

log = logging.getLogger(__name__)
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
    """A Work that remembers its ingress record, to dead-letter failed destinations."""

    __slots__ = ("msg", "key", "routed")

    def __init__(self, outputs: list[Output], pipeline: Pipeline, msg: Any, key: bytes | None = None,
                 routed: int = 0) -> None:
        super().__init__(outputs, pipeline.finish, msg.partition, msg.offset)
        self.msg, self.key, self.routed = msg, key, routed  # routed: destination outputs


class Pipeline:
    """Takes ingress records to their destinations (or the DLQ) and tells when each one is complete."""

    def __init__(self, settings: Settings, routes: RouteTable, codec: AvroCodec, delivery: Delivery,
                 dedup: DedupIndex | None, changelog_topic: str, scan: OriginScan,
                 completed: Callable[[Work], None] = lambda work: None) -> None:
        self.settings, self.routes, self.codec, self.delivery = settings, routes, codec, delivery
        self.dedup, self.changelog_topic, self.scan, self.completed = dedup, changelog_topic, scan, completed
        self.stats = Stats()
        self.latency = Histogram()  # ingress append to the last destination acknowledgment (s), per routed record
        self._max_bytes = settings.max_event_bytes
        self._dlq_logged = 0
        self._seq = 0
        # partition -> [offset of its last dedup entry, that entry's processed ms, end offset at assignment]
        self._recheck: dict[int, list[int]] = {}

    def expect_replays(self, ends: dict[int, int]) -> None:
        """After a rebalance: note where each partition's records may have been forwarded already."""
        self._recheck = {}
        if self.dedup is None:
            return
        for partition, end in ends.items():
            last = self.dedup.last(partition)
            self._recheck[partition] = [last.offset if last else -1, last.processed_ms if last else 0, end]

    async def prepare(self, records: Iterable[Any]) -> list[RecordWork | None]:
        """Decode, check, deduplicate and route records; return one Work each (None: nothing to write)."""
        works: list[RecordWork | None] = []
        for msg in records:
            work = await self._one(msg)
            if work is not None:
                for out in work.outputs:
                    self._seq += 1
                    out.seq = self._seq
            works.append(work)
        self.stats.consumed += len(works)
        return works

    def finish(self, work: Work) -> None:
        """Count a complete record and report it to the commit bookkeeping."""
        assert isinstance(work, RecordWork)
        if work.routed:
            self.stats.forwarded += 1
            if work.msg.timestamp is not None:
                self.latency.observe(seconds_since(work.msg.timestamp))
            self.stats.writes += work.routed - len(work.failed)
        self.completed(work)

    def give_up(self, out: Output, exc: BaseException) -> list[Output]:
        """Return what replaces a destination write refused for good: its dead letter (and a tombstone)."""
        work = out.work
        assert isinstance(work, RecordWork)
        work.failed.append(out)
        msg = work.msg
        ts = int(msg.timestamp) if msg.timestamp is not None else None
        headers = dead_letter_headers(list(msg.headers or ()), stage="produce", error=exc, topic=msg.topic,
                                      partition=msg.partition, offset=msg.offset, timestamp_ms=ts,
                                      first_failure_ms=out.first_failure_ms, attempts=out.attempts,
                                      destination=out.topic)
        self.stats.dead_letters["produce"] += 1
        replacements = [self._output(work, Output(self.settings.dlq_topic, msg.value, msg.key, headers,
                                                  kind=DEAD_LETTER), out.seq)]
        if len(work.failed) >= work.routed and work.key is not None and self.dedup is not None \
                and self.dedup.forget(work.key, msg.partition, msg.offset):
            tombstone = self._output(work, Output(self.changelog_topic, None, work.key, None, msg.partition,
                                                  kind=CHANGELOG), out.seq)
            work.pending += 1
            replacements.append(tombstone)
        return replacements

    def log_stats(self, inflight: int) -> None:
        """Log the counters (and let DLQ warnings through again)."""
        log.info("Pipeline: %s", self.stats.line(inflight))
        self._dlq_logged = 0

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _output(work: Work, out: Output, seq: int) -> Output:
        out.work, out.seq = work, seq
        return out

    async def _one(self, msg: Any) -> RecordWork | None:
        """Take one record through decode, validation, routing and dedup; return its Work (None: no writes)."""
        value = msg.value
        if value is None:
            return self._dead_letter(msg, "decode", CodecError("record has no value"))
        try:
            try:
                record = self.codec.decode(value)
            except UnknownSchema:
                record = await self._decode_fetching(value)
        except StreamError as exc:
            return self._dead_letter(msg, "decode", exc)
        try:
            check_record(record, len(value), self._max_bytes)
        except StreamError as exc:
            return self._dead_letter(msg, "validate", exc)

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
                return self._dead_letter(msg, "route", problem, error_class="InvalidDestination")
        if self.delivery.missing(t for t, _ in route):
            await self._ensure([t for t, _ in route])

        ts_ms = msg.timestamp if msg.timestamp is not None else int(time.time() * 1000)
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
                return None
        routed = sum(1 for o in outputs if o.kind == ROUTE)
        return RecordWork(outputs, self, msg, key, routed)

    def _dead_letter(self, msg: Any, stage: str, error: BaseException | str,
                     error_class: str | None = None) -> RecordWork:
        """Return the Work that sends a record to the DLQ with the reason in its headers."""
        now = int(time.time() * 1000)
        headers = dead_letter_headers(list(msg.headers or ()), stage=stage, error=error, error_class=error_class,
                                      topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                      timestamp_ms=msg.timestamp, first_failure_ms=now)
        self.stats.dead_letters[stage] += 1
        if self._dlq_logged < DLQ_LOGS_PER_INTERVAL:
            self._dlq_logged += 1
            log.warning("Record %s/%d/%d goes to the DLQ (stage %s): %s", msg.topic, msg.partition, msg.offset,
                        stage, error)
        out = Output(self.settings.dlq_topic, msg.value, msg.key, headers, kind=DEAD_LETTER)
        return RecordWork([out], self, msg)

    def _maybe_sent(self, msg: Any, ts_ms: int) -> int | None:
        """Return from when to look for copies of a record without own dedup entry, or None if none can exist."""
        state = self._recheck.get(msg.partition)
        if state is None:
            return None
        last_offset, last_ms, end = state
        if msg.offset >= end:
            del self._recheck[msg.partition]  # records from here on were appended after the rebalance
            return None
        if msg.offset <= last_offset:
            return None  # entries are written in offset order: no entry here, never forwarded as new
        return max(last_ms, ts_ms)

    async def _decode_fetching(self, value: bytes) -> dict[str, Any]:
        """Decode with a writer schema not seen yet, asking the registry (waiting while Kafka is unavailable)."""
        attempt = 0
        while True:
            try:
                return await self.codec.decode_async(value)
            except SchemaNotFound as exc:
                sid = AvroCodec.schema_id_of(value)
                raise UnknownSchema(f"schema id {sid} is not registered") from exc
            except BrokerUnavailable as exc:
                attempt = await self._backoff(attempt, "reading a schema", exc)

    async def _ensure(self, topics: list[str]) -> None:
        """Create destination topics on first use (waiting while Kafka is unavailable)."""
        attempt = 0
        while True:
            try:
                await self.delivery.ensure(topics)
                return
            except BrokerUnavailable as exc:
                attempt = await self._backoff(attempt, f"creating {', '.join(topics)}", exc)

    async def _backoff(self, attempt: int, what: str, exc: BaseException) -> int:
        delay = min(self.settings.route_backoff_ms / 1000 * 2 ** attempt, MAX_BACKOFF_S)
        log.warning("%s failed (%s); the batch waits and tries again in %.2f s.", what.capitalize(), exc, delay)
        await asyncio.sleep(delay)
        return attempt + 1
