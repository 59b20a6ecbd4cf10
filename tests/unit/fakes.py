"""Stand-ins for the server side of a connection and for the catch-up pool, shared by unit tests."""

from __future__ import annotations

import asyncio
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
