"""SingleFlight: one call per key in flight, shared by its callers, results and errors alike, then forgotten."""

from __future__ import annotations

import asyncio

import pytest

from streams.singleflight import SingleFlight


async def test_callers_of_one_key_share_one_call_and_other_keys_run_their_own() -> None:
    calls: list[str] = []

    async def make(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.01)
        return key.upper()

    flight: SingleFlight[str, str] = SingleFlight()
    results = await asyncio.gather(*(flight.run(k, make) for k in ["a", "a", "b", "a", "b"]))
    assert results == ["A", "A", "B", "A", "B"] and sorted(calls) == ["a", "b"]
    assert len(flight) == 0  # finished calls are forgotten
    await flight.run("a", make)
    assert calls.count("a") == 2


async def test_an_error_reaches_every_caller_and_the_next_call_runs_again() -> None:
    attempts = 0

    async def make(key: str) -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise OSError("away")
        return attempts

    flight: SingleFlight[str, int] = SingleFlight()
    results = await asyncio.gather(*(flight.run("k", make) for _ in range(3)), return_exceptions=True)
    assert attempts == 1 and all(isinstance(r, OSError) for r in results)
    assert await flight.run("k", make) == 2


async def test_a_cancelled_caller_leaves_the_call_running_for_the_others() -> None:
    gate = asyncio.Event()

    async def make(key: str) -> str:
        await gate.wait()
        return "done"

    flight: SingleFlight[str, str] = SingleFlight()
    first = asyncio.create_task(flight.run("k", make))
    second = asyncio.create_task(flight.run("k", make))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "done"
