"""TopicManager against a real broker: create, describe, list, delete and its refusals."""

from __future__ import annotations

import pytest

from streams.errors import InvalidTopicConfig, TopicExists, TopicNotFound, TopicProtected
from streams.kafka.topics import TopicManager, TopicSpec
from tests.conftest import unique

pytestmark = pytest.mark.integration


async def test_create_then_describe_shows_partitions_watermarks_and_config(settings) -> None:
    name = unique("tm")
    async with TopicManager(settings) as topics:
        desc = await topics.create(TopicSpec(name=name, partitions=4, retention_ms=3_600_000,
                                             compression_type="zstd", cleanup_policy="compact"))
        assert [p["partition"] for p in desc["partitions"]] == [0, 1, 2, 3]
        assert all(p["high_watermark"] == 0 for p in desc["partitions"])
        assert desc["config"]["retention.ms"] == "3600000"
        assert desc["config"]["compression.type"] == "zstd"
        assert desc["config"]["cleanup.policy"] == "compact"
        assert name in await topics.list()
        await topics.delete(name)
        assert name not in await topics.list()


async def test_create_existing_topic_raises_topic_exists(settings) -> None:
    name = unique("tm")
    async with TopicManager(settings) as topics:
        await topics.create(TopicSpec(name=name))
        with pytest.raises(TopicExists):
            await topics.create(TopicSpec(name=name))


async def test_replication_factor_above_broker_count_is_invalid_config(settings) -> None:
    async with TopicManager(settings) as topics:
        with pytest.raises(InvalidTopicConfig, match="replicat"):
            await topics.create(TopicSpec(name=unique("tm"), replication_factor=7))


async def test_unknown_kafka_config_value_is_invalid_config(settings) -> None:
    async with TopicManager(settings) as topics:
        with pytest.raises(InvalidTopicConfig, match="segment.bytes"):
            await topics.create(TopicSpec(name=unique("tm"), config={"segment.bytes": "banana"}))


async def test_describe_and_delete_unknown_topic_raise_not_found(settings) -> None:
    async with TopicManager(settings) as topics:
        with pytest.raises(TopicNotFound):
            await topics.describe("nope-" + unique())
        with pytest.raises(TopicNotFound):
            await topics.delete("nope-" + unique())


@pytest.mark.parametrize("which", ["ingress_topic", "dlq_topic", "schemas_topic"])
async def test_internal_topics_cannot_be_deleted(settings, which) -> None:
    async with TopicManager(settings) as topics:
        with pytest.raises(TopicProtected):
            await topics.delete(getattr(settings, which))
        with pytest.raises(TopicProtected):
            await topics.delete("router-dedup-changelog")
