"""The stream worker: a Faust app whose agent takes every ingress record through streams.worker.pipeline.

Run `python -m streams.worker` (settings from the environment, ES_*). Workers with the same
ES_TOPIC_PREFIX form one consumer group (the app id, `{topic_prefix}.worker`) and share the ingress
partitions; the dedup table (changelog `{app id}-dedup-changelog`) is partitioned like the ingress
topic, so its state moves with the partitions on a rebalance.

Delivery guarantee: at-least-once, acked per record once its writes are durable (streams/worker/pipeline.py
says how). Faust's exactly_once is not offered: KAFKA-NOTES.md §4 lists it as unreliable (open
faust-streaming issues #517 duplicates after restart, #323 on rebalance, #177 sends outside the
transaction), and this worker writes outputs and changelog entries with its own idempotent producer,
which Faust's transactions would not cover anyway. Duplicates after a crash are removed instead by the
dedup table and the destination check of streams/worker/recovery.py.

SIGTERM: Faust stops fetching, waits until every record in flight is acked (its writes acknowledged),
commits, leaves the group, and then the pipeline's producer is flushed and closed. If that takes longer
than `worker_shutdown_timeout_s` the process exits with code 1; what was not committed is read again by
the next owner.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
from typing import Any

import faust
from mode import Service

from streams.errors import RoutingRulesInvalid, StreamError, redact
from streams.kafka.topics import TopicManager
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings, get_settings
from streams.worker.dedup import DedupIndex
from streams.worker.fetch import RefetchGuard, highwater, lean_consumer
from streams.worker.pipeline import Pipeline
from streams.worker.recovery import OriginScan
from streams.worker.routing import RouteTable, load_rules
from streams.worker.writes import Delivery

log = logging.getLogger(__name__)
TABLE = "dedup"


class PipelineService(Service):
    """Kafka clients and the pipeline of one worker: started before the Faust app, stopped after it."""

    def __init__(self, settings: Settings, routes: RouteTable, app: faust.App, table: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings, self.routes, self.app, self.table = settings, routes, app, table
        self.registry = SchemaRegistry(settings)
        self.topics = TopicManager(settings)
        self.delivery = Delivery(settings, self.topics)
        self.scan = OriginScan(settings)
        self.dedup: DedupIndex | None = None
        self.pipeline: Pipeline | None = None
        self.guard: RefetchGuard | None = None

    async def on_start(self) -> None:
        """Connect the registry, the topic manager and the producer; build the pipeline."""
        await self.topics.start()
        await self.registry.start()
        await self.delivery.start()
        codec = AvroCodec.from_file(self.settings.schemas_dir / "envelope.avsc", self.registry)
        if self.settings.dedup_window_s > 0:
            store = self.table.data
            self.dedup = DedupIndex(getattr(store, "data", store), int(self.settings.dedup_window_s * 1000),
                                    self.settings.dedup_max_ids)
        self.pipeline = Pipeline(self.settings, self.routes, codec, self.delivery, self.dedup,
                                 self.table.changelog_topic_name, self.scan,
                                 lambda tp: highwater(self.app.consumer, tp))
        self.guard = RefetchGuard(self.app, self.settings.ingress_topic, self.settings.worker_stall_timeout_s,
                                  self.pipeline.idle, self.pipeline.touch)

    async def on_stop(self) -> None:
        """Close the clients (the app has committed and left the group by now)."""
        if self.pipeline is not None:
            self.pipeline.log_stats()
        await self.delivery.stop()
        await self.scan.stop()
        await self.registry.stop()
        await self.topics.stop()

    def owned(self) -> set[int]:
        """Return the ingress partitions this worker processes now."""
        topic = self.settings.ingress_topic
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    async def on_recovered(self) -> None:
        """Rebuild the dedup expiry order from the recovered table."""
        if self.dedup is not None and self.pipeline is not None:
            owned = self.owned()
            count = self.dedup.rebuild(owned)
            self.pipeline.expect_replays(owned)
            log.info("Dedup table ready: %d ids for ingress partitions %s.", count, sorted(owned))

    async def sweep(self) -> None:
        """Drop expired ids and write their tombstones."""
        if self.dedup is None:
            return
        for partition, key in self.dedup.expire(int(time.time() * 1000), self.owned()):
            await self.delivery.send(self.table.changelog_topic_name, None, key=key, partition=partition)


class WorkerApp(faust.App):
    """The Faust app, with the tuned fetch loop of streams/worker/fetch.py."""

    consumer_class: type | None = None

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if self.consumer_class is not None:
            transport.Consumer = self.consumer_class
        return transport


def build_app(settings: Settings, routes: RouteTable, partitions: int) -> tuple[faust.App, PipelineService]:
    """Build the Faust app (agent, dedup table, timers) and the service it runs on."""
    session = settings.worker_session_timeout_s
    app = WorkerApp(
        settings.worker_app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_client_id=f"{settings.client_id}-worker",
        key_serializer="raw", value_serializer="raw",
        web_enabled=False,
        datadir=str(settings.worker_data_dir / settings.worker_app_id),
        topic_partitions=partitions,
        topic_replication_factor=settings.default_replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,  # the memory store replays its changelog partition on assignment anyway
        broker_commit_interval=settings.worker_commit_interval_s,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(session / 10, 0.5),
        broker_rebalance_timeout=max(session * 2, 20.0),
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        producer_linger=settings.worker_linger_ms / 1000,
        producer_acks=-1,
        stream_wait_empty=True,
    )
    app.consumer_class = lean_consumer(settings.worker_fetch_max_wait_ms)
    window_ms = int(settings.dedup_window_s * 1000)
    changelog_config = {"cleanup.policy": "compact,delete", "retention.ms": str(2 * window_ms + 3_600_000),
                        "segment.ms": str(max(window_ms // 4, 600_000))} if window_ms else {}
    table = app.Table(TABLE, key_type=bytes, value_type=bytes, partitions=partitions,
                      extra_topic_configs=changelog_config)
    service = PipelineService(settings, routes, app, table)
    table.on_recover(service.on_recovered)
    ingress = app.topic(settings.ingress_topic, key_type=bytes, value_type=bytes)

    @app.agent(ingress, name="pipeline")
    async def pipeline_agent(stream: Any) -> None:
        """Take each ingress record through the pipeline; acks are manual (when writes are durable)."""
        pipeline = service.pipeline
        assert pipeline is not None, "PipelineService must start before the app"
        async for event in stream.noack().events():
            await pipeline.wait_capacity()
            try:
                await pipeline.process(event.message, event.ack)
            except Exception as exc:  # one bad record must not stop the agent (its acks would stall)
                log.exception("Processing %s/%d/%d failed.", event.message.topic, event.message.partition,
                              event.message.offset)
                await pipeline.dead_letter(event.message, "process", exc, event.ack)

    @app.timer(settings.dedup_sweep_interval_s, name="dedup-sweep")
    async def dedup_sweep() -> None:
        await service.sweep()

    @app.timer(settings.worker_stats_interval_s, name="stats")
    async def stats() -> None:
        if service.pipeline is not None:
            service.pipeline.log_stats()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        service.scan.reset()  # destinations may have changed while the partitions were elsewhere

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Faust committed after waiting for in-flight records, unless a periodic commit was running then
        # (Consumer.commit returns early); commit again so the next owner does not re-read acked records.
        await app.consumer.commit()

    @app.timer(1.0, name="refetch-guard")
    async def refetch_guard() -> None:
        if service.guard is not None:
            await service.guard.check()

    return app, service


async def prepare(settings: Settings) -> int:
    """Wait for Kafka, create the service's topics, and return the ingress partition count."""
    servers, delay, started = redact(settings.kafka_bootstrap_servers), 0.5, time.monotonic()
    while True:
        try:
            async with TopicManager(settings) as topics:
                for name in (settings.ingress_topic, settings.dlq_topic, settings.default_topic):
                    await topics.ensure(name)
                await topics.ensure(settings.dlq_replays_topic, cleanup_policy="compact")
                return len(await topics.partitions(settings.ingress_topic))
        except (StreamError, OSError) as exc:
            log.info("Waiting for Kafka at %s (%.0fs): %s", servers, time.monotonic() - started, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class PipelineWorker(faust.Worker):
    """Faust's worker, with a deadline on shutdown."""

    def __init__(self, *args: Any, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_timeout_s = shutdown_timeout_s

    def _schedule_shutdown(self, signal: Any) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(self.shutdown_timeout_s, _exit_late, args=(self.shutdown_timeout_s,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)


def _exit_late(timeout: float) -> None:
    os.write(2, f"Shutdown took longer than {timeout:g} s (ES_WORKER_SHUTDOWN_TIMEOUT_S); exiting. "
                "Uncommitted records will be processed again.\n".encode())
    os._exit(1)


def main() -> None:
    """Start one worker and block until SIGTERM/SIGINT."""
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        routes = load_rules(settings.routes_file, settings)
    except RoutingRulesInvalid as exc:
        sys.stderr.write(f"Refusing to start: {exc}\n")
        raise SystemExit(2) from None
    log.info("Loaded %d routing rules from %s.", len(routes.rules), settings.routes_file)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    partitions = loop.run_until_complete(prepare(settings))
    app, service = build_app(settings, routes, partitions)
    (settings.worker_data_dir / settings.worker_app_id).mkdir(parents=True, exist_ok=True)
    gc.collect()
    gc.freeze()  # Faust's start-up objects live as long as the process: keep them out of every collection
    gc.set_threshold(20_000, 20, 50)  # fewer collections on the per-record path (~8% throughput here)
    worker = PipelineWorker(app, service, loop=loop, loglevel="info", redirect_stdouts=False,
                            shutdown_timeout_s=settings.worker_shutdown_timeout_s)
    worker.execute_from_commandline()


