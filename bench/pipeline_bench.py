#!/usr/bin/env python3
"""Stream worker throughput and added latency on the local broker: decode -> dedup -> route -> produce.

Run: .venv/bin/python bench/pipeline_bench.py [--events 50000] [--rate 1000] [--seconds 10] [--profile]

Throughput: `--events` events are written to the ingress topic first, then one worker starts; the rate
is events over the span between the first and the last destination append. In the same run a bare
aiokafka relay reads the same ingress topic and re-produces every record unchanged (acks=all, idempotent,
snappy, linger 1 ms, acknowledgments awaited per fetched batch, as any relay that commits must), measured
the same way; the ratio worker/relay is printed. `--workers 2` runs two workers in one group. Latency: with the worker
caught up, events are published at `--rate` per second for `--seconds` (after one second of the same
as warm-up, not counted); each one's latency is its
destination append time minus its ingress append time (both topics use LogAppendTime, so both are the
broker's clock). `--profile` samples the worker with py-spy during the throughput run and prints where
its time goes. Uses private topics (bench-<random>.*) and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from streams.kafka.producer import EventProducer  # noqa: E402
from streams.kafka.topics import TopicManager  # noqa: E402
from streams.settings import Settings  # noqa: E402

RULES = """version: 1
rules:
  - {name: ticks, match: {type: "bench.*"}, to: "{p}.dest"}
  - {name: rare, match: {tags: [never-set]}, to: "{p}.rare"}
"""
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}


def event(prefix: str, i: int) -> dict:
    """Return a typical small event (about 250 bytes of Avro)."""
    return {"id": f"{prefix}-{i}", "source": "/bench", "type": "bench.tick", "subject": f"s-{i % 64}",
            "data": {"i": i, "status": "ok", "step": "unit-tests", "duration_ms": 1234}}


def settings_env(settings: Settings) -> dict[str, str]:
    """Return the environment a worker process reads these settings from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    for name, value in settings.model_dump().items():
        if value is None:  # unset optional settings stay unset (str(None) would be read as "None")
            continue
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        value = json.dumps(value) if isinstance(value, list | dict) else value
        env["KAFKA_BOOTSTRAP_SERVERS" if name == "kafka_bootstrap_servers" else f"ES_{name.upper()}"] = str(value)
    return env


async def destination_records(settings: Settings, topic: str, count: int, prefix: str | None,
                              timeout: float) -> list:
    """Read `topic` until `count` records whose es-id starts with `prefix` (any record: None) are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.default_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list = []
        deadline = time.monotonic() + timeout
        want = prefix.encode() if prefix is not None else None
        while len(found) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                found += [r for r in records if want is None or dict(r.headers).get("es-id", b"").startswith(want)]
        return found
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, timeout: float) -> None:
    """Wait until the worker group has committed the end of the ingress topic (without reading outputs,
    which would take CPU from the worker on a small machine)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(settings.ingress_topic, p) for p in range(settings.default_partitions)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(settings.worker_app_id)
            if all(committed.get(tp) is not None and committed[tp].offset >= ends[tp] for tp in tps):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the worker did not catch up within {timeout:g} s")
    finally:
        await consumer.stop()
        await admin.close()


async def preload(settings: Settings, n: int) -> None:
    async with EventProducer(settings) as producer:
        for start in range(0, n, 2000):
            await producer.publish_batch([event("tp", i) for i in range(start, min(n, start + 2000))])


async def publish_at_rate(settings: Settings, rate: int, seconds: float, warmup_s: float = 1.0) -> int:
    """Publish `rate` events/s in batches every 10 ms, after `warmup_s` of the same not counted; return
    how many were counted (ids lat-*)."""
    per_tick = max(1, rate // 100)
    sent, warm, ticks = 0, int(warmup_s * 100), int((seconds + warmup_s) * 100)
    async with EventProducer(settings) as producer:
        start = time.perf_counter()
        for tick in range(ticks):
            prefix = "warm" if tick < warm else "lat"
            await producer.publish_batch([event(prefix, tick * per_tick + i) for i in range(per_tick)])
            sent += per_tick if tick >= warm else 0
            delay = start + (tick + 1) / 100 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    return sent


async def relay(settings: Settings, dest: str, count: int) -> None:
    """Copy `count` ingress records to `dest` unchanged: the bare consume-and-produce loop to compare with."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                group_id=None, fetch_max_wait_ms=settings.worker_fetch_max_wait_ms,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, compression_type="snappy", linger_ms=1)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(settings.ingress_topic, p) for p in range(settings.default_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done = 0
        while done < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            futures = [await producer.send(dest, r.value, key=r.key, headers=r.headers)
                       for records in batch.values() for r in records]
            await asyncio.gather(*futures)
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


def rate_of(records: list) -> tuple[float, float]:
    """Return (events/s, seconds) over the span between the first and the last append of `records`."""
    stamps = sorted(r.timestamp for r in records)
    span = max((stamps[-1] - stamps[0]) / 1000, 0.001)
    return len(records) / span, span


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """Start py-spy sampling the worker while a thread holds the GIL (raw collapsed stacks into `out`)."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o", str(out),
                             "-r", "200", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 22) -> None:
    """Print the functions with the largest share of samples (inclusive), main thread and all."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")
            if name not in seen:
                seen.add(name)
                inclusive[name] += n
    print(f"  profile ({total} samples while the worker held the GIL; inclusive share):")
    skip = ("run_forever", "run_until_complete", "_run_once", "Handle._run", "execute_from_commandline",
            "<module>", "_bootstrap", "_execute_task", "WorkerThread.run", "_start_thread", "main ", "_run_code",
            "_run_module_as_main", "thread ")
    shown = 0
    for name, n in inclusive.most_common():
        if any(s in name for s in skip):
            continue
        print(f"    {n / total * 100:5.1f}%  {name}")
        shown += 1
        if shown == top:
            break


def main() -> None:
    """Start what is needed, run both measurements, print the figures, clean up."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="sample the worker with py-spy")
    parser.add_argument("--workers", type=int, default=1, help="workers in the group (throughput run)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency run")
    args = parser.parse_args()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        subprocess.run([sys.executable, str(ROOT / "infra/kafka/kafkactl.py"), "up"], check=True)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    (tmp / "routes.yaml").write_text(RULES.replace("{p}", prefix))
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas",
                        routes_file=tmp / "routes.yaml", worker_data_dir=tmp / "data", worker_stats_interval_s=3600)
    dest = f"{prefix}.dest"
    relay_dest = f"{prefix}.relay"
    topics = [settings.ingress_topic, dest, relay_dest, settings.dlq_topic, settings.default_topic, f"{prefix}.rare",
              settings.schemas_topic, settings.dlq_replays_topic, f"{settings.worker_app_id}-dedup-changelog"]

    async def create() -> None:
        async with TopicManager(settings) as manager:
            for name in (settings.ingress_topic, dest, relay_dest):
                await manager.ensure(name, config=LOG_APPEND)

    async def cleanup() -> None:
        async with TopicManager(settings) as manager:
            for name in topics:
                try:
                    await manager.delete(name, force=True)
                except Exception:
                    pass

    asyncio.run(create())
    print(f"pipeline benchmark: Kafka at {settings.kafka_bootstrap_servers}, {settings.default_partitions} "
          f"partitions, {args.workers} worker(s) (linger "
          f"{settings.worker_linger_ms} ms, fetch wait {settings.worker_fetch_max_wait_ms} ms, dedup on)")
    workers: list[subprocess.Popen] = []
    try:
        asyncio.run(preload(settings, args.events))
        started = time.perf_counter()
        for n in range(args.workers):
            log = open(tmp / f"worker-{n}.log", "wb")
            workers.append(subprocess.Popen([sys.executable, "-m", "streams.worker"], cwd=ROOT,
                                            env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT))
        spy = None
        if args.profile:  # from the moment the first worker has its partitions (start-up is not the question)
            while b"Dedup table ready" not in (tmp / "worker-0.log").read_bytes():
                time.sleep(0.05)
            spy = profile(workers[0].pid, 8, tmp / "profile.txt")
        asyncio.run(wait_committed(settings, timeout=600))
        wall = time.perf_counter() - started
        found = asyncio.run(destination_records(settings, dest, args.events, "tp-", timeout=60))
        worker_rate, span = rate_of(found)
        print(f"  worker: {len(found):,} events in {span:.2f} s between first and last destination append: "
              f"{worker_rate:,.0f} events/s   ({wall:.1f} s from worker start to committed)")
        if spy is not None:
            spy.wait(60)
            summarize_profile(tmp / "profile.txt")
        if args.no_latency:
            for worker in workers:  # leave the CPU to the relay
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
            workers = []
        asyncio.run(relay(settings, relay_dest, args.events))
        copied = asyncio.run(destination_records(settings, relay_dest, args.events, None, timeout=60))
        relay_rate, span = rate_of(copied)
        print(f"  bare aiokafka relay: {len(copied):,} events in {span:.2f} s: {relay_rate:,.0f} events/s")
        print(f"  ratio worker / relay: {worker_rate / relay_rate:.2f}   (aim >= 0.5)")
        if args.no_latency:
            return
        sent = asyncio.run(publish_at_rate(settings, args.rate, args.seconds))
        found = asyncio.run(destination_records(settings, dest, sent, "lat-", timeout=60))
        latencies = [r.timestamp - int(dict(r.headers)["es-ingress-time"]) for r in found]
        print(f"  added latency at {args.rate:,} events/s for {args.seconds:g} s ({len(latencies):,} of {sent:,} "
              f"events), ingress append -> destination append:")
        print(f"    p50 {percentile(latencies, 50):.1f} ms   p95 {percentile(latencies, 95):.1f} ms   "
              f"p99 {percentile(latencies, 99):.1f} ms   max {max(latencies):.1f} ms   (aim p95 <= 5 ms)")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        asyncio.run(cleanup())


if __name__ == "__main__":
    main()
