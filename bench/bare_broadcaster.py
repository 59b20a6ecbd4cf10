#!/usr/bin/env python3
"""A bare asyncio SSE broadcaster (no Kafka, no ASGI): the ceiling bench/e2e_latency.py compares the service with.

Run: .venv/bin/python bench/bare_broadcaster.py PORT
GET any path opens an event stream; POST any path with a JSON body frames it once and writes the frame
to every open stream in one loop (a socket that cannot take it is dropped, never awaited), then answers
202. The shape of the first row of the reference fan-out measurements: uvloop, raw transports, one frame
for all.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Connection: keep-alive\r\n\r\n")
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
HIGH_WATER = 1 << 20


class Broadcaster:
    """The open streams and the next event id."""

    def __init__(self) -> None:
        self.streams: set[asyncio.WriteTransport] = set()
        self.seq = 0

    def publish(self, body: bytes) -> None:
        """Frame `body` once and write it to every stream."""
        self.seq += 1
        frame = b"id: %d\ndata: %s\n\n" % (self.seq, body)
        for transport in list(self.streams):
            if transport.is_closing() or transport.get_write_buffer_size() > HIGH_WATER:
                self.streams.discard(transport)
                transport.close()
                continue
            transport.write(frame)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: a stream (GET) or keep-alive publishes (POST)."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET "):
                    writer.write(HEAD)
                    self.streams.add(writer.transport)  # type: ignore[arg-type]
                    await reader.read()  # until the client goes away
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.publish(await reader.readexactly(length))
                writer.write(ACCEPTED)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.streams.discard(writer.transport)  # type: ignore[arg-type]
            writer.close()


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:port until killed."""
    server = await asyncio.start_server(Broadcaster().handle, "127.0.0.1", port, backlog=4096)
    print(f"bare broadcaster on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
