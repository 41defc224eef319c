"""Merging worker pages (pure logic, on pages rendered by the real prometheus_client)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from services.kernel import exposition
from services.kernel.protocol import ADDITIVE_GAUGES


def worker_page(requests: dict[str, int], latencies: list[float], buffered: int, connections: int) -> bytes:
    registry = CollectorRegistry()
    counter = Counter("gateway_requests_total", "Requests", ["model", "status"], registry=registry)
    for model, n in requests.items():
        counter.labels(model, "200").inc(n)
    histogram = Histogram(
        "gateway_latency_seconds", "Latency", ["model"], buckets=(0.1, 1), registry=registry
    )
    for value in latencies:
        histogram.labels("m").observe(value)
    Gauge("gateway_usage_events_buffered", "Buffered", registry=registry).set(buffered)
    Gauge("gateway_server_connections", "Open", registry=registry).set(connections)
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def values(page: bytes) -> dict[str, float]:
    out = {}
    for line in page.decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_counters_and_histograms_add_up_gauges_get_a_worker_label():
    one = worker_page({"a": 3, "b": 1}, [0.05, 0.5], buffered=2, connections=4)
    two = worker_page({"a": 2, "c": 7}, [0.5, 5.0], buffered=5, connections=1)
    merged, _ = exposition.merge_pages([("0", one), ("1", two)], ADDITIVE_GAUGES)
    got = values(merged)
    assert got['gateway_requests_total{model="a",status="200"}'] == 5
    assert got['gateway_requests_total{model="b",status="200"}'] == 1
    assert got['gateway_requests_total{model="c",status="200"}'] == 7
    assert got['gateway_latency_seconds_bucket{le="0.1",model="m"}'] == 1
    assert got['gateway_latency_seconds_bucket{le="1.0",model="m"}'] == 3
    assert got['gateway_latency_seconds_bucket{le="+Inf",model="m"}'] == 4
    assert got['gateway_latency_seconds_count{model="m"}'] == 4
    assert got['gateway_latency_seconds_sum{model="m"}'] == 6.05
    # A plain gauge: one series per worker. An additive one: the sum.
    assert got['gateway_usage_events_buffered{worker="0"}'] == 2
    assert got['gateway_usage_events_buffered{worker="1"}'] == 5
    assert got["gateway_server_connections"] == 5
    # process_* is per process, counters included.
    assert 'process_cpu_seconds_total{worker="0"}' in got
    assert 'process_cpu_seconds_total{worker="1"}' in got
    assert "process_cpu_seconds_total" not in got
    # _created keeps the earliest.
    created = [k for k in got if k.startswith("gateway_requests_created")]
    assert created
    assert all("worker" not in k for k in created)


def test_the_merged_page_is_valid_exposition_with_each_family_once():
    from prometheus_client.parser import text_string_to_metric_families

    one = worker_page({"a": 1}, [0.2], 0, 0)
    two = worker_page({"a": 1}, [0.2], 0, 0)
    merged, _ = exposition.merge_pages([("0", one), ("1", two)], ADDITIVE_GAUGES)
    families = list(text_string_to_metric_families(merged.decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    requests = next(f for f in families if f.name == "gateway_requests")
    assert requests.type == "counter"
    assert [s.value for s in requests.samples if s.name == "gateway_requests_total"] == [2.0]


def test_a_dead_workers_counts_stay_in_the_sum():
    before = exposition.parse(worker_page({"a": 10}, [0.5], 3, 1))
    retired = exposition.Page()
    retired.add(before.summed(ADDITIVE_GAUGES))  # the worker died after this page was scraped
    fresh = exposition.parse(worker_page({"a": 1}, [], 0, 1))
    other = exposition.parse(worker_page({"b": 4}, [], 0, 1))
    merged = exposition.render(
        exposition.merge([("0", fresh), ("1", other), ("retired", retired)], ADDITIVE_GAUGES)
    )
    got = values(merged)
    assert got['gateway_requests_total{model="a",status="200"}'] == 11
    assert got['gateway_latency_seconds_count{model="m"}'] == 1
    # Nothing per-process survives the worker: no gauge or process series labelled "retired".
    assert not [k for k in got if 'worker="retired"' in k]


def test_labels_are_added_in_front_and_values_with_spaces_survive():
    assert exposition.with_label("m", "worker", "0") == 'm{worker="0"}'
    assert exposition.with_label('m{a="x y"}', "worker", "1") == 'm{worker="1",a="x y"}'
    page = exposition.parse(b'# HELP g G\n# TYPE g gauge\ng{a="x y"} 2.0\n')
    merged = exposition.render(exposition.merge([("3", page)]))
    assert values(merged) == {'g{worker="3",a="x y"}': 2.0}
