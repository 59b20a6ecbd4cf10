"""Run long-lived tasks so none dies silently: a failure is logged with its context, the task restarts
with backoff, and one that keeps failing gives up loudly (its owner closes its clients; readiness names it).

    task = supervise("tail-orders", tail.run, context="tailing orders", on_give_up=close_clients)

A run that returns ends the task; cancelling the task stops it. A run that lasted `healthy_s` or longer
before it failed starts the count of failures again, so a task that breaks once a day never gives up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
GIVE_UP_AFTER = 5  # failures in a row, each within `healthy_s` of its start
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_S = 60.0
_given_up: dict[str, str] = {}  # task name -> why it stopped for good (readiness reports these)


def given_up() -> dict[str, str]:
    """Return the supervised tasks that stopped for good, with the reason (for readiness)."""
    return dict(_given_up)


def supervise(name: str, run: Callable[[], Awaitable[None]], *, context: str,
              on_give_up: Callable[[BaseException], None] | None = None, give_up_after: int = GIVE_UP_AFTER,
              first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
              healthy_s: float = HEALTHY_S) -> asyncio.Task[None]:
    """Start `run()` as a task that restarts after an exception and gives up after `give_up_after` in a row."""
    if give_up_after < 1:
        raise ValueError(f"give_up_after must be at least 1, got {give_up_after}")
    _given_up.pop(name, None)  # a new start of a task that gave up before: readiness forgets the old failure

    async def loop() -> None:
        failures, delay = 0, first_backoff_s
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started >= healthy_s:
                    failures, delay = 0, first_backoff_s
                failures += 1
                if failures >= give_up_after:
                    reason = f"{context} failed {failures} times in a row, last: {type(exc).__name__}: {exc}"
                    _given_up[name] = reason
                    log.error("Task %s gave up: %s.", name, reason, exc_info=exc)
                    if on_give_up is not None:
                        on_give_up(exc)
                    return
                log.warning("Task %s (%s) failed (%d in a row), restarting in %.1fs: %s: %s", name, context,
                            failures, delay, type(exc).__name__, exc, exc_info=exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)

    return asyncio.create_task(loop(), name=name)


def forget(name: str) -> None:
    """Drop a task's give-up reason once its owner has replaced or removed it."""
    _given_up.pop(name, None)
