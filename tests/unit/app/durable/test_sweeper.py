"""The connection-expiry sweeper keeps running when one sweep fails in a way it did not expect."""

from __future__ import annotations

import asyncio
from typing import Any

from app.durable.registry import Connections
from streams.settings import Settings
from tests.unit.app.durable.test_registry import FakeGroups, FakeTable, FakeTopics


class FlakyTable(FakeTable):
    """A table whose first write times out as a raw TimeoutError (what the sweeper died of)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def subscribe(self, listener: Any) -> None:
        pass

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        if self.failures:
            self.failures -= 1
            raise TimeoutError
        await super().put(key, value)


class StartedGroups(FakeGroups):
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_a_sweep_that_times_out_is_retried_and_the_idle_connection_still_expires() -> None:
    table, groups = FlakyTable(), StartedGroups()
    table.data["old"] = {"id": "old", "last_seen_at": "2020-01-01T00:00:00Z", "stream": None}
    conns = Connections(Settings(connection_sweep_interval_s=0.01, connection_ttl_s=1), FakeTopics())  # type: ignore[arg-type]
    conns.table, conns.groups = table, groups  # type: ignore[assignment]
    await conns.start()
    try:
        async with asyncio.timeout(5):
            while "old" in table.data:
                await asyncio.sleep(0.02)
        assert table.failures == 0 and conns._sweeper is not None and not conns._sweeper.done()
    finally:
        await conns.stop()
