#!/usr/bin/env python3
"""Publish throughput on the local broker: the Python publisher and the HTTP edge.

Run: .venv/bin/python bench/publish_bench.py [--events 20000] [--batch 500]
Starts the local broker if KAFKA_BOOTSTRAP_SERVERS is unset, and an edge process on a free port;
uses private topics (bench-<random>.*) and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_auth import auth_headers, edge_env  # noqa: E402

from streams.kafka.producer import EventProducer  # noqa: E402
from streams.kafka.topics import TopicManager  # noqa: E402
from streams.settings import Settings  # noqa: E402


def event(i: int) -> dict:
    """Return a typical small event."""
    return {"source": "/bench", "type": "bench.tick", "subject": f"s-{i % 64}",
            "data": {"i": i, "status": "ok", "step": "unit-tests", "duration_ms": 1234}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bench_client(settings: Settings, n: int, batch: int) -> None:
    async with EventProducer(settings) as producer:
        await producer.publish(event(0))
        start = time.perf_counter()
        for off in range(0, n, batch):
            await producer.publish_batch([event(i) for i in range(off, min(n, off + batch))])
        dt = time.perf_counter() - start
        print(f"  python publish_batch({batch}):      {n / dt:>10,.0f} events/s  ({n} events in {dt:.2f}s)")
        start = time.perf_counter()
        await producer.publish_batch([event(i) for i in range(10_000)])
        dt = time.perf_counter() - start
        print(f"  python publish_batch(10000) once: {10_000 / dt:>10,.0f} events/s")
        m = min(n, 2000)
        start = time.perf_counter()
        for i in range(m):
            await producer.publish(event(i))
        dt = time.perf_counter() - start
        print(f"  python publish() one at a time:   {m / dt:>10,.0f} events/s  ({dt / m * 1000:.2f} ms each, acks=all)")
        gate = asyncio.Semaphore(1000)

        async def one(i: int) -> None:
            async with gate:
                await producer.publish(event(i))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.perf_counter() - start
        print(f"  python publish(), 1000 in flight: {n / dt:>10,.0f} events/s")


async def bench_http(url: str, n: int, batch: int) -> None:
    """Drive the edge with aiohttp (httpx's client tops out near 200 requests/s here, so it would measure itself)."""
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=64), headers=auth_headers()) as client:

        async def post(path: str, body: object) -> None:
            async with client.post(path, json=body) as resp:
                assert resp.status == 202, await resp.text()
                await resp.read()

        body = {"events": [event(i) for i in range(batch)]}
        await post("/api/v1/events/batch", body)
        start = time.perf_counter()
        sent = 0
        while sent < n:
            await post("/api/v1/events/batch", body)
            sent += batch
        dt = time.perf_counter() - start
        print(f"  HTTP POST /events/batch ({batch}):  {sent / dt:>10,.0f} events/s")
        m = 1000
        start = time.perf_counter()
        for i in range(m):
            await post("/api/v1/events", event(i))
        dt = time.perf_counter() - start
        print(f"  HTTP POST /events sequential:     {m / dt:>10,.0f} events/s  ({dt / m * 1000:.2f} ms each)")

        async def worker(k: int) -> None:
            for i in range(k, m * 4, 32):
                await post("/api/v1/events", event(i))

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(32)))
        dt = time.perf_counter() - start
        print(f"  HTTP POST /events, 32 in flight:  {m * 4 / dt:>10,.0f} events/s")


def main() -> None:
    """Start what is needed, run both benchmarks, print the figures, clean up."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        subprocess.run([sys.executable, str(ROOT / "infra/kafka/kafkactl.py"), "up"], check=True)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas")
    port = free_port()
    env = {**os.environ, "ES_HTTP_PORT": str(port), "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "ES_RATE_LIMIT_PUBLISH": "100000000/second",  # measure the edge, not the per-principal limit
           "ES_TOPIC_PREFIX": prefix, "ES_INGRESS_TOPIC": settings.ingress_topic, "ES_DLQ_TOPIC": settings.dlq_topic,
           "ES_DEFAULT_TOPIC": settings.default_topic, "ES_SCHEMAS_TOPIC": settings.schemas_topic}
    edge_env(env)  # a fresh JWT secret; the publisher sends its admin token
    edge = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        print(f"publish benchmark: Kafka at {settings.kafka_bootstrap_servers}, compression {settings.compression}, "
              f"linger {settings.linger_ms} ms, acks=all, idempotent, 3 partitions")
        asyncio.run(bench_client(settings, args.events, args.batch))
        asyncio.run(bench_http(url, args.events, args.batch))
    finally:
        edge.terminate()
        edge.wait(15)

        async def cleanup() -> None:
            async with TopicManager(settings) as topics:
                for name in (settings.ingress_topic, settings.dlq_topic, settings.default_topic,
                             settings.schemas_topic):
                    try:
                        await topics.delete(name, force=True)
                    except Exception:
                        pass

        asyncio.run(cleanup())


if __name__ == "__main__":
    main()
