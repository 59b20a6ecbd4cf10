"""Supervised tasks: a failure is logged and the task restarts with backoff; one that keeps failing gives up
loudly, tells its owner and readiness; a run that returns or a cancel ends it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams import supervise as supervise_module
from streams.supervise import given_up, supervise


async def test_a_failing_task_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def run() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")

    with caplog.at_level(logging.WARNING, "streams.supervise"):
        await supervise("t-restart", run, context="testing restarts", first_backoff_s=0.01)
    assert runs == [0, 1, 2] and "t-restart" not in given_up()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "Task t-restart (testing restarts) failed (1 in a row), restarting in 0.0s",
        "Task t-restart (testing restarts) failed (2 in a row), restarting in 0.0s"]


async def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(supervise_module.asyncio, "sleep", fake_sleep)

    async def run() -> None:
        raise RuntimeError("always")

    await supervise("t-backoff", run, context="x", first_backoff_s=1, max_backoff_s=4, give_up_after=5)
    assert slept == [1, 2, 4, 4]


async def test_a_task_that_keeps_failing_gives_up_tells_its_owner_and_readiness() -> None:
    told: list[BaseException] = []

    async def run() -> None:
        raise ValueError("cannot recover")

    await supervise("t-give-up", run, context="reading x", on_give_up=told.append, give_up_after=2,
                    first_backoff_s=0.01)
    assert [str(e) for e in told] == ["cannot recover"]
    assert given_up()["t-give-up"] == "reading x failed 2 times in a row, last: ValueError: cannot recover"

    async def fine() -> None:
        pass

    await supervise("t-give-up", fine, context="reading x")  # started again: readiness forgets the old failure
    assert "t-give-up" not in given_up()


async def test_a_run_that_lasted_long_enough_starts_the_count_again() -> None:
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs < 6:
            raise RuntimeError("once in a while")

    await supervise("t-healthy", run, context="x", give_up_after=2, first_backoff_s=0.001, healthy_s=0)
    assert runs == 6 and "t-healthy" not in given_up()


async def test_cancel_stops_the_task() -> None:
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = supervise("t-cancel", run, context="x")
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "t-cancel" not in given_up()
