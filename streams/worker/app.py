"""The routing worker: an aiokafka group consumer whose batch loop takes every ingress record through
streams.worker.pipeline, and commits only what is done.

Run `python -m streams.worker` (settings from the environment, ES_*). Workers with the same
ES_TOPIC_PREFIX form one consumer group (`{topic_prefix}.worker`) and share the ingress partitions; the
dedup changelog (`{group}-dedup-changelog`) is partitioned like the ingress topic, so the dedup state
moves with the partitions on a rebalance (streams/worker/fetch.py says why the loop is ours, not Faust's).

The loop, one fetched batch at a time: decode, validate, deduplicate and route every record of the
batch; send all their writes at once, batched per destination partition; await the acknowledgments
(acks=all). A partition whose writes failed with a retriable error, or are not acknowledged within
`HOLD_AFTER_S`, is paused and held: its writes are retried, in order, with backoff, for as long as it
takes, and only then is it read further, so no later record of it overtakes (streams/worker/outputs.py).
The other partitions go on.

Delivery guarantee: at-least-once, and commits you can prove: per partition, the committed offset is
the lowest offset whose work is not complete (streams/worker/offsets.py), committed every
`worker_commit_interval_s`, on revocation and on shutdown. Duplicates after a crash are removed by the
dedup table and the destination check of streams/worker/recovery.py.

Ingress partitions added while running: the consumer notices them within `METADATA_MAX_AGE_MS`, the
group rebalances, and on assignment the dedup changelog is grown to the same count before any record
of the new partitions is read (an id published once before and once after the change can land in two
partitions and be forwarded twice: the partition of a key changes with the count, as in Kafka).

SIGTERM: the worker stops fetching, finishes the batch in hand, waits for held partitions, commits,
leaves the group and closes the producer. If that takes longer than `worker_shutdown_timeout_s` the
process exits with code 1; what was not committed is read again by the next owner.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import uvloop
from aiokafka import TopicPartition
from aiokafka.admin import NewPartitions
from aiokafka.errors import KafkaError

from streams import logs
from streams.errors import RoutingRulesInvalid, StreamError, redact
from streams.kafka import clients
from streams.kafka.topics import TopicManager
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings, get_settings
from streams.worker.dedup import DedupIndex
from streams.worker.fetch import Partitions, Rebalance, group_consumer
from streams.worker.metrics import MetricsServer
from streams.worker.offsets import Progress
from streams.worker.outputs import CHANGELOG, Delivery, Failure, Output, Work
from streams.worker.pipeline import Pipeline
from streams.worker.recovery import ChangelogReplay, OriginScan
from streams.worker.routing import RouteTable, load_rules

log = logging.getLogger(__name__)
GC_EVERY_BATCHES = 20  # a young-generation collection every so many batches (automatic collection is off)
HOLD_AFTER_S = 5.0  # writes of a batch not acknowledged by then hold their partitions, and the loop goes on


def changelog_topic(settings: Settings) -> str:
    """Return the dedup changelog's name (the one Faust used, so existing state carries over)."""
    return f"{settings.worker_app_id}-dedup-changelog"


class Worker:
    """One routing worker: clients, the batch loop, held partitions, commits and timers."""

    def __init__(self, settings: Settings, routes: RouteTable) -> None:
        self.settings, self.routes = settings, routes
        self.ingress = settings.ingress_topic
        self.changelog = changelog_topic(settings)
        self.registry = SchemaRegistry(settings)
        self.topics = TopicManager(settings)
        self.admin = clients.admin(settings, "worker-admin")
        self.delivery = Delivery(settings, self.topics)
        self.scan = OriginScan(settings)
        self.replay = ChangelogReplay(settings, self.changelog)
        window_ms = int(settings.dedup_window_s * 1000)
        self.dedup = DedupIndex(window_ms, settings.dedup_max_ids) if window_ms > 0 else None
        self.consumer = group_consumer(settings)
        self.pipeline: Pipeline | None = None
        self.progress: dict[int, Progress] = {}
        self.holds: dict[int, asyncio.Task] = {}
        self.owned: set[int] = set()
        self._generation = 0  # bumped on every revocation: a batch fetched before it is stale
        self._stepping = asyncio.Lock()  # held while a batch is processed; rebalances wait for it
        self._committing = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()  # set once the dedup state of the current assignment is replayed
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect the clients, create the changelog, and join the group."""
        await clients.start_all(self.settings, self.admin)
        await self.topics.start()
        await self.registry.start()
        await self.delivery.start()
        codec = AvroCodec.from_file(self.settings.schemas_dir / "envelope.avsc", self.registry)
        self.pipeline = Pipeline(self.settings, self.routes, codec, self.delivery, self.dedup, self.changelog,
                                 self.scan, self._completed)
        if self.dedup is not None:
            await self._ensure_changelog()
        await clients.start_all(self.settings, self.consumer)
        self.consumer.subscribe([self.ingress], listener=Rebalance(self._revoked, self._assigned))
        log.info("Worker started: group %s, ingress %s.", self.settings.worker_app_id, self.ingress)

    async def run(self) -> None:
        """Process batches until `stop` is asked for."""
        s = self.settings
        self._tasks = [asyncio.ensure_future(self._every(s.worker_commit_interval_s, self._commit)),
                       asyncio.ensure_future(self._every(s.worker_stats_interval_s, self._log_stats)),
                       asyncio.ensure_future(self._every(10.0, self._collect))]
        if self.dedup is not None:
            self._tasks.append(asyncio.ensure_future(self._every(s.dedup_sweep_interval_s, self._sweep)))
        stop = asyncio.ensure_future(self._stopping.wait())
        collected = 0
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(self.consumer.getmany(timeout_ms=500,
                                                                    max_records=s.worker_max_inflight))
                await asyncio.wait([fetch, stop], return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                try:
                    batch = fetch.result()
                except KafkaError as exc:
                    log.warning("Fetching from %s failed (%s); trying again.", self.ingress, exc)
                    await asyncio.sleep(1.0)
                    continue
                if not batch:
                    continue
                generation = self._generation  # taken as getmany returned: a revocation from here on makes it stale
                if not self._ready.is_set():  # records can arrive while the assignment callback still replays
                    await asyncio.wait([asyncio.ensure_future(self._ready.wait()), stop],
                                       return_when=asyncio.FIRST_COMPLETED)
                async with self._stepping:
                    if generation == self._generation:  # else revoked meantime: read again from the commits
                        await self._step(batch)
                collected += 1
                if collected >= GC_EVERY_BATCHES:
                    collected = 0
                    gc.collect(1)
        finally:
            stop.cancel()

    def request_stop(self) -> None:
        """Ask the loop to stop after the batch in hand."""
        self._stopping.set()

    async def stop(self) -> None:
        """Wait for held partitions, commit, leave the group and close the clients; twice is harmless."""
        self._stopping.set()
        if self.holds:
            log.info("Waiting for held ingress partitions %s before stopping.", sorted(self.holds))
            await asyncio.wait(list(self.holds.values()))
        for task in self._tasks:
            task.cancel()
        await self._commit()
        await clients.close_all(self.consumer)  # leaves the group: the others take over at once
        if self.pipeline is not None:
            self.pipeline.log_stats(self._open())
        await self.delivery.stop()
        await self.scan.stop()
        await self.replay.stop()
        await self.registry.stop()
        await self.topics.stop()
        await clients.close_all(self.admin)

    # ------------------------------------------------------------------ the batch loop

    async def _step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Take one fetched batch through the pipeline and its writes through the first acknowledgments."""
        assert self.pipeline is not None
        records = [r for recs in batch.values() for r in recs]
        works = await self.pipeline.prepare(records)
        outputs: list[Output] = []
        touched: set[int] = set()
        for msg, work in zip(records, works, strict=True):
            progress = self.progress.get(msg.partition)
            if progress is None:
                progress = self.progress[msg.partition] = Progress()
            progress.take(msg.offset, work)
            if work is not None:
                outputs += work.outputs
                touched.add(msg.partition)
        if not outputs:
            return
        failed, pending = await self.delivery.write(outputs, HOLD_AFTER_S)
        if not failed and not pending:
            return
        by_partition: dict[int, list[Failure]] = {}
        for failure in failed:
            by_partition.setdefault(failure[0].work.partition, []).append(failure)  # type: ignore[union-attr]
        for partition in sorted(touched):
            if partition in by_partition or (pending and self.progress[partition].open()):
                self.consumer.pause(TopicPartition(self.ingress, partition))
                self.holds[partition] = asyncio.ensure_future(
                    self._hold(partition, by_partition.get(partition, []), pending))

    async def _hold(self, partition: int, failed: list[Failure], pending: list[asyncio.Task]) -> None:
        """Finish a paused partition's writes (retrying for as long as it takes), then read it again."""
        assert self.pipeline is not None
        tp = TopicPartition(self.ingress, partition)
        try:
            if pending:
                await asyncio.wait(pending)
                failed = failed + [f for task in pending for f in task.result()
                                   if f[0].work is not None and f[0].work.partition == partition]
            if failed:
                await self.delivery.settle(failed, self.pipeline.give_up, f"ingress partition {partition}")
                log.info("Ingress partition %d: held writes are acknowledged; reading on.", partition)
        finally:
            if self.holds.get(partition) is asyncio.current_task():
                del self.holds[partition]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)

    def _completed(self, work: Work) -> None:
        progress = self.progress.get(work.partition)
        if progress is not None:
            progress.complete(work.offset, work)

    def _open(self) -> int:
        return sum(p.open() for p in self.progress.values())

    # ------------------------------------------------------------------ commits and rebalances

    async def _commit(self, partitions: set[int] | None = None) -> None:
        """Commit, per partition, the lowest offset whose work is not complete (when it moved)."""
        async with self._committing:
            offsets = {}
            for partition, progress in self.progress.items():
                point = progress.due()
                if point is not None and (partitions is None or partition in partitions):
                    offsets[TopicPartition(self.ingress, partition)] = point
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (KafkaError, AssertionError) as exc:  # a rebalance under way; the next owner reads again
                log.warning("Committing %s failed (%s: %s).", {tp.partition: o for tp, o in offsets.items()},
                            type(exc).__name__, exc)
                return
            for tp, point in offsets.items():
                if tp.partition in self.progress:
                    self.progress[tp.partition].committed = point

    async def _revoked(self, revoked: Partitions) -> None:
        async with self._stepping:
            self._generation += 1
            self._ready.clear()
            lost = {tp.partition for tp in revoked if tp.topic == self.ingress}
            holds = [self.holds.pop(p) for p in lost if p in self.holds]
            for task in holds:
                task.cancel()
            if holds:
                await asyncio.wait(holds)
                log.info("Gave up held writes of revoked partitions; the next owner reads them again.")
            await self._commit(lost)
            for partition in lost:
                self.progress.pop(partition, None)
            self.owned -= lost

    async def _assigned(self, assigned: Partitions) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == self.ingress}
        attempt = 0
        while True:
            try:
                count = await self._take_over(partitions)
                break
            except Exception as exc:  # a failing callback would leave the loop waiting for readiness forever
                attempt += 1
                log.warning("Taking over ingress partitions %s failed (%s); trying again.", sorted(partitions), exc)
                await asyncio.sleep(min(0.5 * attempt, 5.0))
        self.owned = partitions
        self._ready.set()
        log.info("Dedup table ready: %d ids for ingress partitions %s.", count, sorted(partitions))

    async def _take_over(self, partitions: set[int]) -> int:
        """Follow partition growth, replay the changelog of what is new, note where copies may exist."""
        assert self.pipeline is not None
        self.scan.reset()  # destinations may have changed while the partitions were elsewhere
        count = 0
        if self.dedup is not None:
            await self._ensure_changelog()
            self.replay.forget(self.dedup.held() - partitions, self.dedup)
            applied = await self.replay.replay(partitions, self.dedup)
            count = sum(len(self.dedup.store(p)) for p in partitions)
            log.info("Read %d changelog records for ingress partitions %s.", applied, sorted(partitions))
        tps = [TopicPartition(self.ingress, p) for p in sorted(partitions)]
        ends = await self.consumer.end_offsets(tps) if tps else {}
        self.pipeline.expect_replays({tp.partition: end for tp, end in ends.items()})
        return count

    async def _ensure_changelog(self) -> None:
        """Create the dedup changelog, or grow it to the ingress topic's partition count."""
        want = len(await self.topics.partitions(self.ingress))
        if self.changelog not in await self.topics.list():
            window_ms = int(self.settings.dedup_window_s * 1000)
            await self.topics.ensure(self.changelog, partitions=want, cleanup_policy="compact,delete", config={
                "retention.ms": str(2 * window_ms + 3_600_000), "segment.ms": str(max(window_ms // 4, 600_000))})
            return
        have = len(await self.topics.partitions(self.changelog))
        if have < want:
            log.warning("The ingress topic has %d partitions, the dedup changelog %d: adding %d changelog "
                        "partitions so the dedup state follows.", want, have, want - have)
            result = await self.admin.create_partitions({self.changelog: NewPartitions(total_count=want)})
            for _, code, message in getattr(result, "topic_errors", ()):
                if code and code != 37:  # 37: INVALID_PARTITIONS, another worker grew it first
                    raise StreamError(f"growing {self.changelog} to {want} partitions failed ({code}: {message})")

    # ------------------------------------------------------------------ timers

    async def _every(self, seconds: float, job: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Periodic %s failed.", getattr(job, "__name__", "job"))

    async def _collect(self) -> None:
        """Collect garbage cycles of every generation (automatic collection is off while the worker runs)."""
        gc.collect()

    async def _log_stats(self) -> None:
        if self.pipeline is not None:
            self.pipeline.log_stats(self._open())

    async def _sweep(self) -> None:
        """Drop expired ids and write their tombstones (retried until written)."""
        if self.dedup is None or self.pipeline is None:
            return
        dropped = self.dedup.expire(int(time.time() * 1000), self.owned)
        if not dropped:
            return
        work = Work([], lambda w: None)
        outputs = [Output(self.changelog, None, key, None, partition, kind=CHANGELOG) for partition, key in dropped]
        for out in outputs:
            out.work = work
        work.pending = len(outputs)
        failed, _ = await self.delivery.write(outputs)
        await self.delivery.settle(failed, lambda out, exc: [out], "dedup tombstones")


async def prepare(settings: Settings) -> None:
    """Wait for Kafka and create the service's topics."""
    servers, delay, started = redact(settings.kafka_bootstrap_servers), 0.5, time.monotonic()
    while True:
        try:
            async with TopicManager(settings) as topics:
                for name in (settings.ingress_topic, settings.dlq_topic, settings.default_topic):
                    await topics.ensure(name)
                await topics.ensure(settings.dlq_replays_topic, cleanup_policy="compact")
                return
        except (StreamError, OSError) as exc:
            log.info("Waiting for Kafka at %s (%.0fs): %s", servers, time.monotonic() - started, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(settings: Settings, routes: RouteTable) -> None:
    """Run one worker until SIGTERM/SIGINT, then stop it within `worker_shutdown_timeout_s`."""
    await prepare(settings)
    worker = Worker(settings, routes)
    metrics = MetricsServer(settings, worker)  # /metrics, /healthz, /readyz on 127.0.0.1 (streams/worker/metrics.py)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not worker._stopping.is_set():
            log.info("Stopping: finishing the batch in hand, committing and leaving the group.")
            timer = threading.Timer(settings.worker_shutdown_timeout_s, _exit_late,
                                    args=(settings.worker_shutdown_timeout_s,))
            timer.daemon = True
            timer.start()
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await metrics.start()
        await worker.start()
        gc.collect()
        gc.freeze()  # start-up objects live as long as the process: keep them out of every collection
        # A fetched batch allocates tens of thousands of short-lived containers that reference counting frees;
        # automatic collections over them took about a third of the loop. Collect between batches instead.
        gc.disable()
        await worker.run()
    finally:
        await worker.stop()
        await metrics.stop()
    log.info("Worker stopped.")


def _exit_late(timeout: float) -> None:
    os.write(2, f"Shutdown took longer than {timeout:g} s (ES_WORKER_SHUTDOWN_TIMEOUT_S); exiting. "
                "Uncommitted records will be processed again.\n".encode())
    os._exit(1)


def main() -> None:
    """Start one worker and block until SIGTERM/SIGINT."""
    settings = get_settings()
    logs.configure(settings.log_format)
    try:
        routes = load_rules(settings.routes_file, settings)
    except RoutingRulesInvalid as exc:
        sys.stderr.write(f"Refusing to start: {exc}\n")
        raise SystemExit(2) from None
    log.info("Loaded %d routing rules from %s.", len(routes.rules), settings.routes_file)
    uvloop.run(serve(settings, routes))
