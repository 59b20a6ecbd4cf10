"""Rate limits over HTTP: 429 problem+json with Retry-After and RateLimit fields; a refused publish writes
nothing; with ES_RATE_LIMIT_STORAGE=redis:// two edges share one count (a real redis-server from Debian,
started here on a free port; skipped, saying why, when it is not installed: `make redis`)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.integration.pipeline_helpers import event, records_of
from tests.integration.stream_helpers import SSEClient

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """Start a private redis-server on a free port and return its URL; skip when Debian's redis is missing."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (make redis installs Debian's package)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip(f"redis-server did not start on port {port}")
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def publish(url: str, count: int) -> httpx.Response:
    """Publish a batch of `count` events."""
    return httpx.post(url + "/api/v1/events/batch", json={"events": [event(f"{time.time_ns()}-{i}")
                                                                    for i in range(count)]}, timeout=20)


async def test_publish_past_the_limit_is_429_with_headers_and_writes_nothing(settings_factory: Any,
                                                                            edge_factory: Any) -> None:
    settings = settings_factory(rate_limit_publish="10/minute")
    edge = edge_factory(settings)
    assert publish(edge.url, 8).status_code == 202
    refused = publish(edge.url, 5)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["ratelimit-policy"] == '"publish";q=10;w=60'
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 60 and refused.headers["ratelimit"] == f'"publish";r=2;t={retry}'
    assert len(await records_of(settings, settings.ingress_topic)) == 8  # the refused batch wrote nothing
    assert publish(edge.url, 2).status_code == 202


async def test_open_streams_per_principal_are_capped_and_freed_on_close(settings_factory: Any,
                                                                       edge_factory: Any) -> None:
    edge = edge_factory(settings_factory(max_streams_per_principal=2))
    first, second = await SSEClient(edge.url).start(), await SSEClient(edge.url).start()
    third = httpx.get(edge.url + "/api/v1/events/stream", timeout=10)
    assert third.status_code == 429 and "ES_MAX_STREAMS_PER_PRINCIPAL" in third.json()["detail"]
    assert third.headers["retry-after"] == "5"
    await first.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = await SSEClient(edge.url).start()
        if again.status == 200:
            break
        await again.close()
        await asyncio.sleep(0.2)
    assert again.status == 200
    await again.close()
    await second.close()


async def test_two_edges_share_one_count_in_redis(redis_url: str, settings_factory: Any, edge_factory: Any) -> None:
    settings = settings_factory(rate_limit_publish="6/minute", rate_limit_storage=redis_url)
    one, two = edge_factory(settings), edge_factory(settings)
    assert publish(one.url, 4).status_code == 202
    refused = publish(two.url, 3)  # 4 + 3 > 6 across both edges
    assert refused.status_code == 429 and refused.headers["ratelimit"].startswith('"publish";r=2;')
    assert publish(two.url, 2).status_code == 202
    assert publish(one.url, 1).status_code == 429
