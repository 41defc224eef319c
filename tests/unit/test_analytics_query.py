"""Pure logic of the analytics queries: histogram percentiles, range decomposition, SQL."""

import itertools
import random

import pytest

from services.analytics import histogram
from services.analytics.query import Dialect, Filters, Grouping, build, segments
from services.analytics.rollup import LAYERS, Record, deltas


def test_buckets_are_upper_bound_inclusive():
    assert histogram.bucket_of(0.1) == 0
    assert histogram.bucket_of(2) == 0
    assert histogram.bucket_of(2.01) == 1
    assert histogram.bucket_of(500) == histogram.BOUNDS_MS.index(500)
    assert histogram.bucket_of(10**9) == histogram.BUCKETS - 1


def test_percentiles_land_within_the_bucket_of_the_true_value():
    rng = random.Random(3)
    values = [rng.lognormvariate(5, 1) for _ in range(20_000)]
    counts = [0] * histogram.BUCKETS
    for v in values:
        counts[histogram.bucket_of(v)] += 1
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        true = ordered[int(q * len(ordered)) - 1]
        estimate = histogram.percentile(counts, q)
        index = histogram.bucket_of(true)
        low = 0 if index == 0 else histogram.BOUNDS_MS[index - 1]
        assert low <= estimate <= histogram.BOUNDS_MS[index], (q, true, estimate)
    assert histogram.percentile([0] * histogram.BUCKETS, 0.5) is None
    assert histogram.share_at_most(counts, 500) == pytest.approx(sum(v <= 500 for v in values) / len(values))


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 60), (3600, 7200), (60, 86400 * 3 + 120), (86400 - 60, 86400 + 60), (7 * 86400, 37 * 86400 + 3540)],
)
def test_segments_cover_the_range_exactly_with_aligned_buckets(start, end):
    parts = segments(start, end)
    assert parts[0][1] == start
    assert parts[-1][2] == end
    for (_, _, b), (_, a, _) in itertools.pairwise(parts):
        assert a == b  # contiguous, no overlap
    for layer, a, b in parts:
        assert a % LAYERS[layer] == 0
        assert b % LAYERS[layer] == 0


def test_a_month_is_mostly_days():
    parts = segments(100 * 60, 30 * 86400 + 3 * 3600 + 17 * 60)
    assert [p[0] for p in parts] == ["minute", "hour", "day", "hour", "minute"]


def test_every_stored_event_adds_to_its_callers_row_and_to_everyones():
    r = Record(3600.5, 1, 7, 2, 502, 0, 1, 10, 5, 0, 0, 600.0, None, None, None, "upstream_error", "r")
    rows = deltas([r, r], LAYERS["hour"])
    assert set(rows) == {(3600, 7, 2, 5), (3600, 0, 2, 5)}
    row = rows[(3600, 0, 2, 5)]
    assert row[0] == 2  # requests
    assert row[6] == 2  # unpriced: no cost known


def test_sql_has_one_dialect_per_store_and_ids_are_inlined_as_integers():
    filters = Filters(0, 86400 * 2, team_id="t")
    pg, _ = build(Dialect("postgres"), filters, Grouping("hour", ("model",)), callers=[1, 2], routes=None)
    assert "$1" in pg
    assert "r.caller IN (1, 2)" in pg
    assert "::float8" in pg
    sqlite, _ = build(Dialect("sqlite"), filters, Grouping(), callers=[3])
    assert "?" in sqlite
    assert "$1" not in sqlite
    assert "l00" in sqlite  # a total has percentiles
    lean, _ = build(Dialect("sqlite"), filters, Grouping(None, ("key",), percentiles=False), callers=[3])
    assert "l00" not in lean
