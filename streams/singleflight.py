"""One call in flight per key: concurrent callers with the same key share its result (or its error).

The producer's first publishes to a topic each need the topic's metadata and the envelope's schema id;
32 requests arriving at once would otherwise repeat a whole-cluster metadata read and queue 32 registry
round trips behind one lock (6.5 s before the first answer, measured at 4,700 topics)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Run `make(key)` at most once at a time per key; a finished call is forgotten (the next one runs again)."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, make: Callable[[K], Awaitable[V]]) -> V:
        """Return `await make(key)`, joining the call already in flight for `key` if there is one."""
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = asyncio.ensure_future(make(key))
            call.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(call)  # one caller giving up does not cancel the call for the others

    def _forget(self, key: K, done: asyncio.Future[V]) -> None:
        if self._calls.get(key) is done:
            del self._calls[key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have gone, and nobody needs a warning then

    def __len__(self) -> int:
        return len(self._calls)
