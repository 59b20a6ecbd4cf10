"""What the edge learns about the rest of the system every few seconds, through Kafka's admin API: is
Kafka up, who is in the worker group and how far behind it is, how fast the DLQ grows, where each
topic's watermarks stand, and the worker's own counters (its /metrics, when it answers).

One background task samples; /metrics, /api/v1/health and the dashboard read the latest sample, so
a scrape or a page costs no Kafka request. One admin connection and one group-less reader per edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import httpx
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from streams.errors import BrokerUnavailable, StreamError, redact
from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)
INTERVAL_S = 5.0
# Listing every topic is one metadata response for the whole cluster, decoded on the event loop (67 ms for
# 2,138 topics here): the names are refreshed this seldom, the few topics shown are described every sample.
NAMES_INTERVAL_S = 60.0
MAX_TOPICS = 50  # watermarks of at most this many topics (the service's, then the others by name)
WORKER_FAMILIES = ("eventstream_pipeline_records", "eventstream_dlq_records", "eventstream_worker_lag_records",
                   "eventstream_worker_assigned_partitions")


class KafkaWatch(clients.AdminSession):
    """Sample Kafka, the worker group, the DLQ, the topics and the worker's figures in the background."""

    name = "observe"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.kafka: dict[str, Any] = {"up": False, "error": "not sampled yet", "latency_ms": None}
        self.group: dict[str, Any] = {"error": "not sampled yet"}
        self.topics: list[dict[str, Any]] = []
        self.worker: dict[str, Any] = {"error": "not read yet"}
        self.sampled_at: float | None = None
        self._dlq: deque[tuple[float, int]] = deque()  # (time, DLQ records), over health_dlq_window_s
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._names: list[str] = []
        self._names_at = 0.0

    async def run(self) -> None:
        """Start sampling every INTERVAL_S (connecting when Kafka answers)."""
        if self._task is None:
            self._http = httpx.AsyncClient(timeout=1.0)
            self._task = asyncio.create_task(self._loop(), name="observe-watch")

    async def close(self) -> None:
        """Stop sampling and disconnect; calling it twice is harmless."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        await self.stop()

    async def __aenter__(self) -> KafkaWatch:
        await self.run()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(INTERVAL_S)

    async def sample(self) -> None:
        """Take one sample of everything (errors are kept as the reason, never raised)."""
        await self._sample_kafka()
        # When Kafka's answer was taken (what the kafka component reports): set before the other steps, so a
        # report never shows a sampled worker group beside a Kafka "not sampled yet".
        self.sampled_at = time.time()
        if self.kafka["up"]:
            for step in (self._sample_topics, self._sample_group):
                try:
                    await step()
                except (KafkaError, StreamError, OSError, KeyError, IndexError) as exc:
                    log.info("Sampling for the health report failed (%s): %s", step.__name__, exc)
        await self._sample_worker()

    # ------------------------------------------------------------------ samples

    async def _sample_kafka(self) -> None:
        started = time.perf_counter()
        try:
            await self.start()
            # A metadata request for the service's own topics: small, unlike listing the whole cluster.
            s = self.settings
            await asyncio.wait_for(self._client().describe_topics([s.ingress_topic, s.default_topic, s.dlq_topic]),
                                   s.ready_timeout_s)
        except (TimeoutError, KafkaError, StreamError, OSError) as exc:
            reason = f"no answer within {self.settings.ready_timeout_s:g} s" if isinstance(exc, TimeoutError) \
                else str(exc)
            self.kafka = {"up": False, "latency_ms": None,
                          "error": f"Kafka at {redact(self.settings.kafka_bootstrap_servers)}: {reason}"}
            await self.stop()  # reconnect from scratch next time
            return
        self.kafka = {"up": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1), "error": None}

    async def _partitions(self, topics: list[str]) -> dict[str, int]:
        """Return the partition count of each existing topic."""
        described = await self._client().describe_topics(topics)
        return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}

    async def _sample_topics(self) -> None:
        s = self.settings
        if not self._names or time.monotonic() - self._names_at > NAMES_INTERVAL_S:
            self._names = sorted(set(await self._client().list_topics()))
            self._names_at = time.monotonic()
        names = self._names
        service = [s.ingress_topic, s.default_topic, s.dlq_topic]
        others = [t for t in names if t not in service and not s.is_internal(t)]
        # The service's own topics are described every sample, whatever the (minute-old) name list says: a
        # topic created since shows at once, and one that does not exist is dropped by `_partitions`.
        chosen = service + others[:MAX_TOPICS - len(service)]
        counts = await self._partitions(chosen) if chosen else {}
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        low = await self._reader().beginning_offsets(tps) if tps else {}
        high = await self._reader().end_offsets(tps) if tps else {}
        self.topics = [{"topic": t, "internal": s.is_internal(t), "partitions": [
            {"partition": p, "low": low[TopicPartition(t, p)], "high": high[TopicPartition(t, p)]} for p in range(n)]}
            for t, n in counts.items()]
        dlq = sum(high[tp] for tp in tps if tp.topic == s.dlq_topic)
        now = time.time()
        self._dlq.append((now, dlq))
        while self._dlq and now - self._dlq[0][0] > s.health_dlq_window_s:
            self._dlq.popleft()

    async def _sample_group(self) -> None:
        s = self.settings
        group = s.worker_app_id
        [response] = await self._client().describe_consumer_groups([group])  # one group per request
        [described] = response.to_object()["groups"]
        members = [{"client_id": m["client_id"], "host": m["client_host"]} for m in described["members"]]
        committed = await self._client().list_consumer_group_offsets(group)
        counts = await self._partitions([s.ingress_topic])
        tps = [TopicPartition(s.ingress_topic, p) for p in range(counts.get(s.ingress_topic, 0))]
        ends = await self._reader().end_offsets(tps) if tps else {}
        lag: dict[int, int | None] = {}
        for tp in tps:
            meta = committed.get(tp)
            lag[tp.partition] = ends[tp] - meta.offset if meta is not None and meta.offset >= 0 else None
        self.group = {"group": group, "state": described["state"], "members": members,
                      "lag": lag, "total_lag": sum(n for n in lag.values() if n is not None), "error": None}

    async def _sample_worker(self) -> None:
        url = self.settings.worker_metrics_url
        if not url or self._http is None:
            self.worker = {"error": "ES_WORKER_METRICS_URL is empty"}
            return
        try:
            response = await self._http.get(url)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.worker = {"error": f"{redact(url)} did not answer: {type(exc).__name__}"}
            return
        figures: dict[str, Any] = {"error": None, "read_at": time.time()}
        for family in text_string_to_metric_families(response.text):
            if family.name not in WORKER_FAMILIES:
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                label = next(iter(sample.labels.values()), "") if sample.labels else ""
                figures.setdefault(family.name, {})[label] = sample.value
        self.worker = figures

    # ------------------------------------------------------------------ readings

    def dlq_growth(self) -> int | None:
        """Return how many records reached the DLQ within the window (None before two samples)."""
        if len(self._dlq) < 2:
            return None
        return self._dlq[-1][1] - self._dlq[0][1]

    def dlq_window_s(self) -> float:
        """Return the seconds the DLQ samples span."""
        return self._dlq[-1][0] - self._dlq[0][0] if len(self._dlq) >= 2 else 0.0

    def require_up(self) -> None:
        """Raise BrokerUnavailable with the last reason when Kafka did not answer the last sample."""
        if not self.kafka["up"]:
            raise BrokerUnavailable(self.kafka["error"] or "Kafka is not reachable")
