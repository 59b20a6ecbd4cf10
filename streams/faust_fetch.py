"""Faust's fetch loop, tuned for the live path: no task pair per record, a short fetch wait.

Faust's `Consumer._drain_messages` (faust/transport/consumer.py) awaits
`wait_first(callback(message), suspend_flow.wait())` for every record, which creates two tasks per
record. Measured on this machine that caps a worker at about 6,000 records/s with an agent that does
nothing but ack; the same loop checking the suspend flag between records runs about 17,000/s.

The loop also delivers every record that Faust's getmany yields, where Faust's drops records below
the partition's read offset and takes a jump above it for a gap in the log, which it marks as acked.
Around a rebalance a batch fetched before the seek to the committed offsets can arrive after it, and
then the jump is no gap: Faust's bookkeeping committed records that were never processed (records
were lost that way in the two-worker test). Delivering everything instead means a record may arrive
twice; the pipeline acks the second copy without writing anything (streams/pipeline.py). The ingress
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
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

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
