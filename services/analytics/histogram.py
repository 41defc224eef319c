"""Latency histograms kept in the roll-ups, and the percentiles read back from them.

A roll-up row cannot hold every latency it summarises, so it holds counts per
bucket; summing the buckets of many rows and interpolating inside the bucket where
a percentile falls gives p50/p95/p99 for any range and filter without reading raw
events (the way Prometheus' `histogram_quantile` does). The bounds are fixed (a
change would need a migration) and include the service target, 500 ms, so "is p99
under 500 ms" is answered by a bucket edge, not by an interpolation.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Upper bounds in milliseconds; the last bucket holds everything above the last bound.
BOUNDS_MS: tuple[float, ...] = (
    2, 5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1


def bucket_of(ms: float) -> int:
    """The index of the bucket that counts `ms` (upper bounds are inclusive)."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def percentile(counts: Sequence[int | float], q: float) -> float | None:
    """The `q` quantile (0 < q ≤ 1) of the histogram, interpolated linearly inside its
    bucket; None when the histogram is empty. Values in the open last bucket are
    reported as its lower bound (the histogram does not know more)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            if index >= len(BOUNDS_MS):
                return float(BOUNDS_MS[-1])
            low = 0.0 if index == 0 else float(BOUNDS_MS[index - 1])
            high = float(BOUNDS_MS[index])
            return round(low + (high - low) * (rank - seen) / n, 3)
        seen += n
    return float(BOUNDS_MS[-1])


def share_at_most(counts: Sequence[int | float], ms: float) -> float | None:
    """The share of observations at or under `ms`, exact when `ms` is a bound."""
    total = sum(counts)
    if total <= 0:
        return None
    return sum(counts[: bucket_of(ms) + 1]) / total
