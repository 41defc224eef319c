"""The recording and alerting rules in deploy/prometheus: valid, and the alerts fire (and
stay quiet) on the series the services really produce (promtool's rule unit tests)."""

from __future__ import annotations

import re

import yaml

from tests.monitoring.promtool import ROOT, RULES, promtool


def test_rules_are_valid():
    done = promtool("check", "rules", *sorted(str(p) for p in RULES.glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alerts_fire_on_burning_budgets_and_not_on_healthy_traffic():
    done = promtool("test", "rules", str(RULES / "tests" / "gateway-alerts.test.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_loads_the_rules():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in compose
    done = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_availability_alerts_use_the_four_burn_rate_windows():
    """Multi-window, multi-burn-rate: 14.4x (1h/5m), 6x (6h/30m), 3x (1d/2h), 1x (3d/6h)."""
    text = (RULES / "gateway-alerts.yml").read_text()
    for long, short, rate in (("1h", "5m", "14.4"), ("6h", "30m", "6"), ("1d", "2h", "3")):
        assert re.search(
            rf"ratio_rate{long} > \({rate} \* 0\.001\) and gateway:availability_errors:ratio_rate{short}",
            text,
        ), (long, short)
    assert "ratio_rate3d > 0.001 and gateway:availability_errors:ratio_rate6h > 0.001" in text
