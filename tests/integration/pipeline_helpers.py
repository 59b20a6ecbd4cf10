"""Helpers for the stream-worker tests: private settings and rules, worker processes, reading outputs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from streams.envelope import Event
from streams.kafka.topics import TopicManager
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings
from tests.conftest import unique
from tests.integration.conftest import Proc, settings_env, start_process
from tests.kafka_utils import read_all

READY = "Dedup table ready"  # what the worker logs once it owns its partitions and can route (streams/worker/app.py)

def pipeline_settings(kafka_bootstrap: str, tmp: Path, rules: str = "version: 1\nrules: []\n",
                      **overrides: Any) -> Settings:
    """Return Settings with private topics and a rules file in `tmp`; `{p}` in `rules` is the topic prefix."""
    base = unique("t")
    routes = tmp / f"routes-{base}.yaml"
    routes.write_text(rules.replace("{p}", base))
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": base, "ingress_topic": f"{base}.ingress",
        "dlq_topic": f"{base}.dlq", "default_topic": f"{base}.events", "schemas_topic": f"{base}._schemas",
        "routes_file": routes, "worker_data_dir": tmp / "worker-data", "worker_session_timeout_s": 6.0,
        "worker_commit_interval_s": 0.5, "worker_stats_interval_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def start_worker(settings: Settings, log_dir: Path, name: str = "worker") -> Proc:
    """Start `python -m streams.worker` for `settings`, logging to a file in `log_dir`."""
    return start_process(["-m", "streams.worker"], settings_env(settings), log_dir / f"{name}-{unique('w')}.log")


async def wait_log(proc: Proc, text: str, timeout: float = 60, after: int = 0) -> int:
    """Wait until the process log shows `text` (past character `after`); return where it ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.log()
        at = log.find(text, after)
        if at >= 0:
            return at + len(text)
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited with {proc.popen.returncode}:\n{log[-4000:]}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker log did not show {text!r} within {timeout}s:\n{proc.log()[-4000:]}")


async def ensure_topics(settings: Settings, *names: str, **spec: Any) -> None:
    """Create topics (the ingress topic by default) if they do not exist."""
    async with TopicManager(settings) as topics:
        for name in names or (settings.ingress_topic,):
            await topics.ensure(name, **spec)


async def records_of(settings: Settings, topic: str) -> list[ConsumerRecord]:
    """Return every record of a topic, or [] when the topic does not exist yet."""
    try:
        return await read_all(settings.kafka_bootstrap_servers, topic)
    except AssertionError:  # aiokafka: no partitions assigned (topic missing)
        return []


async def wait_records(settings: Settings, topic: str, count: int, timeout: float = 40,
                       keep: Callable[[ConsumerRecord], bool] = lambda r: True) -> list[ConsumerRecord]:
    """Wait until `topic` holds at least `count` records that `keep` accepts; return those."""
    deadline = time.monotonic() + timeout
    found: list[ConsumerRecord] = []
    while time.monotonic() < deadline:
        found = [r for r in await records_of(settings, topic) if keep(r)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"{topic} holds {len(found)} of {count} expected records after {timeout}s")


async def settle(check: Callable[[], Awaitable[Any]], seconds: float = 2.0) -> Any:
    """Run `check` again after `seconds`, to see that nothing more arrives."""
    await asyncio.sleep(seconds)
    return await check()


def header(record: ConsumerRecord, name: str) -> bytes | None:
    """Return one header of a consumed record."""
    return next((v for k, v in record.headers or () if k == name), None)


def ids(records: list[ConsumerRecord]) -> Counter[str]:
    """Count forwarded records per event id (header es-id)."""
    return Counter((header(r, "es-id") or b"").decode() for r in records)


def event(i: int | str, **fields: Any) -> dict[str, Any]:
    """Return a small event with id `e-<i>`."""
    return {"id": f"e-{i}", "source": "/test", "type": "test.tick", "subject": "s", "data": {"i": i}, **fields}


class RawWriter:
    """Writes straight to Kafka (no edge): framed Avro of any record, or any bytes, with chosen timestamps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry(settings)
        self.codec = AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", self.registry)
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")

    async def __aenter__(self) -> RawWriter:
        await self.registry.start()
        self.codec.bind(await self.registry.register(f"{self.settings.ingress_topic}-value", self.codec.schema_text))
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.registry.stop()

    def encode(self, raw: dict[str, Any]) -> bytes:
        """Return framed Avro for an event dict, without the edge's validation (fields may break the rules)."""
        record = Event.model_construct(**{**Event(source="/x", type="x").model_dump(), **raw}).to_record()
        return self.codec.encode(record)

    async def send(self, value: bytes | None, key: bytes | None = b"s", *, timestamp_ms: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None, topic: str | None = None,
                   partition: int | None = None) -> Any:
        """Write one record and return its metadata."""
        return await self.producer.send_and_wait(topic or self.settings.ingress_topic, value, key=key,
                                                 timestamp_ms=timestamp_ms, headers=headers, partition=partition)
