#!/usr/bin/env python3
"""Catch-up benchmark: a durable connection reads N events from Kafka (catch-up, no replay window) with
`batchSize` 1 and with `batchSize` 100, in the same run against the same edge: events/s, edge CPU per
10,000 events, and socket writes (HTTP chunks) per event, printed as a ratio. Not a test: it prints figures.

Run: .venv/bin/python bench/catchup_bench.py [--events 50000] [--rounds 2] [--sizes 1,100] [--compression]
Only 127.0.0.1 is targeted; the edge and its private topics (bench-catchup-<random>.*) are created here and
removed at the end. The client parses the chunked body itself, so every chunk counted is one write of the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
import zlib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_auth import auth_headers  # noqa: E402
from sse_load import HOST, Edge, cpu_s, free_port  # noqa: E402

from streams.kafka.producer import EventProducer  # noqa: E402
from streams.kafka.topics import TopicManager, TopicSpec  # noqa: E402
from streams.settings import Settings  # noqa: E402

MARK = b"\nid: "  # every event frame of the stream starts a line with its id (the first follows `retry:`)


async def read_stream(port: int, path: str, events: int, timeout_s: float, gzip: bool) -> tuple[int, int]:
    """Read a stream until `events` event frames arrived; return (events, chunks), a chunk being one write."""
    reader, writer = await asyncio.open_connection(HOST, port)
    headers = {**auth_headers(), **({"Accept-Encoding": "gzip"} if gzip else {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{head}\r\n".encode())
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"stream refused: {status[:200]!r}")
    seen = chunks = 0
    tail = b""
    deadline = time.monotonic() + timeout_s
    try:
        while seen < events:
            size = int((await asyncio.wait_for(reader.readline(), deadline - time.monotonic())).strip(), 16)
            if size == 0:
                break
            body = await reader.readexactly(size + 2)
            data = tail + (inflate.decompress(body[:-2]) if inflate else body[:-2])
            seen += data.count(MARK)
            tail = data[-(len(MARK) - 1):]
            chunks += 1
    finally:
        writer.close()
    return seen, chunks


async def one_run(edge: Edge, port: int, topic: str, events: int, batch_size: int,
                  compression: bool) -> dict[str, float]:
    """Create a connection from the earliest offset with `batch_size`, stream all events, delete it."""
    async with httpx.AsyncClient(base_url=edge.url, headers=auth_headers(), timeout=30) as http:
        options = {"batchSize": batch_size, "compression": compression}
        resp = await http.post("/api/v1/connections", json={"filter": {"topics": [topic]}, "start": "earliest",
                                                            "options": options})
        resp.raise_for_status()
        conn_id = resp.json()["id"]
        assert edge.proc is not None
        cpu0, t0 = cpu_s(edge.proc.pid), time.monotonic()
        seen, chunks = await read_stream(port, f"/api/v1/connections/{conn_id}/stream", events, 300, compression)
        elapsed, cpu = time.monotonic() - t0, cpu_s(edge.proc.pid) - cpu0
        await http.delete(f"/api/v1/connections/{conn_id}")
    if seen < events:
        raise SystemExit(f"batchSize {batch_size}: only {seen} of {events} events arrived")
    return {"batch": batch_size, "eps": seen / elapsed, "cpu10k": cpu / seen * 10_000, "writes": chunks / seen,
            "elapsed": elapsed}


async def main(args: argparse.Namespace) -> None:
    base = f"bench-catchup-{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=base, ingress_topic=f"{base}.ingress", dlq_topic=f"{base}.dlq",
                        default_topic=f"{base}.events", schemas_topic=f"{base}._schemas",
                        stream_replay_records=0)  # every run reads Kafka: the catch-up path
    topic = f"{base}.data"
    async with TopicManager(settings) as topics:
        await topics.create(TopicSpec(name=topic, partitions=3))
    log = Path(f"/tmp/{base}-edge.log")
    port = free_port()
    edge = Edge(settings, port, log, clients=10)
    try:
        print(f"edge ready in {edge.start():.1f}s; publishing {args.events:,} events of ~{args.payload} bytes "
              f"to {topic}")
        pad = "x" * args.payload
        async with EventProducer(settings) as producer:
            for first in range(0, args.events, 5000):
                await producer.publish_batch([{"source": "/bench", "type": "bench.catchup", "subject": f"s{i % 16}",
                                               "data": {"seq": i, "pad": pad}}
                                              for i in range(first, min(first + 5000, args.events))], topic)
        results: dict[int, list[dict[str, float]]] = {}
        for round_no in range(args.rounds):
            for size in args.sizes:  # alternating, so warm-up and page cache favour neither
                r = await one_run(edge, port, topic, args.events, size, args.compression)
                results.setdefault(size, []).append(r)
                print(f"  round {round_no + 1} batchSize {size:>4}: {r['eps']:>9,.0f} events/s, edge CPU "
                      f"{r['cpu10k']:.3f} s per 10k events, {r['writes']:.3f} socket writes per event "
                      f"({r['elapsed']:.1f}s)")
        best = {size: max(runs, key=lambda r: r["eps"]) for size, runs in results.items()}
        low, high = best[min(best)], best[max(best)]
        mode = "gzip" if args.compression else "identity"
        print(f"catch-up of {args.events:,} events ({mode}), best of {args.rounds}: batchSize {int(high['batch'])} vs "
              f"{int(low['batch'])}: {high['eps'] / low['eps']:.2f}x events/s, "
              f"{low['cpu10k'] / high['cpu10k']:.2f}x less edge CPU per event, "
              f"{low['writes'] / max(high['writes'], 1e-9):.0f}x fewer socket writes")
    finally:
        edge.kill(15)
        async with TopicManager(settings) as topics:
            for name in (topic, settings.ingress_topic, settings.dlq_topic, settings.schemas_topic,
                         settings.connections_topic):
                try:
                    await topics.delete(name, force=True)
                except Exception:  # best effort: a topic the edge never created
                    pass


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events to catch up on (default 50,000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per batch size, alternating (default 2)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100],
                        help="batch sizes to compare (default 1,100)")
    parser.add_argument("--payload", type=int, default=200, help="approximate event data size in bytes")
    parser.add_argument("--compression", action="store_true", help="gzip streams (one compressor flush per write)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
