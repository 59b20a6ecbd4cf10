"""Deduplication through a real worker: within and after the window, counted, expired ids tombstoned,
and the table surviving `kill -9` of the worker."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streams.kafka.producer import EventProducer
from streams.settings import Settings
from tests.integration.conftest import Proc
from tests.integration.pipeline_helpers import (
    RawWriter,
    ensure_topics,
    event,
    header,
    ids,
    pipeline_settings,
    records_of,
    settle,
    start_worker,
    wait_log,
    wait_records,
)

pytestmark = pytest.mark.integration
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
async def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proc]:
    """A worker with a one-hour window; the test reads its settings from `worker.extra`."""
    tmp = tmp_path_factory.mktemp("dedup")
    settings = pipeline_settings(kafka_bootstrap, tmp, dedup_window_s=3600, worker_stats_interval_s=1.0)
    await ensure_topics(settings)
    proc = start_worker(settings, tmp)
    proc.extra["settings"] = settings
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


async def default_ids(settings: Settings, prefix: str) -> list[str]:
    return sorted(i for i in ids(await records_of(settings, settings.default_topic)).elements()
                  if i.startswith(prefix))


async def test_same_event_published_twice_is_forwarded_once(worker: Proc) -> None:
    settings: Settings = worker.extra["settings"]
    async with EventProducer(settings) as producer:
        await producer.publish(event("twice-1"))
        await producer.publish(event("twice-1", data={"i": "resent"}))
        await producer.publish(event("twice-2"))
    await wait_records(settings, settings.default_topic, 2,
                       keep=lambda r: (header(r, "es-id") or b"").startswith(b"e-twice-"))
    assert await settle(lambda: default_ids(settings, "e-twice-")) == ["e-twice-1", "e-twice-2"]


async def test_event_without_subject_published_twice_is_forwarded_once(worker: Proc) -> None:
    settings: Settings = worker.extra["settings"]
    async with EventProducer(settings) as producer:
        for _ in range(4):
            await producer.publish(event("nosubject-1", subject=None))
        await producer.publish(event("nosubject-end", subject=None))
    await wait_records(settings, settings.default_topic, 1, keep=lambda r: header(r, "es-id") == b"e-nosubject-end")
    assert await settle(lambda: default_ids(settings, "e-nosubject-1")) == ["e-nosubject-1"]


async def test_same_id_is_forwarded_again_after_the_window(worker: Proc) -> None:
    settings: Settings = worker.extra["settings"]
    now = int(time.time() * 1000)
    async with RawWriter(settings) as raw:
        value = raw.encode(event("window-1"))
        await raw.send(value, timestamp_ms=now - 2 * HOUR_MS)
        await raw.send(value, timestamp_ms=now - 2 * HOUR_MS + 60_000)  # within the window of the first
        await raw.send(value, timestamp_ms=now)  # two hours later: outside it
    await wait_records(settings, settings.default_topic, 2, keep=lambda r: header(r, "es-id") == b"e-window-1")
    found = [r for r in await settle(lambda: records_of(settings, settings.default_topic))
             if header(r, "es-id") == b"e-window-1"]
    assert [int(header(r, "es-ingress-time")) for r in found] == [now - 2 * HOUR_MS, now]


async def test_dropped_duplicates_are_counted(worker: Proc) -> None:
    settings: Settings = worker.extra["settings"]
    async with EventProducer(settings) as producer:
        await producer.publish(event("counted-1"))
        await producer.publish(event("counted-1"))
    await wait_records(settings, settings.default_topic, 1, keep=lambda r: header(r, "es-id") == b"e-counted-1")
    at = len(worker.log())
    line_end = await wait_log(worker, "duplicates dropped", after=at)
    line = worker.log()[:line_end].rsplit("Pipeline: ", 1)[1]
    assert int(line.split(" duplicates dropped")[0].rsplit(", ", 1)[1]) >= 1


async def test_expired_ids_are_dropped_with_a_changelog_tombstone(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka_bootstrap, tmp_path, dedup_window_s=1.0, dedup_sweep_interval_s=0.5)
    await ensure_topics(settings)
    proc = start_worker(settings, tmp_path)
    try:
        async with EventProducer(settings) as producer:
            await producer.publish(event("expire-1"))
        changelog = f"{settings.worker_app_id}-dedup-changelog"
        entries = await wait_records(settings, changelog, 2, timeout=30, keep=lambda r: r.key == b"e-expire-1")
        assert entries[0].value is not None and entries[-1].value is None
        async with EventProducer(settings) as producer:  # forgotten: the same id goes through again
            await producer.publish(event("expire-1"))
        await wait_records(settings, settings.default_topic, 2, keep=lambda r: header(r, "es-id") == b"e-expire-1")
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


async def test_dedup_table_survives_kill_9_of_the_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka_bootstrap, tmp_path)
    await ensure_topics(settings)
    proc = start_worker(settings, tmp_path)
    events = [event(f"k9-{i}", subject=f"s-{i % 5}") for i in range(60)]
    try:
        async with EventProducer(settings) as producer:
            await producer.publish_batch(events)
            await wait_records(settings, settings.default_topic, 60)
            proc.stop(signal.SIGKILL)
            proc = start_worker(settings, tmp_path, "restarted")
            await producer.publish_batch(events)  # the same ids again, as new records
            await producer.publish(event("k9-after", subject="s-0"))
            await wait_records(settings, settings.default_topic, 1, timeout=60,
                               keep=lambda r: header(r, "es-id") == b"e-k9-after")
        counts = ids(await settle(lambda: records_of(settings, settings.default_topic)))
        assert sorted(counts) == sorted([e["id"] for e in events] + ["e-k9-after"])
        assert set(counts.values()) == {1}
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
