"""Pure logic of the analytics queries: histogram percentiles, range decomposition, SQL."""

import itertools
import random

import pytest

from services.analytics import histogram
from services.analytics.query import Dialect, Filters, Grouping, build, segments
from services.analytics.rollup import (
    CACHED,
    ESTIMATED,
    LAYERS,
    SEMANTIC,
    STREAM,
    Record,
    deltas,
    layer_deltas,
)


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


def reference_deltas(records: list[Record], floors: dict[str, int]) -> dict[str, dict]:
    """Every record added to its six rows one by one (how the stores did it before)."""
    out: dict[str, dict] = {}
    for layer, width in LAYERS.items():
        out[layer] = deltas([r for r in records if r.created_at >= floors.get(layer, 0)], width)
    return out


def test_all_layers_at_once_add_up_to_each_layer_from_the_records():
    rng = random.Random(5)
    day = 86400
    records = [
        Record(
            day * 40 + rng.uniform(-3 * day, 2 * day),  # around two day and month boundaries
            rng.getrandbits(63),
            rng.choice([1, 2, 3]),
            rng.choice([10, 11]),
            rng.choice([200, 200, 200, 429, 502]),
            rng.choice([0, CACHED, CACHED | SEMANTIC, STREAM, STREAM | ESTIMATED]),
            1,
            rng.randrange(5000),
            rng.randrange(800),
            rng.randrange(50),
            0,
            rng.uniform(0.5, 70000),
            rng.choice([None, rng.uniform(1, 900)]),
            rng.choice([None, rng.uniform(0, 0.02)]),
            rng.choice([None, 0.001]),
            None,
            "r",
        )
        for _ in range(2000)
    ]
    floors = {"minute": day * 39, "hour": day * 38}
    got = layer_deltas(records, lambda layer: floors.get(layer, 0))
    want = reference_deltas(records, floors)
    assert set(got) == set(want) == set(LAYERS)
    for layer in LAYERS:
        assert got[layer].keys() == want[layer].keys(), layer
        for key, row in want[layer].items():
            assert got[layer][key] == pytest.approx(row, rel=1e-12), (layer, key)
    assert sum(row[0] for key, row in got["day"].items() if key[1] == 0) == len(records)
    assert sum(row[0] for key, row in got["minute"].items() if key[1] == 0) == sum(
        r.created_at >= floors["minute"] for r in records
    )


def test_a_floor_off_a_minute_boundary_is_refused():
    with pytest.raises(ValueError, match="minute boundary"):
        layer_deltas([], lambda layer: 30 if layer == "hour" else 0)


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
