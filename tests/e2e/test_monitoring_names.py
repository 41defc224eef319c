"""Every metric the Prometheus rules and the Grafana dashboard read exists on the real
services (here the embedded gateway, whose one scrape holds every service's registry)."""

from __future__ import annotations

from tests.e2e.conftest import user
from tests.monitoring.names import dashboard_expressions, exposed, recorded, rule_expressions, used


async def test_rules_and_dashboard_read_only_metrics_that_exist(http):
    # Traffic of every kind first, so that what is scraped is what a serving gateway shows.
    await http.post("/v1/chat/completions", json={"model": "mock-small", "messages": user("hi")})
    await http.post(
        "/v1/chat/completions", json={"model": "mock-small", "messages": user("hi"), "stream": True}
    )
    await http.post("/v1/chat/completions", json={"model": "up-error-500", "messages": user("hi")})
    await http.get("/analytics/v1/stats/summary")
    page = (await http.get("/metrics")).text
    available = exposed(page)
    rule_names, rule_records = used(rule_expressions())
    dash_names, dash_records = used(dashboard_expressions())
    assert rule_names, "the rules read no metric?"
    assert dash_names, "the dashboard reads no metric?"
    assert sorted((rule_names | dash_names) - available) == []
    assert sorted((rule_records | dash_records) - recorded()) == []
