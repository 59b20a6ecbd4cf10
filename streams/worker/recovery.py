"""After a crash or a takeover: the dedup state of the partitions taken over (`ChangelogReplay`), and
which destinations already hold a copy of a record read again (`OriginScan`).

The dedup changelog `{app id}-dedup-changelog` is partitioned like the ingress topic (entry of ingress
partition p in changelog partition p), compacted and deleted after twice the window. On assignment the
worker reads each new partition's changelog from its start, and for a partition it kept, only what was
appended since its last read (another owner may have written in between).


A worker killed after sending a record's outputs but before its offset was committed leaves records
that the next owner reads again; some of their outputs landed, some may not have. For those records
(streams/worker/pipeline.py says which), the destination topics are read from a little before the record
was first processed (`recovery_scan_slack_s`, for clock skew) to their end, collecting the header
es-origin, and only the destinations without a copy get one. No event is lost and none is forwarded
twice, whenever the kill happened.

Each destination topic is read once per rebalance (the cache is reset on every assignment; an earlier
start reads only the stretch not read yet), at most `recovery_scan_max_records` records per read; past
that cap a copy may go unnoticed and be forwarded again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import clients
from streams.settings import Settings
from streams.worker.dedup import DedupIndex

log = logging.getLogger(__name__)
ORIGIN = "es-origin"


def origin_of(topic: str, partition: int, offset: int) -> bytes:
    """Return the es-origin header value of a record read at topic/partition/offset."""
    return f"{topic}/{partition}/{offset}".encode()


class OriginScan:
    """Reads destination topics for es-origin headers; results are cached until `reset`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._seen: dict[str, tuple[int, set[bytes]]] = {}  # topic -> (read from ms, origins found)
        self._consumer: AIOKafkaConsumer | None = None
        self.scans = 0

    def reset(self) -> None:
        """Forget what was read (on every rebalance: other workers may have written since)."""
        self._seen.clear()

    async def stop(self) -> None:
        """Close the consumer; calling it twice is harmless."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def present(self, topics: Iterable[str], origin: bytes, since_ms: int) -> set[str]:
        """Return the topics, among `topics`, that hold a record with this es-origin."""
        found = set()
        start = since_ms - int(self.settings.recovery_scan_slack_s * 1000)
        for topic in topics:
            cached = self._seen.get(topic)
            if cached is None:
                cached = self._seen[topic] = (start, await self._read(topic, start))
            elif cached[0] > start:  # an earlier record: read only the stretch not read yet
                cached = self._seen[topic] = (start, cached[1] | await self._read(topic, start, cached[0]))
            if origin in cached[1]:
                found.add(topic)
        return found

    async def _read(self, topic: str, start_ms: int, end_ms: int | None = None) -> set[bytes]:
        consumer = await self._client()
        consumer.assign([TopicPartition(topic, 0)])  # metadata covers assigned topics only: add this one
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return set()
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: start_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        if end_ms is not None:
            stops = await consumer.offsets_for_times({tp: end_ms for tp in tps})
            ends = {tp: stops[tp].offset if stops.get(tp) is not None else ends[tp] for tp in tps}
        todo = {}
        for tp in tps:
            found = starts.get(tp)
            if found is not None and found.offset < ends[tp]:
                consumer.seek(tp, found.offset)
                todo[tp] = ends[tp]
        origins: set[bytes] = set()
        read = 0
        cap = self.settings.recovery_scan_max_records
        while todo and read < cap:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset >= todo.get(tp, -1):
                        continue
                    read += 1
                    for name, value in rec.headers or ():
                        if name == ORIGIN:
                            origins.add(value)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        self.scans += 1
        if todo:
            log.warning("Stopped reading %s for forwarded copies after %d records (recovery_scan_max_records); "
                        "some records may be forwarded twice.", topic, read)
        log.info("Read %d records of %s from %d ms for copies forwarded before a restart; %d found.",
                 read, topic, start_ms, len(origins))
        return origins

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = clients.reader(self.settings, "worker-scan")
            await consumer.start()
            self._consumer = consumer
        return self._consumer


class ChangelogReplay:
    """Brings the dedup index of assigned ingress partitions up to date from their changelog partitions."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self._consumer: AIOKafkaConsumer | None = None
        self.read_to: dict[int, int] = {}  # partition -> changelog offset the index reflects (exclusive)

    async def stop(self) -> None:
        """Close the consumer; calling it twice is harmless."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def replay(self, partitions: Iterable[int], dedup: DedupIndex) -> int:
        """Read each partition's changelog from where the index stands to its end; return records applied."""
        consumer = await self._client()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return 0
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        todo = {}
        for tp in tps:
            start = max(self.read_to.get(tp.partition, 0), starts[tp])
            if tp.partition not in self.read_to:
                dedup.drop(tp.partition)  # not ours since the last replay: start from nothing
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
            self.read_to[tp.partition] = ends[tp]
        applied = 0
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=20_000)
            for tp, records in batch.items():
                end = todo.get(tp, -1)
                for rec in records:
                    if rec.offset < end and rec.key is not None:
                        dedup.apply(tp.partition, rec.key, rec.value)
                        applied += 1
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        for tp in tps:
            dedup.rebuild(tp.partition)
        return applied

    def forget(self, partitions: Iterable[int], dedup: DedupIndex) -> None:
        """Drop the state of partitions this worker no longer owns."""
        for partition in partitions:
            self.read_to.pop(partition, None)
            dedup.drop(partition)

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = clients.reader(self.settings, "worker-restore", max_partition_fetch_bytes=8 * 1024 * 1024)
            await consumer.start()
            self._consumer = consumer
        return self._consumer
