"""Control: stream-admin commands from one edge to the others, over one Kafka topic every edge reads.

A disconnect is a record on `<prefix>.internal.stream-control`: `{"op": "disconnect", "command", "stream",
"by", "admin", "from"}`. Every edge reads the topic from its end with a group-less reader (no consumer
group to join or rebalance: each edge sees every command) and the one that holds the stream checks the
asker may end it (admin, or the stream's own principal), ends it with `: disconnected by <who>` and
answers on the same topic with `{"op": "done", "command", "stream", "edge", "outcome"}`, which the
asking edge waits for (ES_STREAM_DISCONNECT_WAIT_S). Commands are kept an hour: nobody reads old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from app.fanout.subscribers import StreamRecord, StreamRegistry
from app.sse.framing import format_comment
from streams.errors import BrokerUnavailable, StreamError
from streams.kafka import clients
from streams.kafka.topics import TopicManager
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
RETENTION_MS = 3600 * 1000
ENDED, FORBIDDEN = "ended", "forbidden"


class StreamNotFound(StreamError):
    """No live edge lists a stream of this id (it ended, or never existed)."""

    status = 404
    title = "Stream not found"


def disconnected(who: str) -> bytes:
    """Return the final comment of a stream an admin (or its owner) ended."""
    return format_comment(f"disconnected by {who}; reconnect with Last-Event-ID to resume")


def end_here(record: StreamRecord, by: str, admin: bool) -> str:
    """End a stream of this edge if `by` may (admin, or the stream's own principal); return the outcome."""
    if not admin and record.principal != by:
        return FORBIDDEN
    log.info("Stream %s (%s of %s) disconnected by %s.", record.id, record.kind, record.principal, by)
    record.end(disconnected(by))
    return ENDED


class Control:
    """Send disconnect commands to the edge holding a stream, and carry out those meant for this edge."""

    def __init__(self, settings: Settings, topics: TopicManager, streams: StreamRegistry, edge: str) -> None:
        self.settings, self.topics, self.streams, self.edge = settings, topics, streams, edge
        self.topic = settings.stream_control_topic
        self._tp = TopicPartition(self.topic, 0)
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # command id -> its answer

    async def start(self) -> None:
        """Create the topic if needed and start reading it from its end (older commands are not ours)."""
        if self._task is not None:
            return
        await self.topics.ensure(self.topic, partitions=1, cleanup_policy="delete", retention_ms=RETENTION_MS,
                                 replication_factor=min(self.settings.default_replication_factor,
                                                        max(1, await self.topics.broker_count())))
        producer = clients.producer(self.settings, "stream-control", acks="all", linger_ms=0)
        reader = clients.reader(self.settings, "stream-control", fetch_max_wait_ms=100)
        await clients.start_all(self.settings, producer, reader)
        try:
            reader.assign([self._tp])
            await reader.seek_to_end(self._tp)
            await reader.position(self._tp)  # fixed now, so a command sent from here on is read
        except KafkaError as exc:
            await clients.close_all(reader, producer)
            raise BrokerUnavailable(f"stream control topic {self.topic}: {exc}") from exc
        self._producer, self._reader = producer, reader
        self._task = supervise("stream-control", self._read_loop, context=f"reading {self.topic}")

    async def stop(self) -> None:
        """Stop reading and disconnect; calling it twice is harmless."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiting in self._waiting.values():
            waiting.cancel()
        await clients.close_all(self._reader, self._producer)
        self._reader = self._producer = None

    async def __aenter__(self) -> Control:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def disconnect(self, stream_id: str, *, by: str, admin: bool) -> dict[str, Any] | None:
        """Ask every edge to end `stream_id`; return the holding edge's answer (`edge`, `outcome`), or None
        when none came within ES_STREAM_DISCONNECT_WAIT_S (the command stays on its way)."""
        command = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command] = answer
        try:
            await self._send({"op": "disconnect", "command": command, "stream": stream_id, "by": by, "admin": admin,
                              "from": self.edge})
            return await asyncio.wait_for(answer, self.settings.stream_disconnect_wait_s)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(command, None)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._producer is None:
            raise BrokerUnavailable(f"stream control topic {self.topic} is not connected")
        try:
            await self._producer.send_and_wait(self.topic, orjson.dumps(message), partition=0)
        except KafkaError as exc:
            raise BrokerUnavailable(f"writing to {self.topic} failed: {exc}") from exc

    async def _read_loop(self) -> None:
        assert self._reader is not None
        while True:
            try:
                batch = await self._reader.getmany(self._tp, timeout_ms=500)
            except KafkaError as exc:
                log.warning("Reading %s failed, retrying: %s", self.topic, exc)
                await asyncio.sleep(1)
                continue
            for record in batch.get(self._tp, []):
                try:
                    message = orjson.loads(record.value)
                except (orjson.JSONDecodeError, TypeError):
                    log.warning("Ignoring a record of %s that is not JSON (offset %d).", self.topic, record.offset)
                    continue
                if isinstance(message, dict):
                    await self._apply(message)

    async def _apply(self, message: dict[str, Any]) -> None:
        """Carry out a command for a stream of this edge, or hand an answer to the edge that waits for it."""
        command = str(message.get("command"))
        if message.get("op") == "done":
            waiting = self._waiting.get(command)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
            return
        if message.get("op") != "disconnect" or message.get("from") == self.edge:
            return  # the asking edge ended its own streams at once, without the round trip
        record = self.streams.get(str(message.get("stream")))
        if record is None:
            return
        outcome = end_here(record, str(message.get("by")), bool(message.get("admin")))
        try:
            await self._send({"op": "done", "command": command, "stream": record.id, "edge": self.edge,
                              "outcome": outcome})
        except BrokerUnavailable as exc:  # the stream ended; the asker answers 202
            log.warning("Confirming the disconnect of stream %s failed: %s", record.id, exc)
