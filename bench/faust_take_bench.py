#!/usr/bin/env python3
"""Faust with `take` against a bare aiokafka relay, in one run: what keeping Faust would cost the worker.

Run: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/faust_take_bench.py [--events 50000]
     [--take 500 1000] [--within 0.01] [--loop uvloop] [--no-table] [--conf NAME=VALUE]
Needs faust-streaming, which the project no longer depends on: `.venv/bin/pip install -e '.[bench-faust]'`
(or `.venv/bin/pip install faust-streaming`; it accepts the project's aiokafka 0.14).

Issue 13 asked whether a Faust worker that processes a fetched batch at a time could reach half the rate of a
bare aiokafka relay. The ingress topic is filled as bench/pipeline_bench.py fills it (its events, its count),
then, each over the whole topic: the bare relay of pipeline_bench (acks=all, idempotent, snappy, linger 1 ms,
acknowledgments awaited per fetched batch), once before and once after the Faust runs; then Faust workers
(each its own process and a fresh consumer group) whose agent takes N events at a time
(`stream.take_events(N, within)`: `take` yielding the events, since a relay needs key and headers), sends
each one on without awaiting it and awaits the batch's acknowledgments together, with the relay's producer
settings. Faust asks for `enable_idempotence` only under exactly-once (transactions), so the bench patches
the producer's extra settings to ask for it. Variants: for each `--take` N, `Topic.send` (Faust's channel
API); for the largest N, the Faust producer's `send` (no channel); and (unless `--no-table`) the
same plus a Faust Table (in memory, with its changelog topic, partitioned like the ingress topic) with one
get and one set per record, as the worker's dedup changelog does. Rates are events over the span between
the first and the last destination append (LogAppendTime), as in pipeline_bench; the ratios are to the
mean of the two relay runs. Each also prints the CPU seconds its process used (the relay's from its start, a
Faust worker's from its first batch), whose ratio depends less on what else the machine runs. An upper
bound for a Faust worker: nothing is decoded or routed. Uses topics fst-<random>.* and deletes them.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT / "bench"))

from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from pipeline_bench import LOG_APPEND, destination_records, preload, rate_of, relay  # noqa: E402

from streams.kafka.topics import TopicManager  # noqa: E402
from streams.settings import Settings  # noqa: E402

FETCH_BYTES = 4 * 1024 * 1024  # the relay's max_partition_fetch_bytes


def conf_item(text: str) -> tuple[str, object]:
    """Parse `name=value` (a number where it reads as one) for faust.App."""
    name, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def child(args: argparse.Namespace) -> None:
    """Run one Faust worker over the ingress topic until it is stopped; touch `--done` once `--events` are out."""
    import weakref

    import faust
    import mode.loop
    from faust.streams import _current_event
    from faust.transport.drivers import aiokafka as faust_aiokafka

    if args.loop == "uvloop":
        mode.loop.use("uvloop")
    # Faust asks for idempotence only under exactly-once; ask for it here as the relay does.
    faust_aiokafka.Producer._settings_extra = lambda self: {"enable_idempotence": True}
    app = faust.App(args.app_id, broker=f"kafka://{args.bootstrap}", value_serializer="raw", key_serializer="raw",
                    producer_acks=-1, producer_linger=0.001, producer_compression_type="snappy",
                    consumer_max_fetch_size=FETCH_BYTES, consumer_auto_offset_reset="earliest",
                    topic_partitions=args.partitions, topic_replication_factor=1, web_enabled=False,
                    datadir=args.datadir, store="memory://", **dict(conf_item(c) for c in args.conf))
    source = app.topic(args.ingress, value_type=bytes, key_type=bytes)
    dest = app.topic(args.dest, value_type=bytes, key_type=bytes)
    table = (app.Table("dedup", partitions=args.partitions, key_type=bytes, value_type=bytes)
             if args.table else None)
    state = {"done": 0, "duplicates": 0}
    value_28 = b"\0" * 28  # the size of a dedup entry (streams/worker/dedup.py)

    @app.agent(source)
    async def forward(stream: faust.StreamT) -> None:
        async for events in stream.take_events(args.take[0], within=args.within):
            state.setdefault("cpu0", time.process_time())  # from the first batch: start-up is not the question
            futures = []
            for event in events:
                message = event.message
                if table is not None:
                    key = b"%d:%d" % (message.partition, message.offset)  # one per record, as the bench's ids
                    # take yields from another task than the one iterating the stream, so the current event
                    # (which tells the table the changelog partition) is set here, per record.
                    _current_event.set(weakref.ref(event))
                    if table.get(key) is not None:
                        state["duplicates"] += 1
                        continue
                    table[key] = value_28
                if args.send == "topic":  # the channel API: Topic.send -> FutureMessage
                    futures.append(await dest.send(key=message.key, value=message.value, headers=message.headers))
                else:  # Faust's producer directly: what is left of Faust's send path without the channel
                    futures.append(await app.producer.send(args.dest, message.key, message.value, None, None,
                                                           message.headers))
            await asyncio.gather(*futures)
            state["done"] += len(events)
            if state["done"] >= args.events:
                cpu = time.process_time() - state["cpu0"]
                Path(args.done).write_text(f"{state['done']} {state['duplicates']} {cpu}\n")

    # INFO, not WARNING: at WARNING Faust keeps a progress-spinner log handler at DEBUG on the root logger, so
    # every debug call in aiokafka and Faust builds a log record (12 % of the worker's time in a first profile).
    faust.Worker(app, loglevel="INFO", quiet=True, redirect_stdouts=False).execute_from_commandline()


def label(take: int, send: str, table: bool) -> str:
    return f"faust take({take}), {send}.send{' + table get/set' if table else ''}"


def run_faust(settings: Settings, prefix: str, tmp: Path, args: argparse.Namespace, variant: tuple[int, str, bool],
              dest: str) -> tuple[float, float]:
    """Start a Faust worker process, wait until it has sent every event, stop it; return events/s and CPU s."""
    take, send, table = variant
    name = f"take{take}-{send}{'-table' if table else ''}"
    done = tmp / f"{name}.done"
    cmd = [sys.executable, __file__, "--child", "--app-id", f"{prefix}.{name}", "--ingress", settings.ingress_topic,
           "--dest", dest, "--take", str(take), "--within", str(args.within), "--events", str(args.events),
           "--bootstrap", settings.kafka_bootstrap_servers, "--partitions", str(settings.default_partitions),
           "--datadir", str(tmp / name), "--done", str(done), "--loop", args.loop, "--send", send]
    cmd += (["--table"] if table else []) + [f"--conf={c}" for c in args.conf]
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not done.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Faust worker {name} ended or stalled; see {tmp / name}.log:\n"
                                   + (tmp / f"{name}.log").read_text()[-3000:])
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    sent, duplicates, cpu = (float(x) for x in done.read_text().split())
    found = asyncio.run(destination_records(settings, dest, args.events - int(duplicates), None, timeout=60))
    rate, span = rate_of(found)
    print(f"  {label(*variant)}: {len(found):,} events in {span:.2f} s: {rate:,.0f} events/s, "
          f"{cpu:.2f} CPU s", flush=True)
    return rate, cpu


def run_relay(settings: Settings, dest: str, events: int, label: str) -> tuple[float, float]:
    """Run pipeline_bench's relay over the ingress topic; return events/s and the CPU seconds it took."""
    cpu = time.process_time()
    asyncio.run(relay(settings, dest, events))
    cpu = time.process_time() - cpu
    copied = asyncio.run(destination_records(settings, dest, events, None, timeout=60))
    rate, span = rate_of(copied)
    print(f"  bare aiokafka relay ({label}): {len(copied):,} events in {span:.2f} s: {rate:,.0f} events/s, "
          f"{cpu:.2f} CPU s", flush=True)
    return rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--take", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--within", type=float, default=0.01, help="seconds take waits for a batch to fill")
    parser.add_argument("--loop", choices=["aio", "uvloop"], default="uvloop",
                        help="the Faust worker's event loop (the real worker runs uvloop)")
    parser.add_argument("--no-table", action="store_true", help="skip the run with a Faust Table")
    parser.add_argument("--conf", action="append", default=[], metavar="NAME=VALUE",
                        help="a further faust.App setting, e.g. stream_buffer_maxsize=16384 (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--app-id", "--ingress", "--dest", "--bootstrap", "--datadir", "--done"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--partitions", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--send", choices=["topic", "producer"], default="topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        sys.exit("Set KAFKA_BOOTSTRAP_SERVERS (e.g. 127.0.0.1:9092): this bench uses a running broker.")
    prefix = f"fst-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="faust-take-bench-"))
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas")
    best = max(args.take)
    variants = ([(n, "topic", False) for n in args.take] + [(best, "producer", False)]
                + ([] if args.no_table else [(best, "producer", True)]))
    dests = {v: f"{prefix}.out-{v[0]}-{v[1]}{'-table' if v[2] else ''}" for v in variants}

    async def create() -> None:
        async with TopicManager(settings) as manager:
            for name in [settings.ingress_topic, f"{prefix}.relay-a", f"{prefix}.relay-b", *dests.values()]:
                await manager.ensure(name, config=LOG_APPEND)

    async def cleanup() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        finally:
            await admin.close()
        async with TopicManager(settings) as manager:
            for name in names:
                try:
                    await manager.delete(name, force=True)
                except Exception as exc:
                    print(f"  could not delete {name}: {exc}")

    try:
        import faust
    except ImportError:
        sys.exit("faust-streaming is not installed: .venv/bin/pip install -e '.[bench-faust]'")
    print(f"faust take benchmark: Kafka at {settings.kafka_bootstrap_servers}, {settings.default_partitions} "
          f"partitions, {args.events:,} events, faust-streaming {faust.__version__} ({args.loop} loop), "
          f"take within {args.within:g} s", flush=True)
    asyncio.run(create())
    try:
        asyncio.run(preload(settings, args.events))
        relays = [run_relay(settings, f"{prefix}.relay-a", args.events, "before")]
        rates = {v: run_faust(settings, prefix, tmp, args, v, dests[v]) for v in variants}
        relays.append(run_relay(settings, f"{prefix}.relay-b", args.events, "after"))
        base = sum(r for r, _ in relays) / len(relays)
        base_cpu = sum(c for _, c in relays) / len(relays)
        print(f"  ratios to the relay (mean {base:,.0f} events/s, {base_cpu:.2f} CPU s); the second is relay CPU s / "
              f"Faust CPU s (per event, less sensitive to what else the machine runs):")
        for variant, (rate, cpu) in rates.items():
            print(f"    {label(*variant)} / relay: {rate / base:.2f}   CPU {base_cpu / cpu:.2f}   (aim >= 0.5)")
    finally:
        asyncio.run(cleanup())


if __name__ == "__main__":
    main()
