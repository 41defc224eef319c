#!/usr/bin/env python3
"""Turn the raw files of one benchmark run into tables and one JSON document.

    python3 bench/report.py bench/results/<run-id> --json bench/results/<run-id>.json

The raw directory holds meta.json and, per mode (pinned, unpinned) and target
(direct, floor, embedded, distributed, litellm): status.json, c1.json and
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

TARGETS = ("direct", "floor", "embedded", "distributed", "litellm")
LABELS = {
    "direct": "direct upstream",
    "floor": "floor (bare relay)",
    "embedded": "gateway embedded",
    "distributed": "gateway distributed",
    "litellm": "LiteLLM proxy",
}
GATEWAYS = ("embedded", "distributed")
PERCENTILES = ("p50", "p90", "p99")
MODE_TITLES = {
    "pinned": "pinned: floor/gateway/LiteLLM on CPU 0 (taskset -c 0), nginx + load generator on CPU 1",
    "unpinned": "unpinned: no CPU affinity",
}

# Goals of the gateway, checked for each gateway row.
LIMIT_C1_P50_MS = 1.0
LIMIT_C1_P99_MS = 2.0
LIMIT_SHARE_OF_FLOOR = 2 / 3
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
    # CPUs other processes used while the point ran, and how many attempts it took
    # (run.sh repeats a disturbed point); None for runs that did not record it.
    foreign_cpus: float | None = None
    attempts: int = 1

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

    def as_json(self, reference: Point | None, floor: Point | None = None) -> Json:
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
        over_floor = self.overhead(floor)
        if over_floor is not None:
            out["overhead_vs_floor_ms"] = over_floor
        share = self.share_of(floor)
        if share is not None:
            out["share_of_floor"] = share
        return out

    def share_of(self, other: Point | None) -> float | None:
        """This point's requests/s as a fraction of `other`'s."""
        if other is None or not (self.ok and other.ok):
            return None
        return ratio(self.rps, other.rps)

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
        run = cls(
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
        for pick in ("c1", "concurrent", "ttft"):
            foreign = load(directory / f"{pick}.foreign.json")
            point: Point = getattr(run, pick)
            if isinstance(foreign.get("cpus"), int | float):
                point.foreign_cpus = float(foreign["cpus"])
                point.attempts = len(foreign.get("attempts") or [1])
        return run

    def point_foreign_cpus(self, pick: str) -> float:
        """CPUs other processes used during one point (the whole target's figure if not recorded)."""
        foreign = getattr(self, pick).foreign_cpus
        return float(foreign if foreign is not None else self.foreign_cpus or 0.0)

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
    """One goal, evaluated for one gateway row; without a limit, a figure shown for information."""

    goal: str
    value: float | None
    limit: float | None
    unit: str
    point: str  # c1, concurrent, ttft or rss: the table it is shown beside
    higher_is_better: bool = False
    # A row it compares was measured while other processes kept the machine busy.
    disturbed: bool = False

    @property
    def met(self) -> bool | None:
        if self.limit is None or self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def verdict(self) -> str:
        """The value and whether the goal is met, e.g. `0.71x met`."""
        if self.value is None or math.isnan(self.value):
            return "n/a"
        verdict = fmt_value(self.value, self.unit)
        if self.limit is not None:
            verdict += " met" if self.met else " MISSED"
        return f"{verdict} (disturbed)" if self.disturbed else verdict

    def text(self) -> str:
        return f"{self.goal}: {self.verdict()}"

    def as_json(self) -> Json:
        return {
            "goal": self.goal,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "point": self.point,
            "disturbed": self.disturbed,
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


def checks_for(
    run: TargetRun, direct: TargetRun | None, floor: TargetRun | None, litellm: TargetRun | None
) -> list[Check]:
    c1_over = run.c1.overhead(direct.c1 if direct else None) or {}
    c1_over_floor = run.c1.overhead(floor.c1 if floor and floor.ok else None) or {}
    ttft_over = run.ttft.overhead(direct.ttft if direct else None) or {}
    lite_ok = litellm is not None and litellm.ok and litellm.concurrent.ok
    conc = run.concurrent if run.concurrent.ok else None

    def disturbed(pick: str, *others: TargetRun | None) -> bool:
        return any(
            r is not None and r.ok and r.point_foreign_cpus(pick) > FOREIGN_WARN_CPUS for r in (run, *others)
        )

    by_point = {
        "c1": disturbed("c1", direct, floor),
        "concurrent": disturbed("concurrent", floor, litellm),
        "ttft": disturbed("ttft", direct),
        "rss": False,  # memory after the load does not depend on the CPU share
    }
    checks = [
        Check("1-conn overhead p50 <= 1 ms", c1_over.get("p50"), LIMIT_C1_P50_MS, "ms", "c1"),
        Check("1-conn overhead p99 <= 2 ms", c1_over.get("p99"), LIMIT_C1_P99_MS, "ms", "c1"),
        Check("1-conn overhead vs floor p50", c1_over_floor.get("p50"), None, "ms", "c1"),
        Check("1-conn overhead vs floor p99", c1_over_floor.get("p99"), None, "ms", "c1"),
        Check(
            "64-conn req/s >= 2/3 floor",
            run.concurrent.share_of(floor.concurrent if floor and floor.ok else None),
            LIMIT_SHARE_OF_FLOOR,
            "x",
            "concurrent",
            higher_is_better=True,
        ),
        Check(
            "64-conn req/s >= 10x LiteLLM",
            ratio(conc.rps if conc else None, litellm.concurrent.rps if lite_ok and litellm else None),
            LIMIT_RPS_VS_LITELLM,
            "x",
            "concurrent",
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
            "concurrent",
        ),
        Check("TTFT overhead p50 <= 2 ms", ttft_over.get("p50"), LIMIT_TTFT_P50_MS, "ms", "ttft"),
        Check(
            "router RSS <= 1/3 LiteLLM",
            ratio(run.rss_mib, litellm.rss_mib if litellm and litellm.ok else None),
            LIMIT_RSS_VS_LITELLM,
            "x",
            "rss",
        ),
    ]
    for check in checks:
        check.disturbed = by_point[check.point]
    return checks


def table(headers: list[str], rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def goal_notes(checks: list[Check], point: str) -> str:
    """The goals (not the figures shown for information) checked at one point."""
    return ", ".join(c.text() for c in checks if c.point == point and c.limit is not None)


def point_rows(runs: dict[str, TargetRun], pick: str, goals: dict[str, list[Check]]) -> list[list[str]]:
    direct = runs.get("direct")
    floor = runs.get("floor")
    rows: list[list[str]] = []
    for name in TARGETS:
        run = runs.get(name)
        if run is None:
            continue
        blank = [""] * 9
        if not run.ok:
            rows.append([LABELS[name], "failed", *blank, first_line(run.message)])
            continue
        point: Point = getattr(run, pick)
        ref: Point | None = getattr(direct, pick) if direct and name != "direct" else None
        # The floor is compared with the rows that do more than it: not with itself or the upstream.
        floor_ref: Point | None = (
            getattr(floor, pick) if floor and floor.ok and name not in ("direct", "floor") else None
        )
        if not point.ok:
            rows.append([LABELS[name], "error", *blank, first_line(point.error or "")])
            continue
        assert point.pct is not None
        over = point.overhead(ref)
        over_floor = point.overhead(floor_ref)
        share = point.share_of(floor_ref)
        note = goal_notes(goals[name], pick) if name in goals else ""
        if point.errors:
            note = f"{point.errors} errors; {note}" if note else f"{point.errors} errors"
        foreign = run.point_foreign_cpus(pick)
        if foreign > FOREIGN_WARN_CPUS or point.attempts > 1:
            tries = f", best of {point.attempts} attempts" if point.attempts > 1 else ""
            disturbance = f"[other processes: {foreign:.2f} CPUs{tries}]"
            note = f"{disturbance} {note}" if note else disturbance
        rows.append(
            [
                LABELS[name],
                fmt_rps(point.rps),
                f"{share:.2f}" if share is not None else "-",
                *(fmt_ms(point.pct.get(p)) for p in PERCENTILES),
                *(fmt_over(over[p]) if over else "-" for p in PERCENTILES),
                *(fmt_over(over_floor[p]) if over_floor else "-" for p in ("p50", "p99")),
                note,
            ]
        )
    return rows


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:110]


def render_mode(mode: str, runs: dict[str, TargetRun], connections: int) -> tuple[list[str], Json]:
    direct = runs.get("direct")
    floor = runs.get("floor")
    litellm = runs.get("litellm")
    goals = {
        name: checks_for(run, direct, floor, litellm)
        for name, run in runs.items()
        if name in GATEWAYS and run.ok
    }
    out = [f"=== {MODE_TITLES.get(mode, mode)} ===", ""]
    lat_headers = [
        "",
        "req/s",
        "x floor",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "+p50",
        "+p90",
        "+p99",
        "f+p50",
        "f+p99",
        "goals (gateway)",
    ]
    align = "lrrrrrrrrrrl"
    sections = [
        ("(a) non-streaming, 1 connection", "c1"),
        (f"(b) non-streaming, {connections} connections", "concurrent"),
        ("(c) streaming time to first token, 1 connection (req/s = streams/s)", "ttft"),
    ]
    for title, pick in sections:
        out.append(title)
        out.extend(table(lat_headers, point_rows(runs, pick, goals), align))
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
            extra = ", ".join(filter(None, [goal_notes(goals[name], "rss"), extra]))
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
            vs_direct = direct if direct and name != "direct" else None
            vs_floor = floor if floor and floor.ok and name not in ("direct", "floor") else None
            entry.update(
                {
                    **{
                        pick: getattr(run, pick).as_json(
                            getattr(vs_direct, pick) if vs_direct else None,
                            getattr(vs_floor, pick) if vs_floor else None,
                        )
                        for pick in ("c1", "concurrent", "ttft")
                    },
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
            row.append(all_goals[key][i].verdict())
        rows.append(row)
    headers = ["goal"] + [f"{mode} {target}" for mode, target in columns]
    return [
        "=== goals summary (value, and whether the goal is met; no verdict = shown for information) ===",
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
        "latencies in ms; +pNN = overhead vs direct upstream at the same percentile,",
        "f+pNN = overhead vs the floor (bare uvicorn relay, the router's provider client),",
        "x floor = req/s as a share of the floor's",
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
                refs = (runs.get("direct"), runs.get("floor"), runs.get("litellm"))
                all_goals[(mode, name)] = checks_for(run, *refs)
    lines.extend(render_summary(all_goals))
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
