"""The metric names the rules and the Grafana dashboard read."""

from __future__ import annotations

import json
import re

import yaml

from tests.monitoring.promtool import GRAFANA, RULES

_NAME = re.compile(r"\b(?:gateway|process)_[a-z0-9_]+\b")
_RECORDED = re.compile(r"\bgateway:[a-z0-9_:]+\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def rule_expressions() -> list[str]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [rule["expr"] for rule in group["rules"]]
    return out


def recorded() -> set[str]:
    out = set()
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return out


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def used(expressions: list[str]) -> tuple[set[str], set[str]]:
    """(metric names, recording-rule names) in the expressions."""
    names: set[str] = set()
    records: set[str] = set()
    for expr in expressions:
        names |= set(_NAME.findall(expr))
        records |= set(_RECORDED.findall(expr))
    return names, records


def exposed(page: str) -> set[str]:
    """Every name a scrape can be queried by: sample names, and metric families declared
    (with their suffixes), since a labelled family has no sample until first used."""
    out: set[str] = set()
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            out.add(family)
            out |= {family + s for s in SUFFIXES}
        elif line and not line.startswith("#"):
            out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out
