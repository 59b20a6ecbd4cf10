"""Helpers for the SSE integration tests: private settings, edge processes, an SSE reader, publishing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from app.sse.framing import SSEMessage, SSEParser
from streams.kafka.producer import EventProducer, Position
from streams.settings import Settings
from tests.auth_helpers import ADMIN_HEADERS
from tests.conftest import unique
from tests.integration.conftest import Proc, free_port, settings_env, start_process, wait_ready

STREAM = "/api/v1/events/stream"


def private_settings(kafka_bootstrap: str, **overrides: Any) -> Settings:
    """Return Settings whose internal topics belong to the caller alone (as `settings_factory` does)."""
    base = unique("t")
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": base, "ingress_topic": f"{base}.ingress",
        "dlq_topic": f"{base}.dlq", "default_topic": f"{base}.events", "schemas_topic": f"{base}._schemas",
        "stream_tail_idle_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def start_edge(settings: Settings, log_dir: Path, *, port: int | None = None) -> Proc:
    """Start `python -m app` for `settings` and wait for /readyz."""
    port = port or free_port()
    env = settings_env(settings)
    env["ES_HTTP_PORT"] = str(port)
    proc = start_process(["-m", "app"], env, log_dir / f"edge-{port}-{unique('p')}.log")
    proc.url = f"http://127.0.0.1:{port}"
    wait_ready(proc)
    return proc


class SSEClient:
    """Read one stream in a background task and collect what arrives."""

    def __init__(self, base_url: str, *, filter: dict[str, Any] | None = None,
                 params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.url = base_url + STREAM
        self.params = dict(params or {})
        if filter is not None:
            self.params["filter"] = orjson.dumps(filter).decode()
        self.headers = headers or {}
        self.messages: list[SSEMessage] = []
        self.parser = SSEParser()
        self.raw = bytearray()
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.ended = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0))

    async def start(self) -> SSEClient:
        """Connect and wait for the response headers."""
        started = asyncio.Event()
        self._task = asyncio.create_task(self._read(started))
        await asyncio.wait_for(started.wait(), 15)
        return self

    async def _read(self, started: asyncio.Event) -> None:
        try:
            async with self._client.stream("GET", self.url, params=self.params, headers=self.headers) as resp:
                self.status, self.response_headers = resp.status_code, resp.headers
                started.set()
                async for chunk in resp.aiter_bytes():
                    self.raw += chunk
                    self.messages.extend(self.parser.feed(chunk))
                    self._arrived.set()
        except httpx.HTTPError:
            pass
        finally:
            started.set()
            self.ended.set()
            self._arrived.set()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[SSEMessage]:
        """Wait until `count` events arrived (or the stream ended); return them all."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count and not self.ended.is_set():
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages

    async def close(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    @property
    def last_id(self) -> str | None:
        """Return the id of the last event received."""
        return self.messages[-1].id if self.messages else None

    def seqs(self) -> list[int]:
        """Return the `seq` of each received event's data, in arrival order."""
        return [orjson.loads(m.data)["data"]["seq"] for m in self.messages]


async def publish_seq(producer: EventProducer, topic: str, start: int, count: int, **fields: Any) -> list[Position]:
    """Publish events whose data carry seq = start..start+count-1 (subjects spread over partitions)."""
    events = [{"source": "/test", "type": fields.get("type", "test.seq"), "subject": f"s{i % 7}",
               "data": {"seq": i, **fields.get("data", {})}, "tags": fields.get("tags", [])}
              for i in range(start, start + count)]
    return await producer.publish_batch(events, topic)


def assert_exact(seqs: list[int], expected: range) -> None:
    """Assert every expected seq arrived exactly once (order across partitions is not defined)."""
    dups = sorted(s for s, n in Counter(seqs).items() if n > 1)
    missing = sorted(set(expected) - set(seqs))
    extra = sorted(set(seqs) - set(expected))
    assert not dups and not missing and not extra, f"duplicates {dups}, missing {missing}, unexpected {extra}"


class RawSSE:
    """A stream read from a plain socket with a tiny receive buffer, so a test can stop reading
    and make the edge's side of the connection fill up (httpx would keep draining the socket)."""

    def __init__(self, base_url: str, query: str, *, headers: dict[str, str] | None = None,
                 rcvbuf: int = 4096) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.query = query
        self.headers = {**ADMIN_HEADERS, **(headers or {})}  # the suite runs with authentication on
        self.rcvbuf = rcvbuf
        self.parser = SSEParser()
        self.messages: list[SSEMessage] = []
        self.raw = bytearray()
        self.ended = False
        self._sock: socket.socket | None = None
        self._body = bytearray()  # chunked body not yet decoded
        self._headers_done = False

    async def open(self) -> RawSSE:
        """Connect and send the request (reads nothing yet)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = f"GET {STREAM}?{self.query} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n"
        await asyncio.get_running_loop().sock_sendall(sock, request.encode())
        self._sock = sock
        return self

    async def read_for(self, seconds: float) -> None:
        """Read whatever arrives during `seconds` (or until the server ends the stream)."""
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.ended and (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self._sock, 65536), left)
            except TimeoutError:
                return
            if not data:
                self.ended = True
                return
            self._feed(data)

    async def read_until(self, count: int, timeout: float = 20.0) -> None:
        """Read until `count` events arrived or the stream ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count and not self.ended and loop.time() < deadline:
            await self.read_for(min(0.5, deadline - loop.time()))

    def _feed(self, data: bytes) -> None:
        self._body += data
        if not self._headers_done:
            head, sep, rest = bytes(self._body).partition(b"\r\n\r\n")
            if not sep:
                return
            assert head.startswith(b"HTTP/1.1 200"), head
            self._headers_done, self._body = True, bytearray(rest)
        while True:  # decode HTTP/1.1 chunked framing
            line_end = self._body.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._body[:line_end], 16)
            if len(self._body) < line_end + 2 + size + 2:
                return
            chunk = bytes(self._body[line_end + 2:line_end + 2 + size])
            del self._body[:line_end + 2 + size + 2]
            if size == 0:
                self.ended = True
                return
            self.raw += chunk
            self.messages.extend(self.parser.feed(chunk))

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()

    @property
    def last_id(self) -> str | None:
        """Return the id of the last event received."""
        return self.messages[-1].id if self.messages else None

    def seqs(self) -> list[int]:
        """Return the `seq` of each received event's data, in arrival order."""
        return [orjson.loads(m.data)["data"]["seq"] for m in self.messages]
