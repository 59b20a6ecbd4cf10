"""Deduplication on event id: the ids seen within a window, kept in memory and in a compacted changelog.

Table key: the event id (UTF-8), plus NUL and the DLQ position for a record replayed from the DLQ
(so a replay is not taken for a copy of the event it failed as). Table value: 28 bytes, the event's
record timestamp (ms), when this worker processed it (ms, its clock), and its ingress partition and
offset (its origin).

Why keys are ids and the table is partitioned like the ingress topic: ingress records are keyed by
subject, and events without subject are placed by id (streams/kafka/producer.py), so every copy of an
event (a publisher retrying, the same POST twice, a replay of the same bytes) lands in one ingress
partition and is checked against one table partition, owned by the worker that owns the ingress
partition: no lookup elsewhere, and the state moves with the partition on a rebalance. The same id
published under two different subjects counts as two events.

Bounded memory: ids are dropped once both timestamps are older than the window, and the oldest go
first when a partition holds more than `max_ids`. Each drop is a tombstone in the changelog (the
caller writes it), so a restart does not bring them back.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import NamedTuple

ENTRY = struct.Struct(">qqiq")


class Seen(NamedTuple):
    """A table value, unpacked."""

    ts_ms: int
    processed_ms: int
    partition: int
    offset: int


class Verdict(Enum):
    """What the table says about a record."""

    NEW = "new"  # not seen within the window: forward it
    DUPLICATE = "duplicate"  # another record with this id was seen within the window: drop it
    REPROCESSED = "reprocessed"  # this very record (same origin) was seen: a restart replays it


def dedup_key(event_id: str, replay_of: bytes | None = None) -> bytes:
    """Return the table key of an event id (and of the DLQ entry a replayed record comes from)."""
    key = event_id.encode()
    return key + b"\0" + replay_of if replay_of else key


class DedupIndex:
    """Window checks over one dict per ingress partition, with arrival order for expiry.

    The state of a partition is what its changelog partition says (streams/worker/recovery.py replays it
    with `apply` when the partition is assigned, then `rebuild` orders it); one dict per partition keeps
    the same id under two subjects apart and makes giving a partition away one `drop`.
    """

    def __init__(self, window_ms: int, max_ids: int) -> None:
        self.window_ms, self.max_ids = window_ms, max_ids
        self._stores: dict[int, dict[bytes, bytes]] = {}
        # partition -> (expiry basis ms, key, offset), in the order the ids were remembered
        self._order: dict[int, deque[tuple[int, bytes, int]]] = {}
        self.expired = 0
        self.evicted = 0

    def store(self, partition: int) -> dict[bytes, bytes]:
        """Return the ids held for a partition (key -> table value)."""
        store = self._stores.get(partition)
        if store is None:
            store = self._stores[partition] = {}
        return store

    def held(self) -> set[int]:
        """Return the partitions that have state here."""
        return set(self._stores)

    def check(self, key: bytes, ts_ms: int, partition: int, offset: int) -> tuple[Verdict, Seen | None]:
        """Classify a record by what the table holds for its key."""
        raw = self.store(partition).get(key)
        if raw is None:
            return Verdict.NEW, None
        seen = Seen._make(ENTRY.unpack(raw))
        if seen.offset == offset and seen.partition == partition:
            return Verdict.REPROCESSED, seen
        if abs(ts_ms - seen.ts_ms) < self.window_ms:
            return Verdict.DUPLICATE, seen
        return Verdict.NEW, seen

    def remember(self, key: bytes, ts_ms: int, partition: int, offset: int, now_ms: int) -> bytes:
        """Store a record's id and return the table value (the caller writes it to the changelog)."""
        value = ENTRY.pack(ts_ms, now_ms, partition, offset)
        self.store(partition)[key] = value
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = deque()
        order.append((max(ts_ms, now_ms), key, offset))
        return value

    def forget(self, key: bytes, partition: int, offset: int) -> bool:
        """Drop a key if it still names this origin; tell whether it did (then write a tombstone)."""
        store = self.store(partition)
        raw = store.get(key)
        if raw is not None and ENTRY.unpack(raw)[2:] == (partition, offset):
            del store[key]
            return True
        return False

    def expire(self, now_ms: int, partitions: Iterable[int]) -> list[tuple[int, bytes]]:
        """Drop ids older than the window (and the oldest beyond max_ids); return (partition, key) dropped."""
        cutoff = now_ms - self.window_ms
        dropped: list[tuple[int, bytes]] = []
        for partition in partitions:
            order = self._order.get(partition)
            while order and (order[0][0] < cutoff or len(order) > self.max_ids):
                basis, key, offset = order.popleft()
                if self.forget(key, partition, offset):
                    dropped.append((partition, key))
                    if basis < cutoff:
                        self.expired += 1
                    else:
                        self.evicted += 1
        return dropped

    def apply(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record (a tombstone deletes); call `rebuild` when the replay is done."""
        store = self.store(partition)
        if value is None:
            store.pop(key, None)
        elif len(value) == ENTRY.size:
            store[key] = value

    def rebuild(self, partition: int) -> int:
        """Order a partition's ids for expiry after a changelog replay; return how many it holds."""
        rows = sorted((seen.offset, max(seen.ts_ms, seen.processed_ms), key)
                      for key, seen in ((k, Seen._make(ENTRY.unpack(v))) for k, v in self.store(partition).items()))
        self._order[partition] = deque((basis, key, offset) for offset, basis, key in rows)
        return len(rows)

    def drop(self, partition: int) -> None:
        """Forget a partition this worker no longer owns."""
        self._stores.pop(partition, None)
        self._order.pop(partition, None)

    def last(self, partition: int) -> Seen | None:
        """Return the entry of the highest ingress offset held for a partition (after `rebuild`)."""
        store = self.store(partition)
        for _, key, offset in reversed(self._order.get(partition, ())):
            raw = store.get(key)
            if raw is not None:
                seen = Seen._make(ENTRY.unpack(raw))
                if seen.offset == offset:
                    return seen
        return None
