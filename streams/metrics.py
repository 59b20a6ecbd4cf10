"""Metric pieces both processes share: a lock-free latency histogram for the hot paths, its export as a
Prometheus family at scrape time, and the record header that carries an event's ingress append time.

The hot paths (the hub's fan-out loop, the worker's acknowledgments) only add to plain integers;
`prometheus_client` objects are built from them when /metrics is scraped (custom collectors), so a
delivery costs no lock and no label lookup.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import HistogramMetricFamily

# Written by streams/worker/pipeline.py on every routed record: the ingress record's timestamp (epoch ms).
INGRESS_TIME = "es-ingress-time"
# Upper bounds (s) of the latency buckets: fine below the seed's 50 ms target, coarse above.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket, a sum and a count: plain numbers, read by a collector."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError(f"bounds must be a non-empty ascending sequence, got {bounds!r}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation (in the unit of the bounds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Return Prometheus buckets: (upper bound as text, observations at or below it), +Inf last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile as Prometheus' histogram_quantile does (None before any observation)."""
        if not self.count:
            return None
        rank, seen, lower = q * self.count, 0, 0.0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if seen + n >= rank and n:
                return lower + (bound - lower) * (rank - seen) / n
            seen += n
            lower = bound
        return self.bounds[-1]


def histogram_family(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    """Return a histogram's current figures as a Prometheus family (called at scrape time)."""
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def ingress_time_ms(headers: Iterable[tuple[str, bytes]] | None) -> int | None:
    """Return the ingress append time (epoch ms) a routed record carries, or None without the header."""
    for name, value in headers or ():
        if name == INGRESS_TIME:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def seconds_since(epoch_ms: int, now: float | None = None) -> float:
    """Return the seconds from an epoch-ms time to now (never negative: clocks of two hosts may differ)."""
    return max(0.0, (time.time() if now is None else now) - epoch_ms / 1000)
