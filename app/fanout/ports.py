"""The seam between the hub and catch-up: what catch-up reads and the hub callbacks it calls.

Catch-up never holds the Hub (nor imports it): the hub builds one `CatchUpPorts` and hands it over.
History takes its readers as plain constructor arguments, and replay reads tails through its own
`ReplaySource`, so no module below the hub imports it, not even for types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.fanout.records import Positions
from app.fanout.subscribers import Subscriber
from app.fanout.tokens import TokenCodec

# Decode one Kafka record into its event, or None for a record that is not one (`RecordDecoder.decode`).
Decode = Callable[[Any], Awaitable[dict[str, Any] | None]]


class TailView(Protocol):
    """What a reader behind the live tail reads of it (a `TailReader` is one)."""

    @property
    def partitions(self) -> int:
        """Return the topic's partition count."""
        ...

    @property
    def pos(self) -> list[int]:
        """Return the next offset the tail delivers, per partition."""
        ...


@dataclass(frozen=True, slots=True)
class CatchUpPorts:
    """Hold what catch-up reads and the hub callbacks it calls, so it depends on these alone."""

    tails: Mapping[str, TailView]  # the hub's own dict of tails by topic, so it is always current
    decode: Decode
    tokens: TokenCodec
    attach: Callable[[list[Subscriber]], None]  # join clients level with the tails to the live tail
    requeue: Callable[[Subscriber, Positions], None]  # queue a client again from a position, once drained
    delivered: Callable[[int], None]  # count events written to clients
