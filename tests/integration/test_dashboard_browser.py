"""The /dashboard page in a real browser (Debian's headless Chromium via Playwright): it loads without a
credential, signs in through its token form (the es_token cookie), its numbers move after events are
published, and its Replay button replays a DLQ entry. The test saves a screenshot and prints its path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth_helpers import ADMIN_TOKEN
from tests.integration.browser_helpers import chromium, wait_until
from tests.integration.conftest import ROOT, Proc, free_port
from tests.integration.pipeline_helpers import event, pipeline_settings, start_worker, wait_log
from tests.integration.stream_helpers import start_edge

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Return a headless Chromium, or skip when Debian's chromium or Playwright is missing."""
    async with chromium() as browser:
        yield browser


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[Any, Proc, Proc]]:
    """Start a worker (metrics on a free port) and an edge reading it, with authentication on."""
    port = free_port()
    settings = pipeline_settings(kafka_bootstrap, tmp_path, worker_metrics_port=port,
                                 worker_metrics_url=f"http://127.0.0.1:{port}/metrics")
    worker = start_worker(settings, tmp_path)
    edge = None
    try:
        edge = start_edge(settings, tmp_path)
        yield settings, edge, worker
    finally:
        if edge is not None:
            edge.stop()
        worker.stop()


async def number(page: Any, element: str) -> float:
    """Return the number an element shows (0 for a dash)."""
    text = (await page.text_content(f"#{element}") or "").replace(",", "").strip()
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return 0.0


async def test_dashboard_signs_in_shows_moving_figures_and_replays_a_dead_letter(
        browser: Any, stack: tuple[Any, Proc, Proc]) -> None:
    settings, edge, worker = stack
    await wait_log(worker, "Dedup table ready")
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        response = await page.goto(f"{edge.url}/dashboard")
        assert response.status == 200  # public: the page holds no data
        await wait_until(page, "!document.getElementById('notice').hidden")  # the stats stream asked for a token
        assert "Sign in" in (await page.text_content("#notice") or "")
        await page.fill("#token", ADMIN_TOKEN)
        await page.click("#token-form button[type=submit]")
        await wait_until(page, "document.getElementById('conn').textContent === 'live'")
        assert any(c["name"] == "es_token" for c in await page.context.cookies())

        # A live tail on the default topic, then traffic: deliveries and publishes must move.
        await wait_until(page, f"[...document.querySelectorAll('#tail-topic option')]"
                               f".some(o => o.value === '{settings.default_topic}')", timeout=30)
        await page.select_option("#tail-topic", settings.default_topic)
        await page.click("#tail-form button[type=submit]")
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=edge.url) as http:
            for i in range(10):
                assert (await http.post("/api/v1/events", json=event(i))).status_code == 202
            dead = await http.post("/api/v1/events", params={"topic": f"{settings.topic_prefix}.internal.x"},
                                   json=event("dead"))
            assert dead.status_code == 202
        await wait_until(page, "document.querySelectorAll('#tail li').length >= 10", timeout=40)
        await wait_until(page, "Number(document.getElementById('deliveries-total').textContent"
                               ".replace(/,/g, '')) >= 10", timeout=20)
        assert await number(page, "publish-total") >= 11
        assert (await page.text_content("#latency-p95") or "").endswith("ms")

        # The dead letter shows up (the page reloads the DLQ every 10 s); Replay writes it back to ingress.
        await page.evaluate("loadDlq()")
        await wait_until(page, "document.querySelectorAll('#dlq button.replay').length >= 1", timeout=40)
        await page.click("#dlq button.replay")
        await wait_until(page, "document.querySelector('#dlq button.replay, #dlq button[disabled]')"
                               " && [...document.querySelectorAll('#dlq button')]"
                               ".some(b => b.textContent === 'replayed 1')", timeout=20)
        await page.evaluate("loadDlq()")
        await wait_until(page, "document.querySelectorAll('#dlq button.replay').length >= 2", timeout=40)

        await wait_until(page, "document.querySelectorAll('#health tbody tr').length === 6")
        await wait_until(page, "document.getElementById('worker-members').textContent === '1'", timeout=20)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})  # a phone
        await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        print(f"\ndashboard screenshots: {shot} and {ARTIFACTS / 'dashboard-phone.png'}")
    finally:
        await page.close()
