"""Topic manager: create, delete, list and describe topics through Kafka's admin API."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field

from streams.errors import (
    BrokerUnavailable,
    InvalidTopicConfig,
    LimitExceeded,
    StreamError,
    TopicExists,
    TopicNotFound,
    TopicProtected,
)
from streams.kafka import clients
from streams.settings import Settings, get_settings

log = logging.getLogger(__name__)
TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# Kafka error codes the manager translates (org.apache.kafka.common.protocol.Errors).
UNKNOWN_TOPIC, TOPIC_EXISTS = 3, 36
INVALID_CONFIG = {37, 38, 39, 40, 41, 42, 44, 87}


class TopicSpec(BaseModel):
    """What a new topic looks like; None means the service default."""

    name: str = Field(pattern=TOPIC_NAME.pattern)
    partitions: int | None = Field(default=None, ge=1, le=10_000)
    replication_factor: int | None = Field(default=None, ge=1, le=32)
    retention_ms: int | None = Field(default=None, ge=-1)
    compression_type: Literal["producer", "uncompressed", "snappy", "lz4", "zstd", "gzip"] | None = None
    cleanup_policy: Literal["delete", "compact", "compact,delete"] | None = None
    config: dict[str, str] = Field(default_factory=dict, description="Any other Kafka topic config.")


def check_request(spec: TopicSpec, settings: Settings) -> None:
    """Refuse (400, naming the limit) a create request over HTTP past the partition cap or with a config
    key outside the allowed list; the service's own topics are not held to these."""
    partitions = spec.partitions or settings.default_partitions
    if partitions > settings.topic_max_partitions:
        raise LimitExceeded(f"a topic may have at most {settings.topic_max_partitions} partitions "
                            f"(ES_TOPIC_MAX_PARTITIONS), got {partitions}", field="partitions")
    allowed = settings.allowed_topic_configs
    refused = sorted(set(spec.config) - allowed)
    if refused:
        raise LimitExceeded(f"topic config {', '.join(refused)} cannot be set over HTTP; allowed keys "
                            f"(ES_TOPIC_ALLOWED_CONFIGS): {', '.join(sorted(allowed))}", field="config")


class TopicManager(clients.AdminSession):
    """Admin operations on topics, with the service's defaults and its internal topics protected."""

    name = "admin"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings or get_settings())

    async def create(self, spec: TopicSpec, *, exist_ok: bool = False) -> dict[str, Any]:
        """Create a topic from `spec` with service defaults filled in; return its description."""
        s = self.settings
        configs = dict(spec.config)
        configs["retention.ms"] = str(spec.retention_ms if spec.retention_ms is not None else s.default_retention_ms)
        if spec.compression_type:
            configs["compression.type"] = spec.compression_type
        if spec.cleanup_policy:
            configs["cleanup.policy"] = spec.cleanup_policy
        new = NewTopic(spec.name, spec.partitions or s.default_partitions,
                       spec.replication_factor or s.default_replication_factor, topic_configs=configs)
        try:
            resp = await self._client().create_topics([new])
        except KafkaError as exc:
            raise BrokerUnavailable(f"creating topic {spec.name!r} failed: {exc}") from exc
        for err in resp.to_object()["topic_errors"]:
            code, msg = err["error_code"], err["error_message"] or ""
            if code == TOPIC_EXISTS:
                if exist_ok:
                    break
                raise TopicExists(f"topic {spec.name!r} already exists")
            if code in INVALID_CONFIG:
                raise InvalidTopicConfig(f"topic {spec.name!r}: {msg}")
            if code:
                raise StreamError(f"creating topic {spec.name!r} failed with Kafka error {code}: {msg}")
        else:
            log.info("Created topic %s.", spec.name)
        return await self.describe(spec.name, wait=True)

    async def ensure(self, name: str, **spec: Any) -> None:
        """Create the topic unless it exists (used for internal and destination topics)."""
        if name not in await self.list():
            await self.create(TopicSpec(name=name, **spec), exist_ok=True)

    async def delete(self, name: str, *, force: bool = False) -> None:
        """Delete a topic; internal topics are refused unless `force`."""
        if not force and self.settings.is_internal(name):
            raise TopicProtected(f"topic {name!r} is internal to the service and cannot be deleted")
        try:
            resp = await self._client().delete_topics([name])
        except KafkaError as exc:
            raise BrokerUnavailable(f"deleting topic {name!r} failed: {exc}") from exc
        for err in resp.to_object()["topic_error_codes"]:
            if err["error_code"] == UNKNOWN_TOPIC:
                raise TopicNotFound(f"topic {name!r} does not exist")
            if err["error_code"]:
                raise StreamError(f"deleting topic {name!r} failed with Kafka error {err['error_code']}")
        # Deletion reaches metadata a moment later; wait so a list or describe right after agrees.
        for _ in range(50):
            if name not in await self.list():
                break
            await asyncio.sleep(0.1)
        log.info("Deleted topic %s.", name)

    async def list(self) -> list[str]:
        """Return all topic names, sorted."""
        try:
            return sorted(await self._client().list_topics())
        except KafkaError as exc:
            raise BrokerUnavailable(f"listing topics failed: {exc}") from exc

    async def broker_count(self) -> int:
        """Return how many brokers the cluster has."""
        try:
            return len((await self._client().describe_cluster())["brokers"])
        except KafkaError as exc:
            raise BrokerUnavailable(f"describing the cluster failed: {exc}") from exc

    async def partitions(self, name: str) -> builtins.list[int]:
        """Return the partition numbers of a topic, raising TopicNotFound."""
        meta = await self._metadata(name)
        return sorted(p["partition"] for p in meta["partitions"])

    async def _metadata(self, name: str) -> dict[str, Any]:
        try:
            [meta] = await self._client().describe_topics([name])
        except KafkaError as exc:
            raise BrokerUnavailable(f"describing topic {name!r} failed: {exc}") from exc
        if meta["error_code"] == UNKNOWN_TOPIC or not meta["partitions"]:
            raise TopicNotFound(f"topic {name!r} does not exist")
        return meta

    async def describe(self, name: str, *, wait: bool = False) -> dict[str, Any]:
        """Return partitions (leader, replicas, isr, low/high watermarks) and non-default config."""
        for attempt in range(50 if wait else 1):
            try:
                meta = await self._metadata(name)
                break
            except TopicNotFound:
                if attempt == (49 if wait else 0):
                    raise
                await asyncio.sleep(0.1)
        tps = [TopicPartition(name, p["partition"]) for p in meta["partitions"]]
        try:
            low = await self._reader().beginning_offsets(tps)
            high = await self._reader().end_offsets(tps)
            [cfg] = await self._client().describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        except KafkaError as exc:
            raise BrokerUnavailable(f"describing topic {name!r} failed: {exc}") from exc
        entries = cfg.to_object()["resources"][0]["config_entries"]
        config = {e["config_names"]: e["config_value"] for e in entries if not e["is_sensitive"]}
        return {
            "name": name,
            "internal": self.settings.is_internal(name),
            "partitions": [
                {"partition": p["partition"], "leader": p["leader"], "replicas": p["replicas"], "isr": p["isr"],
                 "low_watermark": low[TopicPartition(name, p["partition"])],
                 "high_watermark": high[TopicPartition(name, p["partition"])]}
                for p in sorted(meta["partitions"], key=lambda p: p["partition"])
            ],
            "replication_factor": len(meta["partitions"][0]["replicas"]),
            "config": {k: config[k] for k in sorted(config)},
        }
