"""The recent past of one topic, decoded, so a client a little behind resumes from memory.

Reconnecting clients (and slow ones back from an overflow) are usually only seconds behind. Reading
those seconds from Kafka once per client costs a fetch and a decode each; after an edge restart
thousands of clients do it at once. The tail keeps its last `stream_replay_records` records here
(filled from the log when the tail starts), and a client whose position lies inside is served by
walking this buffer and joins the live tail in the same step. Anything older goes to catch-up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from app.fanout.records import RECIPIENTS, Positions, frame_body
from app.fanout.subscribers import FilterGroup
from app.fanout.tokens import STREAM, TokenCodec, pack
from app.sse.framing import with_id


class ReplayEntry:
    """One record as the tail saw it: position, decoded event, and its framed body once built."""

    __slots__ = ("partition", "offset", "event", "body")

    def __init__(self, partition: int, offset: int, event: dict[str, Any] | None) -> None:
        self.partition = partition
        self.offset = offset
        self.event = event
        self.body: bytes | None = None


class ReplayBuffer:
    """A bounded window of records; `low[p]` is the first offset of partition p it holds all of."""

    def __init__(self, partitions: int, size: int, start: list[int]) -> None:
        self.size = size
        self.entries: deque[ReplayEntry] = deque()
        self.low = list(start)  # every record of partition p in [low[p], tail position) is held

    def append(self, entry: ReplayEntry) -> None:
        """Add the record the tail just passed, dropping the oldest beyond `size`."""
        if self.size <= 0:
            self.low[entry.partition] = entry.offset + 1
            return
        self.entries.append(entry)
        if len(self.entries) > self.size:
            old = self.entries.popleft()
            self.low[old.partition] = old.offset + 1

    def covers(self, position: list[int], tail: list[int]) -> bool:
        """Tell whether every record from `position` up to the tail's position is held here."""
        return all(low <= at <= end for low, at, end in zip(self.low, position, tail, strict=True))

    def since(self, position: list[int]) -> list[ReplayEntry]:
        """Return the held records at or after `position`, oldest first (per partition in order)."""
        pending = set(range(len(position)))
        newer: list[ReplayEntry] = []
        for entry in reversed(self.entries):
            if entry.offset < position[entry.partition]:
                pending.discard(entry.partition)
                if not pending:
                    break
            else:
                newer.append(entry)
        newer.reverse()
        return newer


class ReplaySource(Protocol):
    """What replay reads of a tail (a `TailReader` is one)."""

    @property
    def replay(self) -> ReplayBuffer:
        """Return the tail's window of recent records."""
        ...

    @property
    def dispatched(self) -> int:
        """Return how many records the tail has passed (versions the frames built from its window)."""
        ...

    @property
    def generation(self) -> int:
        """Return a number no other tail of this process had (a recreated tail counts `dispatched` from 0)."""
        ...


# One replayed event: its frame, the position after it, and its `recipients` (None: untargeted), so each
# client of a shared list still gets only what `app.fanout.filters.addressed_to` lets it see.
ReplayFrame = tuple[bytes, Positions, list[str] | None]


class ReplayFrames:
    """Frames from a start position up to the tails, built once per filter, start and tail state:
    the thousands of clients that resume from one token after a restart share one list."""

    def __init__(self, tokens: TokenCodec, max_entries: int = 256) -> None:
        self.tokens = tokens
        self.max_entries = max_entries
        self._cache: dict[tuple[Any, ...], list[ReplayFrame]] = {}

    def build(self, group: FilterGroup, start: Positions,
              tails: Mapping[str, ReplaySource]) -> list[ReplayFrame]:
        """Return (frame, position after it, recipients) for each matching held record from `start`."""
        key = (group.filter.key, tuple(tuple(start[t]) for t in group.topics),
               tuple((tails[t].generation, tails[t].dispatched) for t in group.topics))
        frames = self._cache.get(key)
        if frames is not None:
            return frames
        position = {t: list(start[t]) for t in group.topics}
        frames = []
        for topic in group.topics:
            for entry in tails[topic].replay.since(position[topic]):
                position[topic][entry.partition] = entry.offset + 1
                if entry.event is None or not group.filter.matches(entry.event):
                    continue
                if entry.body is None:
                    entry.body = frame_body(entry.event)
                token = self.tokens.sign(STREAM, group.scope, pack([position[t] for t in group.topics]))
                frames.append((with_id(token, entry.body), {t: list(offsets) for t, offsets in position.items()},
                               entry.event.get(RECIPIENTS)))
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = frames
        return frames
