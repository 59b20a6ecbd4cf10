"""Metrics, health and logs of a real edge and worker: the families after traffic, `promtool check
metrics` on both expositions, a real Prometheus scraping both, the health report, the metrics token,
and JSON log lines without credentials."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observe import EDGE_FAMILIES
from streams.settings import Settings
from streams.worker.metrics import WORKER_FAMILIES
from tests.auth_helpers import TEST_SECRET, anonymous, token
from tests.integration.conftest import Proc, free_port
from tests.integration.pipeline_helpers import event, pipeline_settings, start_worker, wait_log
from tests.integration.stream_helpers import SSEClient, start_edge

pytestmark = pytest.mark.integration
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")


def samples(text: str) -> set[str]:
    """Return the sample names of an exposition (with _total, _bucket... as exposed)."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def families(text: str) -> set[str]:
    """Return the family names of an exposition (counters without _total, as the parser names them)."""
    return {family.name for family in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample of an exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def promtool_check(text: str) -> None:
    """Run `promtool check metrics` on an exposition and fail with its complaints."""
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus package)")
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Start a worker (metrics on a free port) and an edge that reads it; stop both at the end."""
    worker_port = free_port()
    settings = pipeline_settings(kafka_bootstrap, tmp_path, worker_metrics_port=worker_port,
                                 worker_metrics_url=f"http://127.0.0.1:{worker_port}/metrics")
    worker = start_worker(settings, tmp_path)
    edge = None
    try:
        edge = start_edge(settings, tmp_path)
        yield {"settings": settings, "edge": edge, "worker": worker,
               "worker_url": f"http://127.0.0.1:{worker_port}"}
    finally:
        if edge is not None:
            edge.stop()
        worker.stop()


async def traffic(edge: Proc, settings: Settings, count: int = 20) -> SSEClient:
    """Open a stream on the default topic, publish `count` events over HTTP and wait until they arrive."""
    client = await SSEClient(edge.url).start()
    assert client.status == 200
    async with httpx.AsyncClient(base_url=edge.url) as http:
        for i in range(count):
            response = await http.post("/api/v1/events", json=event(i))
            assert response.status_code == 202, response.text
        assert (await http.post("/api/v1/events", content=b"{not json")).status_code == 400
    assert len(await client.wait_for(count, timeout=60)) >= count
    return client


async def wait_for(check: Any, timeout: float = 30.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


async def test_edge_and_worker_export_their_families_after_traffic(stack: dict[str, Any]) -> None:
    edge, worker = stack["edge"], stack["worker"]
    await wait_log(worker, "Worker metrics on")
    client = await traffic(edge, stack["settings"])
    try:
        async with httpx.AsyncClient() as http:
            worker_text = await wait_for(lambda: _routed(http, stack["worker_url"]))
            edge_text = await wait_for(lambda: _grouped(http, edge.url))  # the watch samples every 5 s
    finally:
        await client.close()
    exposed = families(edge_text)
    for name in EDGE_FAMILIES:
        assert name.removesuffix("_total") in exposed, f"edge lacks {name}"
    assert value(edge_text, "eventstream_deliveries_total") >= 20
    assert value(edge_text, "eventstream_delivery_latency_seconds_count") >= 20
    assert value(edge_text, "eventstream_published_total", outcome="accepted") == 20
    assert value(edge_text, "eventstream_published_total", outcome="invalid") == 1
    assert value(edge_text, "eventstream_stream_opens_total", outcome="ok") >= 1
    assert value(edge_text, "eventstream_http_requests_total", route="/api/v1/events", method="POST",
                 status="202") == 20
    assert value(edge_text, "eventstream_streams_active", kind="plain") == 1
    assert value(edge_text, "eventstream_kafka_up") == 1
    assert "process_resident_memory_bytes" in samples(edge_text)
    promtool_check(edge_text)
    for name in WORKER_FAMILIES:
        assert name.removesuffix("_total") in families(worker_text), f"worker lacks {name}"
    assert value(worker_text, "eventstream_pipeline_records_total", outcome="routed") == 20
    assert value(worker_text, "eventstream_pipeline_latency_seconds_count") == 20
    assert value(worker_text, "eventstream_worker_assigned_partitions") == 3
    promtool_check(worker_text)


async def _grouped(http: httpx.AsyncClient, edge_url: str) -> str | None:
    text = (await http.get(f"{edge_url}/metrics")).text
    return text if value(text, "eventstream_worker_group_members") >= 1 else None


async def _routed(http: httpx.AsyncClient, worker_url: str) -> str | None:
    text = (await http.get(f"{worker_url}/metrics")).text
    return text if value(text, "eventstream_pipeline_records_total", outcome="routed") >= 20 else None


async def test_worker_answers_healthz_and_readyz(stack: dict[str, Any]) -> None:
    await wait_log(stack["worker"], "Dedup table ready")
    async with httpx.AsyncClient(base_url=stack["worker_url"]) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await wait_for(lambda: _status(http, "/readyz"))) == 200
        assert (await http.get("/nothing")).status_code == 404


async def _status(http: httpx.AsyncClient, path: str) -> int | None:
    status = (await http.get(path)).status_code
    return status if status == 200 else None


async def test_health_reports_every_component_with_the_worker_group(stack: dict[str, Any]) -> None:
    edge = stack["edge"]
    client = await traffic(edge, stack["settings"], count=3)
    try:
        async with httpx.AsyncClient(base_url=edge.url) as http:
            async def grouped() -> dict[str, Any] | None:
                body = (await http.get("/api/v1/health")).json()
                return body if body["components"]["worker_group"].get("members") else None

            report = await wait_for(grouped)
    finally:
        await client.close()
    assert report, "the worker group never showed a member"
    parts = report["components"]
    assert set(parts) == {"kafka", "registry", "tails", "catchup", "worker_group", "dlq"}
    assert parts["kafka"]["status"] == "ok"
    assert parts["registry"]["status"] == "ok"
    assert parts["worker_group"]["status"] == "ok" and parts["worker_group"]["members"] == 1
    [tail] = parts["tails"]["tails"]
    assert tail["topic"] == stack["settings"].default_topic and sum(tail["position"]) >= 3
    assert tail["last_record_age_s"] is not None
    assert parts["catchup"]["max"] == stack["settings"].stream_catchup_readers
    with anonymous():  # any credential may read the report, but one is needed; /metrics is public
        assert httpx.get(f"{edge.url}/api/v1/health").status_code == 401
        assert httpx.get(f"{edge.url}/api/v1/stats/stream").status_code == 401
        assert httpx.get(f"{edge.url}/metrics").status_code == 200
        assert httpx.get(f"{edge.url}/dashboard").status_code == 200
    reader = token("reader", "subscribe:nothing")
    assert httpx.get(f"{edge.url}/api/v1/health", headers={"Authorization": f"Bearer {reader}"}).status_code == 200


async def test_health_names_an_empty_worker_group_as_failed(stack: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=stack["edge"].url) as http:
        async def group(status: str) -> dict[str, Any] | None:
            response = await http.get("/api/v1/health")
            found = response.json()["components"]["worker_group"]
            return {"http": response.status_code, **found} if found["status"] == status else None

        assert await wait_for(lambda: group("ok"), timeout=40), "the worker never showed in the group"
        stack["worker"].stop()
        left = await wait_for(lambda: group("failed"), timeout=40)
    assert left, "the health report never noticed the worker left"
    assert left["http"] == 503 and left["members"] == 0 and "no worker" in left["reason"]


def test_metrics_ask_for_the_token_when_one_is_set(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka_bootstrap, tmp_path, metrics_token="scrape-secret-123")
    edge = start_edge(settings, tmp_path)
    try:
        assert httpx.get(f"{edge.url}/metrics").status_code == 401
        assert httpx.get(f"{edge.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = httpx.get(f"{edge.url}/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
        assert good.status_code == 200 and "eventstream_kafka_up 1.0" in good.text
    finally:
        edge.stop()


async def test_json_logs_are_one_object_per_line_without_credentials(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka_bootstrap, tmp_path, log_format="json", metrics_token="scrape-secret-123")
    edge = start_edge(settings, tmp_path)
    secret = token("log-reader")
    try:
        with anonymous():
            client = await SSEClient(edge.url, params={"access_token": secret}).start()
            assert client.status == 200
            await client.close()
            refused = await SSEClient(edge.url, params={"access_token": "not-a-jwt-secret-456"}).start()
            assert refused.status == 401
            await refused.close()
            httpx.get(f"{edge.url}/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
            httpx.get(f"{edge.url}/metrics", headers={"Authorization": "Bearer wrong-secret-789"})
    finally:
        edge.stop()
    lines = [line for line in edge.log().splitlines() if line.strip()]
    assert len(lines) > 3
    for line in lines:
        record = orjson.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), line
    text = edge.log()
    for credential in (secret, "scrape-secret-123", "not-a-jwt-secret-456", "wrong-secret-789", TEST_SECRET):
        assert credential not in text


def prometheus_config(path: Path, targets: dict[str, str]) -> Path:
    """Write a Prometheus config scraping each job's target every second."""
    jobs = "".join(f"  - job_name: {job}\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{t}']\n"
                   for job, t in targets.items())
    path.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
    return path


async def test_a_real_prometheus_scrapes_edge_and_worker(stack: dict[str, Any], tmp_path: Path) -> None:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (make test installs Debian's prometheus package)")
    edge, worker_url = stack["edge"], stack["worker_url"]
    port = free_port()
    config = prometheus_config(tmp_path / "prometheus.yml", {
        "eventstream-edge": edge.url.removeprefix("http://"), "eventstream-worker": worker_url.removeprefix("http://")})
    prom = start_process_binary([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log")
    client = await traffic(edge, stack["settings"], count=5)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async def scraped() -> list[Any] | None:
                try:
                    body = (await http.get("/api/v1/query", params={"query": "eventstream_deliveries_total"})).json()
                except httpx.HTTPError:
                    return None
                result = body.get("data", {}).get("result", [])
                return result if result and float(result[0]["value"][1]) >= 5 else None

            result = await wait_for(scraped, timeout=60)
            assert result, prom.log()[-3000:]
            assert result[0]["metric"]["job"] == "eventstream-edge"
            # The two jobs are scraped at their own moments: wait until each has been scraped once.
            async def both_up() -> dict[str, str] | None:
                up = (await http.get("/api/v1/query", params={"query": "up"})).json()["data"]["result"]
                jobs = {r["metric"]["job"]: r["value"][1] for r in up}
                return jobs if len(jobs) == 2 else None

            jobs = await wait_for(both_up, timeout=60)
            assert jobs == {"eventstream-edge": "1", "eventstream-worker": "1"}, prom.log()[-3000:]
    finally:
        await client.close()
        prom.stop()


def start_process_binary(args: list[str], log_path: Path) -> Proc:
    """Start a non-Python program, logging to a file."""
    out = open(log_path, "ab")
    return Proc(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), log_path)


