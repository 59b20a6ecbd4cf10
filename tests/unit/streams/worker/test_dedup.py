"""DedupIndex: duplicates within the window, new after it, a record's own replay, expiry and eviction."""

from __future__ import annotations

from streams.worker.dedup import DedupIndex, Verdict, dedup_key

WINDOW = 60_000
T0 = 1_800_000_000_000


def index(max_ids: int = 1000) -> DedupIndex:
    return DedupIndex(WINDOW, max_ids)


def test_unseen_id_is_new() -> None:
    assert index().check(b"a", T0, 0, 1) == (Verdict.NEW, None)


def test_same_id_from_another_record_within_the_window_is_a_duplicate() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    verdict, seen = dedup.check(b"a", T0 + WINDOW - 1, 0, 7)
    assert verdict is Verdict.DUPLICATE and (seen.partition, seen.offset) == (0, 1)


def test_same_id_after_the_window_is_new_again() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    assert dedup.check(b"a", T0 + WINDOW, 0, 7)[0] is Verdict.NEW


def test_the_same_record_read_again_is_reprocessed_not_duplicate() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 2, 40, T0 + 5)
    verdict, seen = dedup.check(b"a", T0, 2, 40)
    assert verdict is Verdict.REPROCESSED and seen.processed_ms == T0 + 5


def test_replayed_record_gets_its_own_key() -> None:
    assert dedup_key("a") == b"a" and dedup_key("a", b"0/5") == b"a\x000/5"


def test_expire_drops_ids_older_than_the_window_and_returns_them() -> None:
    dedup = index()
    dedup.remember(b"old", T0, 0, 1, T0)
    dedup.remember(b"new", T0 + WINDOW, 0, 2, T0 + WINDOW)
    assert dedup.expire(T0 + WINDOW + 1, [0]) == [(0, b"old")]
    assert set(dedup.store(0)) == {b"new"} and dedup.expired == 1


def test_expire_leaves_an_id_that_was_remembered_again_later() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    dedup.remember(b"a", T0 + WINDOW, 0, 9, T0 + WINDOW)
    assert dedup.expire(T0 + WINDOW + 1, [0]) == []
    assert b"a" in dedup.store(0)


def test_expire_evicts_the_oldest_beyond_max_ids() -> None:
    dedup = index(max_ids=2)
    for offset, key in enumerate([b"a", b"b", b"c"]):
        dedup.remember(key, T0, 0, offset, T0)
    assert dedup.expire(T0, [0]) == [(0, b"a")]
    assert dedup.evicted == 1


def test_expire_only_touches_the_given_partitions() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    dedup.remember(b"b", T0, 1, 1, T0)
    assert dedup.expire(T0 + 2 * WINDOW, [1]) == [(1, b"b")]


def test_forget_only_drops_the_entry_of_that_origin() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    assert not dedup.forget(b"a", 0, 2)
    assert dedup.forget(b"a", 0, 1) and b"a" not in dedup.store(0)


def test_the_same_id_in_two_partitions_is_two_events() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 1, T0)
    assert dedup.check(b"a", T0, 1, 1) == (Verdict.NEW, None)


def replayed(source: DedupIndex, partition: int) -> DedupIndex:
    """Return a new index that got `partition` by replaying what `source` would have written to its changelog."""
    recovered = index()
    for key, value in source.store(partition).items():
        recovered.apply(partition, key, value)
    recovered.rebuild(partition)
    return recovered


def test_replay_applies_entries_and_tombstones_and_orders_for_expiry() -> None:
    source = index()
    source.remember(b"late", T0 + 10, 0, 9, T0 + 10)
    source.remember(b"early", T0, 0, 3, T0)
    recovered = index()
    for key, value in [*source.store(0).items(), (b"gone", source.store(0)[b"early"]), (b"gone", None)]:
        recovered.apply(0, key, value)
    assert recovered.rebuild(0) == 2 and b"gone" not in recovered.store(0)
    assert recovered.expire(T0 + WINDOW + 5, [0]) == [(0, b"early")]


def test_drop_forgets_a_partition_given_away() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 5, 1, T0)
    dedup.drop(5)
    assert dedup.held() == set() and dedup.check(b"a", T0, 5, 2)[0] is Verdict.NEW


def test_last_is_the_entry_with_the_highest_offset_still_held() -> None:
    dedup = index()
    dedup.remember(b"a", T0, 0, 4, T0 + 1)
    dedup.remember(b"b", T0, 0, 9, T0 + 2)
    dedup.forget(b"b", 0, 9)
    recovered = replayed(dedup, 0)
    assert recovered.last(0).offset == 4 and recovered.last(1) is None
