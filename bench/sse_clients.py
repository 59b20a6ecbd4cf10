#!/usr/bin/env python3
"""SSE clients for bench/sse_load.py: raw asyncio protocols on uvloop that count events by seq,
measure publish->receive latency and reconnect with Last-Event-ID, like a browser's EventSource.

Run by the harness as a worker process: `python bench/sse_clients.py PORT PATH MAX_SEQ RETRY_S`,
then driven by JSON commands on stdin (connect, report, missing, quit), one JSON answer per line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import resource
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

HOST = "127.0.0.1"
EVENT = re.compile(rb'"seq":(\d+),"ts":(\d+)')


def request_head(path: str, last_id: bytes | None, headers: str = "") -> bytes:
    """Return the GET that opens a stream, resuming with Last-Event-ID as a browser's EventSource does."""
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n{headers}"
    if last_id:
        head += f"Last-Event-ID: {last_id.decode()}\r\n"
    return (head + "\r\n").encode()


def take_events(buf: bytearray) -> bytes | None:
    """Cut the complete events (up to the last blank line) off the front of `buf`; None while there are none."""
    end = buf.rfind(b"\n\n")
    if end < 0:
        return None
    chunk = bytes(buf[:end + 2])
    del buf[:end + 2]
    return chunk


class Client(asyncio.Protocol):
    """One SSE client: counts events by seq, measures latency, reconnects with Last-Event-ID."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.buf = bytearray()
        self.seen = bytearray(pool.max_seq)
        self.dups = 0
        self.last_id: bytes | None = None
        self.transport: asyncio.Transport | None = None
        self.ok = False
        self.reconnects = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf.clear()
        self.ok = False
        transport.write(request_head(self.pool.path, self.last_id, self.pool.auth))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns() // 1000
        buf = self.buf
        buf += data
        if not self.ok:
            if b"\r\n\r\n" not in buf:
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                self.transport.close()  # 503 while the edge starts or is full: retried in connection_lost
                return
            self.ok = True
            self.pool.on_open(self)
        if (chunk := take_events(buf)) is None:
            return
        seen, lat = self.seen, self.pool.latencies
        for match in EVENT.finditer(chunk):
            seq = int(match[1])
            if seen[seq]:
                self.dups += 1
            else:
                seen[seq] = 1
            lat.append(now - int(match[2]))
        i = chunk.rfind(b"id: ")
        if i >= 0:
            self.last_id = chunk[i + 4:chunk.index(b"\n", i)]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.pool.stopping:
            self.reconnects += 1
            self.pool.reconnect_later(self)


class Pool:
    """A set of clients sharing one loop."""

    def __init__(self, port: int, path: str, max_seq: int, retry_s: float) -> None:
        self.port, self.path, self.max_seq, self.retry_s = port, path, max_seq, retry_s
        token = os.environ.get("ES_BENCH_TOKEN")  # set by bench/bench_auth.py unless --auth off
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.clients: list[Client] = []
        self.latencies = array("q")
        self.stopping = False
        self.opened = 0
        self._opened = asyncio.Event()
        self._want = 0

    def on_open(self, client: Client) -> None:
        self.opened += 1
        if self.opened >= self._want:
            self._opened.set()

    async def connect(self, n: int, concurrency: int = 200) -> int:
        """Open `n` clients (at most `concurrency` handshakes at once); return how many got a 200."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        self._want = self.opened + n

        async def one() -> None:
            async with gate:
                client = Client(self)
                self.clients.append(client)
                try:
                    await loop.create_connection(lambda: client, HOST, self.port)
                except OSError:
                    self.reconnect_later(client)
        await asyncio.gather(*(one() for _ in range(n)))
        try:
            await asyncio.wait_for(self._opened.wait(), 60)
        except TimeoutError:
            pass
        return self.opened

    def reconnect_later(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.retry_s * random.uniform(0.5, 1.5),
                        lambda: loop.create_task(self._reconnect(client)))

    async def _reconnect(self, client: Client) -> None:
        if self.stopping:
            return
        try:
            await asyncio.get_running_loop().create_connection(lambda: client, HOST, self.port)
        except OSError:
            client.reconnects += 1
            self.reconnect_later(client)

    def report(self, lo: int, hi: int) -> dict[str, Any]:
        """Return losses, duplicates and latencies for seqs lo..hi-1, and reset the latencies."""
        lost = [c.seen[lo:hi].count(0) for c in self.clients]
        lat = sorted(self.latencies)
        self.latencies = array("q")
        return {
            "clients": len(self.clients), "open": sum(1 for c in self.clients if c.transport and c.ok),
            "waiting_response": sum(1 for c in self.clients if c.transport and not c.ok),
            "disconnected": sum(1 for c in self.clients if c.transport is None),
            "received": len(lat), "lost": sum(lost), "dups": sum(c.dups for c in self.clients),
            "exact": sum(1 for c, n in zip(self.clients, lost, strict=True) if n == 0 and c.dups == 0),
            "reconnected": sum(1 for c in self.clients if c.reconnects),
            "exact_reconnected": sum(1 for c, n in zip(self.clients, lost, strict=True)
                                     if c.reconnects and n == 0 and c.dups == 0),
            "lat_ms": percentiles(lat),
        }

    def stop(self) -> None:
        self.stopping = True
        for client in self.clients:
            if client.transport:
                client.transport.close()


def percentiles(values: Any) -> list[float]:
    """Return p50, p95, p99 in ms of sorted µs values (empty -> zeros)."""
    if not values:
        return [0.0, 0.0, 0.0]
    n = len(values)
    return [values[min(n - 1, int(n * q))] / 1000 for q in (0.50, 0.95, 0.99)]


async def serve(answer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
    """Answer the harness's JSON commands on stdin with one JSON line each on stdout, until a reply says bye."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        reply = await answer(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if "bye" in reply:
            return


async def worker_main(port: int, path: str, max_seq: int, retry_s: float) -> None:
    """Serve commands from the harness on stdin; answer JSON lines on stdout."""
    pool = Pool(port, path, max_seq, retry_s)

    async def answer(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "connect":
            return {"opened": await pool.connect(cmd["n"])}
        if cmd["cmd"] == "report":
            return pool.report(cmd["lo"], cmd["hi"])
        if cmd["cmd"] == "missing":
            return {"lost": sum(c.seen[cmd["lo"]:cmd["hi"]].count(0) for c in pool.clients)}
        pool.stop()
        return {"bye": True}
    await serve(answer)


def main() -> None:
    """Run one worker process."""
    port, path, max_seq, retry_s = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    uvloop.run(worker_main(port, path, max_seq, retry_s))


if __name__ == "__main__":
    main()
