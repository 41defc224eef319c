#!/usr/bin/env python3
"""Summarise a py-spy profile in raw (folded) format: where the time goes.

    python3 bench/profile_summary.py profile.folded [--top 30] [--focus services/] [--all-threads]

Prints the share of samples: self time by package (httpx, starlette, ...),
inclusive time of the frames in the focus package (the frame or anything it
calls), and the busiest frames by self time. By default only stacks of the main thread
(the event loop) are counted; helper threads that py-spy sees as busy while
they wait are left out. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

SITE_PACKAGES = re.compile(r"\(/\S*/(?:site-packages|lib/python3\.\d+)/")
THREAD_ROOTS = ("Thread._bootstrap", "_bootstrap (threading.py")


def short(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    frame = SITE_PACKAGES.sub("(", frame)
    return re.sub(r"\(/\S*/(services/)", r"(\1", frame)


def package(frame: str) -> str:
    """The top-level package of a shortened frame, e.g. `httpx` or `services.router`."""
    match = re.search(r"\(([^():]+):\d+\)$", frame)
    if not match:
        return "?"
    location = match.group(1)
    if location.startswith("<frozen"):
        return "import machinery"
    parts = location.split("/")
    if parts[0] == "services" and len(parts) > 2:
        return f"services.{parts[1]}"
    return parts[0].removesuffix(".py") if len(parts) > 1 else location.removesuffix(".py")


def summarise(path: Path, top: int, focus: str, all_threads: bool) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    skipped = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")]
        if not all_threads and any(f.startswith(THREAD_ROOTS) for f in frames[:3]):
            skipped += count
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        by_package[package(frames[-1])] += count
    if not total:
        return f"{path}: no samples"
    out = [
        f"{path.name}: {total} samples"
        + (f" ({skipped} samples of helper threads left out)" if skipped else ""),
        "",
        "self time by package (Runner.run/asyncio self time includes the event loop's native code)",
    ]
    out += [f"{100 * n / total:8.1f}%  {p}" for p, n in by_package.most_common(15)]
    out += ["", f"inclusive time of frames in {focus!r}"]
    rows = [(f, n) for f, n in inclusive.most_common() if focus in f and n < 0.98 * total][:top]
    out += [f"{100 * n / total:8.1f}%  {f}" for f, n in rows]
    out += ["", "self time by frame"]
    out += [f"{100 * n / total:8.1f}%  {f}" for f, n in own.most_common(max(10, top // 2))]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folded", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--focus", default="services/", help="path part of the frames to list")
    parser.add_argument("--all-threads", action="store_true")
    args = parser.parse_args()
    print(summarise(args.folded, args.top, args.focus, args.all_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
