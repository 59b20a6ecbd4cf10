"""A real browser (Debian's headless Chromium via Playwright) reads a stream with EventSource and
survives a kill -9 and restart of the edge by its own reconnect, with no gap and no duplicate.

The page is answered by Playwright at the edge's own origin (`page.route`), so EventSource talks to
the edge same-origin, exactly as a page served by the edge would; no CORS is involved.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka.producer import EventProducer
from tests.auth_helpers import ADMIN_TOKEN
from tests.integration.browser_helpers import chromium, wait_until
from tests.integration.stream_helpers import assert_exact, private_settings, publish_seq, start_edge

pytestmark = pytest.mark.integration
PAGE = """<!doctype html><html><body><script>
window.received = []; window.ids = []; window.opens = 0; window.errors = 0;
const es = new EventSource("/api/v1/events/stream?filter=" + encodeURIComponent(FILTER));
es.onopen = () => { window.opens += 1; };
es.onerror = () => { window.errors += 1; };
es.addEventListener("test.seq", (e) => {
  window.received.push(JSON.parse(e.data).data.seq);
  window.ids.push(e.lastEventId);
});
window.es = es;
</script></body></html>"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Return a headless Chromium, or skip when Debian's chromium or Playwright is missing."""
    async with chromium() as browser:
        yield browser


async def test_eventsource_survives_an_edge_restart_without_gap(browser: Any, kafka_bootstrap: str,
                                                                 tmp_path: Path, new_topic) -> None:
    settings = private_settings(kafka_bootstrap, stream_retry_ms=300)
    edge = start_edge(settings, tmp_path)
    port = int(edge.url.rsplit(":", 1)[1])
    topic = await new_topic()
    html = PAGE.replace("FILTER", orjson.dumps(orjson.dumps({"topics": [topic]}).decode()).decode())
    context = await browser.new_context()  # EventSource sends no headers: the es_token cookie carries the token
    await context.add_cookies([{"name": "es_token", "value": ADMIN_TOKEN, "url": edge.url}])
    page = await context.new_page()
    await page.route(f"{edge.url}/stream-test", lambda route: route.fulfill(body=html, content_type="text/html"))
    try:
        async with EventProducer(settings, linger_ms=0) as producer:
            await page.goto(f"{edge.url}/stream-test")
            await wait_until(page, "window.opens === 1")
            await publish_seq(producer, topic, 0, 10)
            await wait_until(page, "window.received.length >= 10")
            edge.stop(signal.SIGKILL)
            await wait_until(page, "window.errors >= 1")  # the browser saw the connection drop
            await publish_seq(producer, topic, 10, 15)
            edge = start_edge(settings, tmp_path, port=port)
            await wait_until(page, "window.opens >= 2")  # EventSource reconnected by itself
            await publish_seq(producer, topic, 25, 5)
            await wait_until(page, "window.received.length >= 30")
            await asyncio.sleep(0.3)
        received = await page.evaluate("window.received")
        assert_exact(received, range(30))
        assert await page.evaluate("window.es.readyState") == 1  # OPEN
        assert len(set(await page.evaluate("window.ids"))) == 30
    finally:
        await page.close()
        edge.stop()
