"""Labelled sentence pairs for calibrating and evaluating the semantic cache.

Read from a folder laid out like the project's shared data (`stsb/...`, `mrpc/...`,
see docs/cache.md for the files and their licences), never bundled into a request
path. The rows listed in the folder's `exclude.json` (beside it, one level up, or
given) are skipped: they overlap evaluation data kept elsewhere. Extra evaluation
sets in the same shapes (STS-B dev/test, MRPC test, Quora Question Pairs) are read
by `load_file` with the format named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

Format = Literal["stsb", "mrpc", "qqp", "jsonl"]

STSB_TRAIN = "stsb/data/stsbenchmark/sts-train.csv"
MRPC_TRAIN = "mrpc/MSRP_Corpus/msr_paraphrase_train.txt"
MRPC_DEV = "mrpc/MSRP_Corpus/msr_paraphrase_dev.txt"
ENV_DIR = "GATEWAY_CACHE_PAIRS_DIR"
# STS-B scores run 0-5: at 4 and above the annotators call the pair equivalent but
# for unimportant details; at 3 and below important information differs. Pairs in
# between are left out: neither a hit nor a miss is clearly right for them.
STSB_POSITIVE = 4.0
STSB_NEGATIVE = 3.0


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """Two texts and whether a cache may answer one with the other's answer."""

    a: str
    b: str
    same: bool
    source: str  # "stsb-train", "mrpc-train", ... (the file it came from)
    group: str = ""  # genre (STS-B) or "" : for per-slice figures


class PairsMissing(FileNotFoundError):
    """The labelled pairs are not where the configuration says."""


def data_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """Where the pairs are: `given`, else $GATEWAY_CACHE_PAIRS_DIR, else `shared/data/cache`
    beside the repository (or beside its parent folder). Raises `PairsMissing` with what to do when absent."""
    candidates = [Path(given)] if given else []
    if not candidates and os.environ.get(ENV_DIR):
        candidates = [Path(os.environ[ENV_DIR])]
    if not candidates:
        root = Path(__file__).resolve().parents[2]
        # A clone keeps the project's shared data beside it (or one level up for a worktree).
        candidates = [
            root.parent / "shared" / "data" / "cache",
            root.parent.parent / "shared" / "data" / "cache",
        ]
    for path in candidates:
        if (path / STSB_TRAIN).is_file() or (path / MRPC_TRAIN).is_file():
            return path
    raise PairsMissing(
        f"no labelled pairs found in {', '.join(str(p) for p in candidates)}: put the STS-B train file at "
        f"<dir>/{STSB_TRAIN} and the MRPC train/dev files at <dir>/{MRPC_TRAIN} and <dir>/{MRPC_DEV} "
        f"(see docs/cache.md), then pass --data <dir> or set {ENV_DIR}"
    )


def exclusions(root: Path) -> dict[str, set[int]]:
    """Rows to skip, per file relative to `root` (from `exclude.json` beside or above it)."""
    for path in (root / "exclude.json", root.parent / "exclude.json"):
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            prefix = "" if path.parent == root else root.name + "/"
            out: dict[str, set[int]] = {}
            for name, spec in raw.items():
                if isinstance(spec, dict) and name.startswith(prefix):
                    out[name[len(prefix) :]] = {int(i) for i in spec.get("skip", ())}
            return out
    return {}


def _stsb(path: Path, source: str, skip: set[int]) -> Iterator[Pair]:
    # Tab-separated without quoting; a few rows carry licence columns after the pair.
    with path.open(encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if index in skip:
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                continue
            score = float(cols[4])
            if STSB_NEGATIVE < score < STSB_POSITIVE:
                continue
            yield Pair(cols[5], cols[6], score >= STSB_POSITIVE, source, cols[0])


def _mrpc(path: Path, source: str, skip: set[int]) -> Iterator[Pair]:
    with path.open(encoding="utf-8-sig") as fh:
        next(fh, None)  # header
        for index, line in enumerate(fh):
            if index in skip:
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 5 or cols[0] not in ("0", "1"):
                continue  # the fused record (train row 2122) and any other malformed line
            yield Pair(cols[3], cols[4], cols[0] == "1", source, "news")


def _qqp(path: Path, source: str, skip: set[int]) -> Iterator[Pair]:
    with path.open(encoding="utf-8") as fh:
        next(fh, None)
        for index, line in enumerate(fh):
            cols = line.rstrip("\n").split("\t")
            if index in skip or len(cols) != 6 or cols[5] not in ("0", "1"):
                continue
            yield Pair(cols[3], cols[4], cols[5] == "1", source, "questions")


def _jsonl(path: Path, source: str, skip: set[int]) -> Iterator[Pair]:
    with path.open(encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if index in skip or not line.strip():
                continue
            row = json.loads(line)
            yield Pair(row["a"], row["b"], bool(row["same"]), source, row.get("group", ""))


_READERS = {"stsb": _stsb, "mrpc": _mrpc, "qqp": _qqp, "jsonl": _jsonl}


def load_file(path: Path, fmt: Format, source: str, skip: Iterable[int] = ()) -> list[Pair]:
    """The pairs of one file in one of the known formats."""
    return list(_READERS[fmt](path, source, set(skip)))


def training_pairs(root: Path) -> list[Pair]:
    """STS-B train and MRPC train: what the verifier learns from (excluded rows skipped)."""
    skip = exclusions(root)
    out: list[Pair] = []
    for rel, fmt, source in ((STSB_TRAIN, "stsb", "stsb-train"), (MRPC_TRAIN, "mrpc", "mrpc-train")):
        if (root / rel).is_file():
            out += load_file(root / rel, fmt, source, skip.get(rel, ()))  # type: ignore[arg-type]
    if not out:
        raise PairsMissing(f"no training pairs under {root}")
    return out


def dev_pairs(root: Path) -> list[Pair]:
    """MRPC dev: held out from training, used to check the chosen threshold."""
    skip = exclusions(root)
    path = root / MRPC_DEV
    return load_file(path, "mrpc", "mrpc-dev", skip.get(MRPC_DEV, ())) if path.is_file() else []
