"""Consumer-group offsets without group membership: commit, read, lag and delete, for many groups
over one admin connection (so a durable SSE connection costs no Kafka consumer while idle)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.structs import OffsetAndMetadata

from streams.errors import BrokerUnavailable, StreamError
from streams.kafka import clients
from streams.settings import Settings, get_settings

log = logging.getLogger(__name__)
# Kafka error codes (org.apache.kafka.common.protocol.Errors) handled here.
COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 14, 15, 16
GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP = 69, 68
RETRY_COORDINATOR = {COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR}


class GroupOffsets(clients.AdminSession):
    """Commit and inspect committed offsets of consumer groups that have no live members.

    Commits use generation -1 and an empty member id, which Kafka accepts for groups without
    members ("simple" groups), so a group exists exactly as long as it has committed offsets.
    """

    name = "groups"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings or get_settings())
        self._coordinators: dict[str, int] = {}

    async def _coordinator(self, group: str) -> int:
        """Find the group's coordinator, waiting while a fresh broker creates __consumer_offsets."""
        node = self._coordinators.get(group)
        if node is not None:
            return node
        delay, deadline = 0.05, asyncio.get_running_loop().time() + self.settings.request_timeout_ms / 1000
        while True:
            try:
                node = await self._client().find_coordinator(group)
                break
            except KafkaError as exc:
                if not exc.retriable or asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._coordinators[group] = node
        return node

    async def _send(self, group: str, request: object) -> object:
        """Send a request to the group's coordinator, finding it again once if it moved."""
        for attempt in (1, 2):
            try:
                node = await self._coordinator(group)
                return await self._client()._send_request(request, node)  # noqa: SLF001 - no public per-node send
            except KafkaError as exc:
                self._coordinators.pop(group, None)
                if attempt == 2:
                    raise BrokerUnavailable(f"group {group!r}: {exc}") from exc
        raise AssertionError("unreachable")

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit `offsets` (the next offset to read, per partition) for `group`."""
        if not offsets:
            return
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for tp, offset in offsets.items():
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset, ""))
        request = OffsetCommitRequest(group, OffsetCommitRequest.DEFAULT_GENERATION_ID, "",
                                      OffsetCommitRequest.DEFAULT_RETENTION_TIME, list(by_topic.items()))
        delay, deadline = 0.05, asyncio.get_running_loop().time() + self.settings.request_timeout_ms / 1000
        while True:
            response = await self._send(group, request)
            codes = {code for _, parts in response.topics for _, code in parts}  # type: ignore[attr-defined]
            if not codes - {0}:
                return
            # A fresh broker is still loading __consumer_offsets, or the coordinator moved: find it again.
            if codes & RETRY_COORDINATOR and asyncio.get_running_loop().time() + delay < deadline:
                self._coordinators.pop(group, None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            err = for_code(max(codes))
            raise StreamError(f"committing offsets for group {group!r} failed: {err.__name__}")

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """Return the group's committed offsets (empty when the group has none)."""
        return {tp: meta.offset for tp, meta in (await self.committed_with_metadata(group)).items()}

    async def committed_with_metadata(self, group: str) -> dict[TopicPartition, OffsetAndMetadata]:
        """Return the group's committed offsets with the metadata each commit carries."""
        try:
            node = await self._coordinator(group)
            found = await self._client().list_consumer_group_offsets(group, node)
        except KafkaError as exc:
            self._coordinators.pop(group, None)
            raise BrokerUnavailable(f"reading offsets of group {group!r} failed: {exc}") from exc
        return {tp: meta for tp, meta in found.items() if meta.offset >= 0}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Return the high watermark of each partition."""
        try:
            return await self._reader().end_offsets(list(partitions))
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading end offsets failed: {exc}") from exc

    async def start_offsets(self, partitions: Iterable[TopicPartition], start: str | int) -> dict[TopicPartition, int]:
        """Return where a reader starting at `start` begins: 'latest', 'earliest' or a time in epoch ms."""
        parts = list(partitions)
        try:
            if start == "latest":
                return await self._reader().end_offsets(parts)
            if start == "earliest":
                return await self._reader().beginning_offsets(parts)
            found = await self._reader().offsets_for_times({tp: int(start) for tp in parts})
            ends = await self._reader().end_offsets(parts)
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading start offsets failed: {exc}") from exc
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in parts}

    async def lag(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Return high watermark minus committed offset per partition (None where nothing is committed)."""
        parts = list(partitions)
        committed = await self.committed(group)
        ends = await self.end_offsets(parts)
        return {tp: (ends[tp] - committed[tp]) if tp in committed else None for tp in parts}

    async def delete(self, group: str) -> bool:
        """Delete the group and its offsets; False when it did not exist."""
        response = await self._send(group, DeleteGroupsRequest([group]))
        self._coordinators.pop(group, None)
        [(_, code)] = response.results  # type: ignore[attr-defined]
        if code in (0, GROUP_ID_NOT_FOUND):
            return code == 0
        if code == NON_EMPTY_GROUP:
            raise StreamError(f"group {group!r} still has live members and cannot be deleted")
        raise StreamError(f"deleting group {group!r} failed: {for_code(code).__name__}")
