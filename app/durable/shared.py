"""Shared durable connections (`mode: shared`): each stream of the connection, on any edge, is a member
of the connection's consumer group, so Kafka's group protocol gives every stream a disjoint share of
the partitions and rebalances them when streams join or leave.

A member commits what its client's socket accepted, with the group generation it holds:
- every commit interval, the position the socket had accepted one commit interval earlier, so a client
  that leaves with bytes still unread in its socket buffers loses none of them;
- on revoke (its client is still connected and reads on), the exact accepted position, so a stream
  joining repeats nothing;
- when the stream ends, again the position of one commit interval earlier.
The events a leaving stream was sent in its last commit interval therefore go to the next owner too:
those are the only duplicates. Each partition's commit carries JSON metadata with the events delivered
from it and those handed over again (`redelivered`), so any edge reads exact cluster-wide counters
from the group itself (one owner per partition: no two edges ever count the same thing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, for_code
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from app.fanout.filters import CompiledFilter, Viewer, addressed_to
from app.fanout.records import RECIPIENTS, Positions, frame_body
from app.fanout.tokens import STREAM, TokenCodec, pack
from app.sse.framing import PING, format_comment, with_id
from streams.envelope import iso
from streams.errors import BrokerUnavailable, StreamError
from streams.kafka import clients
from streams.kafka.group_offsets import GROUP_ID_NOT_FOUND, GroupOffsets
from streams.settings import Settings

if TYPE_CHECKING:
    from app.durable.stream import TrackedConnection

log = logging.getLogger(__name__)
Offsets = dict[TopicPartition, int]
MEMBER_TAG = "-shared."  # client ids of members: <client_id>-shared.<stream id>@<edge>
SLOW = format_comment("closing: the client did not read for too long; reconnect to resume from the group's position")
LOST = format_comment("closing: the stream lost its place in the connection's group; reconnect")


class TooManyMembers(StreamError):
    """A shared connection already has as many streams as ES_CONNECTION_MAX_MEMBERS allows."""

    status = 409
    title = "Too many streams for this connection"


class Counted(NamedTuple):
    """A partition's committed offset with the counters its commit metadata carries."""

    offset: int
    delivered: int
    redelivered: int
    time: str | None


def parse_meta(offset: int, metadata: str | None) -> Counted:
    """Return the counters of one commit (zeros for a commit without them, e.g. the one made at create)."""
    try:
        meta = orjson.loads(metadata) if metadata else {}
    except orjson.JSONDecodeError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    return Counted(offset, int(meta.get("delivered", 0)), int(meta.get("redelivered", 0)), meta.get("time"))


def member_of(member_id: str, client_id: str, client_host: str, assignment: bytes) -> dict[str, Any]:
    """Return what status shows of one group member: its stream, edge, host and partitions."""
    stream, edge = None, None
    if MEMBER_TAG in client_id:
        stream, _, edge = client_id.split(MEMBER_TAG, 1)[1].partition("@")
    parts: list[dict[str, Any]] = []
    if assignment:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
        parts = [{"topic": topic, "partition": p} for topic, ps in decoded.assignment for p in sorted(ps)]
    return {"member": member_id, "stream": stream, "edge": edge, "host": client_host.lstrip("/"), "partitions": parts}


class GroupMembers(GroupOffsets):
    """GroupOffsets plus what shared connections read from Kafka: live members and commit counters."""

    async def members(self, group: str) -> list[dict[str, Any]]:
        """Return the group's live members with their assigned partitions (empty when nobody streams)."""
        try:
            [response] = await self._client().describe_consumer_groups([group], await self._coordinator(group))
        except KafkaError as exc:
            self._coordinators.pop(group, None)
            raise BrokerUnavailable(f"describing group {group!r} failed: {exc}") from exc
        out = []
        for described in response.groups:
            if described[0] not in (0, GROUP_ID_NOT_FOUND):
                self._coordinators.pop(group, None)
                raise BrokerUnavailable(f"describing group {group!r} failed: {for_code(described[0]).__name__}")
            for member in described[5]:  # (member_id, [group_instance_id,] client_id, host, metadata, assignment)
                member_id, *middle, client_id, host, _metadata, assignment = member
                out.append(member_of(member_id, client_id, host, assignment))
        return sorted(out, key=lambda m: [(p["topic"], p["partition"]) for p in m["partitions"]])

    async def counted(self, group: str) -> dict[TopicPartition, Counted]:
        """Return each partition's committed offset and the counters its commit carries."""
        found = await self.committed_with_metadata(group)
        return {tp: parse_meta(meta.offset, meta.metadata) for tp, meta in found.items()}


class SharedMember(ConsumerRebalanceListener):
    """One SSE stream of a shared connection: a group member that writes its partitions' events to one client."""

    def __init__(self, settings: Settings, *, group_id: str, stream_id: str, edge: str, flt: CompiledFilter,
                 layout: dict[str, int], conn: TrackedConnection, tokens: TokenCodec,
                 decode: Callable[[ConsumerRecord], Awaitable[dict[str, Any] | None]], groups: GroupMembers,
                 kept: Offsets, heartbeat_s: float, batch: int, viewer: Viewer,
                 in_group: Callable[[], None] = lambda: None) -> None:
        self.settings, self.group_id, self.flt, self.conn, self.viewer = settings, group_id, flt, conn, viewer
        self.in_group = in_group  # called at each assignment: Kafka lists this member from then on
        self.tokens, self.decode, self.groups, self.kept = tokens, decode, groups, kept
        self.heartbeat_s, self.batch = heartbeat_s, max(1, min(batch, conn.max_buffer // 2 or 1))
        self.consumer = clients.group_member(settings, f"{MEMBER_TAG[1:]}{stream_id}@{edge}", group_id=group_id)
        self.interval = settings.connection_commit_interval_ms / 1000
        self.position: Positions = {t: [0] * n for t, n in layout.items()}  # the group's, exact for our share
        self.assigned: set[TopicPartition] = set()
        self.committed: Offsets = {}  # what this member last committed (or found) per assigned partition
        self.counts: dict[TopicPartition, list[int]] = {}  # [delivered, redelivered] per assigned partition
        self.written: dict[TopicPartition, deque[int]] = {}  # offsets of frames written since the last commit
        self.samples: deque[tuple[float, Offsets]] = deque()  # (time, accepted position), a quarter interval apart
        self.ending = False
        self._lock = asyncio.Lock()  # a batch is written whole or not at all before a revoke
        self._last_token: bytes | None = None
        self._started = False

    async def start(self) -> None:
        """Connect the consumer and subscribe (the group is joined by the first fetch), BrokerUnavailable if not."""
        self.consumer.subscribe(topics=self.flt.topics, listener=self)
        await clients.start_all(self.settings, self.consumer)
        self._started = True

    async def stop(self) -> None:
        """Commit the position of one interval ago (the rest is handed over, counted) and leave the group."""
        self.ending = True
        if not self._started:
            return
        self._started = False
        try:
            async with self._lock:
                if self.assigned:
                    with contextlib.suppress(KafkaError, StreamError):
                        await self._commit(self._aged(), redelivered_below=self.flushed())
                self.assigned.clear()
        finally:
            await clients.close_all(self.consumer)  # LeaveGroup: the others get our partitions at once

    # ------------------------------------------------------------------ the group protocol

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what the client accepted before Kafka hands our partitions to another member."""
        async with self._lock:
            if self.assigned and not self.ending:
                await self._wait_flushed()
                try:  # frames still queued (the client is slow) will reach it and the next owner: counted
                    await self._commit(self.flushed(), redelivered_below={tp: math.inf for tp in self.assigned})
                except (KafkaError, StreamError) as exc:
                    log.warning("Committing shared connection group %s before a rebalance failed: %s",
                                self.group_id, exc)
            self.assigned.clear()
            self.samples.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start each partition Kafka gives us at the group's committed offset, with its counters."""
        async with self._lock:
            try:
                counted = await self.groups.counted(self.group_id)
                missing = [tp for tp in assigned if tp not in counted and tp not in self.kept]
                first = await self.groups.start_offsets(missing, "earliest") if missing else {}
            except StreamError as exc:
                log.warning("Reading the position of shared connection group %s failed: %s", self.group_id, exc)
                self.conn.close(LOST)
                return
            for tp in assigned:
                found = counted.get(tp)
                offset = found.offset if found else self.kept.get(tp, first.get(tp, 0))
                self.consumer.seek(tp, offset)
                offsets = self.position.setdefault(tp.topic, [])
                offsets.extend([0] * (tp.partition + 1 - len(offsets)))
                offsets[tp.partition] = offset
                self.committed[tp] = offset
                self.counts[tp] = [found.delivered, found.redelivered] if found else [0, 0]
                self.written[tp] = deque()
            for tp, found in counted.items():  # the others as the group knows them: the token's view
                known = self.position.get(tp.topic)
                if tp not in assigned and known is not None and tp.partition < len(known):
                    known[tp.partition] = found.offset
            self.assigned = set(assigned)
            self.samples.clear()
            self.in_group()
            log.info("Shared connection group %s: this stream now serves %s.", self.group_id,
                     ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(assigned)) or "no partition")

    # ------------------------------------------------------------------ delivery

    async def run(self, closing: Callable[[], bytes | None] = lambda: None) -> None:
        """Read the share and write its events until the stream is closed (by us or by the client), or
        `closing` returns the final comment to end it with (the edge is shutting down)."""
        loop = asyncio.get_running_loop()
        tick = self.interval / 4
        next_sample = next_commit = loop.time()
        while not self.conn.closed:
            if (final := closing()) is not None:
                self.conn.close(final)
                return
            if not await self._room():
                return
            try:
                batch = await self.consumer.getmany(timeout_ms=int(min(tick, self.heartbeat_s) * 1000),
                                                    max_records=self.batch)
            except KafkaError as exc:
                log.warning("Reading for shared connection group %s failed, retrying: %s", self.group_id, exc)
                await asyncio.sleep(tick)
                continue
            async with self._lock:
                for tp, records in batch.items():
                    for record in records:
                        if tp not in self.assigned or self.conn.closed:
                            break
                        await self._deliver(tp, record)
                now = loop.time()
                if now >= next_sample:
                    self.samples.append((now, self.flushed()))
                    next_sample = now + tick
                if now >= next_commit and self.assigned:
                    next_commit = now + self.interval
                    try:
                        await self._commit(self._aged())
                    except (KafkaError, StreamError) as exc:
                        log.warning("Committing shared connection group %s failed, will retry: %s",
                                    self.group_id, exc)
            if loop.time() - self.conn.last_write >= self.heartbeat_s:
                self.conn.write(PING)

    async def _deliver(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Write one record's event (if it is one and matches), its id the signed position after it."""
        event = await self.decode(record)
        self.position[tp.topic][tp.partition] = record.offset + 1
        if event is None or not self.flt.matches(event) or not addressed_to(event.get(RECIPIENTS), self.viewer):
            return
        token = self.tokens.sign(STREAM, self.flt.scope, pack([self.position[t] for t in self.flt.topics]))
        frame = with_id(token, frame_body(event))
        while not self.conn.write(frame):  # the queue is full (large events): wait for the client
            if not await self._room(full=True):
                return
        if not self.conn.closed:
            self._last_token = token
            self.written[tp].append(record.offset)

    async def _room(self, *, full: bool = False) -> bool:
        """Wait while the client is too slow for one more batch; close it after stream_slow_client_timeout_s."""
        conn, loop = self.conn, asyncio.get_running_loop()
        deadline = loop.time() + self.settings.stream_slow_client_timeout_s
        while conn.blocked and (full or len(conn.buffer) + self.batch > conn.max_buffer):
            if conn.closed:
                return False
            if loop.time() > deadline:
                conn.close(SLOW)
                return False
            await asyncio.sleep(0.02)
            full = False
        return not conn.closed

    async def _wait_flushed(self) -> None:
        """Give a slow client a moment to take what is queued for it (a rebalance waits for us meanwhile)."""
        limit_s = min(5.0, self.settings.connection_member_session_timeout_ms / 3000)
        for _ in range(int(limit_s / 0.01)):
            if not self.conn.blocked or self.conn.closed:
                return
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ positions and commits

    def held(self) -> Offsets:
        """Return what this member last committed for the partitions it holds now."""
        return {tp: self.committed[tp] for tp in self.assigned}

    def flushed(self) -> Offsets:
        """Return the next offset per assigned partition after the last event the client's socket accepted."""
        token = self.conn.delivered
        if token == self._last_token and not self.conn.blocked:
            position = self.position  # every frame written was accepted; the records after them did not match
        elif token is None:
            return {tp: self.committed[tp] for tp in self.assigned}  # nothing accepted yet
        else:
            groups = self.tokens.decode(token.decode(), STREAM, self.flt.scope)
            position = dict(zip(self.flt.topics, groups, strict=True))
        out = {}
        for tp in self.assigned:
            offsets = position.get(tp.topic, [])
            out[tp] = max(self.committed[tp], offsets[tp.partition] if tp.partition < len(offsets) else 0)
        return out

    def _aged(self) -> Offsets:
        """Return the newest accepted position at least one commit interval old (empty if none is yet)."""
        cutoff = asyncio.get_running_loop().time() - self.interval
        chosen: Offsets = {}
        while self.samples and self.samples[0][0] <= cutoff:
            chosen = self.samples.popleft()[1]
        if chosen:
            self.samples.appendleft((cutoff, chosen))  # still the best choice until a newer sample ages
        return chosen

    async def _commit(self, target: Offsets, *,
                      redelivered_below: Mapping[TopicPartition, float] | None = None) -> None:
        """Commit `target` (never behind what we committed) with each partition's counters; with
        `redelivered_below`, the frames written before that bound but after `target` count as handed over."""
        now = iso(datetime.now(UTC))
        out: dict[TopicPartition, OffsetAndMetadata] = {}
        handed = 0
        for tp in self.assigned:
            offset = max(self.committed[tp], target.get(tp, 0))
            written, counts = self.written[tp], self.counts[tp]
            delivered = redelivered = 0
            while written and written[0] < offset:
                written.popleft()
                delivered += 1
            if redelivered_below is not None:
                bound = redelivered_below.get(tp, 0)
                redelivered = sum(1 for o in written if o < bound)
                written.clear()
            counts[0] += delivered
            counts[1] += redelivered
            handed += redelivered
            if offset != self.committed[tp] or delivered or redelivered:
                meta = {"delivered": counts[0], "redelivered": counts[1], "time": now}
                out[tp] = OffsetAndMetadata(offset, orjson.dumps(meta).decode())
        if not out:
            return
        await self.consumer.commit(out)
        for tp, meta in out.items():
            self.committed[tp] = meta.offset
        if handed:
            log.info("Shared connection group %s: %d events sent in the last commit interval go to the next owner "
                     "too (%s).", self.group_id, handed,
                     ", ".join(f"{tp.topic}-{tp.partition} from {m.offset}" for tp, m in sorted(out.items())))
