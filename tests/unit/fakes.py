"""Stand-ins for the server side of a connection, the catch-up pool and Kafka consumers, shared by unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from app.fanout.subscribers import Subscriber

TOPIC = "t"


class FakeServer:
    """An ASGI `send` whose transport can be paused like uvicorn's (send waits for a drain)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ended = False
        self.writable = asyncio.Event()
        self.writable.set()

    async def send(self, message: dict[str, Any]) -> None:
        if not self.writable.is_set():
            await self.writable.wait()
        self.bodies.append(message["body"])
        self.ended = not message["more_body"]


async def settle() -> None:
    """Let pending callbacks and tasks run a few loop turns."""
    for _ in range(5):
        await asyncio.sleep(0)


class FakePool:
    """Stands in for the catch-up pool: records who was queued."""

    def __init__(self) -> None:
        self.submitted: list[Subscriber] = []
        self.waiting = self.jobs_run = 0

    def submit(self, sub: Subscriber) -> None:
        self.submitted.append(sub)

    async def stop(self) -> None:
        pass


def event(offset: int, type_: str = "a.b", partition: int = 0) -> dict[str, Any]:
    """Return an event as the decoder would, at `offset` of TOPIC."""
    return {"type": type_, "source": "/s", "id": f"e{offset}", "data": {"n": offset}, "topic": TOPIC,
            "partition": partition, "offset": offset}


class FakeTransport:
    """Records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True


class FakeFlow:
    """uvicorn's flow control: `write_paused` while the client does not read."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    @property
    def write_paused(self) -> bool:
        return not self.writable.is_set()

    async def drain(self) -> None:
        await self.writable.wait()


class FakeCycle:
    """The parts of uvicorn's RequestResponseCycle the direct write path looks at."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.flow = FakeFlow()
        self.disconnected = False
        self.chunked_encoding = True
        self.response_complete = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.flow.write_paused:
            await self.flow.drain()
        body = message.get("body", b"")
        self.transport.write(b"%x\r\n%b\r\n" % (len(body), body) if body else b"")
        if not message.get("more_body"):
            self.transport.write(b"0\r\n\r\n")
            self.response_complete = True


def pass_through(send: Any) -> Any:
    """Wrap `send` the way Starlette's middleware does (a closure over `send`)."""
    async def sender(message: dict[str, Any]) -> None:
        await send(message)
    return sender


def place_tail(hub: Any, pos: list[int], replay_size: int = 0) -> None:
    """Put the fake tail at `pos` with an empty replay buffer of `replay_size` records there."""
    from app.fanout.replay import ReplayBuffer

    tail = hub.tails[TOPIC]
    tail.pos = list(pos)
    tail.replay = ReplayBuffer(len(pos), replay_size, pos)


def record(tp: Any, offset: int, value: Any, timestamp: int = 0, headers: Any = ()) -> Any:
    """Return a consumer record of partition `tp` at `offset` whose value is `value`."""
    from types import SimpleNamespace

    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, value=value, timestamp=timestamp,
                           key=None, headers=headers)


class FakeDecoder:
    """Decodes a fake record to its value (an event dict, or None for a record that is not one)."""

    async def decode(self, rec: Any) -> dict[str, Any] | None:
        return rec.value  # type: ignore[no-any-return]


class FakeLogConsumer:
    """A group-less aiokafka consumer over an in-memory log: fetches from where it was sought.

    `log` holds each partition's records (offsets may leave gaps, as transaction markers do);
    `ends` may put a partition's end past its last record. `getmany` waits up to its timeout for
    records appended later, like the real one."""

    def __init__(self, log: dict[Any, list[Any]], ends: dict[Any, int] | None = None,
                 begins: dict[Any, int] | None = None) -> None:
        self.log = log
        self.ends = dict(ends or {})
        self.begins = dict(begins or {})
        self.next: dict[Any, int] = {}
        self.started = self.stopped = False
        self.fetches = 0
        self._appended = asyncio.Event()

    def append(self, rec: Any) -> None:
        """Add a record at the end of its partition (as a producer would)."""
        from aiokafka import TopicPartition

        self.log.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        self._appended.set()

    def end(self, tp: Any) -> int:
        records = self.log.get(tp, [])
        return max(self.ends.get(tp, 0), records[-1].offset + 1 if records else 0)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[Any]) -> None:
        self.next = {tp: self.begins.get(tp, 0) for tp in tps}

    def unsubscribe(self) -> None:
        self.next = {}

    def seek(self, tp: Any, offset: int) -> None:
        self.next[tp] = offset

    async def position(self, tp: Any) -> int:
        return self.next[tp]

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.end(tp) for tp in tps}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.begins.get(tp, 0) for tp in tps}

    async def getmany(self, *tps: Any, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.fetches += 1
        before = dict(self.next)
        batch = self._fetch(tps or tuple(self.next), max_records or 500)
        if not batch and timeout_ms and self.next == before:  # nothing to read: wait for an append
            self._appended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._appended.wait(), timeout_ms / 1000)
            batch = self._fetch(tps or tuple(self.next), max_records or 500)
        return batch

    def _fetch(self, tps: tuple[Any, ...], max_records: int) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = {}
        for tp in tps:
            at = self.next[tp]
            records = [r for r in self.log.get(tp, []) if r.offset >= at][:max_records]
            if records:
                batch[tp] = records
                self.next[tp] = records[-1].offset + 1
            elif self.end(tp) > at:
                self.next[tp] = self.end(tp)  # only markers were left: the position moves past them
        return batch
