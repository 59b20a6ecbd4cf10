#!/usr/bin/env python3
"""Soak and drain benchmark of the edge (issue: durable connections, resource hygiene).

1. Soak: for --minutes, rounds of --clients plain SSE streams (half resuming with their last id, so
   catch-up readers work too) and --durable durable-connection streams connect, read for a moment and
   disconnect, while events are published at --rate/s. Prints the edge's RSS, open fds, asyncio tasks
   and Kafka readers before and after (from GET /api/v1/stats), and the change per hour
   (`--minutes 60` for the one-hour soak).
2. Drain: --drain-clients streams connect, the edge gets SIGTERM; prints how long until every client
   saw its final comment and the process exited.

Run: .venv/bin/python bench/soak.py [--minutes 3] [--clients 200] [--durable 20] [--drain-clients 1000]
Targets 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_auth import auth_headers  # noqa: E402
from sse_load import Edge, free_port  # noqa: E402

from streams.kafka.producer import EventProducer  # noqa: E402
from streams.kafka.topics import TopicManager, TopicSpec  # noqa: E402
from streams.settings import Settings  # noqa: E402


async def read_stream(session: aiohttp.ClientSession, url: str, seconds: float, headers: dict[str, str]) -> str | None:
    """Read one SSE stream for `seconds`; return the last event id seen."""
    last = None
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds + 10)) as resp:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if not chunk:
                    break
                for line in chunk.split(b"\n"):
                    if line.startswith(b"id: "):
                        last = line[4:].decode()
    except (aiohttp.ClientError, TimeoutError):
        pass
    return last


async def publisher(settings: Settings, topic: str, rate: float, stop: asyncio.Event) -> int:
    """Publish `rate` events/s until `stop`; return how many."""
    sent = 0
    async with EventProducer(settings) as producer:
        while not stop.is_set():
            await producer.publish({"source": "/soak", "type": "soak.tick", "subject": f"s{sent % 8}",
                                    "data": {"seq": sent}}, topic)
            sent += 1
            await asyncio.sleep(1 / rate)
    return sent


def stats(edge: Edge) -> dict:
    return httpx.get(edge.url + "/api/v1/stats", timeout=10, headers=auth_headers()).json()


def kafka_clients(s: dict) -> int:
    """Return the Kafka readers the edge holds for streams (tails and started catch-up readers)."""
    return int(s["tail_readers"]) + int(s["catchup_readers"]["started"])


def figures(s: dict) -> str:
    p = s["process"]
    return (f"RSS {p['rss_mb']:7.1f} MB  fds {p['open_fds']:5d}  tasks {p['asyncio_tasks']:5d}  "
            f"tail readers {s['tail_readers']}  catch-up readers {s['catchup_readers']['started']}"
            f"/{s['catchup_readers']['max']}  streams {s['streams']['total']}")


async def soak(edge: Edge, settings: Settings, topic: str, args: argparse.Namespace) -> tuple[dict, float]:
    """Churn clients for --minutes; return the edge's figures after the first 10 rounds (warm) and when."""
    stop = asyncio.Event()
    pub = asyncio.create_task(publisher(settings, topic, args.rate, stop))
    flt = json.dumps({"topics": [topic]})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=auth_headers()) as session:
        conns = []
        for _ in range(args.durable):
            async with session.post(edge.url + "/api/v1/connections", json={"filter": {"topics": [topic]}}) as r:
                conns.append((await r.json())["id"])
        plain_url = f"{edge.url}/api/v1/events/stream?filter={aiohttp.helpers.quote(flt)}"
        last_ids: list[str | None] = [None] * args.clients
        end, rounds = time.monotonic() + args.minutes * 60, 0
        warm: tuple[dict, float] | None = None
        while time.monotonic() < end:
            jobs = [read_stream(session, plain_url, 1.5, {"Last-Event-ID": last_ids[i]} if last_ids[i] and i % 2
                                else {}) for i in range(args.clients)]
            jobs += [read_stream(session, f"{edge.url}/api/v1/connections/{c}/stream", 1.5, {}) for c in conns]
            results = await asyncio.gather(*jobs)
            last_ids = [r or last_ids[i] for i, r in enumerate(results[:args.clients])]
            rounds += 1
            if rounds % 10 == 0:
                now = stats(edge)
                warm = warm or (now, time.monotonic())
                print(f"  round {rounds:4d}: {figures(now)}", flush=True)
        stop.set()
        sent = await pub
        for c in conns:
            await session.delete(f"{edge.url}/api/v1/connections/{c}")
    print(f"soak: {rounds} rounds x ({args.clients} plain + {args.durable} durable) streams, {sent} events published")
    return warm or (stats(edge), time.monotonic())


async def drain(edge: Edge, topic: str, n: int) -> None:
    flt = aiohttp.helpers.quote(json.dumps({"topics": [topic]}))
    url = f"{edge.url}/api/v1/events/stream?filter={flt}&heartbeat=1"
    ended: list[float] = []
    finals = 0

    async def client(session: aiohttp.ClientSession, ready: asyncio.Event) -> None:
        nonlocal finals
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            body = b""
            async for chunk in resp.content.iter_any():
                body += chunk[-200:]
            finals += b"closing" in body
            ended.append(time.monotonic())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=auth_headers()) as session:
        tasks = [asyncio.create_task(client(session, asyncio.Event())) for _ in range(n)]
        for _ in range(600):
            if stats(edge)["streams"]["total"] >= n:
                break
            await asyncio.sleep(0.1)
        assert edge.proc is not None
        t0 = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks, return_exceptions=True)
        clients_done = max(ended) - t0 if ended else float("nan")
        while edge.proc.poll() is None and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.05)
        exited = time.monotonic() - t0
    print(f"drain: SIGTERM with {n} streams open: every client got its final comment and EOF after "
          f"{clients_done:.2f}s ({finals}/{n} saw the closing comment); the process exited after {exited:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--durable", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--drain-clients", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    prefix = f"soak-{uuid.uuid4().hex[:6]}"
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas",
                        stream_tail_idle_s=2, connection_commit_interval_ms=200,
                        # every client comes from 127.0.0.1: no per-principal limits, no tokens
                        auth="off", rate_limit_stream_opens="100000/second", max_streams_per_principal=100_000)
    topic = f"{prefix}.soak"

    async def setup() -> None:
        async with TopicManager(settings) as topics:
            await topics.create(TopicSpec(name=topic, partitions=3))

    asyncio.run(setup())
    log = Path(tempfile.mkdtemp()) / "edge.log"
    edge = Edge(settings, free_port(), log, args.drain_clients + args.clients + args.durable)
    edge.start()
    try:
        time.sleep(1)
        before = stats(edge)
        print(f"before: {figures(before)}")
        warm, warm_at = asyncio.run(soak(edge, settings, topic, args))
        time.sleep(settings.stream_tail_idle_s + 3)
        after, after_at = stats(edge), time.monotonic()
        print(f"after:  {figures(after)}")
        pb, pa = before["process"], after["process"]
        print(f"change: RSS {pa['rss_mb'] - pb['rss_mb']:+.1f} MB, fds {pa['open_fds'] - pb['open_fds']:+d}, "
              f"tasks {pa['asyncio_tasks'] - pb['asyncio_tasks']:+d}, Kafka clients "
              f"{kafka_clients(after) - kafka_clients(before):+d} (catch-up readers are a bounded pool)")
        # The slope runs from the warm figures (after 10 rounds: allocator arenas and caches filled) to the end.
        pw, per_hour = warm["process"], 3600 / max(1.0, after_at - warm_at)
        print(f"slope per hour (from round 10): RSS {(pa['rss_mb'] - pw['rss_mb']) * per_hour:+.1f} MB/h, "
              f"fds {(pa['open_fds'] - pw['open_fds']) * per_hour:+.0f}/h, "
              f"tasks {(pa['asyncio_tasks'] - pw['asyncio_tasks']) * per_hour:+.0f}/h, "
              f"Kafka clients {(kafka_clients(after) - kafka_clients(warm)) * per_hour:+.0f}/h")
        asyncio.run(drain(edge, topic, args.drain_clients))
        print(f"edge log: {log}")
    finally:
        edge.kill()


if __name__ == "__main__":
    main()
