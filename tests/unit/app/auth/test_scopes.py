"""The scope language: admin, subscribe:/publish: globs of the shared matcher; internal topics admin only."""

from __future__ import annotations

import pytest

from app.auth.scopes import is_internal, parse_scope
from streams.settings import Settings

SETTINGS = Settings(topic_prefix="es", ingress_topic="es.ingress", dlq_topic="es.dlq", schemas_topic="_schemas")


@pytest.mark.parametrize(("scope", "action", "topic", "allowed"), [
    ("subscribe:orders.*", "subscribe", "orders.eu", True),
    ("subscribe:orders.*", "publish", "orders.eu", False),
    ("subscribe:orders.*", "subscribe", "billing", False),
    ("publish:billing publish:audit.?", "publish", "audit.1", True),
    ("subscribe:*", "subscribe", "anything", True),
    ("subscribe:*", "subscribe", "es.ingress", False),
    ("subscribe:*", "subscribe", "es.dlq", False),
    ("subscribe:*", "subscribe", "_schemas", False),
    ("subscribe:*", "subscribe", "__consumer_offsets", False),
    ("subscribe:*", "subscribe", "app-table-changelog", False),
    ("subscribe:*", "subscribe", "team.internal.state", False),
    ("admin", "subscribe", "es.ingress", True),
    ("openid profile", "subscribe", "x", False),
    ("", "publish", "x", False),
])
def test_scope_allows_what_it_names_and_no_internal_topic(scope: str, action: str, topic: str, allowed: bool) -> None:
    assert parse_scope(scope).allows(action, topic, SETTINGS) is allowed


def test_strict_parsing_refuses_unknown_entries() -> None:
    with pytest.raises(ValueError, match="unknown scope entry 'subscribe'"):
        parse_scope("subscribe", strict=True)
    assert parse_scope("openid subscribe:a").subscribe == ("a",)


def test_internal_topics_are_the_services_own() -> None:
    assert is_internal("es.internal.dlq-replays", SETTINGS)
    assert not is_internal("orders", SETTINGS)
