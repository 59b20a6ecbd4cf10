"""Progress: the commit point never passes a record whose work is not complete, in whatever order works finish."""

from __future__ import annotations

from streams.worker.offsets import Progress


def test_nothing_to_commit_before_the_first_record() -> None:
    assert Progress().commit_point() is None and Progress().due() is None


def test_commit_point_stops_at_the_oldest_open_record_while_later_ones_finish() -> None:
    progress, held, later = Progress(), object(), [object() for _ in range(3)]
    progress.take(10, held)
    for offset, work in enumerate(later, 11):
        progress.take(offset, work)
        progress.complete(offset, work)
    assert progress.commit_point() == 10 and progress.open() == 1
    progress.complete(10, held)
    assert progress.commit_point() == 14


def test_records_without_writes_are_complete_at_once() -> None:
    progress = Progress()
    progress.take(0)
    progress.take(1)
    assert progress.commit_point() == 2


def test_a_work_from_before_a_rebalance_does_not_complete_the_same_offset_taken_again() -> None:
    progress, old, new = Progress(), object(), object()
    progress.take(5, new)
    progress.complete(5, old)
    assert progress.commit_point() == 5


def test_due_only_when_the_point_moved_since_the_last_commit() -> None:
    progress = Progress()
    progress.take(0)
    assert progress.due() == 1
    progress.committed = 1
    assert progress.due() is None
