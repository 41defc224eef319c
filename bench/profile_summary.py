#!/usr/bin/env python3
"""Summarise a py-spy profile in raw (folded) format: where the time goes.

    python3 bench/profile_summary.py profile.folded [--top 30] [--focus services/] [--all-threads]

Prints the share of samples: self time by package (httpx, starlette, ...; the
project's code by module, e.g. services.router.usage), time by package with the
standard library's plumbing (asyncio, contextlib, ...) charged to its caller,
inclusive time by package, inclusive time of the frames in the focus package
(the frame or anything it calls), and the busiest frames by self time. By
default only stacks of the main thread (the event loop) are counted; helper
threads that py-spy sees as busy while they wait are left out. Standard library
only.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

SITE_PACKAGES = re.compile(r"\(/\S*/(?:site-packages|lib/python3\.\d+)/")
THREAD_ROOTS = ("Thread._bootstrap", "_bootstrap (threading.py")
# Standard-library modules that only carry a call for someone else: their time is
# charged to the nearest caller outside them. json, logging and the like stay
# visible under their own name: they are work, not plumbing.
PLUMBING = frozenset(
    {
        "asyncio",
        "contextlib",
        "typing",
        "abc",
        "functools",
        "enum",
        "dataclasses",
        "threading",
        "collections",
        "selectors",
        "socket",
        "weakref",
        "types",
        "import machinery",
        "_collections_abc",
        "_weakrefset",
        "runpy",
    }
)
EVENT_LOOP = "event loop (uvloop native code, asyncio)"
# Frames through which the event loop calls everything else (uvloop: Runner.run;
# the pure-Python loop: _run_once, then Handle._run).
LOOP_ENTRIES = (
    "Runner.run (asyncio/",
    "run_until_complete (asyncio/",
    "_run_once (asyncio/",
    "_run (asyncio/events",
)


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
    if location.startswith("<attrs generated methods "):
        return location.removeprefix("<attrs generated methods ").split(".")[0]
    if location.startswith("<frozen "):
        frozen = location.removeprefix("<frozen ").removesuffix(">")
        return "import machinery" if frozen.startswith("importlib") else frozen
    parts = location.split("/")
    if parts[0] == "services" and len(parts) > 1:
        return ".".join(parts).removesuffix(".py")
    return parts[0].removesuffix(".py") if len(parts) > 1 else location.removesuffix(".py")


def loop_frames(frames: list[str]) -> list[str]:
    """The frames the event loop runs: without those that started it (`main`, `uvicorn.run`, ...)."""
    start = 0
    for i, frame in enumerate(frames):
        if frame.startswith(LOOP_ENTRIES):
            start = i + 1
    return frames[start:]


def charged_package(frames: list[str]) -> str:
    """The package a sample's time is charged to: the innermost one that is not plumbing.

    A sample with no frame below the event loop's entry is the loop itself: with
    uvloop its I/O and scheduling are native code that py-spy charges to the
    Python frame that entered the loop.
    """
    for frame in reversed(loop_frames(frames)):
        name = package(frame)
        if name not in PLUMBING and name != "?":
            return name
    return EVENT_LOOP


def summarise(path: Path, top: int, focus: str, all_threads: bool) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    package_inclusive: Counter[str] = Counter()
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
        charged[charged_package(frames)] += count
        for name in {package(f) for f in loop_frames(frames)}:
            package_inclusive[name] += count
    if not total:
        return f"{path}: no samples"
    out = [
        f"{path.name}: {total} samples"
        + (f" ({skipped} samples of helper threads left out)" if skipped else ""),
        "",
        "self time by package (Runner.run/asyncio self time includes the event loop's native code)",
    ]
    out += [f"{100 * n / total:8.1f}%  {p}" for p, n in by_package.most_common(15)]
    out += [
        "",
        "time by package, the standard library's plumbing (asyncio, contextlib, ...) charged to its caller",
    ]
    out += [f"{100 * n / total:8.1f}%  {p}" for p, n in charged.most_common(20)]
    out += ["", "inclusive time by package (a frame of it anywhere on the stack; nested packages overlap)"]
    rows_pkg = [(p, n) for p, n in package_inclusive.most_common() if n < 0.98 * total][:20]
    out += [f"{100 * n / total:8.1f}%  {p}" for p, n in rows_pkg]
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
