"""Topic creation over HTTP is bounded: a partition cap and an allowed list of config keys (400 naming them)."""

from __future__ import annotations

import pytest

from streams.errors import LimitExceeded
from streams.kafka.topics import TopicSpec, check_request
from streams.settings import Settings

SETTINGS = Settings(topic_max_partitions=64)


def test_a_topic_within_the_bounds_passes() -> None:
    check_request(TopicSpec(name="t", partitions=64, config={"retention.ms": "1000"}), SETTINGS)


def test_too_many_partitions_are_refused_naming_the_setting() -> None:
    with pytest.raises(LimitExceeded, match="at most 64 partitions .ES_TOPIC_MAX_PARTITIONS., got 65") as refused:
        check_request(TopicSpec(name="t", partitions=65), SETTINGS)
    assert (refused.value.status, refused.value.field) == (400, "partitions")


def test_a_config_key_outside_the_allowed_list_is_refused() -> None:
    with pytest.raises(LimitExceeded, match="message.downconversion.enable cannot be set over HTTP") as refused:
        check_request(TopicSpec(name="t", config={"message.downconversion.enable": "true"}), SETTINGS)
    assert refused.value.field == "config"


def test_default_partitions_cannot_exceed_the_cap() -> None:
    with pytest.raises(ValueError, match="default_partitions"):
        Settings(default_partitions=10, topic_max_partitions=5)
