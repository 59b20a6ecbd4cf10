#!/usr/bin/env python3
"""SSE clients for the fault suite (tests/reliability/faults.py), in a process of their own: raw asyncio
protocols on uvloop that reconnect with Last-Event-ID like a browser's EventSource, failing over
between edges, and count per client what a fault did to them: events lost, duplicated or out of
order per subject (among acknowledged events; subject = seq % 16, as the harness publishes them),
reconnects, how long each resume took and the longest pause between two deliveries.

Run by the harness: `python tests/reliability/fault_clients.py PORTS PATH MAX_SEQ RETRY_S`
(PORTS comma-separated, tried in turn after a failure), then JSON commands on stdin, one JSON
answer per line: connect, measure (starts the latency window), pause, report, quit.
"""

from __future__ import annotations

import asyncio
import random
import resource
import socket
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root, for bench
from bench.sse_clients import HOST, percentiles, request_head, serve, take_events  # noqa: E402


class Client(asyncio.Protocol):
    """One SSE client; `seen` marks seqs, `last` holds the last seq per subject (order check)."""

    def __init__(self, pool: Pool, index: int, rcvbuf: int | None = None, path: str | None = None) -> None:
        self.pool, self.index, self.rcvbuf = pool, index, rcvbuf
        self.path = path or pool.path
        self.port_index = 0
        self.buf = bytearray()
        self.seen = bytearray(pool.max_seq)
        self.dups = self.reconnects = self.closed_by_server = 0
        self.order = array("i")  # seqs in arrival order, first sight only
        self.last_id: bytes | None = None
        self.transport: asyncio.Transport | None = None
        self.ok = False
        self.lost_at: float | None = None
        self.resumes: list[float] = []  # seconds from losing the stream to the next 200
        self.last_event: float | None = None
        self.max_pause = 0.0

    @property
    def port(self) -> int:
        return self.pool.ports[self.port_index % len(self.pool.ports)]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf.clear()
        self.ok = False
        transport.write(request_head(self.path, self.last_id))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        wall_us = time.time_ns() // 1000
        buf = self.buf
        buf += data
        if not self.ok:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                self.port_index += 1  # refused (starting, full): try the next edge
                self.transport.close()  # type: ignore[union-attr]
                return
            self.ok = True
            del buf[:end + 4]
            if self.lost_at is not None:
                self.resumes.append(now - self.lost_at)
                self.lost_at = None
        if (chunk := take_events(buf)) is None:
            return
        for line in chunk.split(b"\n"):
            if line.startswith(b"id: "):
                self.last_id = line[4:]
            elif line.startswith(b"data: {"):
                self._event(orjson.loads(line[6:]), now, wall_us)
            elif b"closing" in line and line.startswith(b": "):
                self.closed_by_server += 1

    def _event(self, event: dict[str, Any], now: float, wall_us: int) -> None:
        data = event.get("data") or {}
        seq = data.get("seq")
        if not isinstance(seq, int) or seq >= len(self.seen):
            return
        if self.last_event is not None and self.pool.measuring:
            self.max_pause = max(self.max_pause, now - self.last_event)
        self.last_event = now
        if self.seen[seq]:
            self.dups += 1
            return
        self.seen[seq] = 1
        self.order.append(seq)
        if "ts" in data:
            self.pool.latencies.append(wall_us - int(data["ts"]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.ok and self.lost_at is None:
            self.lost_at = time.monotonic()
            self.port_index += 1  # fail over to the next edge, as a load balancer would
        self.ok = False
        if not self.pool.stopping:
            self.reconnects += 1
            self.pool.reconnect_later(self)


class Pool:
    """Clients sharing one loop."""

    def __init__(self, ports: list[int], path: str, max_seq: int, retry_s: float) -> None:
        self.ports, self.path, self.max_seq, self.retry_s = ports, path, max_seq, retry_s
        self.clients: list[Client] = []
        self.latencies = array("q")
        self.stopping = False
        self.measuring = False

    async def _open(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        if client.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client.rcvbuf)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, client.port))
            await loop.create_connection(lambda: client, sock=sock)
        except OSError:
            sock.close()
            client.port_index += 1
            client.reconnects += 1
            self.reconnect_later(client)

    async def connect(self, n: int, rcvbuf: int | None = None, path: str | None = None, concurrency: int = 100) -> int:
        """Open `n` more clients (on `path`, default the pool's); return how many of all have a 200 within 60 s."""
        gate = asyncio.Semaphore(concurrency)
        new = [Client(self, len(self.clients) + i, rcvbuf, path) for i in range(n)]
        self.clients += new

        async def one(client: Client) -> None:
            async with gate:
                await self._open(client)
        await asyncio.gather(*(one(c) for c in new))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(c.ok for c in new):
            await asyncio.sleep(0.1)
        return sum(1 for c in self.clients if c.ok)

    def reconnect_later(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.retry_s * random.uniform(0.5, 1.5), lambda: loop.create_task(self._reconnect(client)))

    async def _reconnect(self, client: Client) -> None:
        if not self.stopping and client.transport is None:
            await self._open(client)

    def pause(self, index: int, seconds: float) -> bool:
        """Stop reading one client's socket for `seconds` (its kernel buffers fill, then the edge's)."""
        client = self.clients[index]
        if client.transport is None:
            return False
        client.transport.pause_reading()
        asyncio.get_running_loop().call_later(seconds, self._resume_reading, client)
        return True

    @staticmethod
    def _resume_reading(client: Client) -> None:
        if client.transport is not None:
            client.transport.resume_reading()

    def report(self, lo: int, hi: int, acked: list[int] | None, only: list[int] | None) -> dict[str, Any]:
        """Return per-fault figures over `only` (default all clients) for seqs lo..hi-1 (or `acked`)."""
        clients = [self.clients[i] for i in only] if only is not None else self.clients
        wanted = acked if acked is not None else range(lo, hi)
        keep = bytearray(self.max_seq)
        for seq in wanted:
            keep[seq] = 1
        lost = [sum(1 for s in wanted if not c.seen[s]) for c in clients]
        lat = sorted(self.latencies)
        resumes = [r for c in clients for r in c.resumes]
        return {
            "clients": len(clients), "open": sum(1 for c in clients if c.ok),
            "delivered": sum(sum(c.seen) for c in clients), "lost": sum(lost),
            "dups": sum(c.dups for c in clients), "out_of_order": sum(out_of_order(c.order, keep) for c in clients),
            "exact": sum(1 for c, n in zip(clients, lost, strict=True) if n == 0 and c.dups == 0),
            "reconnected": sum(1 for c in clients if c.reconnects), "reconnects": sum(c.reconnects for c in clients),
            "resumes": len(resumes), "resumed_5s": sum(1 for r in resumes if r <= 5.0),
            "resume_max_s": round(max(resumes), 2) if resumes else 0.0,
            "closed_by_server": sum(c.closed_by_server for c in clients),
            "max_pause_s": round(max((c.max_pause for c in clients), default=0.0), 2),
            "lat_ms": [round(ms, 1) for ms in percentiles(lat)],
        }

    def stop(self) -> None:
        self.stopping = True
        for client in self.clients:
            if client.transport:
                client.transport.close()


def out_of_order(order: array[int], keep: bytearray) -> int:
    """Count acknowledged events that arrived after a later one of the same subject (subject = seq % 16)."""
    last = [-1] * 16
    late = 0
    for seq in order:
        if keep[seq]:
            if seq < last[seq % 16]:
                late += 1
            else:
                last[seq % 16] = seq
    return late


async def worker_main(pool: Pool) -> None:
    """Serve commands from the harness on stdin; answer JSON lines on stdout."""

    async def answer(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "connect":
            return {"opened": await pool.connect(cmd["n"], cmd.get("rcvbuf"), cmd.get("path"))}
        if cmd["cmd"] == "measure":
            pool.measuring = bool(cmd["on"])
            pool.latencies = array("q")  # latencies count from here
            return {"measuring": pool.measuring}
        if cmd["cmd"] == "pause":
            return {"paused": pool.pause(cmd["index"], cmd["seconds"])}
        if cmd["cmd"] == "report":
            return pool.report(cmd.get("lo", 0), cmd.get("hi", 0), cmd.get("acked"), cmd.get("only"))
        pool.stop()
        return {"bye": True}
    await serve(answer)


def main() -> None:
    """Run one client process."""
    ports = [int(p) for p in sys.argv[1].split(",")]
    pool = Pool(ports, sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    uvloop.run(worker_main(pool))


if __name__ == "__main__":
    main()
