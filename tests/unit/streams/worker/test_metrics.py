"""The worker's /metrics, /healthz and /readyz, from a worker object without Kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Histogram
from streams.settings import Settings
from streams.worker.metrics import WORKER_FAMILIES, MetricsServer
from streams.worker.offsets import Progress


class FakeConsumer:
    def __init__(self, highwater: dict[int, int]) -> None:
        self._high = highwater

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("in", p) for p in self._high}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._high.get(tp.partition)


def fake_worker(ready: bool = True) -> Any:
    stats = SimpleNamespace(forwarded=40, duplicates=3, dead_letters=Counter({"decode": 2, "produce": 1}))
    latency = Histogram()
    latency.observe(0.004)
    progress = Progress()
    for offset in range(10):
        progress.take(offset)  # complete at once: commit point 10
    flag = asyncio.Event()
    if ready:
        flag.set()
    return SimpleNamespace(pipeline=SimpleNamespace(stats=stats, latency=latency), delivery=SimpleNamespace(retried=5),
                           consumer=FakeConsumer({0: 25, 1: 0}), progress={0: progress}, _ready=flag)


def parse(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_metrics_export_the_pipeline_families() -> None:
    status, media, body = MetricsServer(Settings(), fake_worker()).answer("GET", "/metrics")
    assert status == 200 and media.startswith("text/plain")
    found = parse(body)
    names = {name for name, _ in found}
    for family in WORKER_FAMILIES:
        assert any(n == family or n.startswith(family + "_") for n in names), family
    assert found[("eventstream_pipeline_records_total", (("outcome", "routed"),))] == 40
    assert found[("eventstream_pipeline_records_total", (("outcome", "dead_lettered"),))] == 3
    assert found[("eventstream_pipeline_records_total", (("outcome", "retried"),))] == 5
    assert found[("eventstream_dlq_records_total", (("stage", "validate"),))] == 0  # every stage, from the start
    assert found[("eventstream_worker_lag_records", (("partition", "0"),))] == 15  # high watermark 25, done to 10
    assert found[("eventstream_worker_assigned_partitions", ())] == 2
    assert found[("eventstream_pipeline_latency_seconds_count", ())] == 1


def test_readyz_follows_the_dedup_replay() -> None:
    assert MetricsServer(Settings(), fake_worker(ready=True)).answer("GET", "/readyz")[0] == 200
    assert MetricsServer(Settings(), fake_worker(ready=False)).answer("GET", "/readyz")[0] == 503
    assert MetricsServer(Settings(), fake_worker()).answer("GET", "/healthz")[0] == 200
    assert MetricsServer(Settings(), fake_worker()).answer("POST", "/metrics")[0] == 405
    assert MetricsServer(Settings(), fake_worker()).answer("GET", "/other")[0] == 404


async def test_server_answers_http_on_its_port_and_a_taken_port_is_only_logged() -> None:
    first = MetricsServer(Settings(worker_metrics_port=0), fake_worker())
    await first.start()
    assert first._server is None  # port 0: off
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    taken = MetricsServer(Settings(worker_metrics_port=port), fake_worker())
    await taken.start()  # logs a warning, does not raise
    assert taken._server is None
    server.close()
    await server.wait_closed()
    async with MetricsServer(Settings(worker_metrics_port=port), fake_worker()):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'{"status":"ok"}')
