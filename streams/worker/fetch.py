"""Faust's fetch loop tuned for the live path (no task pair per record, a short fetch wait), and a
guard that fetches again what Faust fetched but never delivered.

Faust's `Consumer._drain_messages` (faust/transport/consumer.py) awaits
`wait_first(callback(message), suspend_flow.wait())` for every record, which creates two tasks per
record. Measured on this machine that caps a worker at about 6,000 records/s with an agent that does
nothing but ack; the same loop checking the suspend flag between records runs about 17,000/s.

The loop also delivers every record that Faust's getmany yields, where Faust's drops records below
the partition's read offset and takes a jump above it for a gap in the log, which it marks as acked.
Around a rebalance a batch fetched before the seek to the committed offsets can arrive after it, and
then the jump is no gap: Faust's bookkeeping committed records that were never processed (records
were lost that way in the two-worker test). Delivering everything instead means a record may arrive
twice; the pipeline acks the second copy without writing anything (streams/worker/pipeline.py). The ingress
topic is neither compacted nor transactional, so it has no real gaps; if it had one, commits would
stop at it, which loses nothing. The plain await can outlast a whole rebalance (the conductor waits
on flow control), so the loop stops the batch when the generation changed meanwhile.

`lean_consumer` returns a Consumer class with that loop and an aiokafka consumer thread whose
`fetch_max_wait_ms` comes from settings instead of Faust's fixed 1500 ms: aiokafka keeps one fetch
per broker in flight, so a partition whose buffer just drained waits for another partition's long
poll, which at low rates adds up to that much latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

log = logging.getLogger(__name__)

YIELD_EVERY = 100  # records between two returns to the event loop, as in Faust


def lean_consumer(fetch_max_wait_ms: int) -> type[Consumer]:
    """Return a Faust aiokafka Consumer class with the lean fetch loop and the given fetch wait."""

    class ConsumerThread(AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when aiokafka builds its Fetcher
            return consumer

    class LeanConsumer(Consumer):
        def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:
            await _lean_drain(self, fetcher)

    return LeanConsumer


async def _lean_drain(consumer: Any, fetcher: Any) -> None:
    """Faust's drain loop with one await per record, delivering every record getmany yields."""
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    suspended = consumer.suspend_flow.is_set
    read_offsets = consumer._read_offset
    app = consumer.app
    commit_every = consumer._commit_every
    sleep = asyncio.sleep
    since_yield = 0
    try:
        while not (consumer_stopped() or fetcher_stopped()):
            records = getmany(timeout=1.0)
            await sleep(0)
            if consumer.should_stop:
                continue
            async for tp, message in records:
                since_yield += 1
                if since_yield > YIELD_EVERY:
                    await sleep(0)
                    since_yield = 0
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
                if suspended():
                    break  # a rebalance started: stop delivering, as wait_first would
                await callback(message)  # may wait out a whole rebalance (flow control)
                if message.generation_id != app.consumer_generation_id or suspended():
                    break  # the rest of this batch belongs to the previous generation
                read = read_offsets[tp]
                if read is None or message.offset > read:
                    read_offsets[tp] = message.offset  # kept for Faust's livelock detector
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise


def highwater(consumer: Any, tp: Any) -> int | None:
    """Return the last high watermark fetched for a partition, or None while it is unknown."""
    try:
        return consumer.highwater(tp)
    except (AssertionError, KeyError, AttributeError):  # not (or no longer) assigned in aiokafka
        return None


class RefetchGuard:
    """Seeks back partitions whose fetched records Faust never delivered.

    Around a takeover Faust 0.15 can drop a fetched batch (seen here with its own fetch loop as well as
    this one; 9 of 20 takeovers in a two-workers-one-killed run needed this guard): no record of it is acked,
    so the commit stops there, or table recovery waits for changelog records forever, and nothing
    fetches them again. A partition that is behind and gets nothing for `stall_s` is sought back:
    stream partitions to their committed offsets, changelog partitions to the next offset recovery
    needs. Both take records delivered twice (the pipeline forwards each once; recovery skips offsets
    it has applied).
    """

    def __init__(self, app: Any, topic: str, stall_s: float, idle: Callable[[int, float], bool],
                 touch: Callable[[int], None]) -> None:
        self.app, self.topic, self.stall_s, self.idle, self.touch = app, topic, stall_s, idle, touch
        self._recovery: dict[Any, tuple[int, float]] = {}  # changelog tp -> (offset applied, since when)

    async def check(self) -> None:
        """Look once (the worker calls this every second)."""
        if self.app.rebalancing:
            await self._check_recovery()
            return
        self._recovery.clear()
        consumer = self.app.consumer
        if not consumer.flow_active:
            return
        stuck = []
        for tp in consumer.assignment():
            if tp.topic == self.topic:
                committed, high = consumer._committed_offset.get(tp), highwater(consumer, tp)
                if high is not None and (committed or 0) < high and self.idle(tp.partition, self.stall_s):
                    stuck.append(tp.partition)
        if stuck:
            log.warning("Ingress partitions %s have records left but none arrived for %g s; reading again "
                        "from the committed offsets.", sorted(stuck), self.stall_s)
            for partition in stuck:
                self.touch(partition)
            await consumer.perform_seek()

    async def _check_recovery(self) -> None:
        recovery = self.app.tables.recovery
        if not recovery.in_recovery:
            return
        now, stuck = time.monotonic(), {}
        for tp in list(recovery.active_tps):
            offset = recovery.active_offsets.get(tp, -1)
            if offset >= recovery.active_highwaters.get(tp, -1):
                continue
            seen = self._recovery.get(tp)
            if seen is None or seen[0] != offset:
                self._recovery[tp] = (offset, now)
            elif now - seen[1] > self.stall_s:
                stuck[tp] = max(offset + 1, 0)
                self._recovery[tp] = (offset, now)
        if stuck:
            log.warning("Table recovery got nothing from %s for %g s; fetching again from offsets %s.",
                        sorted(f"{tp.topic}/{tp.partition}" for tp in stuck), self.stall_s, sorted(stuck.values()))
            await self.app.consumer.seek_wait(stuck)
