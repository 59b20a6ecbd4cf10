"""Unit fixtures: no broker, a hub with a fake tail and pool, and a factory of connected subscribers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.fanout.filters import CompiledFilter, EventFilter
from app.fanout.hub import Hub
from app.fanout.subscribers import Subscriber
from app.fanout.tail import TailReader
from app.sse.writer import Connection
from streams.settings import Settings
from tests.unit.fakes import TOPIC, FakePool, FakeServer


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point Kafka clients at a port nothing listens on, so a unit test that reaches a real broker fails
    here as it would on a machine without one, instead of passing against whatever broker happens to run."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")


@pytest.fixture
def hub() -> Hub:
    """Return a hub with a fake two-partition tail on TOPIC and a recording catch-up pool."""
    hub = Hub(Settings(stream_slow_client_timeout_s=5), registry=None, topics=None)  # type: ignore[arg-type]
    hub.tails[TOPIC] = TailReader(hub.settings, TOPIC, 2, hub.decoder, hub._dispatch)
    hub.catchup = FakePool()  # type: ignore[assignment]
    return hub


@pytest.fixture
def connect(hub: Hub) -> Callable[..., tuple[Subscriber, FakeServer]]:
    """Return a factory that opens a stream on the hub (live, or from `start`) over a FakeServer."""
    def make(spec: dict[str, Any] | None = None, *, max_buffer: int = 100, start: Any = None,
             heartbeat_s: float = 15.0) -> tuple[Subscriber, FakeServer]:
        flt = CompiledFilter(EventFilter.model_validate({"topics": [TOPIC], **(spec or {})}), [TOPIC])
        group = hub.join(flt)
        server = FakeServer()
        sub = hub.open(group, Connection(server.send, max_buffer), heartbeat_s, start)
        return sub, server

    return make


