"""The plain latency histogram and the ingress-time header."""

from __future__ import annotations

import pytest

from streams.metrics import INGRESS_TIME, Histogram, histogram_family, ingress_time_ms, seconds_since


def test_histogram_counts_each_observation_in_its_bucket() -> None:
    hist = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 0.5, 5.0):
        hist.observe(value)
    assert hist.counts == [2, 1, 1, 1]  # a value equal to a bound counts in that bucket, as Prometheus' `le`
    assert hist.count == 5 and hist.sum == pytest.approx(5.565)
    assert hist.cumulative() == [("0.01", 2.0), ("0.1", 3.0), ("1.0", 4.0), ("+Inf", 5.0)]


def test_histogram_quantile_interpolates_inside_a_bucket() -> None:
    hist = Histogram((0.05, 0.1))
    assert hist.quantile(0.5) is None
    for _ in range(100):
        hist.observe(0.07)
    assert hist.quantile(0.95) == pytest.approx(0.0975)  # what histogram_quantile says for the same buckets


def test_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram((0.1, 0.01))


def test_histogram_family_exports_buckets_sum_and_count() -> None:
    hist = Histogram((0.1,))
    hist.observe(0.2)
    [*samples] = histogram_family("x_seconds", "doc", hist).samples
    assert {(s.name, s.labels.get("le"), s.value) for s in samples} == {
        ("x_seconds_bucket", "0.1", 0.0), ("x_seconds_bucket", "+Inf", 1.0), ("x_seconds_count", None, 1.0),
        ("x_seconds_sum", None, 0.2)}


@pytest.mark.parametrize(("headers", "expected"), [
    ([(INGRESS_TIME, b"1700000000123")], 1700000000123),
    ([("es-id", b"x"), (INGRESS_TIME, b"5")], 5),
    ([("es-id", b"x")], None), (None, None), ([(INGRESS_TIME, b"soon")], None),
], ids=["alone", "among-others", "missing", "no-headers", "not-a-number"])
def test_ingress_time_is_read_from_the_record_header(headers: list[tuple[str, bytes]] | None,
                                                     expected: int | None) -> None:
    assert ingress_time_ms(headers) == expected


def test_seconds_since_is_never_negative() -> None:
    assert seconds_since(2_000, now=1.5) == 0.0
    assert seconds_since(1_000, now=3.0) == pytest.approx(2.0)
