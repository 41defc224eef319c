#!/usr/bin/env python3
"""Turn the raw files of one benchmark run into tables and one JSON document.

    python3 bench/report.py bench/results/<run-id> --json bench/results/<run-id>.json

The raw directory holds meta.json and, per mode (pinned, unpinned) and target
(direct, embedded, distributed, litellm): status.json, c1.json and
concurrent.json (wrk), ttft.json (ttft_client.py) and rss.json.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGETS = ("direct", "embedded", "distributed", "litellm")
LABELS = {
    "direct": "direct upstream",
    "embedded": "gateway embedded",
    "distributed": "gateway distributed",
    "litellm": "LiteLLM proxy",
}
GATEWAYS = ("embedded", "distributed")
PERCENTILES = ("p50", "p90", "p99")
MODE_TITLES = {
    "pinned": "pinned: gateway/LiteLLM on CPU 0 (taskset -c 0), nginx + load generator on CPU 1",
    "unpinned": "unpinned: no CPU affinity",
}

# Goals of the gateway, checked for each gateway row.
LIMIT_C1_P50_MS = 1.0
LIMIT_C1_P99_MS = 3.0
LIMIT_RPS_VS_LITELLM = 10.0
LIMIT_P99_VS_LITELLM = 0.1
LIMIT_TTFT_P50_MS = 2.0
LIMIT_RSS_VS_LITELLM = 1 / 3
# Other load on the machine above this many CPUs (on average) makes a row suspect.
FOREIGN_WARN_CPUS = 0.1

Json = dict[str, Any]


def load(path: Path) -> Json:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"{path.name}: {exc}"}
    return data if isinstance(data, dict) else {"error": f"{path.name}: not an object"}


@dataclass
class Point:
    """One measured load point: throughput and latency percentiles in ms."""

    rps: float | None = None
    pct: dict[str, float] | None = None
    requests: int = 0
    errors: int = 0
    error: str | None = None

    @classmethod
    def from_wrk(cls, raw: Json) -> Point:
        if "error" in raw:
            return cls(error=str(raw["error"]).strip()[-300:] or "no output")
        lat = raw.get("latency_us", {})
        errors = sum(int(v) for v in raw.get("errors", {}).values())
        requests = int(raw.get("requests", 0))
        # wrk counts non-2xx answers as requests too; report them as errors.
        return cls(
            rps=float(raw.get("rps", 0.0)),
            pct={p: lat[p] / 1000 for p in PERCENTILES if p in lat},
            requests=requests,
            errors=errors,
        )

    @classmethod
    def from_ttft(cls, raw: Json) -> Point:
        if "ttft_us" not in raw:
            return cls(error=str(raw.get("error", "no output")).strip()[-300:])
        ttft = raw["ttft_us"]
        errors = int(raw.get("errors", 0))
        error = raw.get("first_error") if errors or not ttft else None
        return cls(
            rps=float(raw.get("rps", 0.0)),
            pct={p: ttft[p] / 1000 for p in PERCENTILES if p in ttft} or None,
            requests=int(raw.get("requests", 0)),
            errors=errors,
            error=error if not ttft else None,
        )

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.pct) and self.requests > 0

    def as_json(self, reference: Point | None) -> Json:
        out: Json = {
            "ok": self.ok,
            "requests": self.requests,
            "errors": self.errors,
            "rps": self.rps,
            "latency_ms": self.pct,
        }
        if self.error:
            out["error"] = self.error
        overhead = self.overhead(reference)
        if overhead is not None:
            out["overhead_ms"] = overhead
        return out

    def overhead(self, reference: Point | None) -> dict[str, float] | None:
        if reference is None or not (self.ok and reference.ok):
            return None
        assert self.pct is not None
        assert reference.pct is not None
        return {p: self.pct[p] - reference.pct[p] for p in PERCENTILES}


@dataclass
class TargetRun:
    """Everything measured for one target in one mode."""

    name: str
    ok: bool
    message: str
    log_tail: str
    c1: Point
    concurrent: Point
    ttft: Point
    rss: Json
    foreign_cpus: float | None

    @classmethod
    def read(cls, directory: Path, name: str) -> TargetRun | None:
        if not directory.is_dir():
            return None
        status = load(directory / "status.json")
        ok = bool(status.get("ok"))
        return cls(
            name=name,
            ok=ok,
            message=str(status.get("message", status.get("error", ""))),
            log_tail=str(status.get("log_tail", "")),
            c1=Point.from_wrk(load(directory / "c1.json")) if ok else Point(error="not run"),
            concurrent=(
                Point.from_wrk(load(directory / "concurrent.json")) if ok else Point(error="not run")
            ),
            ttft=Point.from_ttft(load(directory / "ttft.json")) if ok else Point(error="not run"),
            rss=load(directory / "rss.json") if ok else {},
            foreign_cpus=load(directory / "foreign_cpu.json").get("cpus"),
        )

    @property
    def rss_mib(self) -> float | None:
        main = self.rss.get("main")
        if not isinstance(main, dict):
            return None
        return int(main.get("tree_rss_kb", main.get("rss_kb", 0))) / 1024

    @property
    def total_rss_mib(self) -> float | None:
        total = self.rss.get("total_tree_rss_kb")
        return int(total) / 1024 if total is not None else None


@dataclass
class Check:
    """One goal, evaluated for one gateway row."""

    goal: str
    value: float | None
    limit: float
    unit: str
    higher_is_better: bool = False

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def text(self) -> str:
        if self.met is None:
            return f"{self.goal}: n/a"
        assert self.value is not None
        verdict = "met" if self.met else "MISSED"
        return f"{self.goal}: {fmt_value(self.value, self.unit)} {verdict}"

    def as_json(self) -> Json:
        return {
            "goal": self.goal,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


def fmt_ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) < 10:
        return f"{value:.3f}"
    if abs(value) < 1000:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_over(value: float | None) -> str:
    return "-" if value is None else ("+" if value >= 0 else "") + fmt_ms(value)


def fmt_rps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_value(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{fmt_ms(value)} ms"
    if unit == "x":
        return f"{value:.3g}x"
    return f"{value:.3g}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def checks_for(run: TargetRun, direct: TargetRun | None, litellm: TargetRun | None) -> list[Check]:
    ref = direct.c1 if direct else None
    c1_over = run.c1.overhead(ref)
    ttft_over = run.ttft.overhead(direct.ttft if direct else None)
    lite_ok = litellm is not None and litellm.ok and litellm.concurrent.ok
    conc = run.concurrent if run.concurrent.ok else None
    return [
        Check("1-conn overhead p50 <= 1 ms", c1_over["p50"] if c1_over else None, LIMIT_C1_P50_MS, "ms"),
        Check("1-conn overhead p99 <= 3 ms", c1_over["p99"] if c1_over else None, LIMIT_C1_P99_MS, "ms"),
        Check(
            "64-conn req/s >= 10x LiteLLM",
            ratio(conc.rps if conc else None, litellm.concurrent.rps if lite_ok and litellm else None),
            LIMIT_RPS_VS_LITELLM,
            "x",
            higher_is_better=True,
        ),
        Check(
            "64-conn p99 <= 1/10 LiteLLM",
            ratio(
                conc.pct["p99"] if conc and conc.pct else None,
                litellm.concurrent.pct["p99"] if lite_ok and litellm and litellm.concurrent.pct else None,
            ),
            LIMIT_P99_VS_LITELLM,
            "x",
        ),
        Check("TTFT overhead p50 <= 2 ms", ttft_over["p50"] if ttft_over else None, LIMIT_TTFT_P50_MS, "ms"),
        Check(
            "router RSS <= 1/3 LiteLLM",
            ratio(run.rss_mib, litellm.rss_mib if litellm and litellm.ok else None),
            LIMIT_RSS_VS_LITELLM,
            "x",
        ),
    ]


def table(headers: list[str], rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def point_rows(
    runs: dict[str, TargetRun], pick: str, goals: dict[str, list[Check]], goal_idx: tuple[int, ...]
) -> list[list[str]]:
    direct = runs.get("direct")
    rows: list[list[str]] = []
    for name in TARGETS:
        run = runs.get(name)
        if run is None:
            continue
        if not run.ok:
            rows.append([LABELS[name], "failed", "", "", "", "", "", "", first_line(run.message)])
            continue
        point: Point = getattr(run, pick)
        ref: Point | None = getattr(direct, pick) if direct and name != "direct" else None
        if not point.ok:
            rows.append([LABELS[name], "error", "", "", "", "", "", "", first_line(point.error or "")])
            continue
        assert point.pct is not None
        over = point.overhead(ref)
        note = ", ".join(goals[name][i].text() for i in goal_idx) if name in goals else ""
        if point.errors:
            note = f"{point.errors} errors; {note}" if note else f"{point.errors} errors"
        rows.append(
            [
                LABELS[name],
                fmt_rps(point.rps),
                *(fmt_ms(point.pct.get(p)) for p in PERCENTILES),
                *(fmt_over(over[p]) if over else "-" for p in PERCENTILES),
                note,
            ]
        )
    return rows


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:110]


def render_mode(mode: str, runs: dict[str, TargetRun], connections: int) -> tuple[list[str], Json]:
    direct = runs.get("direct")
    litellm = runs.get("litellm")
    goals = {
        name: checks_for(run, direct, litellm) for name, run in runs.items() if name in GATEWAYS and run.ok
    }
    out = [f"=== {MODE_TITLES.get(mode, mode)} ===", ""]
    lat_headers = ["", "req/s", "p50 ms", "p90 ms", "p99 ms", "+p50", "+p90", "+p99", "goals (gateway)"]
    align = "lrrrrrrrl"
    sections = [
        ("(a) non-streaming, 1 connection", "c1", (0, 1)),
        (f"(b) non-streaming, {connections} connections", "concurrent", (2, 3)),
        ("(c) streaming time to first token, 1 connection (req/s = streams/s)", "ttft", (4,)),
    ]
    for title, pick, idx in sections:
        out.append(title)
        out.extend(table(lat_headers, point_rows(runs, pick, goals, idx), align))
        out.append("")
    out.append("(d) resident memory after the load")
    rss_rows: list[list[str]] = []
    for name in TARGETS:
        run = runs.get(name)
        if run is None:
            continue
        if not run.ok:
            rss_rows.append([LABELS[name], "-", "-", first_line(run.message)])
            continue
        main = run.rss.get("main", {})
        what = str(main.get("name", "?"))
        extra = ""
        if name == "distributed" and run.total_rss_mib is not None:
            extra = f"all five services: {run.total_rss_mib:.1f} MiB"
        if name in goals:
            extra = ", ".join(filter(None, [goals[name][5].text(), extra]))
        rss_rows.append([LABELS[name], what, f"{run.rss_mib:.1f}" if run.rss_mib is not None else "-", extra])
    out.extend(table(["", "process", "RSS MiB", "goals (gateway)"], rss_rows, "llrl"))
    out.append("")
    foreign = {name: run.foreign_cpus for name, run in runs.items() if run.foreign_cpus is not None}
    if foreign:
        shares = ", ".join(f"{LABELS[name]} {value:.2f}" for name, value in foreign.items())
        out.append(f"other processes on the machine, CPUs busy on average: {shares}")
        out.append("  (Redis and PostgreSQL, which distributed mode uses, count as other processes)")
        if max(foreign.values()) > FOREIGN_WARN_CPUS:
            out.append("  WARNING: the machine was not idle; those rows are disturbed")
        out.append("")
    failures = [run for run in runs.values() if not run.ok]
    for run in failures:
        out.append(f"{LABELS[run.name]}: {run.message}")
        if run.log_tail.strip():
            out.append("  log tail:")
            out.extend("    " + line for line in run.log_tail.strip().splitlines()[-15:])
        out.append("")

    result: Json = {"targets": {}, "goals": {}}
    for name, run in runs.items():
        entry: Json = {"ok": run.ok, "message": run.message, "foreign_cpus": run.foreign_cpus}
        if run.ok:
            entry.update(
                {
                    "c1": run.c1.as_json(direct.c1 if direct and name != "direct" else None),
                    "concurrent": run.concurrent.as_json(
                        direct.concurrent if direct and name != "direct" else None
                    ),
                    "ttft": run.ttft.as_json(direct.ttft if direct and name != "direct" else None),
                    "rss": run.rss,
                    "rss_mib": run.rss_mib,
                }
            )
        else:
            entry["log_tail"] = run.log_tail
        result["targets"][name] = entry
    for name, checks in goals.items():
        result["goals"][name] = [c.as_json() for c in checks]
    return out, result


def render_summary(all_goals: dict[tuple[str, str], list[Check]]) -> list[str]:
    if not all_goals:
        return []
    columns = list(all_goals)
    names = [c.goal for c in next(iter(all_goals.values()))]
    rows = []
    for i, goal in enumerate(names):
        row = [goal]
        for key in columns:
            check = all_goals[key][i]
            if check.met is None:
                row.append("n/a")
            else:
                assert check.value is not None
                row.append(f"{fmt_value(check.value, check.unit)} {'met' if check.met else 'MISSED'}")
        rows.append(row)
    headers = ["goal"] + [f"{mode} {target}" for mode, target in columns]
    return [
        "=== goals summary (value, and whether the goal is met) ===",
        "",
        *table(headers, rows, "l" + "r" * len(columns)),
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("--json", type=Path, help="write the results document here")
    args = parser.parse_args()

    meta = load(args.raw_dir / "meta.json")
    connections = int(meta.get("connections", 64))
    lines = [
        f"LLM Gateway benchmark {meta.get('run_id', '')}"
        f"{' (quick)' if meta.get('quick') else ''}: {meta.get('duration_s', '?')} s per point, "
        f"{meta.get('cpus', '?')} x {meta.get('cpu', '?')}",
        "latencies in ms; +pNN = overhead vs direct upstream at the same percentile",
        "",
    ]
    document: Json = {"meta": meta, "modes": {}}
    all_goals: dict[tuple[str, str], list[Check]] = {}
    for mode in meta.get("modes", ["pinned", "unpinned"]):
        runs = {
            name: run
            for name in TARGETS
            if (run := TargetRun.read(args.raw_dir / mode / name, name)) is not None
        }
        if not runs:
            continue
        text, result = render_mode(mode, runs, connections)
        lines.extend(text)
        document["modes"][mode] = result
        for name in GATEWAYS:
            run = runs.get(name)
            if run is not None and run.ok:
                all_goals[(mode, name)] = checks_for(run, runs.get("direct"), runs.get("litellm"))
    lines.extend(render_summary(all_goals))
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
