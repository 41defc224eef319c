"""Merging the Prometheus text pages of several worker processes into one.

Each worker renders its own registries; the supervisor asks every worker for its
page and serves one merged page, so one scrape sees the whole server:

- counters, histograms (buckets, `_count`, `_sum`) and summaries are summed;
- `*_created` series keep the earliest time;
- gauges named in `additive` are summed; every other gauge, and every `process_*`
  series (memory, CPU, file descriptors are per process), gets a `worker` label.

The page is read line by line: prometheus_client renders a series the same way in
every process (label order is the declaration order), so the rendered series text
is the merge key and labels are never parsed. `Page.summed` keeps what a worker had
counted, so a restarted worker's counts stay in the sum (see `Supervisor`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from prometheus_client.utils import floatToGoString

_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


@dataclasses.dataclass
class Family:
    """One metric family of a page: its HELP and TYPE lines and its samples in order."""

    name: str
    type: str
    help_line: str
    type_line: str
    samples: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Page:
    """A parsed text page: families by name, in the order they appeared."""

    families: dict[str, Family] = dataclasses.field(default_factory=dict)

    def summed(self, additive: frozenset[str] = frozenset()) -> Page:
        """The families the merge adds up (the ones a dead worker's counts carry over in)."""
        return Page(
            {
                name: dataclasses.replace(family, samples=dict(family.samples))
                for name, family in self.families.items()
                if _mode(family, additive) == "sum"
            }
        )

    def add(self, other: Page) -> None:
        """Add `other`'s samples into this page (both holding summed families only)."""
        for name, family in other.families.items():
            mine = self.families.get(name)
            if mine is None:
                self.families[name] = dataclasses.replace(family, samples=dict(family.samples))
                continue
            for series, value in family.samples.items():
                mine.samples[series] = mine.samples.get(series, 0.0) + value


def parse(text: bytes | str) -> Page:
    """Read the text exposition format (as prometheus_client writes it: no timestamps)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    page = Page()
    helps: dict[str, str] = {}
    current: Family | None = None
    for line in text.split("\n"):
        if not line:
            continue
        if line[0] == "#":
            if line.startswith("# HELP "):
                helps[line[7:].split(" ", 1)[0]] = line
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                current = page.families.get(name)
                if current is None:
                    current = page.families[name] = Family(name, kind.strip(), helps.get(name, ""), line)
            continue
        series, _, value = line.rpartition(" ")
        if current is None:  # a sample with no TYPE line: untyped, its own family
            name = series.split("{", 1)[0]
            current = page.families.setdefault(name, Family(name, "untyped", "", f"# TYPE {name} untyped"))
        current.samples[series] = float(value)
    return page


def _mode(family: Family, additive: frozenset[str]) -> str:
    if family.name.startswith("process_"):
        return "label"
    if family.type in _SUMMED_TYPES:
        return "sum"
    if family.type == "gauge":
        if family.name.endswith("_created"):
            return "min"
        if family.name in additive:
            return "sum"
    return "label"


def with_label(series: str, name: str, value: str) -> str:
    """`metric{a="1"}` → `metric{name="value",a="1"}`."""
    brace = series.find("{")
    if brace < 0:
        return f'{series}{{{name}="{value}"}}'
    rest = series[brace + 1 :]
    sep = "" if rest.startswith("}") else ","
    return f'{series[: brace + 1]}{name}="{value}"{sep}{rest}'


def merge(sources: Sequence[tuple[str, Page]], additive: frozenset[str] = frozenset()) -> Page:
    """One page from several: `sources` are (worker label, page) pairs."""
    out = Page()
    for worker, page in sources:
        for family in page.families.values():
            target = out.families.get(family.name)
            if target is None:
                target = out.families[family.name] = dataclasses.replace(family, samples={})
            samples = target.samples
            mode = _mode(family, additive)
            if mode == "sum":
                for series, value in family.samples.items():
                    samples[series] = samples.get(series, 0.0) + value
            elif mode == "min":
                for series, value in family.samples.items():
                    previous = samples.get(series)
                    samples[series] = value if previous is None or value < previous else previous
            else:
                for series, value in family.samples.items():
                    samples[with_label(series, "worker", worker)] = value
    return out


def render(page: Page) -> bytes:
    lines: list[str] = []
    for family in page.families.values():
        if not family.samples:
            continue
        if family.help_line:
            lines.append(family.help_line)
        lines.append(family.type_line)
        lines.extend(f"{series} {_number(value)}" for series, value in family.samples.items())
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def merge_pages(
    sources: Iterable[tuple[str, bytes]], additive: frozenset[str] = frozenset()
) -> tuple[bytes, dict[str, Page]]:
    """Parse, merge and render; also return each source's parsed page."""
    parsed = {worker: parse(text) for worker, text in sources}
    return render(merge(list(parsed.items()), additive)), parsed


def _number(value: float) -> str:
    """A sample value as Prometheus writes it (`+Inf`, `1.0e+06`)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]
