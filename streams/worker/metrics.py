"""The worker's own HTTP server on 127.0.0.1:$ES_WORKER_METRICS_PORT: /metrics (Prometheus), /healthz
(the process runs) and /readyz (it joined the group and replayed its dedup state).

The server runs on the worker's event loop (asyncio.start_server), not in a thread, so the collector
reads the pipeline's plain counters between two batches and never while one is half-way counted.
A port already taken is logged and the worker runs on without the server (several test workers may
share a host).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from streams.metrics import histogram_family
from streams.settings import Settings

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
MAX_HEAD_BYTES = 8192
READ_TIMEOUT_S = 5.0
DLQ_STAGES = ("decode", "validate", "route", "produce")
WORKER_FAMILIES = ("eventstream_pipeline_records_total", "eventstream_pipeline_latency_seconds",
                   "eventstream_dlq_records_total", "eventstream_worker_lag_records",
                   "eventstream_worker_assigned_partitions", "eventstream_worker_ready")


def is_ready(worker: Any) -> bool:
    """Tell whether the worker joined its group and replayed the dedup state of its partitions."""
    ready = getattr(worker, "_ready", None)
    return worker.pipeline is not None and ready is not None and ready.is_set()


class WorkerCollector(Collector):
    """Build the worker's families from its counters when Prometheus scrapes."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        """Yield the pipeline, DLQ, lag and assignment families."""
        worker = self.worker
        pipeline = worker.pipeline
        yield GaugeMetricFamily("eventstream_worker_ready", "1 when the worker is in its group with its dedup "
                                                            "state replayed.", value=1 if is_ready(worker) else 0)
        records = CounterMetricFamily("eventstream_pipeline_records", "Ingress records by outcome (retried: "
                                                                      "destination writes sent again).",
                                      labels=["outcome"])
        dlq = CounterMetricFamily("eventstream_dlq_records", "Records sent to the DLQ, by stage.", labels=["stage"])
        if pipeline is not None:
            stats = pipeline.stats
            records.add_metric(["routed"], stats.forwarded)
            records.add_metric(["duplicate"], stats.duplicates)
            records.add_metric(["dead_lettered"], sum(stats.dead_letters.values()))
            records.add_metric(["retried"], getattr(worker.delivery, "retried", 0))
            for stage in sorted(set(DLQ_STAGES) | set(stats.dead_letters)):
                dlq.add_metric([stage], stats.dead_letters.get(stage, 0))
            latency = getattr(pipeline, "latency", None)
            if latency is not None:
                yield histogram_family("eventstream_pipeline_latency_seconds",
                                       "Ingress append to the destination's acknowledgment, per routed record.",
                                       latency)
        yield records
        yield dlq
        assigned = self._assignment()
        yield GaugeMetricFamily("eventstream_worker_assigned_partitions", "Ingress partitions this worker owns.",
                                value=len(assigned))
        lag = GaugeMetricFamily("eventstream_worker_lag_records", "Ingress records of the worker's partitions not "
                                                                  "yet done (high watermark minus commit point).",
                                labels=["partition"])
        for partition, behind in self._lag(assigned):
            lag.add_metric([str(partition)], behind)
        yield lag

    def _assignment(self) -> list[Any]:
        with contextlib.suppress(Exception):  # before the group join aiokafka has no assignment yet
            return sorted(self.worker.consumer.assignment(), key=lambda tp: tp.partition)
        return []

    def _lag(self, assigned: list[Any]) -> Iterator[tuple[int, int]]:
        consumer, progress = self.worker.consumer, self.worker.progress
        for tp in assigned:
            high = consumer.highwater(tp)
            if high is None:
                continue
            done = progress.get(tp.partition)
            point = done.commit_point() if done is not None else None
            if point is not None:  # else nothing was read yet: the edge's group lag (admin API) still counts it
                yield tp.partition, max(0, high - point)


def worker_registry(worker: Any) -> CollectorRegistry:
    """Return a registry with the worker's families and the process, platform and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsServer:
    """The worker's HTTP endpoints; `async with` serves them for the worker's lifetime."""

    def __init__(self, settings: Settings, worker: Any) -> None:
        self.port = settings.worker_metrics_port
        self.worker = worker
        self.registry = worker_registry(worker)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on 127.0.0.1:port (nothing when the port is 0; a warning when it is taken)."""
        if self.port == 0 or self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(self._serve, HOST, self.port)
        except OSError as exc:
            log.warning("Worker metrics are not served: cannot listen on %s:%d (%s).", HOST, self.port, exc)
            return
        log.info("Worker metrics on http://%s:%d/metrics (also /healthz, /readyz).", HOST, self.port)

    async def stop(self) -> None:
        """Stop listening; calling it twice is harmless."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Return (status, content type, body) for one request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            if is_ready(self.worker):
                return 200, "application/json", b'{"status":"ready"}'
            return 503, "application/json", b'{"status":"not ready","reason":"joining the group"}'
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, _ = head[:MAX_HEAD_BYTES].split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, media, body = self.answer(method, path)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, media, body, method = 400, "text/plain", b"bad request\n", "GET"
        except ConnectionError:
            writer.close()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
