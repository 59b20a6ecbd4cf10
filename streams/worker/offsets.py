"""Which ingress offsets the worker may commit: per partition, everything below the lowest record whose
work is not complete (every output acknowledged, its dedup changelog entry written).

The worker registers each record it takes (`take`, in offset order) and marks it complete when the last
of its writes is acknowledged (`complete`, in any order). `commit_point` is then the offset of the oldest
record still open, or the one after the last record taken when none is: a commit there cannot pass a
record that is not done, whatever order the acknowledgments come back in.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """The open records of one ingress partition, since it was assigned."""

    __slots__ = ("_open", "_next", "committed")

    def __init__(self) -> None:
        self._open: dict[int, Any] = {}  # offset -> its work, for records taken and not complete, in offset order
        self._next: int | None = None  # the offset after the last record taken
        self.committed: int | None = None  # the last offset committed by this worker

    def take(self, offset: int, work: Any = None) -> None:
        """Register a record taken from the partition with its work (None: complete already, nothing to write)."""
        if work is not None:
            self._open[offset] = work
        self._next = offset + 1

    def complete(self, offset: int, work: Any) -> None:
        """Mark a record's work as complete (a work from before a rebalance does not count)."""
        if self._open.get(offset) is work:
            del self._open[offset]

    def open(self) -> int:
        """Return how many records are taken and not complete."""
        return len(self._open)

    def commit_point(self) -> int | None:
        """Return the offset to commit (the next record to read after a restart), or None before any record."""
        for offset in self._open:
            return offset
        return self._next

    def due(self) -> int | None:
        """Return the commit point if it moved since the last commit, else None."""
        point = self.commit_point()
        return point if point is not None and point != self.committed else None
