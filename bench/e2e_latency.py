#!/usr/bin/env python3
"""End-to-end latency, hop by hop, and the 1,000-client figure beside a bare asyncio broadcaster.

Run: .venv/bin/python bench/e2e_latency.py [--rate 1000] [--batch 10] [--seconds 10] [--clients 1000] [--set ES_X=V ...]

Phase 1 (hops): one edge and one routing worker on private topics (bench-e2e-<random>.*; ingress and
destination use LogAppendTime, so their timestamps are the broker's append times); events are POSTed to the
edge at `--rate`/s over keep-alive connections and read back by 4 SSE probes. Per event, from timestamps
that exist: HTTP publish -> 202 (the publisher's clock); ingress append -> worker read (the dedup changelog
entry holds the ingress timestamp and the worker's processing time, streams/worker/dedup.py); worker read
-> destination append (the destination record's LogAppendTime; its acknowledgment follows by one
response); destination append -> socket (the probe's clock: edge tail and fan-out together). The edge's own
histogram (ingress append -> frame written, app/fanout/hub.py) is printed beside it to split those two.
Phase 2 (1,000 clients): `--clients` SSE clients in a separate process (bench/sse_clients.py) plus the probes,
`--fan-rate` events/s (default 10) published over HTTP; latency = publish call -> bytes received. Phase 3: the
same clients and publisher against bench/bare_broadcaster.py (no Kafka), same machine, same run.
One host, one clock: all times are comparable. `--set` passes settings to the edge and the worker
(e.g. --set ES_WORKER_FETCH_MAX_WAIT_MS=1) to measure a configuration before changing a default.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_auth import auth_headers  # noqa: E402
from pipeline_bench import settings_env  # noqa: E402
from sse_clients import EVENT, HOST  # noqa: E402
from sse_load import Edge, Worker, free_port  # noqa: E402

from streams.kafka.topics import TopicManager  # noqa: E402
from streams.metrics import INGRESS_TIME, LATENCY_BUCKETS, Histogram  # noqa: E402
from streams.settings import Settings  # noqa: E402

RULES = 'version: 1\nrules:\n  - {name: ticks, match: {type: "bench.*"}, to: "{p}.dest"}\n'
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}
CHANGELOG_ENTRY = struct.Struct(">qqiq")  # ts_ms, processed_ms, partition, offset (streams/worker/dedup.py)
PROBES = 4


def now_us() -> int:
    return time.time_ns() // 1000


def tick(prefix: str, seq: int, pad: str) -> bytes:
    """Return one event's JSON; data carries seq and the publish time (µs) the clients parse."""
    return orjson.dumps({"id": f"{prefix}-{seq}", "source": "/bench", "type": "bench.tick", "subject": f"s{seq % 16}",
                         "data": {"seq": seq, "ts": now_us(), "pad": pad}})


class Publisher:
    """POSTs events over raw keep-alive HTTP/1.1 connections (cheap enough for 1,000/s on a loaded host)."""

    def __init__(self, port: int, path: str, headers: dict[str, str], connections: int = 16) -> None:
        self.port, self.path, self.connections = port, path, connections
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.acked: dict[int, tuple[int, int]] = {}  # seq -> (sent µs, answered µs)
        self.refused = 0

    async def run(self, prefix: str, first: int, rate: float, seconds: float, pad: str, batch: int = 1) -> int:
        """Publish seqs first.. at `rate`/s for `seconds`, `batch` events per POST (request j on connection
        j % connections; batches go to `<path>/batch`); return the next seq."""
        count = int(rate * seconds)
        requests = -(-count // batch)
        path = self.path if batch == 1 else self.path + "/batch"
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def lane(k: int) -> None:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            try:
                for j in range(k, requests, self.connections):
                    await asyncio.sleep(max(0.0, t0 + j * batch / rate - loop.time()))
                    seqs = range(first + j * batch, first + min(count, (j + 1) * batch))
                    body = (tick(prefix, seqs[0], pad) if batch == 1
                            else b"[" + b",".join(tick(prefix, seq, pad) for seq in seqs) + b"]")
                    sent = now_us()
                    writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                                 f"{self.extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    await reader.readexactly(length)
                    if head.startswith(b"HTTP/1.1 202"):
                        answered = now_us()
                        for seq in seqs:
                            self.acked[seq] = (sent, answered)
                    else:
                        self.refused += 1
            finally:
                writer.close()
        await asyncio.gather(*(lane(k) for k in range(min(self.connections, requests))))
        return first + count


class Probe(asyncio.Protocol):
    """One SSE client that keeps when it first received each seq (µs)."""

    def __init__(self, path: str, auth: dict[str, str], received: dict[int, int]) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
        self.request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
        self.received = received
        self.open = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = now_us()
        if not self.open.done():
            self.open.set_result(data.startswith(b"HTTP/1.1 200"))
        for match in EVENT.finditer(data):
            self.received.setdefault(int(match[1]), now)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def line(name: str, values: list[float], note: str = "") -> None:
    print(f"  {name:<44} p50 {pct(values, 50):6.1f}   p95 {pct(values, 95):6.1f}   p99 {pct(values, 99):6.1f} ms"
          f"   (n={len(values):,}){note}")


async def read_topic(settings: Settings, topic: str, partitions: int, until: float = 2.0) -> list[Any]:
    """Return every record of `topic` (stops after `until` s without new ones)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        while batch := await consumer.getmany(timeout_ms=int(until * 1000), max_records=20_000):
            for records in batch.values():
                out += records
        return out
    finally:
        await consumer.stop()


async def edge_histogram(url: str) -> list[float]:
    """Return the bucket counts of the edge's delivery latency histogram (ingress append -> frame written)."""
    async with httpx.AsyncClient(timeout=10, headers=auth_headers()) as http:
        text = (await http.get(url + "/metrics")).text
    counts = []
    for row in text.splitlines():
        if row.startswith("eventstream_delivery_latency_seconds_bucket"):
            counts.append(float(row.rsplit(" ", 1)[1]))
    return counts


def histogram_quantiles(before: list[float], after: list[float]) -> tuple[float | None, float | None]:
    """Return p50, p95 (ms) of the observations between two scrapes of a cumulative histogram."""
    if len(before) != len(after) or not after:
        return None, None
    cumulative = [a - b for a, b in zip(after, before, strict=True)]
    hist = Histogram(LATENCY_BUCKETS)
    hist.counts = [int(c - p) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
    hist.count = int(cumulative[-1])
    q50, q95 = hist.quantile(0.5), hist.quantile(0.95)
    return (q50 * 1000 if q50 is not None else None), (q95 * 1000 if q95 is not None else None)


async def fan_out(port: int, path: str, publish_path: str, clients: int, rate: float, seconds: float,
                  prefix: str, pad: str, probes_path: str | None = None) -> dict[str, Any]:
    """Connect `clients` SSE clients (separate process), publish at `rate` for `seconds`; return their report."""
    max_seq = int(rate * (seconds + 3)) + 10
    pool = Worker(port, probes_path or path, max_seq, retry_s=1.0)
    try:
        opened = (await pool.ask(cmd="connect", n=clients))["opened"]
        await asyncio.sleep(2.0)
        publisher = Publisher(port, publish_path, auth_headers(), connections=4)
        await publisher.run(prefix, 0, rate, 1.0, pad)  # warm-up, not counted
        await pool.ask(cmd="report", lo=0, hi=0)
        end = await publisher.run(prefix, int(rate), rate, seconds, pad)
        for _ in range(20):
            await asyncio.sleep(0.5)
            if (await pool.ask(cmd="missing", lo=int(rate), hi=end))["lost"] == 0:
                break
        report = await pool.ask(cmd="report", lo=int(rate), hi=end)
        return {**report, "opened": opened, "refused": publisher.refused}
    finally:
        try:
            await asyncio.wait_for(pool.ask(cmd="quit"), 10)
        except Exception:
            pool.proc.kill()
        pool.proc.wait(10)


async def harness(args: argparse.Namespace) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    prefix = f"bench-e2e-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="e2e-latency-"))
    (tmp / "routes.yaml").write_text(RULES.replace("{p}", prefix))
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas",
                        routes_file=tmp / "routes.yaml", worker_data_dir=tmp / "data", worker_stats_interval_s=3600,
                        worker_metrics_port=0)
    dest, parts = f"{prefix}.dest", settings.default_partitions
    overrides = dict(kv.split("=", 1) for kv in args.set)
    pad = "x" * max(0, args.payload - 160)
    manager = TopicManager(settings)
    await manager.start()
    for name in (settings.ingress_topic, dest):
        await manager.ensure(name, config=LOG_APPEND)
    edge = Edge(settings, free_port(), tmp / "edge.log", args.clients + PROBES, args.auth)
    edge.env.update({"ES_RATE_LIMIT_PUBLISH": "100000/second", **overrides})
    worker_env = {**settings_env(settings), **overrides}
    worker = subprocess.Popen([sys.executable, "-m", "streams.worker"], cwd=ROOT, env=worker_env,
                              stdout=(tmp / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    bare: subprocess.Popen[bytes] | None = None
    transports: list[Any] = []
    try:
        edge.start()
        port = int(edge.url.rsplit(":", 1)[1])
        print(f"e2e latency: Kafka at {settings.kafka_bootstrap_servers}, {parts} partitions, edge {edge.url}, "
              f"overrides {overrides or 'none'} (logs in {tmp})")
        while b"Dedup table ready" not in (tmp / "worker.log").read_bytes():
            if worker.poll() is not None:
                raise SystemExit(f"worker exited; see {tmp / 'worker.log'}")
            await asyncio.sleep(0.2)
        path = "/api/v1/events/stream?filter=" + quote(orjson.dumps({"topics": [dest]}).decode())
        received: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        for _ in range(PROBES):
            transport, probe = await loop.create_connection(lambda: Probe(path, auth_headers(), received), HOST, port)
            transports.append(transport)
            if not await asyncio.wait_for(probe.open, 30):
                raise SystemExit("a probe was refused")
        # ---- phase 1: hops at --rate
        publisher = Publisher(port, "/api/v1/events", auth_headers(), connections=64)  # enough lanes for 1,000/s
        warm = int(args.rate)
        await publisher.run(prefix, 0, args.rate, 1.0, pad, args.batch)
        hist0 = await edge_histogram(edge.url)
        began = time.perf_counter()
        end = await publisher.run(prefix, warm, args.rate, args.seconds, pad, args.batch)
        achieved = (end - warm) / (time.perf_counter() - began)
        await asyncio.sleep(2.0)
        hist1 = await edge_histogram(edge.url)
        seqs = [s for s in range(warm, end) if s in publisher.acked]
        changelog = {bytes(r.key).decode(): CHANGELOG_ENTRY.unpack(r.value)
                     for r in await read_topic(settings, f"{settings.worker_app_id}-dedup-changelog", parts)
                     if r.value is not None and r.key is not None}
        routed = {}
        for r in await read_topic(settings, dest, parts):
            headers = dict(r.headers)
            if "es-id" in headers:
                routed[headers["es-id"].decode()] = (r.timestamp, int(headers[INGRESS_TIME]))
        hops: dict[str, list[float]] = {k: [] for k in ("pub", "read", "write", "edge", "e2e")}
        for seq in seqs:
            sent, acked = publisher.acked[seq]
            hops["pub"].append((acked - sent) / 1000)
            key = f"{prefix}-{seq}"
            entry, out = changelog.get(key), routed.get(key)
            if entry is not None:
                hops["read"].append(entry[1] - entry[0])
                if out is not None:
                    hops["write"].append(out[0] - entry[1])
            if out is not None and seq in received:
                hops["edge"].append(received[seq] / 1000 - out[0])
            if seq in received:
                hops["e2e"].append((received[seq] - sent) / 1000)
        lost = sum(1 for s in seqs if s not in received)
        print(f"phase 1: {len(seqs):,} events at {args.rate:g}/s for {args.seconds:g} s over HTTP, "
              f"{args.batch} per POST ({achieved:,.0f}/s achieved, {publisher.refused} refused), {PROBES} probes; "
              f"{lost} not received")
        line("HTTP publish -> 202 (Kafka acks=all)", hops["pub"], "  per request" if args.batch > 1 else "")
        line("ingress append -> worker read", hops["read"], "  ms-resolution clocks")
        line("worker read -> destination append", hops["write"], "  (ack = append + 1 response)")
        line("destination append -> socket (tail+fan-out)", hops["edge"])
        e50, e95 = histogram_quantiles(hist0, hist1)
        if e50 is not None and e95 is not None:
            print(f"  {'edge histogram: ingress -> frame written':<44} p50 {e50:6.1f}   p95 {e95:6.1f} ms"
                  "   (bucketed; minus the two hops above = edge tail)")
        line("end to end: publish call -> probe socket", hops["e2e"])
        for transport in transports:
            transport.close()
        transports = []
        # ---- phase 2: the service with N clients, then phase 3: the bare broadcaster
        fan = await fan_out(port, path, "/api/v1/events", args.clients, args.fan_rate, args.fan_seconds, prefix + "f",
                            pad)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_broadcaster.py")), str(bare_port)],
                                stdout=subprocess.PIPE)
        assert bare.stdout is not None
        bare.stdout.readline()
        ref = await fan_out(bare_port, "/stream", "/publish", args.clients, args.fan_rate, args.fan_seconds,
                            prefix + "b", pad)
        print(f"phases 2-3: {args.clients:,} SSE clients, {args.fan_rate:g} events/s for {args.fan_seconds:g} s, "
              "publish call -> received (all clients):")
        for name, rep in (("eventstream (HTTP -> Kafka -> worker -> edge)", fan), ("bare asyncio broadcaster", ref)):
            p50, p95, p99 = rep["lat_ms"]
            print(f"  {name:<46} p50 {p50:6.1f}   p95 {p95:6.1f}   p99 {p99:6.1f} ms   ({rep['opened']} open, "
                  f"{rep['received']:,} deliveries, lost {rep['lost']}, dup {rep['dups']}, refused {rep['refused']})")
        ratio = fan["lat_ms"][1] / ref["lat_ms"][1] if ref["lat_ms"][1] else float("nan")
        print(f"  ratio of p95: {ratio:.2f}   (aim <= 1.5)")
    finally:
        for transport in transports:
            transport.close()
        if bare is not None:
            bare.kill()
            bare.wait(10)
        edge.kill(15)
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        for name in await manager.list():
            if name.startswith(prefix + "."):
                try:
                    await manager.delete(name, force=True)
                except Exception:
                    pass
        await manager.stop()


def main() -> None:
    """Parse options and run the three phases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the hop-by-hop phase")
    parser.add_argument("--batch", type=int, default=1,
                        help="events per POST in the hop-by-hop phase (>1 uses /api/v1/events/batch: one edge on a "
                             "loaded 2-core host answers about 450 single publishes/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of the hop-by-hop phase")
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients of phases 2-3")
    parser.add_argument("--fan-rate", type=float, default=10.0, help="events/s of phases 2-3")
    parser.add_argument("--fan-seconds", type=float, default=10.0, help="seconds of phases 2-3")
    parser.add_argument("--payload", type=int, default=250, help="approximate event JSON size in bytes")
    parser.add_argument("--auth", choices=("on", "off"), default="on", help="edge authentication")
    parser.add_argument("--set", action="append", default=[], metavar="ES_NAME=VALUE",
                        help="a setting for the edge and the worker (repeatable)")
    uvloop.run(harness(parser.parse_args()))


if __name__ == "__main__":
    main()
