"""The worker's side of the consumer group: one aiokafka group consumer on the ingress topic, its
rebalance callbacks, and commits of the offsets streams/worker/offsets.py proves.

Why not Faust's consumer: with Faust 0.15 a fetched batch was at times never delivered around a
takeover (a guard that read again after 5 s of silence was needed, and did not always help: a worker
restarted after kill -9 logged that it was reading again every 5 s and processed nothing), Faust could
count records as acked across a seek, and its commit took the run of acked offsets with a check that
skipped offset 0, so a commit could pass a record still being written. aiokafka's group consumer does
the group protocol, heartbeats and fetching; the worker owns the batch loop and the commits.

Rebalances (eager, as aiokafka's): `on_partitions_revoked` waits until the batch being processed has
had its first round of acknowledgments, cancels the retries of revoked partitions (what was not
acknowledged is read again by the next owner), commits what is complete and forgets them;
`on_partitions_assigned` grows the dedup changelog if the ingress topic has more partitions now, replays
the changelog of the partitions gained, and notes where records may have been forwarded already.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)
# Ingress partitions added while the worker runs are noticed at the next metadata refresh (then the group
# rebalances and the changelog follows); aiokafka's default would be five minutes.
METADATA_MAX_AGE_MS = 10_000
FETCH_BYTES = 4 * 1024 * 1024

Partitions = set[TopicPartition]


def group_consumer(settings: Settings) -> AIOKafkaConsumer:
    """Return the (unstarted) ingress consumer of the worker group; offsets are committed by hand."""
    session_ms = int(settings.worker_session_timeout_s * 1000)
    return clients.consumer(
        settings, "worker", group_id=settings.worker_app_id, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=settings.worker_fetch_max_wait_ms,
        max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=4 * FETCH_BYTES,
        session_timeout_ms=session_ms, heartbeat_interval_ms=max(session_ms // 10, 500),
        rebalance_timeout_ms=max(2 * session_ms, 20_000), metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )


class Rebalance(ConsumerRebalanceListener):
    """Hands the group's rebalance callbacks to the worker."""

    def __init__(self, revoked: Callable[[Partitions], Awaitable[None]],
                 assigned: Callable[[Partitions], Awaitable[None]]) -> None:
        self._revoked, self._assigned = revoked, assigned

    async def on_partitions_revoked(self, revoked: Partitions) -> None:
        await self._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Partitions) -> None:
        await self._assigned(set(assigned))
