"""The one lifespan: components start in dependency order in the background, retry while Kafka is away,
and close in reverse; fakes record the order, so no broker is needed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI

from app import lifespan as edge
from app.lifespan import Services, edge_lifespan
from streams.errors import BrokerUnavailable
from streams.settings import Settings

ORDER = ["registry", "topics", "producer", "connections", "endpoints", "hub", "presence", "control", "dead_letters"]


class Fake:
    """A long-lived component that records start/stop in a shared log; `failures` starts fail first."""

    def __init__(self, name: str, log: list[str], failures: int = 0) -> None:
        self.name, self.log, self.failures = name, log, failures

    async def start(self) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable(f"{self.name}: Kafka did not answer")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    async def ensure(self, topic: str) -> None:
        self.log.append(f"ensure {topic}")

    async def __aenter__(self) -> Fake:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@pytest.fixture
def make_services() -> Any:
    """Return a factory of Services whose components are fakes sharing one log."""
    def make(settings: Settings | None = None, **failures: int) -> tuple[Services, list[str]]:
        services, log = Services(settings or Settings()), []
        for name in ORDER:
            setattr(services, name, Fake(name, log, failures.get(name, 0)))
        return services, log

    return make


@pytest.fixture
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make the connect backoff instant and return the delays it asked for."""
    delays: list[float] = []
    real = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        delays.append(delay)
        return await real(0, *args)

    monkeypatch.setattr(edge.asyncio, "sleep", sleep)
    return delays


async def test_components_start_in_dependency_order_and_stop_in_reverse(make_services: Any) -> None:
    services, log = make_services()
    async with services:
        await services.wait_ready(5)
        assert services.last_error is None
        started = list(log)
    s = services.settings
    assert started == ["start registry", "start topics", f"ensure {s.ingress_topic}", f"ensure {s.dlq_topic}",
                       f"ensure {s.default_topic}", "start producer", "start connections", "start endpoints",
                       "start hub", "start presence", "start control", "start dead_letters"]
    assert log[len(started):] == [f"stop {name}" for name in reversed(ORDER)]


async def test_failed_start_closes_what_started_and_retries_with_backoff(make_services: Any,
                                                                         fast_sleep: list[float]) -> None:
    services, log = make_services(connections=2)
    async with services:
        await services.wait_ready(5)
    s = services.settings
    opened = ["start registry", "start topics", f"ensure {s.ingress_topic}", f"ensure {s.dlq_topic}",
              f"ensure {s.default_topic}", "start producer"]
    failed_try = [*opened, "stop producer", "stop topics", "stop registry"]
    assert log == [*failed_try, *failed_try, *opened, "start connections", "start endpoints", "start hub",
                   "start presence", "start control", "start dead_letters",
                   *(f"stop {name}" for name in reversed(ORDER))]
    assert fast_sleep == [0.5, 1.0]


async def test_readiness_names_the_reason_while_kafka_is_away(make_services: Any, fast_sleep: list[float]) -> None:
    services, log = make_services(producer=10**6)
    async with services:
        for _ in range(20):
            await asyncio.sleep(0)
        assert not services.ready.is_set()
        assert "is not reachable: producer: Kafka did not answer" in (services.last_error or "")
        with pytest.raises(BrokerUnavailable, match="producer: Kafka did not answer"):
            await services.wait_ready(0.01)
    assert "start hub" not in log
    assert log[-2:] == ["stop topics", "stop registry"]


async def test_shutdown_while_connecting_closes_the_components_started(make_services: Any) -> None:
    services, log = make_services()
    gate = asyncio.Event()
    producer = services.producer

    async def slow_start() -> None:
        await gate.wait()  # never set: shutdown arrives first

    producer.start = slow_start
    async with services:
        for _ in range(20):
            await asyncio.sleep(0)
    assert log[-2:] == ["stop topics", "stop registry"]
    assert "stop producer" not in log


async def test_stop_twice_is_harmless(make_services: Any) -> None:
    services, log = make_services()
    await services.start()
    await services.wait_ready(5)
    await services.stop()
    stopped = len(log)
    await services.stop()
    assert len(log) == stopped and not services.ready.is_set()


async def test_edge_lifespan_exposes_the_components_and_ends_streams_on_signals(
        make_services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    services, log = make_services()
    monkeypatch.setattr(edge, "Services", lambda settings: services)
    watched: list[Any] = []
    monkeypatch.setattr(edge, "close_on_exit_signals", watched.append)
    monkeypatch.setattr(edge, "KafkaWatch", lambda settings: Fake("watch", log))
    app = FastAPI()
    async with edge_lifespan(Settings())(app):
        await services.wait_ready(5)
        assert app.state.services is services
        assert (app.state.registry, app.state.hub, app.state.dead_letters) == (
            services.registry, services.hub, services.dead_letters)
        assert watched == [services.hub] and app.state.watch.name == "watch"
    assert "start watch" in log and log.index("stop watch") < log.index("stop dead_letters")
    assert log[-1] == "stop registry"
