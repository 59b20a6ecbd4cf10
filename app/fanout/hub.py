"""The fan-out hub of one edge process: shared tail readers, filter groups, live clients, catch-up.

Clients with equal filters form one group; each record is matched once per group and framed once
(one `bytes` shared by every live client of the group, the id being the group's position vector).
The hub never waits on a client: a client whose bounded buffer overflows leaves the live tail and
goes back to catch-up from its last delivered position, because the Kafka log is the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from app.fanout.catchup import CatchUpPool
from app.fanout.filters import NOBODY, CompiledFilter, Viewer, addressed_to
from app.fanout.history import HistoryReader
from app.fanout.ports import CatchUpPorts
from app.fanout.positions import OffsetsReader
from app.fanout.records import NEW, RECIPIENTS, Positions, RecordDecoder, frame_body
from app.fanout.replay import ReplayEntry, ReplayFrames
from app.fanout.subscribers import CATCHUP, CLOSED, LIVE, FilterGroup, StreamRegistry, Subscriber
from app.fanout.tail import TailReader
from app.fanout.tokens import STREAM, TokenCodec, TokenError, pack
from app.sse.framing import PING, format_comment, with_id
from app.sse.writer import Connection
from streams.errors import StreamError
from streams.kafka.topics import TopicManager
from streams.metrics import Histogram
from streams.schema.codec import AvroCodec
from streams.schema.registry import SchemaRegistry
from streams.settings import Settings
from streams.supervise import supervise

log = logging.getLogger(__name__)
SLOW = format_comment("closing: this client read too slowly; reconnect with Last-Event-ID to resume")
SHUTDOWN = format_comment("closing: the edge is restarting; reconnect with Last-Event-ID to resume")
FAILED = format_comment("closing: this edge cannot read the topic right now; reconnect with Last-Event-ID to resume")
SWEEP_S = 0.5


class HubClosed(StreamError):
    """The edge is shutting down; the client should retry (on another edge) shortly."""

    retriable = True
    status = 503
    title = "Edge shutting down"


class TooManyFilterGroups(StreamError):
    """The edge serves as many distinct filters as it may; a new one must wait or go to another edge."""

    retriable = True
    status = 503
    title = "Too many filter groups"


class Hub:
    """Fan records out from one tail reader per topic to every matching client."""

    def __init__(self, settings: Settings, registry: SchemaRegistry, topics: TopicManager) -> None:
        self.settings = settings
        self.tokens = TokenCodec(settings.stream_token_secret.get_secret_value().encode())
        self.decoder = RecordDecoder(AvroCodec.from_file(settings.schemas_dir / "envelope.avsc", registry),
                                     dlq_topic=settings.dlq_topic)
        self.undecodable = self.decoder.undecodable  # topic -> records skipped as not events (metrics read it)
        self.offsets = OffsetsReader(settings)
        self.topics = topics
        self.tails: dict[str, TailReader] = {}
        self.groups: dict[str, FilterGroup] = {}
        self.by_topic: dict[str, list[FilterGroup]] = {}
        self.subscribers: set[Subscriber] = set()
        self.streams = StreamRegistry()  # every open stream by id, hub-fed or not (the stream admin's view)
        # Catch-up and history get what they read and the callbacks they call, never the hub itself.
        self.catchup_ports = CatchUpPorts(self.tails, self.decoder.decode, self.tokens, self.attach, self.requeue,
                                          self.delivered)
        self.catchup = CatchUpPool(self.catchup_ports, settings)
        self.history = HistoryReader(settings, topics, self.offsets, self.tokens, self.decoder.decode)
        self.leases = 0
        self.deliveries = 0  # events written to clients (live, replayed and caught up)
        self.fallbacks = 0  # clients sent back to catch-up because their buffer overflowed
        self.slow_closed = 0  # clients closed because they stayed too slow
        self.latency = Histogram()  # ingress append to frames written, per event and filter group (s)
        self._rate: deque[tuple[float, int]] = deque(maxlen=int(10 / SWEEP_S))  # (time, deliveries) samples
        self.closing = False
        self._users: dict[str, int] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self._tail_lock = asyncio.Lock()
        self._started = False
        self._start_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.replay_frames = ReplayFrames(self.tokens)
        self.replays = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect the offsets reader and start the heartbeat sweep (done on first use)."""
        async with self._start_lock:
            if self._started:
                return
            if self.closing:
                raise HubClosed("the hub is stopping")
            await self.offsets.start()
            self._sweeper = supervise("sse-sweeper", self._sweep, context="sending heartbeats and closing slow "
                                      "clients", on_give_up=self._sweeper_failed)
            self._started = True
            log.info("Stream hub started.")
            default = Settings.model_fields["stream_token_secret"].default.get_secret_value()
            if self.settings.stream_token_secret.get_secret_value() == default:
                log.warning("ES_STREAM_TOKEN_SECRET is not set: resume tokens are signed with the public "
                            "development key. Set one secret, shared by every edge, in production.")

    async def stop(self) -> None:
        """Close every stream, then the readers; calling it twice is harmless."""
        self.close_all()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self.catchup.stop()
        await self.history.stop()
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        tails = list(self.tails.values())
        self.tails.clear()  # the same dict that catch-up reads
        for tail in tails:
            await tail.stop()
        await self.offsets.stop()
        if self._started:
            log.info("Stream hub stopped.")
        self._started = False

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def close_all(self) -> None:
        """End every stream with a comment telling the client to resume, and refuse new ones."""
        self.closing = True
        for sub in list(self.subscribers):
            self.close(sub, SHUTDOWN)

    def stats(self) -> dict[str, Any]:
        """Return counts an operator (or the load benchmark) can watch."""
        live = sum(len(group.live) for group in self.groups.values())
        return {
            "streams": len(self.subscribers), "live": live, "catching_up": len(self.subscribers) - live,
            "blocked": sum(1 for sub in self.subscribers if sub.conn.blocked),
            "direct_writes": sum(1 for sub in self.subscribers if sub.conn.direct),
            "queued_frames": sum(len(sub.conn.buffer) for sub in self.subscribers),
            "max_streams": self.settings.stream_max_clients, "filter_groups": len(self.groups),
            "tails": {topic: tail.pos for topic, tail in self.tails.items()},
            "catchup_waiting": self.catchup.waiting, "catchup_jobs": self.catchup.jobs_run,
            "replays": self.replays,
            "skipped_records": self.decoder.skipped, "undecodable": dict(self.undecodable),
        }

    # ------------------------------------------------------------------ streams

    def has_room(self) -> bool:
        """Tell whether one more stream fits under `stream_max_clients`."""
        return self.leases < self.settings.stream_max_clients

    async def prepare(self, flt: CompiledFilter) -> FilterGroup:
        """Make sure the filter's topics are tailed and take a lease on its group (TopicNotFound if unknown)."""
        if self.closing:
            raise HubClosed("the edge is shutting down")
        if flt.key not in self.groups and len(self.groups) >= self.settings.stream_max_filter_groups:
            raise TooManyFilterGroups(f"this edge serves {len(self.groups)} distinct filters, its limit "
                                      "(ES_STREAM_MAX_FILTER_GROUPS); use a filter other streams use, or retry")
        await self.start()
        for topic in flt.topics:
            await self._ensure_tail(topic)
        return self.join(flt)

    def join(self, flt: CompiledFilter) -> FilterGroup:
        """Take a lease on the group of a filter whose topics are tailed already."""
        group = self.groups.get(flt.key)
        if group is None:
            group = self.groups[flt.key] = FilterGroup(flt)
            for topic in group.topics:
                self.by_topic.setdefault(topic, []).append(group)
                self._users[topic] = self._users.get(topic, 0) + 1
                handle = self._idle.pop(topic, None)
                if handle is not None:
                    handle.cancel()
        group.members += 1
        self.leases += 1
        return group

    def hold_slot(self) -> None:
        """Count a stream the hub does not feed (a shared connection's member) against `stream_max_clients`."""
        self.leases += 1

    def release_slot(self) -> None:
        """Give back a slot taken by `hold_slot`."""
        self.leases -= 1

    def release(self, group: FilterGroup) -> None:
        """Give back a lease taken by `prepare`; the last one removes the group."""
        self.leases -= 1
        group.members -= 1
        if group.members > 0:
            return
        self.groups.pop(group.filter.key, None)
        for topic in group.topics:
            self.by_topic[topic].remove(group)
            self._users[topic] -= 1
            if self._users[topic] == 0:
                self._idle[topic] = asyncio.get_running_loop().call_later(
                    self.settings.stream_tail_idle_s, self._stop_idle_tail, topic)

    def layout(self, group: FilterGroup) -> dict[str, int]:
        """Return the partition count of each topic of a group."""
        return {topic: self.tails[topic].partitions for topic in group.topics}

    async def resume_positions(self, group: FilterGroup, token: str) -> Positions:
        """Return the positions a Last-Event-ID resumes from, first looking for new partitions when the
        token names more than this edge knows (it was issued by an edge that saw the topic grow)."""
        groups = self.tokens.decode(token, STREAM, group.scope)
        for topic, offsets in zip(group.topics, groups, strict=False):
            tail = self.tails[topic]
            if len(offsets) > tail.partitions:
                await tail.refresh()
        return self.decode_token(group, token)

    def decode_token(self, group: FilterGroup, token: str) -> Positions:
        """Return the positions a Last-Event-ID resumes from, raising TokenError if it does not fit."""
        groups = self.tokens.decode(token, STREAM, group.scope)
        if len(groups) != len(group.topics):
            raise TokenError("token does not cover this filter's topics")
        positions: Positions = {}
        for topic, offsets in zip(group.topics, groups, strict=True):
            count = self.tails[topic].partitions
            if len(offsets) > count:
                # Issued by an edge that already sees more partitions: this one reads them from their
                # first offset once its metadata has them (maybe again, never fewer).
                log.warning("A token names %d partitions of %s, which this edge sees %d of yet; the others are "
                            "read from their first offset once seen.", len(offsets), topic, count)
                offsets = offsets[:count]
            # Partitions added after the token was issued hold only newer events: read them whole.
            positions[topic] = offsets + [NEW] * (count - len(offsets))
        return positions

    def open(self, group: FilterGroup, conn: Connection, heartbeat_s: float, start: Positions | None, *,
             viewer: Viewer = NOBODY, batch_size: int = 1) -> Subscriber:
        """Register a started response: live at once, or catching up from `start`; `viewer` decides which
        targeted events it gets, `batch_size` how many events catch-up and replay put in one socket write."""
        sub = Subscriber(conn, group, heartbeat_s)
        sub.viewer = viewer
        sub.batch_size = batch_size
        self.subscribers.add(sub)
        if start is None:
            self._attach(sub)
        else:
            sub.position = start
            self._enqueue(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        """Forget a stream whose client went away (or that the hub closed); idempotent."""
        if sub.state == CLOSED:
            return
        sub.state = CLOSED
        sub.group.live.pop(sub, None)
        self.subscribers.discard(sub)
        sub.conn.on_drain = None
        self.release(sub.group)

    def close(self, sub: Subscriber, final: bytes) -> None:
        """End a stream from the server side with a final comment."""
        conn = sub.conn
        self.remove(sub)
        conn.close(final)

    # ------------------------------------------------------------------ live fan-out

    def _dispatch(self, tail: TailReader, partition: int, offset: int, event: dict[str, Any] | None) -> None:
        """Hand one record to every live group whose filter matches (called by tails, never awaits)."""
        tail.pos[partition] = offset + 1
        tail.dispatched += 1
        entry = ReplayEntry(partition, offset, event)
        tail.replay.append(entry)
        if event is None:
            return
        body = None
        tails = self.tails
        recipients = event.get(RECIPIENTS)  # None for every untargeted event: today's path, unchanged
        for group in self.by_topic.get(tail.topic, ()):
            if not group.live or not group.filter.matches(event):
                continue
            subs: Any = group.live
            if recipients is not None:  # targeted: only the addressed streams of the group, same shared frame
                subs = [sub for sub in group.live if addressed_to(recipients, sub.viewer)]
                if not subs:
                    continue
            if body is None:
                body = entry.body = frame_body(event)
            token = self.tokens.sign(STREAM, group.scope, pack([tails[t].pos for t in group.topics]))
            frame = with_id(token, body)
            behind = [sub for sub in subs if not sub.conn.write(frame)]
            self.deliveries += len(subs) - len(behind)
            if tail.ingress_ms is not None:  # once per event and group, never per client
                self.latency.observe(time.time() - tail.ingress_ms / 1000)
            for sub in behind:
                self._fall_behind(sub, tail.topic, partition, offset)
            if recipients is None:
                group.sent += 1  # each live member's count, once per group (Subscriber.events_delivered)
            else:
                for sub in subs:
                    if sub.state == LIVE:
                        sub.delivered += 1

    def _fall_behind(self, sub: Subscriber, topic: str, partition: int, offset: int) -> None:
        """Move a client whose buffer is full back to catch-up, from just before the record it missed."""
        group = sub.group
        position = self.tail_positions(group)
        position[topic][partition] = offset
        del group.live[sub]
        sub.delivered += group.sent - sub.mark  # what it got while live (not the record it missed)
        self.fallbacks += 1
        sub.state = CATCHUP
        if sub.lagging_since is None:
            sub.lagging_since = time.monotonic()
        log.info("A client fell behind at %s-%d@%d; it goes back to catch-up.", topic, partition, offset)
        self.requeue(sub, position)

    def tail_positions(self, group: FilterGroup) -> Positions:
        """Return a copy of the tails' positions for a group's topics."""
        return {topic: list(self.tails[topic].pos) for topic in group.topics}

    def at_tail(self, group: FilterGroup, position: Positions) -> bool:
        """Tell whether `position` is exactly where the tails stand (so joining them loses nothing)."""
        return all(position[topic] == self.tails[topic].pos for topic in group.topics)

    def requeue(self, sub: Subscriber, position: Positions) -> None:
        """Send a client back to catch-up from `position`, once its socket has drained."""
        sub.position = position
        if sub.conn.blocked:
            sub.conn.on_drain = lambda: self._enqueue(sub)
        else:
            self._enqueue(sub)

    def _enqueue(self, sub: Subscriber) -> None:
        if sub.state != CATCHUP:
            return
        assert sub.position is not None
        self._fit(sub.position)
        if self.at_tail(sub.group, sub.position):
            self._attach(sub)
        elif not self._replay(sub):
            self.catchup.submit(sub)

    def _fit(self, position: Positions) -> None:
        """Give a position the partitions its topics gained since it was taken (from their first offset)."""
        for topic, offsets in position.items():
            tail = self.tails.get(topic)
            if tail is not None and len(offsets) < tail.partitions:
                offsets.extend([NEW] * (tail.partitions - len(offsets)))

    def _replay(self, sub: Subscriber) -> bool:
        """Serve a client from the tails' replay buffers and join it live; False if they do not reach back."""
        group, start = sub.group, sub.position
        assert start is not None
        tails = self.tails
        if any(min(start[t], default=0) < 0 for t in group.topics):  # LOST or NEW: catch-up sorts them out
            return False
        if not all(tails[t].replay.covers(start[t], tails[t].pos) for t in group.topics):
            return False
        frames = self.replay_frames.build(group, start, tails)  # shared by every client resuming from `start`
        if any(recipients is not None for _, _, recipients in frames):
            frames = [entry for entry in frames if addressed_to(entry[2], sub.viewer)]
        taken = sub.conn.write_frames([entry[0] for entry in frames], sub.batch_size)  # up to batch_size per write
        self.deliveries += taken
        sub.delivered += taken
        if taken < len(frames):
            before = frames[taken - 1][1] if taken else start
            self.requeue(sub, {t: list(offsets) for t, offsets in before.items()})
            return True
        self.replays += 1
        self._attach(sub)
        return True

    def delivered(self, count: int) -> None:
        """Count events that catch-up wrote to clients."""
        self.deliveries += count

    def attach(self, subs: list[Subscriber]) -> None:
        """Join caught-up clients to the live tail (caller checked their position equals the tails')."""
        for sub in subs:
            if sub.state == CATCHUP:
                self._attach(sub)

    def _attach(self, sub: Subscriber) -> None:
        sub.state = LIVE
        sub.position = None
        sub.lagging_since = None
        sub.group.live[sub] = None
        sub.mark = sub.group.sent

    # ------------------------------------------------------------------ tails and heartbeats

    async def _ensure_tail(self, topic: str) -> TailReader:
        handle = self._idle.pop(topic, None)
        if handle is not None:
            handle.cancel()
        tail = self.tails.get(topic)
        if tail is not None:
            return tail
        async with self._tail_lock:
            tail = self.tails.get(topic)
            if tail is None:
                partitions = await self._partition_count(topic)
                tail = TailReader(self.settings, topic, partitions, self.decoder, self._dispatch,
                                  partition_count=lambda: self._partition_count(topic),
                                  on_give_up=lambda exc: self._tail_failed(topic))
                await tail.start()
                self.tails[topic] = tail
        return tail

    async def _partition_count(self, topic: str) -> int:
        return len(await self.topics.partitions(topic))

    def _tail_failed(self, topic: str) -> None:
        """Close the clients of a tail that cannot recover (they reconnect) and drop it, so a new one starts."""
        tail = self.tails.get(topic)
        for sub in [sub for sub in self.subscribers if topic in sub.group.topics]:
            self.close(sub, FAILED)
        if tail is not None and self.tails.get(topic) is tail:
            del self.tails[topic]
            self._stop_later(tail.stop(), f"stop-tail-{topic}")

    def _sweeper_failed(self, exc: BaseException) -> None:
        """Close every client (they reconnect) when heartbeats cannot go on; the next stream starts a new sweep."""
        for sub in list(self.subscribers):
            self.close(sub, FAILED)
        self._sweeper = None
        self._started = False

    def _stop_later(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _stop_idle_tail(self, topic: str) -> None:
        self._idle.pop(topic, None)
        if self._users.get(topic, 0) == 0 and topic in self.tails:
            self._stop_later(self.tails.pop(topic).stop(), f"stop-tail-{topic}")

    async def _sweep(self) -> None:
        """Send heartbeats to idle clients and close clients that stayed too slow."""
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep(time.monotonic())

    def deliveries_per_s(self) -> float:
        """Return deliveries per second over the last ~10 s (sampled by the sweep)."""
        if len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def sweep(self, now: float) -> None:
        """Ping clients idle for their heartbeat interval; close those blocked or lagging too long."""
        self._rate.append((now, self.deliveries))
        slow_s = self.settings.stream_slow_client_timeout_s
        for sub in list(self.subscribers):
            conn = sub.conn
            if conn.closed:  # its writes failed (logged by the connection): stop feeding it
                self.remove(sub)
                continue
            blocked = conn.blocked_since
            lagging = sub.lagging_since
            if (blocked is not None and now - blocked > slow_s) or (lagging is not None and now - lagging > slow_s):
                log.info("Closing a client that stayed too slow for %.0fs.", slow_s)
                self.slow_closed += 1
                self.close(sub, SLOW)
            elif blocked is None and now - conn.last_write >= sub.heartbeat_s:
                conn.write(PING)
