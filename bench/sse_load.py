#!/usr/bin/env python3
"""SSE load benchmark: N concurrent stream clients against one edge process, a publisher at a set
rate, then a kill -9 and restart of the edge mid-run. Not a test: it prints figures.

Run: .venv/bin/python bench/sse_load.py [--clients 1000] [--rate 10] [--duration 10] [--no-restart]
The N clients live in a separate worker process (bench/sse_clients.py: raw asyncio protocols on
uvloop, so the harness costs little per event); 12 latency probes and the publisher live here. Latency is
publish call -> bytes received by a client (same clock). Only 127.0.0.1 is targeted; the edge and
its private topics (bench-sse-<random>.*) are created here and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.kafka.producer import EventProducer  # noqa: E402
from streams.kafka.topics import TopicManager, TopicSpec  # noqa: E402
from streams.settings import Settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_auth import auth_headers, edge_env  # noqa: E402
from sse_clients import HOST, Pool  # noqa: E402


class Worker:
    """The harness side of a worker process."""

    def __init__(self, port: int, path: str, max_seq: int, retry_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sse_clients.py")), str(port), path, str(max_seq),
             str(retry_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        return json.loads(line)


# ------------------------------------------------------------------ harness

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Edge:
    """The edge process under test."""

    def __init__(self, settings: Settings, port: int, log: Path, clients: int, auth: str = "on") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
        for name, value in settings.model_dump().items():
            if value is None:  # unset optional settings stay unset (str(None) would be read as "None")
                continue
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            if value is None:  # unset optional settings (auth key sources) stay unset
                continue
            key = "KAFKA_BOOTSTRAP_SERVERS" if name == "kafka_bootstrap_servers" else f"ES_{name.upper()}"
            self.env[key] = str(value)
        self.env.update({"ES_HTTP_HOST": HOST, "ES_HTTP_PORT": str(port), "ES_STREAM_MAX_CLIENTS": str(clients + 500),
                         # every client is one principal here: lift its stream caps (app/limits.py)
                         "ES_MAX_STREAMS_PER_PRINCIPAL": str(clients + 500),
                         "ES_RATE_LIMIT_STREAM_OPENS": "1000000/minute",
                         "ES_STREAM_RETRY_MS": "1000", "ES_READY_TIMEOUT_S": "15"})
        edge_env(self.env, auth)  # a fresh JWT secret (the clients send its admin token), or ES_AUTH=off
        self.url, self.log = f"http://{HOST}:{port}", log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the edge and wait for readiness; return seconds until ready."""
        started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=self.env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        while time.monotonic() - started < 60:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"edge did not become ready; see {self.log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def publish_for(producer: EventProducer, topic: str, start: int, rate: float, seconds: float,
                      pad: str) -> int:
    """Publish at `rate` events/s for `seconds`; return the next seq."""
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    t0 = loop.time()
    pending = []
    for i in range(count):
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        event = {"source": "/bench", "type": "bench.tick", "subject": f"s{i % 16}",
                 "data": {"seq": start + i, "ts": time.time_ns() // 1000, "pad": pad}}
        pending.append(loop.create_task(producer.publish(event, topic)))
    await asyncio.gather(*pending)
    return start + count


async def watch_edge(url: str, clients: int) -> None:
    """Print the edge's stream counts every 2s until every client is live again."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5, headers=auth_headers()) as http:
        while True:
            await asyncio.sleep(2.0)
            try:
                st = (await http.get(url + "/api/v1/events/stream/stats")).json()
            except httpx.HTTPError:
                continue
            print(f"    +{time.monotonic() - started:4.0f}s: {st['streams']} streams, {st['live']} live, "
                  f"{st['catching_up']} catching up ({st['catchup_waiting']} queued, {st['catchup_jobs']} jobs run)")
            if st["live"] >= clients:
                return


async def harness(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = args.clients + 200
    if hard < need:
        raise SystemExit(f"open-file limit {hard} is below the {need} this run needs (ulimit -Hn)")
    prefix = f"bench-sse-{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, ingress_topic=f"{prefix}.ingress", dlq_topic=f"{prefix}.dlq",
                        default_topic=f"{prefix}.events", schemas_topic=f"{prefix}._schemas")
    topic, port = f"{prefix}.events", free_port()
    log = Path(f"/tmp/{prefix}-edge.log")
    edge = Edge(settings, port, log, args.clients, args.auth)
    print("auth on: clients send an admin JWT, checked when each stream opens" if args.auth == "on"
          else "auth off: clients send no credential")
    topics = TopicManager(settings)
    await topics.start()
    await topics.create(TopicSpec(name=topic, partitions=3), exist_ok=True)
    path = "/api/v1/events/stream?filter=" + quote(orjson.dumps({"topics": [topic]}).decode())
    max_seq = int(args.rate * (args.duration + args.restart_after + args.after_restart + 5)) + 10
    pad = "x" * max(0, args.payload - 160)
    worker: Worker | None = None
    probes = Pool(port, path, max_seq, retry_s=1.0)
    try:
        print(f"edge ready in {edge.start():.1f}s on {edge.url} (log {log})")
        async with EventProducer(settings, linger_ms=0) as producer:
            await probes.connect(1)  # warm the tail reader before measuring memory
            seq = await publish_for(producer, topic, 0, 5, 1, pad)
            await asyncio.sleep(1.0)
            rss_before = rss_mb(edge.proc.pid)
            worker = Worker(port, path, max_seq, retry_s=1.0)
            t0 = time.monotonic()
            opened = (await worker.ask(cmd="connect", n=args.clients))["opened"]
            await probes.connect(args.probes - 1)
            await asyncio.sleep(2.0)
            rss_after = rss_mb(edge.proc.pid)
            print(f"{opened}/{args.clients} clients + {args.probes} probes connected in {time.monotonic() - t0:.1f}s; "
                  f"edge RSS {rss_before:.1f} MB -> {rss_after:.1f} MB = "
                  f"{(rss_after - rss_before) / args.clients * 1000:.1f} MB per 1,000 connections")
            await worker.ask(cmd="report", lo=0, hi=0)
            probes.report(0, 0)
            first, cpu0, t0 = seq, cpu_s(edge.proc.pid), time.monotonic()
            print(f"publishing {args.rate:g} events/s x {args.duration:g}s "
                  f"({args.rate * args.clients:,.0f} deliveries/s offered)...")
            seq = await publish_for(producer, topic, seq, args.rate, args.duration, pad)
            published = time.monotonic()
            for _ in range(60):  # let what is still in flight arrive before counting losses
                await asyncio.sleep(0.5)
                if (await worker.ask(cmd="missing", lo=first, hi=seq))["lost"] == 0:
                    break
            drained = time.monotonic() - published
            elapsed, cpu = time.monotonic() - t0, cpu_s(edge.proc.pid) - cpu0
            mass = await worker.ask(cmd="report", lo=first, hi=seq)
            probe = probes.report(first, seq)
            delivered = mass["received"] + probe["received"]
            print(f"  latency probes ({args.probes}):  p50 {probe['lat_ms'][0]:.1f} ms  p95 {probe['lat_ms'][1]:.1f} ms"
                  f"  p99 {probe['lat_ms'][2]:.1f} ms")
            print(f"  all {args.clients} clients:    p50 {mass['lat_ms'][0]:.1f} ms  p95 {mass['lat_ms'][1]:.1f} ms"
                  f"  p99 {mass['lat_ms'][2]:.1f} ms  (includes the client process's own queueing)")
            print(f"  deliveries: {delivered:,} = {delivered / (args.duration + drained):,.0f}/s "
                  f"(all delivered {drained:.1f}s after the last publish); "
                  f"lost {mass['lost'] + probe['lost']}, duplicates {mass['dups'] + probe['dups']} "
                  f"(events {first}..{seq - 1}); edge CPU {cpu / elapsed * 100:.0f}% of one core")
            print(f"  edge RSS after the run: {rss_mb(edge.proc.pid):.1f} MB")
            if args.no_restart:
                return
            print(f"restart: publishing on, kill -9 after {args.restart_after:g}s, restart, "
                  f"{args.after_restart:g}s more...")
            publisher = asyncio.create_task(
                publish_for(producer, topic, seq, args.rate, args.restart_after + args.after_restart + 3, pad))
            await asyncio.sleep(args.restart_after)
            edge.kill()
            down = time.monotonic()
            ready = await asyncio.get_running_loop().run_in_executor(None, edge.start)
            print(f"  edge killed and ready again in {time.monotonic() - down:.1f}s (start {ready:.1f}s)")
            watch = asyncio.create_task(watch_edge(edge.url, args.clients + args.probes))
            seq = await publisher
            deadline = time.monotonic() + args.settle
            while True:
                await asyncio.sleep(2.0)
                mass = await worker.ask(cmd="report", lo=first, hi=seq)
                if mass["lost"] == 0 or time.monotonic() > deadline:
                    break
            watch.cancel()
            print(f"  client states: {mass['open']} open, {mass['waiting_response']} waiting for a response, "
                  f"{mass['disconnected']} disconnected")
            probe = probes.report(first, seq)
            total = mass["clients"] + probe["clients"]
            exact = mass["exact_reconnected"] + probe["exact_reconnected"]
            reconnected = mass["reconnected"] + probe["reconnected"]
            print(f"  {reconnected}/{total} clients reconnected; {exact} resumed exactly "
                  f"({exact / total * 100:.2f}% of all clients); over all events {first}..{seq - 1}: "
                  f"lost {mass['lost'] + probe['lost']}, duplicates {mass['dups'] + probe['dups']}; "
                  f"p99 latency after restart {max(mass['lat_ms'][2], probe['lat_ms'][2]):.0f} ms")
    finally:
        probes.stop()
        if worker is not None:
            try:
                await asyncio.wait_for(worker.ask(cmd="quit"), 10)
            except Exception:
                worker.proc.kill()
            worker.proc.wait(10)
        edge.kill(signal.SIGTERM)
        for name in await topics.list():
            if name.startswith(prefix + "."):
                await topics.delete(name, force=True)
        await topics.stop()


def main() -> None:
    """Parse options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="concurrent SSE clients (default 1,000)")
    parser.add_argument("--rate", type=float, default=10.0, help="events published per second (default 10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the measured phase")
    parser.add_argument("--payload", type=int, default=250, help="approximate event JSON size in bytes")
    parser.add_argument("--probes", type=int, default=12, help="latency probes in the harness process")
    parser.add_argument("--restart-after", type=float, default=3.0, help="seconds before the kill -9")
    parser.add_argument("--after-restart", type=float, default=5.0, help="seconds published after restart")
    parser.add_argument("--settle", type=float, default=60.0, help="max seconds to wait for resumes")
    parser.add_argument("--no-restart", action="store_true", help="skip the kill -9 / restart phase")
    parser.add_argument("--auth", choices=("on", "off"), default="on",
                        help="edge authentication (default on; off to compare the cost)")
    args = parser.parse_args()
    uvloop.run(harness(args))


if __name__ == "__main__":
    main()
